"""The transactional outbox: decide a message (recorded as queued or suppressed, with its reason) in
the caller's transaction, and send queued messages from workers.

Delivery is at least once, and each message's `key` travels to the provider as its idempotency id
(Aliyun OutId, Tencent SessionContext, webhook-id, Message-ID): a worker that dies after the provider
accepted a message but before recording it leaves the row `sending`; when its claim expires the row
is queued again and the provider receives the same key a second time, so it can drop the duplicate.

Workers claim due rows a batch at a time with `FOR UPDATE SKIP LOCKED` on PostgreSQL (several workers
share the work without waiting on each other); SQLite serialises writers anyway. Before sending, the
respect rules run again for the whole batch (consent withdrawn after the decision → not sent; quiet
hours reached → deferred). The batch is then sent a few messages at a time on threads, with no
transaction open during a provider call, and every outcome is recorded in one transaction, only for
the messages whose claim is still ours. Transient provider errors retry with exponential backoff;
permanent ones fail at once; after `MAX_ATTEMPTS` a message is dead (the dead-letter list), from where
an operator can resend it. A worker that dies between the sends and the record leaves its batch
`sending`: the whole batch goes again, with the same keys, once the claim expires.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from jinja2 import TemplateError, UndefinedError
from sqlalchemy import and_, bindparam, case, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard import db
from orchard.audit.service import record
from orchard.config import get_settings
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.journeys.models import SubscribeGrant
from orchard.kit.clock import tenant_zone, utcnow
from orchard.members.models import Member
from orchard.messaging import links, respect, templates
from orchard.messaging.models import Message, MessageTemplate

MAX_ATTEMPTS = 8
#: How long a worker's claim on a message holds by default; after it the message is queued again.
#: The setting ORCHARD_OUTBOX_CLAIM_SECONDS (`claim_seconds()`) overrides it.
CLAIM_SECONDS = 300
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 3600
#: Sends in flight per dispatch round: enough to hide a provider's latency (8 × a 100 ms answer ≈ 80
#: messages/s per process, the scheduler's 200-message round in 2.5 s), and no more threads than needed —
#: against a fast provider every extra one costs CPU in contention for the GIL and the HTTP client's
#: pool lock (bench/outbox_dispatch.py: 0.57 ms per webhook message with 4, 0.61 with 8, 0.78 with 16).
SEND_CONCURRENCY = 8


class Provider(Protocol):
    """What the outbox needs from a channel adapter (orchard.channels implements it)."""

    name: str

    def send(self, message: Any) -> Any: ...


@dataclass
class Outcome:
    """The result of a send as the outbox records it."""

    accepted: bool
    permanent: bool = False
    provider_message_id: str | None = None
    error: str | None = None


# -- deciding --------------------------------------------------------------------------------------

def preview(session: Session, *, template_code: str, member: Member,
            context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a template renders to for this member now (links shown as they would be shortened)."""
    template = templates.get(session, template_code)
    collector = links.Collector(f"preview:{template.code}:{member.id}")
    try:
        return templates.render_template(template, {**context_for(session, member, context), "link": collector})
    except (UndefinedError, TemplateError) as exc:
        raise InvalidInput.field("template", f"cannot render for this member: {exc}") from None


@dataclass
class Prefetched:
    """What templates read besides the member, read once for a batch of decisions."""

    balances: dict[int, int] = field(default_factory=dict)
    stores: dict[int, Any] = field(default_factory=dict)
    brand: str = "Orchard"
    #: member id → (level id, metric value); active levels in rank order.
    tiers: dict[int, tuple[int, int]] = field(default_factory=dict)
    levels: list[Any] = field(default_factory=list)
    #: member id → (available, pending, expiring within EXPIRING_DAYS, soonest expiry date).
    lots: dict[int, tuple[int, int, int, str]] = field(default_factory=dict)
    #: member id → the categories they bought most in the last year (read only when a template asks).
    categories: dict[int, list[str]] = field(default_factory=dict)

    def points(self, member_id: int) -> dict[str, Any]:
        available, pending, expiring, expiring_at = self.lots.get(member_id, (0, 0, 0, ""))
        return {"balance": self.balances.get(member_id, 0), "available": available, "pending": pending,
                "expiring": expiring, "expiring_at": expiring_at}

    def recommend(self, member_id: int) -> dict[str, Any]:
        categories = self.categories.get(member_id, [])
        return {"category": categories[0] if categories else "", "categories": categories}

    def tier(self, member_id: int) -> dict[str, Any]:
        """`tier` as templates see it: the member's level and what the next one needs (the base level
        for a member never placed; empty names when the brand has no tier program)."""
        if not self.levels:
            return {"code": "", "name": "", "next_name": "", "next_needs": 0}
        level_id, metric = self.tiers.get(member_id, (self.levels[0].id, 0))
        rank = next((i for i, lv in enumerate(self.levels) if lv.id == level_id), 0)
        here = self.levels[rank]
        nxt = self.levels[rank + 1] if rank + 1 < len(self.levels) else None
        return {"code": here.code, "name": here.name, "next_name": nxt.name if nxt else "",
                "next_needs": max(nxt.threshold - metric, 0) if nxt else 0}

    @classmethod
    def read(cls, session: Session, members: Iterable[Member], *, recommend: bool = True,
             now: dt.datetime | None = None) -> Prefetched:
        from orchard.loyalty.models import MemberTier, PointsAccount, PointsLot, TierLevel
        from orchard.org.models import OrgUnit

        members = list(members)
        ids = [m.id for m in members]
        store_ids = {m.home_store_id for m in members if m.home_store_id}
        now = now or utcnow()
        effective = case((MemberTier.override_until > now, MemberTier.override_level_id), else_=MemberTier.level_id)
        lot = PointsLot
        pending = and_(lot.pending_until.is_not(None), lot.pending_until > now)
        soon = and_(lot.expires_at.is_not(None), lot.expires_at > now,
                    lot.expires_at <= now + dt.timedelta(days=EXPIRING_DAYS))
        zone = tenant_zone()
        lots = {mid: (int(av or 0), int(pe or 0), int(ex or 0),
                      _aware(first).astimezone(zone).date().isoformat() if first else "")
                for mid, av, pe, ex, first in session.execute(select(
                    lot.member_id, func.sum(case((pending, 0), else_=lot.remaining)),
                    func.sum(case((pending, lot.remaining), else_=0)), func.sum(case((soon, lot.remaining), else_=0)),
                    func.min(case((lot.expires_at > now, lot.expires_at)))).where(
                    db.one_of(session, lot.member_id, ids), lot.remaining > 0).group_by(lot.member_id))} \
            if ids else {}
        return cls(
            lots=lots,
            categories=_top_categories(session, ids, now) if ids and recommend else {},
            tiers={mid: (level, metric) for mid, level, metric in session.execute(
                select(MemberTier.member_id, effective, MemberTier.metric_value).where(
                    db.one_of(session, MemberTier.member_id, ids)))} if ids else {},
            levels=list(session.scalars(select(TierLevel).where(TierLevel.active.is_(True))
                                        .order_by(TierLevel.rank))),
            balances=dict(session.execute(select(PointsAccount.member_id, PointsAccount.balance).where(
                PointsAccount.member_id.in_(ids))).tuples().all()) if ids else {},
            stores={u.id: u for u in session.scalars(select(OrgUnit).where(OrgUnit.id.in_(store_ids)))}
            if store_ids else {},
            brand=session.scalar(select(OrgUnit.name).where(OrgUnit.kind == "hq").limit(1)) or "Orchard")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


#: `points.expiring` counts the points that expire within this many days.
EXPIRING_DAYS = 30


def _top_categories(session: Session, member_ids: list[int], now: dt.datetime, n: int = 3) -> dict[int, list[str]]:
    """Each member's most bought categories over the last year (by lines, then by name): the simplest
    recommendation a message can carry ({{ recommend.category }})."""
    from orchard.events.models import Order, OrderLine

    rows = session.execute(select(Order.member_id, OrderLine.category, func.count()).join(
        OrderLine, OrderLine.order_id == Order.id).where(
        db.one_of(session, Order.member_id, member_ids), Order.paid_at > now - dt.timedelta(days=365),
        Order.status != "refunded", OrderLine.category.is_not(None))
        .group_by(Order.member_id, OrderLine.category))
    ranked: dict[int, list[tuple[int, str]]] = {}
    for mid, category, count in rows:
        ranked.setdefault(mid, []).append((-count, category))
    return {mid: [c for _, c in sorted(pairs)[:n]] for mid, pairs in ranked.items()}


def context_for(session: Session, member: Member, extra: Mapping[str, Any] | None = None, *,
                prefetched: Prefetched | None = None) -> dict[str, Any]:
    """The variables a template may use, filled for this member (see `templates.SAMPLE`)."""
    pre = prefetched or Prefetched.read(session, [member])
    store = pre.stores.get(member.home_store_id) if member.home_store_id else None
    ctx: dict[str, Any] = {
        "member": {"id": member.id, "name": member.name or "会员", "gender": member.gender,
                   "birthday": member.birthday.isoformat() if member.birthday else "", "region": member.region or "",
                   "joined_at": member.joined_at.date().isoformat(), "home_store": store.name if store else ""},
        "points": pre.points(member.id),
        "tier": pre.tier(member.id),
        "recommend": pre.recommend(member.id),
        "store": {"code": store.code if store else "", "name": store.name if store else "",
                  "city": (store.city or "") if store else ""},
        "brand": {"name": pre.brand},
        "event": {},
        "link": lambda url: url,
    }
    for key, value in (extra or {}).items():
        ctx[key] = value
    return ctx


@dataclass(frozen=True)
class Decision:
    """One message to decide (see `enqueue`). `journey_cap` is the deciding journey's own (max, days)."""

    key: str
    member_id: int
    template_code: str
    context: Mapping[str, Any] | None = None
    priority: int = 0
    journey_id: int | None = None
    run_id: int | None = None
    step: str | None = None
    journey_cap: tuple[int, int] | None = None


def enqueue(session: Session, *, key: str, member_id: int, template_code: str, context: Mapping[str, Any] | None = None,
            priority: int = 0, journey_id: int | None = None, run_id: int | None = None, step: str | None = None,
            now: dt.datetime | None = None, journey_cap: tuple[int, int] | None = None) -> Message:
    """Decide one message: idempotent on `key` (a repeat returns the first decision). The member row is
    locked so two decisions for one member cannot both pass a cap. `journey_cap` is the deciding
    journey's own (max, days)."""
    return enqueue_many(session, [Decision(key, member_id, template_code, context, priority, journey_id, run_id, step,
                                           journey_cap)], now=now)[0]


def enqueue_many(session: Session, decisions: Sequence[Decision], *, now: dt.datetime | None = None) -> list[Message]:
    """Decide a batch of messages as `enqueue` decides one, with the same rules in the same order, in a
    handful of statements whatever the batch size (members locked in id order, the respect facts of all
    of them read at once, the messages inserted together). Decisions are taken in the given order and
    each counts toward the next (two messages to one member in one batch cannot both pass a cap).
    Returns one message per decision (a key decided before, or twice in the batch, gives the first)."""
    now = now or utcnow()
    keys = list(dict.fromkeys(d.key for d in decisions))
    decided = {m.key: m for m in session.scalars(select(Message).where(Message.key.in_(keys)))} if keys else {}
    todo = [d for d in decisions if d.key not in decided]
    if not todo:
        return [decided[d.key] for d in decisions]
    tpls: dict[str, MessageTemplate] = {}
    for d in todo:
        if d.template_code not in tpls:
            tpls[d.template_code] = template = templates.get(session, d.template_code)
            if template.status != "published":
                raise Conflict(f"template {d.template_code!r} is not published", code="template.unpublished")
    try:
        with session.begin_nested():
            out = _decide(session, todo, tpls, now)
    except IntegrityError:  # a concurrent decider took one of the keys: one by one, theirs stands
        if len(decisions) > 1:
            return [enqueue_many(session, [d], now=now)[0] for d in decisions]
        existing = session.scalar(select(Message).where(Message.key == decisions[0].key))
        if existing is None:
            raise
        return [existing]
    decided.update(out)
    return [decided[d.key] for d in decisions]


def _decide(session: Session, todo: Sequence[Decision], tpls: Mapping[str, MessageTemplate],
            now: dt.datetime) -> dict[str, Message]:
    ids = sorted({d.member_id for d in todo})
    members = {m.id: m for m in session.scalars(select(Member).where(Member.id.in_(ids)).order_by(Member.id)
                                                .with_for_update().execution_options(populate_existing=True))}
    if len(members) != len(ids):
        raise NotFound("member not found", code="member.not_found")
    policy = respect.get_policy(session)
    channels = {t.channel for t in tpls.values()}
    journey_days = max((d.journey_cap[1] for d in todo if d.journey_cap), default=0)

    def facts_of(mids: Iterable[int]) -> dict[int, respect.Facts]:
        return respect.gather(session, {mid: (members[mid].status, members[mid].reduce_disturbance) for mid in mids},
                              channels=channels, policy=policy, now=now, journey_days=journey_days)

    facts = facts_of(ids)
    phones = {f.recipients["phone"] for f in facts.values() if "phone" in f.recipients} if "sms" in channels else set()
    numbers = respect.sms_counts(session, phones, now=now)
    prefetched = Prefetched.read(session, members.values(), now=now, recommend=any(
        "recommend" in (t.body or "") + (t.subject or "") + str(t.variables or "") for t in tpls.values()))
    out: dict[str, Message] = {}
    saved: list[tuple[Message, links.Collector]] = []
    for d in todo:
        if d.key in out:
            continue
        template, member = tpls[d.template_code], members[d.member_id]
        grant = (template.provider_template or template.code) if template.channel == "wechat_subscribe" else None
        cap = respect.JourneyCap(d.journey_id, *d.journey_cap) if d.journey_cap and d.journey_id is not None else None
        rules: dict[str, Any] = {"channel": template.channel, "purpose": template.purpose, "policy": policy,
                                 "now": now, "grant": grant, "journey_cap": cap}
        verdict = respect.judge(facts[member.id], numbers, **rules)
        if not verdict.ok and verdict.reason and verdict.reason.startswith("cap.") and verdict.reason != "cap.journey" \
                and any(p.purpose == "marketing" and p.status in (None, "queued") and p.priority < d.priority
                        for p in facts[member.id].recent) \
                and _preempt(session, member.id, template.channel, d.priority, policy, now, d.key):
            # Rare: re-read this member's facts (the batch's earlier messages are flushed by the query).
            facts[member.id] = facts_of([member.id])[member.id]
            if "phone" in facts[member.id].recipients:
                numbers.update(respect.sms_counts(session, {facts[member.id].recipients["phone"]}, now=now))
            verdict = respect.judge(facts[member.id], numbers, **rules)
        message = Message(key=d.key, member_id=member.id, template_id=template.id, channel=template.channel,
                          purpose=template.purpose, priority=d.priority, journey_id=d.journey_id, run_id=d.run_id,
                          step=d.step, attempts=0, created_at=now, payload={})
        collector = links.Collector(d.key)
        if verdict.ok:
            try:
                message.payload = templates.render_template(template, {
                    **context_for(session, member, d.context, prefetched=prefetched), "link": collector})
            except (UndefinedError, TemplateError, InvalidInput) as exc:
                message.status, message.reason, message.detail = "failed", "template.variable", str(exc)[:500]
            else:
                message.status, message.recipient = "queued", verdict.recipient
                message.next_attempt_at = verdict.not_before or now
                if grant is not None:  # the grant is reserved now; given back if the message is not sent
                    _use_grant(session, member.id, grant, -1)
                    facts[member.id].grants[grant] = facts[member.id].grants.get(grant, 0) - 1
                respect.remember(facts[member.id], numbers, respect.Pending(
                    template.channel, template.purpose, d.journey_id, verdict.recipient, now, status="queued",
                    priority=d.priority), now)
        else:
            message.status, message.reason, message.detail = "suppressed", verdict.reason, verdict.detail
        session.add(message)
        out[d.key] = message
        saved.append((message, collector))
    if session.get_bind().dialect.name == "postgresql" and len(saved) > 1:
        # Ids drawn from the sequence first: the rows then go in as one pipelined executemany without
        # RETURNING, instead of a huge multi-row INSERT … RETURNING that costs more to build than to run.
        fresh = [m for m, _ in saved if m.id is None and m in session.new]
        with session.no_autoflush:
            ids = session.scalars(select(func.nextval("messages_id_seq")).select_from(
                func.generate_series(1, len(fresh)))).all()
        for message, message_id in zip(fresh, ids, strict=True):
            message.id = message_id
    session.flush()
    for message, collector in saved:
        if collector.urls:
            links.save(session, collector, message)
    return out


def _save(session: Session, message: Message, collector: links.Collector | None = None) -> Message:
    """Insert a decided message (and its tracked links); a concurrent decision of the same key wins."""
    try:
        with session.begin_nested():
            session.add(message)
            session.flush()
            if collector is not None:
                links.save(session, collector, message)
    except IntegrityError:  # the same key decided concurrently: theirs stands
        existing = session.scalar(select(Message).where(Message.key == message.key))
        if existing is None:
            raise
        return existing
    return message


def enqueue_webhook(session: Session, *, key: str, member_id: int, url: str, data: Mapping[str, Any],
                    priority: int = 0, journey_id: int | None = None, run_id: int | None = None,
                    step: str | None = None, now: dt.datetime | None = None) -> Message:
    """Decide a call to an integrator's URL (a journey's webhook step) without a template: a `webhook`
    service message whose recipient is the URL and whose payload is the JSON `data` to post. It needs no
    consent and counts toward no marketing cap; a merged member is still suppressed. Sent like any
    message (retries, dead letters), with the message id as the Standard Webhooks `webhook-id`."""
    existing = session.scalar(select(Message).where(Message.key == key))
    if existing is not None:
        return existing
    now = now or utcnow()
    member = session.get(Member, member_id)  # no lock: no cap to protect
    if member is None:
        raise NotFound("member not found", code="member.not_found")
    verdict = respect.check(session, member=member, channel="webhook", purpose="service",
                            policy=respect.get_policy(session), now=now)
    message = Message(key=key, member_id=member.id, template_id=None, channel="webhook", purpose="service",
                      priority=priority, journey_id=journey_id, run_id=run_id, step=step, attempts=0,
                      created_at=now, payload={"data": dict(data)})
    if verdict.ok:
        message.status, message.recipient, message.next_attempt_at = "queued", url, now
    else:
        message.status, message.reason, message.detail = "suppressed", verdict.reason, verdict.detail
    return _save(session, message)


def _use_grant(session: Session, member_id: int, template: str, delta: int) -> None:
    G = SubscribeGrant
    session.execute(update(G).where(G.member_id == member_id, G.template == template, G.remaining + delta >= 0)
                    .values(remaining=G.remaining + delta, updated_at=utcnow())
                    .execution_options(synchronize_session=False))


def _give_back(session: Session, message: Message) -> None:
    if message.channel == "wechat_subscribe":
        grant = message.payload.get("provider_template") or session.scalar(
            select(MessageTemplate.code).where(MessageTemplate.id == message.template_id))
        _use_grant(session, message.member_id, grant, +1)


def grant(session: Session, *, member_id: int, template: str, count: int = 1) -> int:
    """The mini-program reports `count` new grants of `template` by the member; returns what is left."""
    G = SubscribeGrant
    row = session.get(G, (member_id, template), with_for_update=True)
    if row is None:
        row = G(member_id=member_id, template=template, remaining=0, updated_at=utcnow())
        session.add(row)
    row.remaining += count
    row.updated_at = utcnow()
    session.flush()
    return row.remaining


def _preempt(session: Session, member_id: int, channel: str, priority: int, policy: respect.Policy,
             now: dt.datetime, key: str) -> bool:
    """A higher-priority decision takes the place of lower-priority marketing not sent yet: those are
    cancelled with reason "priority" (and the winner's key), so both sides of the conflict are recorded."""
    days = max(c.days for c in policy.caps.values()) if policy.caps else 0
    losers = list(session.scalars(select(Message).where(
        Message.member_id == member_id, Message.purpose == "marketing", Message.status == "queued",
        Message.priority < priority, Message.created_at > now - dt.timedelta(days=days)).with_for_update()))
    for loser in losers:
        loser.status, loser.reason, loser.detail = "cancelled", "priority", f"preempted by {key}"
        loser.next_attempt_at = None
    session.flush()
    return bool(losers)


# -- sending ---------------------------------------------------------------------------------------

def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"[:64]


def claim_seconds() -> int:
    """The claim timeout in force (ORCHARD_OUTBOX_CLAIM_SECONDS, default `CLAIM_SECONDS`)."""
    return get_settings().outbox_claim_seconds


def claim(session: Session, *, limit: int, now: dt.datetime, me: str) -> list[int]:
    """Take up to `limit` due queued messages for this worker (and re-queue expired claims first)."""
    session.execute(update(Message).where(Message.status == "sending", Message.locked_until < now)
                    .values(status="queued", locked_by=None, locked_until=None, next_attempt_at=now)
                    .execution_options(synchronize_session=False))
    # Ordered by next_attempt_at alone, which ix_messages_due gives: a tie-break on id made PostgreSQL
    # sort every due row on each claim (38 ms for 100k messages due at the same moment — a campaign, or
    # the morning after quiet hours); equal times come in index order.
    due = select(Message.id).where(Message.status == "queued", Message.next_attempt_at <= now) \
        .order_by(Message.next_attempt_at).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(session.scalars(due))
    if ids:
        session.execute(update(Message).where(db.one_of(session, Message.id, ids)).values(
            status="sending", locked_by=me, locked_until=now + dt.timedelta(seconds=claim_seconds()),
            attempts=Message.attempts + 1).execution_options(synchronize_session=False))
    return ids


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    suppressed: int = 0
    deferred: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def dispatch(providers: Mapping[str, Provider], *, limit: int = 200, now: dt.datetime | None = None,
             me: str | None = None, to_outbound: Callable[[Message], Any] | None = None,
             rate: RateLimiter | None = None, concurrency: int = SEND_CONCURRENCY) -> DispatchStats:
    """One round over a batch, in two short transactions with the sends between them:

    1. claim up to `limit` due messages and re-check the respect rules for all of them at once
       (`respect.check_at_send`); refused ones are suppressed, ones quiet hours now cover are deferred;
    2. send the rest, up to `concurrency` at a time on a thread pool (the adapters' HTTP clients are
       thread-safe; `rate` still spaces each channel's sends), with no transaction open meanwhile;
    3. record every outcome, each guarded by our claim (`locked_by = me`): a message whose claim
       expired during the send and that another worker took over is left to that worker.
    """
    me = me or _me()
    now = now or utcnow()
    started = time.monotonic()
    stats = DispatchStats()
    with db.transaction() as session:
        ids = claim(session, limit=limit, now=now, me=me)
        stats.claimed = len(ids)
        if not ids:
            return stats
        batch = _recheck(session, ids, me=me, now=now, stats=stats)
    jobs: list[tuple[Message, Provider | None, Any]] = []
    early: dict[int, Outcome] = {}
    for message in batch:
        provider = providers.get(message.channel)
        if provider is None:
            early[message.id] = Outcome(False, permanent=True, error=f"no provider configured for {message.channel}")
            jobs.append((message, None, None))
            continue
        try:
            jobs.append((message, provider, to_outbound(message) if to_outbound else message))
        except Exception as exc:  # noqa: BLE001 — like an adapter bug: retried, then dead, never lost
            early[message.id] = Outcome(False, permanent=False, error=f"{type(exc).__name__}: {exc}"[:500])
            jobs.append((message, provider, None))
    to_send = [job for job in jobs if job[0].id not in early]
    sent = dict(zip((job[0].id for job in to_send), _send_all(to_send, rate, concurrency), strict=True))
    if jobs:
        with db.transaction() as session:
            # Sent and retry times on the dispatch's own clock (`now` plus what the sends took), so a
            # dispatch run at a given instant (a test, a replay) records times consistent with it.
            _record(session, [(message, early.get(message.id) or sent[message.id], provider.name if provider else None)
                              for message, provider, _ in jobs], me, stats,
                    now=now + dt.timedelta(seconds=time.monotonic() - started))
    return stats


def _recheck(session: Session, ids: list[int], *, me: str, now: dt.datetime, stats: DispatchStats) -> list[Message]:
    """Re-check the respect rules for a claimed batch; suppress or defer what may not go now, and
    return the messages to send."""
    messages = list(session.scalars(select(Message).where(db.one_of(session, Message.id, ids)).order_by(Message.id)))
    verdicts = respect.check_at_send(session, messages, policy=respect.get_policy(session), now=now)
    suppressed: list[dict[str, Any]] = []
    deferred: list[int] = []
    not_before: dt.datetime | None = None
    out = []
    for message in messages:
        verdict = verdicts[message.id]
        if not verdict.ok:
            suppressed.append({"id": message.id, "status": "suppressed", "reason": verdict.reason,
                               "detail": verdict.detail, "locked_by": None, "locked_until": None})
            _give_back(session, message)
            stats.suppressed += 1
            stats.reasons[verdict.reason or "?"] = stats.reasons.get(verdict.reason or "?", 0) + 1
        elif verdict.not_before is not None:  # quiet hours came while it waited: never send late
            deferred.append(message.id)
            not_before = verdict.not_before
        else:
            out.append(message)
    _update_each(session, me, suppressed)
    if deferred:
        session.execute(update(Message).where(db.one_of(session, Message.id, deferred), Message.locked_by == me).values(
            status="queued", next_attempt_at=not_before, attempts=Message.attempts - 1, locked_by=None,
            locked_until=None).execution_options(synchronize_session=False))
        stats.deferred += len(deferred)
    return out


def _send_all(jobs: list[tuple[Message, Provider | None, Any]], rate: RateLimiter | None,
              concurrency: int) -> list[Outcome]:
    """Each job's outcome, in order; an exception from an adapter is a transient failure (retried)."""

    def one(job: tuple[Message, Provider | None, Any]) -> Outcome:
        message, provider, outbound = job
        assert provider is not None
        if rate is not None:
            rate.wait(message.channel)
        try:
            return _outcome(provider.send(outbound))
        except Exception as exc:  # noqa: BLE001 — an adapter bug must not lose the message: retry it
            return Outcome(False, permanent=False, error=f"{type(exc).__name__}: {exc}"[:500])

    if concurrency <= 1 or len(jobs) <= 1:
        return [one(job) for job in jobs]
    # A few threads each taking the next job, rather than a future per message: the pool's own
    # bookkeeping cost about as much CPU as a send to a fast provider.
    outcomes: list[Outcome] = [None] * len(jobs)  # type: ignore[list-item]
    todo = iter(range(len(jobs)))
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            outcomes[i] = one(jobs[i])

    threads = min(concurrency, len(jobs))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="orchard-send") as pool:
        for running in [pool.submit(drain) for _ in range(threads)]:
            running.result()
    return outcomes


def _outcome(result: Any) -> Outcome:
    if isinstance(result, Outcome):
        return result
    status = getattr(result, "status", None)
    return Outcome(accepted=status == "accepted", permanent=bool(getattr(result, "permanent", False)),
                   provider_message_id=getattr(result, "provider_message_id", None),
                   error=getattr(result, "error", None) or getattr(result, "error_text", None))


def _record(session: Session, results: list[tuple[Message, Outcome, str | None]], me: str,
            stats: DispatchStats, *, now: dt.datetime) -> None:
    """Record a batch's outcomes: one UPDATE statement per kind of outcome, only for the messages we
    still hold (locked first, in id order) — the rest had their claim expire during the sends and
    belong to another worker now, which sends them again with the same keys."""
    ours = dict(session.execute(select(Message.id, Message.status).where(
        db.one_of(session, Message.id, [message.id for message, _, _ in results]), Message.locked_by == me)
        .order_by(Message.id).with_for_update()).tuples().all())
    sent, failed, retried = [], [], []
    for message, outcome, provider in results:
        if message.id not in ours:
            continue
        if ours[message.id] in ("delivered", "failed"):
            # The provider's receipt (messaging.receipts) arrived before this record: the provider has the
            # message, whatever this call's answer says (a timeout after acceptance). Keep the receipt;
            # never retry it.
            row = session.get(Message, message.id)
            row.provider, row.locked_by, row.locked_until = provider, None, None
            row.sent_at = row.sent_at or now
            row.provider_message_id = row.provider_message_id or outcome.provider_message_id
            stats.sent += 1
            continue
        row: dict[str, Any] = {"id": message.id, "provider": provider, "locked_by": None, "locked_until": None}
        if outcome.accepted:
            sent.append({**row, "status": "sent", "sent_at": now, "provider_message_id": outcome.provider_message_id,
                         "reason": None, "detail": None})
            stats.sent += 1
        elif outcome.permanent or message.attempts >= MAX_ATTEMPTS:
            failed.append({**row, "status": "failed" if outcome.permanent else "dead",
                           "reason": "provider.permanent" if outcome.permanent else "provider.retries_exhausted",
                           "detail": outcome.error})
            _give_back(session, message)
            stats.failed += 1
        else:
            delay = min(BACKOFF_BASE_SECONDS * 2 ** (message.attempts - 1), BACKOFF_MAX_SECONDS)
            retried.append({**row, "status": "queued", "reason": "provider.transient", "detail": outcome.error,
                            "next_attempt_at": now + dt.timedelta(seconds=delay * random.uniform(0.8, 1.2))})
            stats.retried += 1
    for rows in (sent, failed, retried):
        _update_each(session, me, rows)


#: PostgreSQL types of the message columns the outbox updates row by row.
_PG_TYPES = {"id": "bigint", "status": "text", "reason": "text", "detail": "text", "provider": "text",
             "provider_message_id": "text", "sent_at": "timestamptz", "next_attempt_at": "timestamptz",
             "locked_by": "text", "locked_until": "timestamptz"}


def _update_each(session: Session, me: str, rows: list[dict[str, Any]]) -> None:
    """UPDATE messages SET <row's columns> WHERE id = <row's id> AND locked_by = me, for rows that all
    set the same columns. On PostgreSQL one statement joins the rows as arrays (`unnest`); elsewhere
    one statement is executed for each row."""
    if not rows:
        return
    columns = [k for k in rows[0] if k != "id"]
    if session.get_bind().dialect.name == "postgresql":
        varying = [k for k in columns if any(row[k] != rows[0][k] for row in rows)]
        sets = ", ".join(f"{k} = v.{k}" if k in varying else f"{k} = :c_{k}" for k in columns)
        arrays = ", ".join(f"CAST(:a_{k} AS {_PG_TYPES[k]}[])" for k in ("id", *varying))
        session.execute(text(f"UPDATE messages SET {sets} FROM unnest({arrays}) AS v({', '.join(('id', *varying))}) "
                             "WHERE messages.id = v.id AND messages.locked_by = :me"),
                        {"me": me, **{f"c_{k}": rows[0][k] for k in columns if k not in varying},
                         **{f"a_{k}": [row[k] for row in rows] for k in ("id", *varying)}})
        return
    table = Message.__table__
    stmt = table.update().where(table.c.id == bindparam("m_id"), table.c.locked_by == me) \
        .values({k: bindparam(f"m_{k}") for k in columns})
    session.execute(stmt, [{f"m_{k}": v for k, v in row.items()} for row in rows])


def resend(session: Session, *, message_id: int, actor: str, now: dt.datetime | None = None) -> Message:
    """Put a failed or dead message back in the queue (the dead-letter list's manual resend), due `now`."""
    message = session.get(Message, message_id, with_for_update=True)
    if message is None:
        raise NotFound("message not found", code="message.not_found")
    if message.status not in ("failed", "dead"):
        raise InvalidInput.field("status", f"only failed or dead messages are resent (this one is {message.status})")
    if message.reason == "template.variable":
        raise InvalidInput.field("reason", "the template could not be rendered for this member; fix and re-decide")
    message.status, message.attempts, message.next_attempt_at = "queued", 0, now or utcnow()
    message.reason = message.detail = None
    record(session, actor=actor, action="message.resend", entity="message", entity_id=message.id, data={})
    session.flush()
    return message


class RateLimiter:
    """A token bucket per channel for this process: at most `per_second[channel]` sends a second."""

    def __init__(self, per_second: Mapping[str, float]) -> None:
        self.per_second = dict(per_second)
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, channel: str) -> None:
        rate = self.per_second.get(channel)
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next.get(channel, now))
            self._next[channel] = at + 1.0 / rate
        if at > now:
            time.sleep(at - now)


def explain(session: Session, *, member_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """A member's recent message decisions, newest first, each with its status and reason."""
    rows = session.execute(select(Message, MessageTemplate.code).outerjoin(
        MessageTemplate, MessageTemplate.id == Message.template_id).where(Message.member_id == member_id)
        .order_by(Message.created_at.desc(), Message.id.desc()).limit(limit))
    return [{"id": m.id, "key": m.key, "template": code, "channel": m.channel, "purpose": m.purpose,
             "status": m.status, "reason": m.reason, "detail": m.detail, "journey_id": m.journey_id,
             "step": m.step, "created_at": m.created_at, "sent_at": m.sent_at} for m, code in rows]

