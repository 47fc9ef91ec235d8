"""The journey engine: triggers enter members (set-based sweeps), runs advance step by step.

* **Entry** — each trigger kind is one SQL statement that finds candidates (`triggers.py`),
  written with a `trigger_key` that makes a re-run enter nobody twice; the re-entry policy and the
  entry condition filter in the same SQL, and members turned away are logged with the reason.
* **Advance** — runs due (`wake_at <= now`) are claimed (`SKIP LOCKED` on PostgreSQL) and executed
  until they wait or end; each step is logged. Sends go through the outbox (caps, consent, quiet
  hours decided there and recorded); a held-out control group gets nothing and is still tracked.
* **Exit on conversion** — one UPDATE per journey ends open runs whose member converted after
  entering; `wait_event` runs whose event arrived are woken by another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, exists, func, insert, literal, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.errors import InvalidInput
from orchard.events.models import Event, Order
from orchard.journeys import graph as G
from orchard.journeys import triggers
from orchard.journeys.models import OPEN, Journey, JourneyLog, JourneyRun, JourneyVersion
from orchard.kit.clock import tenant_zone, utcnow
from orchard.members.models import Member
from orchard.segments import compiler as C
from orchard.segments import evaluate

log = logging.getLogger("orchard.journeys")


def _at(value: dt.datetime):
    return literal(value, UTCDateTime())


def _version(session: Session, journey: Journey) -> tuple[JourneyVersion, G.Graph]:
    version = session.get(JourneyVersion, journey.live_version_id)
    return version, G.parse(version.graph)


# -- entry -----------------------------------------------------------------------------------------

def enter(session: Session, journey: Journey, *, now: dt.datetime | None = None,
          parsed: G.Graph | None = None) -> dict[str, int]:
    """Enter this journey's new candidates (set-based); log who entered and who was turned away
    (once per trigger key: a sweep that reads the same candidate again does not log it again)."""
    now = now or utcnow()
    version = session.get(JourneyVersion, journey.live_version_id)
    parsed = parsed or G.parse(version.graph)
    found = triggers.candidates(session, journey, parsed, now)
    if found.rows is None:
        return {"entered": 0, "turned_away": 0}
    cand = found.rows.subquery("cand")
    R = JourneyRun.__table__
    # Re-entry policy, as SQL over the member's earlier runs of this journey.
    earlier = select(R.c.id).where(R.c.journey_id == journey.id, R.c.member_id == cand.c.member_id)
    if journey.reentry == "once":
        blocked = exists(earlier)
    elif journey.reentry == "cooldown":
        blocked = exists(earlier.where(R.c.entered_at > _at(now - dt.timedelta(days=journey.reentry_days or 0))))
    else:
        blocked = exists(earlier.where(R.c.status.in_(OPEN)))
    already = exists().where(R.c.journey_id == journey.id, R.c.member_id == cand.c.member_id,
                             R.c.trigger_key == cand.c.k)
    conditions = [~already]
    refused = {"reentry": and_(~already, blocked)}
    entry_sql = None
    if parsed.entry_condition is not None:
        compiled = evaluate.compile_definition(session, parsed.entry_condition, now=now)
        entry_sql = C.members_query(compiled.condition, compiled.ctx)
        refused["entry_condition"] = and_(~already, ~blocked, cand.c.member_id.not_in(entry_sql))
        conditions.append(cand.c.member_id.in_(entry_sql))
    conditions.append(~blocked)
    # One candidate per member per sweep (the earliest key), so a burst of events enters once.
    first = select(cand.c.member_id, func.min(cand.c.k).label("k")).where(*conditions).group_by(cand.c.member_id)
    first = first.subquery("first")
    # The runs this statement adds are the journey's runs above the highest id now (a primary-key range,
    # not a count of every run the journey ever had).
    last_id = session.scalar(select(func.coalesce(func.max(R.c.id), 0))) or 0
    new_runs = and_(R.c.id > last_id, R.c.journey_id == journey.id)
    session.execute(insert(R).from_select(
        ["journey_id", "version_id", "member_id", "trigger_key", "status", "step", "wake_at", "context", "entered_at"],
        select(literal(journey.id), literal(version.id), first.c.member_id, first.c.k, literal("active"),
               literal(parsed.entry), _at(now), literal({}, R.c.context.type), _at(now))))
    entered = session.scalar(select(func.count()).select_from(R).where(new_runs)) or 0
    L = JourneyLog.__table__
    session.execute(insert(L).from_select(
        ["journey_id", "run_id", "member_id", "step", "kind", "reason", "detail", "at"],
        select(R.c.journey_id, R.c.id, R.c.member_id, R.c.step, literal("entered"), literal(None, String),
               literal({}, L.c.detail.type), _at(now)).where(new_runs)))
    # A refusal names the trigger key it refused ({"key": …}), and is logged once per key: date and
    # absence sweeps re-read their candidates all day, segment exits within their overlap. Counted
    # by id range like the runs (an INSERT … SELECT's rowcount is not reliable on every driver).
    detail = func.jsonb_build_object if session.get_bind().dialect.name == "postgresql" else func.json_object
    last_log = session.scalar(select(func.coalesce(func.max(L.c.id), 0))) or 0
    for reason, cond in refused.items():
        new = select(cand.c.member_id, func.min(cand.c.k).label("k")).where(
            cond, ~triggers.refusal_logged(journey.id, cand.c.member_id, cand.c.k)).group_by(cand.c.member_id) \
            .subquery("refused")
        session.execute(insert(L).from_select(
            ["journey_id", "member_id", "kind", "reason", "detail", "at"],
            select(literal(journey.id), new.c.member_id, literal("not_entered"), literal(reason),
                   detail(literal("key"), new.c.k), _at(now))))
    turned_away = session.scalar(select(func.count()).select_from(L).where(
        L.c.id > last_log, L.c.journey_id == journey.id, L.c.kind == "not_entered")) or 0
    if found.cursor is not None:
        journey.cursor = found.cursor
    if found.snapshot is not None:
        journey.cursor_settled, journey.cursor_snapshot = found.settled, found.snapshot
    if found.cursor_at is not None:
        journey.cursor_at = found.cursor_at
    session.flush()
    return {"entered": entered, "turned_away": turned_away}


# -- advancing -------------------------------------------------------------------------------------

@dataclass
class AdvanceStats:
    runs: int = 0
    steps: int = 0
    sent: int = 0
    suppressed: int = 0
    completed: int = 0
    exited: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class _Batch:
    """One advance call's shared state: the graphs and journeys met, compiled conditions, counters,
    and the decision log rows (inserted together at the end)."""

    def __init__(self, session: Session, now: dt.datetime, stats: AdvanceStats) -> None:
        self.session, self.now, self.stats = session, now, stats
        self.graphs: dict[int, G.Graph] = {}
        self.journeys: dict[int, Journey] = {}
        self.conditions: dict[tuple[int, str], Any] = {}
        self.logs: list[dict[str, Any]] = []

    def graph(self, version_id: int) -> G.Graph:
        if version_id not in self.graphs:
            self.graphs[version_id] = G.parse(self.session.get(JourneyVersion, version_id).graph)
        return self.graphs[version_id]

    def journey(self, journey_id: int) -> Journey:
        if journey_id not in self.journeys:
            self.journeys[journey_id] = self.session.get(Journey, journey_id)
        return self.journeys[journey_id]

    def log(self, run: JourneyRun, kind: str, *, step: str | None = None, reason: str | None = None,
            **detail: Any) -> None:
        self.logs.append({"journey_id": run.journey_id, "run_id": run.id, "member_id": run.member_id,
                          "step": step or run.step, "kind": kind, "reason": reason, "detail": detail, "at": self.now})

    def suppressed(self, reason: str | None) -> None:
        self.stats.suppressed += 1
        self.stats.by_reason[reason or "?"] = self.stats.by_reason.get(reason or "?", 0) + 1

    def end(self, run: JourneyRun, status: str, reason: str | None) -> None:
        run.status, run.end_reason, run.ended_at, run.wake_at = status, reason, self.now, None
        self.log(run, "completed" if status == "completed" else "exited", reason=reason)
        if status == "completed":
            self.stats.completed += 1
        else:
            self.stats.exited += 1

    def write_logs(self) -> None:
        """One Core executemany (the driver pipelines it; the ORM's bulk path and multi-row VALUES both
        cost more in Python than the rows cost the database)."""
        if self.logs:
            self.session.connection().execute(insert(JourneyLog.__table__), self.logs)
        self.logs = []


def _variant(run: JourneyRun, step_id: str, split: G.Split) -> str:
    """Deterministic: the same run always lands in the same variant (a hash, not a random draw)."""
    bucket = int(hashlib.sha256(f"{run.journey_id}:{run.member_id}:{step_id}".encode()).hexdigest()[:8], 16) % 100
    if bucket < split.control_percent:
        return "control"
    bucket -= split.control_percent
    for v in split.variants:
        if bucket < v.percent:
            return v.name
        bucket -= v.percent
    return split.variants[-1].name


def _wake_after(step: G.Wait, now: dt.datetime) -> dt.datetime:
    at = now + dt.timedelta(days=step.days, hours=step.hours)
    if step.until_time:
        zone = tenant_zone()
        hh, mm = map(int, step.until_time.split(":"))
        local = at.astimezone(zone)
        target = dt.datetime.combine(local.date(), dt.time(hh, mm), zone)
        if target < local:
            target += dt.timedelta(days=1)
        at = target.astimezone(dt.UTC)
    return at


def advance(session: Session, *, now: dt.datetime | None = None, limit: int = 1000) -> AdvanceStats:
    """Claim due runs and execute each until it waits or ends (one transaction per call).

    Runs move in waves: the runs standing at the same step of the same version are executed together
    (one query answers a condition for all of them, one batch of outbox decisions sends to all of them,
    a wait is one assignment), then each moves on to its next step, until every run waits or ends.
    Steps with side effects elsewhere (coupons, points, tags, tasks, webhooks) still go run by run."""
    now = now or utcnow()
    stats = AdvanceStats()
    due = select(JourneyRun).join(Journey, Journey.id == JourneyRun.journey_id).where(
        JourneyRun.status.in_(OPEN), JourneyRun.wake_at <= now, Journey.status == "live"
    ).order_by(JourneyRun.wake_at).limit(limit)  # the wake index's order: no sort of every due run per claim
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=JourneyRun)
    runs = sorted(session.scalars(due), key=lambda r: (r.member_id, r.id))
    if not runs:
        return stats
    # Every member this batch may lock (a send decision, points, a coupon), locked now in id order: two
    # workers whose batches share members then wait for each other instead of deadlocking.
    session.execute(select(Member.id).where(Member.id.in_(sorted({r.member_id for r in runs})))
                    .order_by(Member.id).with_for_update())
    batch = _Batch(session, now, stats)
    stats.runs = len(runs)
    broken = set()
    for version_id in {r.version_id for r in runs}:
        try:
            batch.graph(version_id)
        except InvalidInput as exc:  # saved under older rules: its runs fail, the batch goes on
            log.warning("journey version %s does not parse: %s", version_id, exc)
            broken.add(version_id)
    for run in runs:
        if run.version_id in broken:
            run.status, run.end_reason, run.ended_at, run.wake_at = "failed", "graph.invalid", now, None
            batch.log(run, "exited", reason="graph.invalid")
            stats.exited += 1
    runs = [r for r in runs if r.version_id not in broken]
    active, waves = runs, 0
    bound = max((len(batch.graph(v).steps) for v in {r.version_id for r in runs}), default=0) + 1
    while active:
        waves += 1
        if waves > bound:  # pragma: no cover — a graph has no wait-free loop (checked when parsed)
            raise AssertionError("a journey step loop without a wait")
        groups: dict[tuple[int, str, bool], list[JourneyRun]] = {}
        for run in active:
            groups.setdefault((run.version_id, run.step, run.status == "waiting"), []).append(run)
        active = []
        for (version_id, sid, _), group in groups.items():
            parsed = batch.graph(version_id)
            journey = batch.journey(group[0].journey_id)
            stats.steps += len(group)
            for run, nxt in _step(batch, group, journey, parsed, sid, parsed.steps[sid]):
                if nxt is None:
                    batch.end(run, "completed", None)
                else:
                    run.step = nxt
                    active.append(run)
    batch.write_logs()
    session.flush()
    return stats


def _step(b: _Batch, group: list[JourneyRun], journey: Journey, parsed: G.Graph, sid: str,
          step: Any) -> list[tuple[JourneyRun, str | None]]:
    """Execute one step for runs standing at it; returns (run, next step or None to complete) for the
    runs that go on now (runs that wait or exit are left where they are)."""
    session, now = b.session, b.now
    if group[0].status == "waiting" and isinstance(step, G.WaitEvent):
        since = {r.id: _dt(r.context.get("waiting_since"), r.entered_at) for r in group}
        latest = dict(session.execute(select(Event.member_id, func.max(Event.occurred_at)).where(
            Event.member_id.in_({r.member_id for r in group}), Event.name == step.event,
            Event.occurred_at >= min(since.values())).group_by(Event.member_id)).tuples().all())
        out = []
        for run in group:
            happened = latest.get(run.member_id) is not None and latest[run.member_id] >= since[run.id]
            b.log(run, "waited", reason="event" if happened else "timeout")
            run.status, run.wait_event = "active", None
            out.append((run, step.next if happened else step.timeout_next))
        return out
    if group[0].status == "waiting" and isinstance(step, G.Wait):
        for run in group:
            run.status = "active"
        return [(run, step.next) for run in group]
    if isinstance(step, G.Wait):
        wake = _wake_after(step, now)
        for run in group:
            run.status, run.wake_at = "waiting", wake
            b.log(run, "step", reason="wait", until=wake.isoformat())
        return []
    if isinstance(step, G.WaitEvent):
        wake = now + dt.timedelta(hours=step.timeout_hours)
        for run in group:
            run.status, run.wait_event, run.wake_at = "waiting", step.event, wake
            run.context = {**run.context, "waiting_since": now.isoformat()}
            b.log(run, "step", reason="wait_event", event=step.event)
        return []
    if isinstance(step, G.Condition):
        key = (group[0].version_id, sid)
        if key not in b.conditions:
            b.conditions[key] = evaluate.compile_definition(session, step.if_, now=now)
        compiled = b.conditions[key]
        hits = set(session.scalars(C.members_query(compiled.condition, compiled.ctx,
                                                   C.m.c.id.in_({r.member_id for r in group}))))
        for run in group:
            b.log(run, "branch", reason="then" if run.member_id in hits else "else")
        return [(run, step.then if run.member_id in hits else step.else_) for run in group]
    if isinstance(step, G.Split):
        out = []
        for run in group:
            run.variant = _variant(run, sid, step)
            b.log(run, "branch", reason=f"variant:{run.variant}")
            if run.variant == "control":  # held out: nothing more happens to them, and they are counted
                b.end(run, "completed", "control")
            else:
                out.append((run, next(v.next for v in step.variants if v.name == run.variant)))
        return out
    if isinstance(step, G.Send):
        _send(b, group, journey, parsed, sid, step)
        return [(run, step.next) for run in group]
    if isinstance(step, G.Exit):
        for run in group:
            b.end(run, "exited", "exit_step")
        return []
    return [(run, _one(b, run, journey, sid, step)) for run in group]


def _send(b: _Batch, group: list[JourneyRun], journey: Journey, parsed: G.Graph, sid: str, step: G.Send) -> None:
    """Decide the step's messages for the whole group through the outbox, template by template: a run
    whose message was suppressed for want of consent or an address tries its next template."""
    from orchard.messaging import outbox

    cap = (parsed.message_cap.max, parsed.message_cap.days) if parsed.message_cap else None
    orders = _send_orders(b.session, step, [r.member_id for r in group])
    trying = [(run, orders.get(run.member_id) or [step.template, *step.fallback]) for run in group]
    for attempt in range(len(step.fallback) + 1):
        if not trying:
            break
        decisions = [outbox.Decision(key=f"j{journey.id}:r{run.id}:{sid}:{codes[attempt]}", member_id=run.member_id,
                                     template_code=codes[attempt], context=_template_context(run),
                                     priority=journey.priority, journey_id=journey.id, run_id=run.id, step=sid,
                                     journey_cap=cap) for run, codes in trying]
        messages = outbox.enqueue_many(b.session, decisions, now=b.now)
        again = []
        for (run, codes), message in zip(trying, messages, strict=True):
            code = codes[attempt]
            if message.status == "queued":
                b.stats.sent += 1
                b.log(run, "sent", message_id=message.id, template=code)
                continue
            b.suppressed(message.reason)
            b.log(run, "suppressed", reason=message.reason, message_id=message.id, template=code)
            if falls_back(message.reason) and attempt + 1 < len(codes):
                again.append((run, codes))  # caps, quiet days, exclusions apply to every channel: no fallback
        trying = again


def _one(b: _Batch, run: JourneyRun, journey: Journey, sid: str, step: Any) -> str | None:
    """Steps whose effect lives in another module's ledger (coupons, points, tags, tasks, webhooks):
    each run through that module's own idempotent command."""
    session, now = b.session, b.now
    if isinstance(step, G.WebhookStep):
        from orchard.messaging import outbox

        message = outbox.enqueue_webhook(
            session, key=f"j{journey.id}:r{run.id}:{sid}", member_id=run.member_id, url=step.url,
            data=webhook_data(session, run, journey, sid, step), priority=journey.priority,
            journey_id=journey.id, run_id=run.id, step=sid, now=now)
        if message.status == "queued":
            b.log(run, "step", reason="webhook", message_id=message.id, url=step.url)
        else:
            b.suppressed(message.reason)
            b.log(run, "suppressed", reason=message.reason, message_id=message.id, url=step.url)
    elif isinstance(step, G.CouponStep):
        from orchard.coupons.issuing import issue_one

        coupon, _ = issue_one(session, template_id=step.template_id, member_id=run.member_id, source="journey",
                              external_id=f"j{journey.id}:r{run.id}:{sid}", reason=journey.code,
                              actor=f"journey:{journey.code}"[:64], now=now)
        b.log(run, "step", reason="coupon", coupon_id=coupon.id)
        # The run's later messages may name it: {{ coupon.name }}, {{ coupon.code }}, {{ coupon.valid_to }}.
        run.context = {**run.context, "coupon": coupon_context(session, coupon)}
    elif isinstance(step, G.PointsStep):
        from orchard.loyalty.ledger import Command, post

        post(session, Command(member_id=run.member_id, amount=step.amount, kind="adjust", reason=step.reason,
                              source="journey", external_id=f"j{journey.id}:r{run.id}:{sid}",
                              actor=f"journey:{journey.code}"[:64]), now=now)
        b.log(run, "step", reason="points", amount=step.amount)
    elif isinstance(step, G.TagStep):
        from orchard.imports.pg_bulk import SYSTEM
        from orchard.members import notes_tags

        for name in step.add:
            notes_tags.add_tag(session, principal=SYSTEM, member_id=run.member_id, name=name)
        for name in step.remove:
            tag = notes_tags.tag_by_name(session, name, create=False)
            if tag is not None and name in notes_tags.member_tags(session, run.member_id):
                notes_tags.remove_tag(session, principal=SYSTEM, member_id=run.member_id, name=name)
        b.log(run, "step", reason="tag", add=step.add, remove=step.remove)
    elif isinstance(step, G.TaskStep):
        from orchard.journeys import tasks

        task = tasks.create(session, key=f"j{journey.id}:r{run.id}:{sid}", member_id=run.member_id,
                            kind=step.kind, title=step.title, body=step.body,
                            due_at=now + dt.timedelta(hours=step.due_hours), journey_id=journey.id, run_id=run.id)
        b.log(run, "step", reason="task", task_id=task.id, task_kind=step.kind)
    else:  # pragma: no cover — the graph parser admits nothing else
        raise AssertionError(type(step).__name__)
    return step.next


def _template_context(run: JourneyRun) -> dict[str, Any]:
    """What a run adds to a template's variables: the trigger event and the coupon a step issued."""
    out: dict[str, Any] = {"event": run.context.get("event", {})}
    if "coupon" in run.context:
        out["coupon"] = run.context["coupon"]
    return out


def coupon_context(session: Session, coupon: Any) -> dict[str, str]:
    """A coupon as templates see it; `valid_to` is its last usable day in the tenant's zone."""
    from orchard.coupons.models import CouponTemplate

    name = session.scalar(select(CouponTemplate.name).where(CouponTemplate.id == coupon.template_id)) or ""
    last = (coupon.valid_to - dt.timedelta(microseconds=1)).astimezone(tenant_zone()).date().isoformat() \
        if coupon.valid_to else ""
    return {"code": coupon.code, "name": name, "valid_to": last}


def falls_back(reason: str | None) -> bool:
    """Whether a suppressed send tries the next template: only when this channel cannot reach the
    member (no consent, no address); caps, quiet days and exclusions hold for every channel."""
    return (reason or "").startswith(("consent.", "no_recipient"))


def send_order(session: Session, step: G.Send, member_id: int) -> list[str]:
    """The templates a send step tries, in order: `template`, then `fallback`; with
    `prefer_member_channel`, the first of them on the member's preferred channel goes first."""
    return _send_orders(session, step, [member_id]).get(member_id) or [step.template, *step.fallback]


def _send_orders(session: Session, step: G.Send, member_ids: list[int]) -> dict[int, list[str]]:
    """`send_order` for many members at once (only members whose order differs are listed)."""
    codes = [step.template, *step.fallback]
    if not step.prefer_member_channel:
        return {}
    from orchard.messaging.models import MessageTemplate

    channels = {code: channel for code, channel in session.execute(
        select(MessageTemplate.code, MessageTemplate.channel).where(MessageTemplate.code.in_(codes)))}
    out = {}
    for mid, preferred in session.execute(select(Member.id, Member.preferred_channel).where(
            Member.id.in_(member_ids), Member.preferred_channel.is_not(None))):
        first = next((c for c in codes if channels.get(c) == preferred), None)
        if first is not None:
            out[mid] = [first, *(c for c in codes if c != first)]
    return out


def trigger_context(session: Session, trigger_key: str) -> dict[str, Any]:
    """What started a run, for an integrator: its trigger key and the event or order behind it."""
    out: dict[str, Any] = {"key": trigger_key}
    kind, _, ref = trigger_key.partition(":")
    if kind == "e" and ref.isdigit() and (ev := session.get(Event, int(ref))) is not None:
        out["event"] = {"id": ev.id, "name": ev.name, "source": ev.source, "external_id": ev.external_id,
                        "occurred_at": ev.occurred_at.isoformat(), "properties": ev.properties or {}}
    elif kind == "o" and ref.isdigit() and (o := session.get(Order, int(ref))) is not None:
        out["order"] = {"id": o.id, "source": o.source, "external_id": o.external_id, "amount_fen": o.amount_fen,
                        "paid_at": o.paid_at.isoformat()}
    return out


def webhook_data(session: Session, run: Any, journey: Journey, step_id: str, step: G.WebhookStep) -> dict[str, Any]:
    """The JSON a webhook step posts (the static `payload` fields next to Orchard's own)."""
    return {**step.payload, "member_id": run.member_id, "journey": journey.code, "run_id": run.id,
            "step": step_id, "trigger": trigger_context(session, run.trigger_key)}


def _dt(value: str | None, default: dt.datetime) -> dt.datetime:
    return dt.datetime.fromisoformat(value) if value else default


# -- set-based housekeeping ------------------------------------------------------------------------

def exit_converted(session: Session, journey: Journey, parsed: G.Graph, now: dt.datetime) -> int:
    """End open runs whose member did the `exit_on` thing after entering (one UPDATE, logged)."""
    if parsed.exit_on is None:
        return 0
    R = JourneyRun.__table__
    if parsed.exit_on.event == "$order":
        o = Order.__table__
        did = exists().where(o.c.member_id == R.c.member_id, o.c.paid_at >= R.c.entered_at, o.c.status != "refunded")
    else:
        e = Event.__table__
        did = exists().where(e.c.member_id == R.c.member_id, e.c.name == parsed.exit_on.event,
                             e.c.occurred_at >= R.c.entered_at)
    converting = and_(R.c.journey_id == journey.id, R.c.status.in_(OPEN), did)
    L = JourneyLog.__table__
    session.execute(insert(L).from_select(
        ["journey_id", "run_id", "member_id", "step", "kind", "reason", "detail", "at"],
        select(R.c.journey_id, R.c.id, R.c.member_id, R.c.step, literal("converted"), literal("exit_on"),
               literal({}, L.c.detail.type), _at(now)).where(converting)))
    return session.execute(update(R).where(converting).values(status="exited", end_reason="converted", ended_at=now,
                                                              wake_at=None)).rowcount or 0


def wake_on_events(session: Session, now: dt.datetime) -> int:
    """Runs waiting for an event that has arrived wake now (instead of at their timeout)."""
    R, e = JourneyRun.__table__, Event.__table__
    arrived = exists().where(e.c.member_id == R.c.member_id, e.c.name == R.c.wait_event,
                             e.c.occurred_at >= R.c.entered_at, e.c.received_at <= _at(now))
    return session.execute(update(R).where(R.c.status == "waiting", R.c.wait_event.is_not(None), R.c.wake_at > _at(now),
                                           arrived).values(wake_at=now)).rowcount or 0


def sweep(session: Session, *, now: dt.datetime | None = None, kinds: Collection[str] | None = None,
          housekeeping: bool = True) -> dict[str, Any]:
    """Everything periodic, for every live journey: conversions and event wake-ups (`housekeeping`),
    and entries for the journeys whose trigger type is in `kinds` (all when None). The scheduler runs
    the cheap cursor-based kinds every few seconds and the set-based sweeps every few minutes
    (`triggers.CURSOR_KINDS`, `triggers.SWEEP_KINDS`); the CLI and the tests run everything."""
    now = now or utcnow()
    out: dict[str, Any] = {"journeys": {}, "woken": wake_on_events(session, now) if housekeeping else 0}
    for journey in list(session.scalars(select(Journey).where(Journey.status == "live").order_by(Journey.id))):
        # One journey that cannot run (a graph saved under older rules, a statement that fails) is reported
        # and skipped, in its own savepoint: it must not stop every other journey's sweep.
        try:
            with session.begin_nested():
                _, parsed = _version(session, journey)
                wanted = kinds is None or parsed.trigger.type in kinds
                if not (wanted or housekeeping):
                    continue
                converted = exit_converted(session, journey, parsed, now) if housekeeping else 0
                result = enter(session, journey, now=now, parsed=parsed) if wanted \
                    else {"entered": 0, "turned_away": 0}
        except (InvalidInput, SQLAlchemyError) as exc:
            log.warning("journey %s skipped by the sweep: %s", journey.code, exc)
            out["journeys"][journey.code] = {"entered": 0, "turned_away": 0, "converted": 0,
                                             "error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        out["journeys"][journey.code] = {**result, "converted": converted}
    return out


def explain(session: Session, *, member_id: int, journey_id: int | None = None, limit: int = 200) -> list[dict]:
    """Every recorded decision about the member (entered or why not, branches, sends and why
    suppressed, exits), oldest first."""
    stmt = select(JourneyLog).where(JourneyLog.member_id == member_id)
    if journey_id is not None:
        stmt = stmt.where(JourneyLog.journey_id == journey_id)
    rows = list(session.scalars(stmt.order_by(JourneyLog.id.desc()).limit(limit)))[::-1]
    return [{"journey_id": r.journey_id, "run_id": r.run_id, "step": r.step, "kind": r.kind, "reason": r.reason,
             "detail": r.detail, "at": r.at} for r in rows]
