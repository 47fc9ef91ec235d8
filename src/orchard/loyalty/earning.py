"""Earning from orders and events through the rules, and reversal by refunds (SPEC L2, L3).

Growth value (成长值) is fed the same way by rules with target "growth" (`loyalty.growth`) and
reversed the same way; after an order or event the member's tier is re-checked for an upgrade.

An order earns once, in the transaction that stores it: one `earn` entry (source "order", external
id = the order's id, so it cannot earn twice), one lot (earned at the order's paid_at, expiring by
the configured policy, pending for `points_order_pending_days`), and one award row per rule and
line saying who gave what. A refund reverses, line by line, the share of each award its refunds
have now covered — computed from the order's cumulative refunded amounts, so partial refunds in any
number and order end, at a full refund, in exactly what was earned — as one `reverse` entry linked
to the order. A refund that arrives before its order is applied when the order arrives, after the
order has earned, so it reverses too.

Orders whose points would already have expired (history loaded late) earn nothing. Bulk imports
load history and do not earn (`ingest(earn=False)`) unless asked to (`orchard import orders --earn`,
the `earn` field of an HTTP import: the per-row path passes earn=True, PostgreSQL's bulk path
reproduces this module in `imports.pg_earn`); refunds reverse whatever the order earned, however
they arrive.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.config import get_settings
from orchard.events.models import Order, OrderLine, Refund
from orchard.kit.clock import utcnow
from orchard.loyalty import anomalies, growth, ledger, policy, tasks, tiers
from orchard.loyalty.models import (
    EarningRule,
    GrowthAccount,
    GrowthEntry,
    LoyaltyTask,
    PointsAward,
    PointsEntry,
    PointsLot,
)
from orchard.loyalty.rules import (
    CapsUsed,
    Cart,
    EventFacts,
    Line,
    Rule,
    evaluate_event,
    evaluate_order,
    parse_config,
    period_end,
    period_start,
)
from orchard.members.models import Member
from orchard.org.models import OrgUnit

ACTOR = "system:earning"


def load_rules(session: Session, kinds: tuple[str, ...] = ("amount", "multiplier"),
               target: str | None = None) -> list[Rule]:
    q = select(EarningRule).where(EarningRule.status == "active", EarningRule.kind.in_(kinds))
    if target is not None:
        q = q.where(EarningRule.target == target)
    return [to_rule(r) for r in session.scalars(q)]


def to_rule(row: EarningRule) -> Rule:
    return Rule(id=row.id, name=row.name, kind=row.kind, config=parse_config(row.kind, row.config),
                priority=row.priority, stop_further=row.stop_further, starts_at=row.starts_at, ends_at=row.ends_at,
                target=row.target)


def caps_used(session: Session, member_id: int, target: str = "points") -> CapsUsed:
    """What each rule already gave the member in a period (net of reversals)."""
    table = PointsAward if target == "points" else GrowthEntry
    amount = PointsAward.points if target == "points" else GrowthEntry.amount
    at_col = PointsAward.awarded_at if target == "points" else GrowthEntry.occurred_at

    def used(rule_id: int, period: str, at: dt.datetime) -> int:
        q = select(func.coalesce(func.sum(amount), 0)).where(table.member_id == member_id, table.rule_id == rule_id)
        start = period_start(period, at)
        if start is not None:
            q = q.where(at_col >= start, at_col < period_end(period, start))
        return int(session.scalar(q))
    return used


def _store_code(session: Session, store_id: int | None) -> str | None:
    return session.scalar(select(OrgUnit.code).where(OrgUnit.id == store_id)) if store_id else None


def cart_of(session: Session, order: Order, lines: list[dict[str, Any]]) -> Cart:
    birthday = session.scalar(select(Member.birthday).where(Member.id == order.member_id))
    return Cart(paid_at=order.paid_at, amount_fen=order.amount_fen, store=_store_code(session, order.store_id),
                channel=order.channel, birthday=birthday, tier=tiers.effective_code(session, order.member_id),
                lines=[Line(ln["line_no"], ln["amount_fen"], ln.get("category"), ln.get("sku")) for ln in lines])


def on_order(session: Session, order: Order, lines: list[dict[str, Any]], *,
             now: dt.datetime | None = None) -> ledger.PointsEntry | None:
    """Points and growth value for a new order, then an upgrade if it crossed a tier threshold."""
    rules = load_rules(session)
    entry = None
    if any(r.kind == "amount" for r in rules):
        cart = cart_of(session, order, lines)
        now = now or utcnow()
        points_rules = [r for r in rules if r.target == "points"]
        if any(r.kind == "amount" for r in points_rules):
            entry = _order_points(session, order, cart, points_rules, now)
        growth_rules = [r for r in rules if r.target == "growth"]
        if any(r.kind == "amount" for r in growth_rules):
            outcomes = evaluate_order(cart, growth_rules, caps_used(session, order.member_id, "growth"))
            growth.post(session, order.member_id, [
                {"kind": "earn", "amount": n, "rule_id": o.rule_id, "order_id": order.id, "line_no": line_no,
                 "refund_id": None, "source": "order", "reason": f"成长值 订单 {order.external_id}"[:200],
                 "actor": ACTOR, "explanation": {"text": o.text}, "occurred_at": order.paid_at}
                for o in outcomes for line_no, n in o.lines.items() if n], now=now)
    tasks.on_order(session, order.member_id)
    tiers.on_activity(session, order.member_id)
    return entry


def _order_points(session: Session, order: Order, cart: Cart, rules: list[Rule],
                  now: dt.datetime) -> ledger.PointsEntry | None:
    outcomes = evaluate_order(cart, rules, caps_used(session, order.member_id))
    total = sum(o.points for o in outcomes)
    expires = policy.expires_at(order.paid_at)
    if total <= 0 or (expires is not None and expires <= now):
        return None
    days = get_settings().points_order_pending_days
    pending = order.paid_at + dt.timedelta(days=days) if days else None
    wait_for = get_settings().points_order_pending_event or None
    entry, created = ledger.post(session, ledger.Command(
        member_id=order.member_id, amount=total, kind="earn", reason=f"消费积分 订单 {order.external_id}"[:200],
        source="order", external_id=str(order.id), actor=ACTOR, store_id=order.store_id, expires_at=expires,
        pending_until=pending if pending and pending > now else None, order_id=order.id, earned_at=order.paid_at,
        pending_event=wait_for,
        explanation={"order": {"id": order.id, "source": order.source, "external_id": order.external_id,
                               "amount_fen": order.amount_fen},
                     "rules": [o.as_json() for o in outcomes], "expiry": policy.describe()},
        request={"order_id": order.id}), now=now)
    if created:
        _awards(session, [{"entry_id": entry.id, "member_id": order.member_id, "rule_id": o.rule_id,
                           "order_id": order.id, "line_no": line_no, "points": n, "awarded_at": order.paid_at}
                          for o in outcomes for line_no, n in o.lines.items() if n])
        if (flag := anomalies.open_flag(session, order.member_id)) is not None:
            anomalies.hold(session, entry, flag)
    return entry


_EVENT_NAMES = "orchard.earning.event_names"


def event_names(session: Session) -> frozenset[str]:
    """The event names `on_event` can act on: those of active event rules (points or growth) and of
    active event tasks. For any other name `on_event` does nothing, so callers skip it.

    Remembered for the session's current transaction (one request or batch) and forgotten when it
    ends: rules and tasks are edited through their own requests, so a transaction that ingests does
    not change them (one that did would have to call `forget_event_names`)."""
    txn = session.get_transaction()
    cached = session.info.get(_EVENT_NAMES)
    if cached is not None and cached[0] is txn:
        return cached[1]
    names = frozenset(n for n in session.scalars(
        select(EarningRule.config["event"].as_string()).where(EarningRule.status == "active",
                                                              EarningRule.kind == "event")
        .union(select(LoyaltyTask.event).where(LoyaltyTask.active.is_(True), LoyaltyTask.kind == "event")))
        if n)
    session.info[_EVENT_NAMES] = (txn, names)
    return names


def forget_event_names(session: Session) -> None:
    session.info.pop(_EVENT_NAMES, None)


def on_event(session: Session, *, event_id: int, member_id: int, name: str, occurred_at: dt.datetime,
             store_id: int | None, properties: dict[str, Any], now: dt.datetime | None = None
             ) -> ledger.PointsEntry | None:
    tasks.on_event(session, member_id, name)
    rules = [r for r in load_rules(session, ("event",)) if r.config.event == name]
    if not rules:
        return None
    now = now or utcnow()
    facts = EventFacts(name=name, occurred_at=occurred_at, store=_store_code(session, store_id),
                       properties=properties or {})
    growth_rules = [r for r in rules if r.target == "growth"]
    if growth_rules:
        outcomes = evaluate_event(facts, growth_rules, caps_used(session, member_id, "growth"))
        if growth.post(session, member_id, [
                {"kind": "earn", "amount": o.points, "rule_id": o.rule_id, "order_id": None, "line_no": None,
                 "refund_id": None, "source": "event", "reason": f"成长值 {name}"[:200], "actor": ACTOR,
                 "explanation": {"text": o.text, "event_id": event_id}, "occurred_at": occurred_at}
                for o in outcomes if o.points], now=now):
            tiers.on_activity(session, member_id)
    outcomes = evaluate_event(facts, [r for r in rules if r.target == "points"], caps_used(session, member_id))
    total = sum(o.points for o in outcomes)
    expires = policy.expires_at(occurred_at)
    if total <= 0 or (expires is not None and expires <= now):
        return None
    entry, created = ledger.post(session, ledger.Command(
        member_id=member_id, amount=total, kind="earn", reason=f"行为积分 {name}"[:200], source="event",
        external_id=str(event_id), actor=ACTOR, store_id=store_id, expires_at=expires, earned_at=occurred_at,
        explanation={"event": {"id": event_id, "name": name}, "rules": [o.as_json() for o in outcomes],
                     "expiry": policy.describe()},
        request={"event_id": event_id}), now=now)
    if created:
        _awards(session, [{"entry_id": entry.id, "member_id": member_id, "rule_id": o.rule_id, "order_id": None,
                           "line_no": None, "points": o.points, "awarded_at": occurred_at}
                          for o in outcomes if o.points])
        if (flag := anomalies.open_flag(session, member_id)) is not None:
            anomalies.hold(session, entry, flag)
    return entry


def release_on_event(session: Session, *, name: str, source: str, properties: dict[str, Any] | None,
                     now: dt.datetime | None = None) -> int:
    """The event the configured pending points wait for (`points_order_pending_event`) has happened
    for an order: its points become usable (unless the T+N wait is still running, or an anomaly flag
    holds them). Returns the lots released."""
    wanted = get_settings().points_order_pending_event
    props = properties or {}
    if not wanted or name != wanted or not isinstance(props.get("order_id"), str):
        return 0
    order = session.scalar(select(Order).where(Order.source == str(props.get("order_source") or source),
                                               Order.external_id == props["order_id"]))
    if order is None:
        return 0
    now = now or utcnow()
    days = get_settings().points_order_pending_days
    still = order.paid_at + dt.timedelta(days=days) if days else None
    earned = select(PointsEntry.id).where(PointsEntry.order_id == order.id, PointsEntry.kind == "earn")
    released = session.execute(update(PointsLot).where(
        PointsLot.entry_id.in_(earned), PointsLot.pending_event == name, PointsLot.held_flag_id.is_(None))
        .values(pending_event=None, pending_until=still if still and still > now else None)).rowcount or 0
    if released:
        audit.record(session, actor=ACTOR, action="points.released", entity="member", entity_id=order.member_id,
                     data={"order_id": order.id, "event": name})
    return released


def _awards(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(PointsAward), [{"refund_id": None, **r} for r in rows])


def refunded_share(order: Order, lines: dict[int, OrderLine]) -> dict[int | None, Fraction]:
    """The refunded fraction of each line (and of the whole order, key None), from the order's
    cumulative refunds. An amount-only refund (not attributed to lines) is spread over what the
    lines still have open, pro rata; a fully refunded order is refunded everywhere."""
    if order.amount_fen <= order.refunded_fen:
        return {None: Fraction(1), **{n: Fraction(1) for n in lines}}
    share: dict[int | None, Fraction] = {None: Fraction(order.refunded_fen, order.amount_fen or 1)}
    by_lines = sum(ln.refunded_fen for ln in lines.values())
    unattributed = max(0, order.refunded_fen - by_lines)
    open_total = sum(ln.amount_fen - ln.refunded_fen for ln in lines.values())
    for n, ln in lines.items():
        if ln.amount_fen <= 0:
            share[n] = Fraction(1) if ln.refunded_quantity >= ln.quantity else Fraction(0)
            continue
        spread = Fraction(unattributed * (ln.amount_fen - ln.refunded_fen), open_total) if open_total else 0
        share[n] = min(Fraction(1), (ln.refunded_fen + spread) / ln.amount_fen)
    return share


def _deltas(awards, share: dict[int | None, Fraction]) -> list[tuple[int, int | None, int]]:
    """(rule, line, points to take back now) from per-(rule, line) earned and reversed sums."""
    out = []
    for rule_id, line_no, earned, reversed_ in awards:
        earned = int(earned)  # PostgreSQL sums bigints as numeric
        f = share.get(line_no, share[None])
        target = (2 * earned * f.numerator + f.denominator) // (2 * f.denominator)  # round half up
        if (delta := target + int(reversed_)) > 0:
            out.append((rule_id, line_no, delta))
    return out


def _sums(amount, rule_id, line_no):
    """Earned and reversed sums per (rule, line), in (rule, line) order: the reversal's explanation lists
    them in this order, and a GROUP BY alone answers in whatever order the rows lie on disk (the import's
    set-based path and the per-row path store the same awards in different orders)."""
    return (select(rule_id, line_no, func.sum(case((amount > 0, amount), else_=0)),
                   func.sum(case((amount < 0, amount), else_=0)))
            .group_by(rule_id, line_no).order_by(rule_id, line_no.nulls_first()))


def on_refund(session: Session, refund: Refund, order: Order, *,
              now: dt.datetime | None = None) -> ledger.PointsEntry | None:
    """Take back what the order's refunds now cover and was not taken back yet: points, then growth."""
    lines = {ln.line_no: ln for ln in session.scalars(select(OrderLine).where(OrderLine.order_id == order.id))}
    share = refunded_share(order, lines)
    now = now or utcnow()
    _reverse_growth(session, refund, order, share, now)
    awards = session.execute(_sums(PointsAward.points, PointsAward.rule_id, PointsAward.line_no)
                             .where(PointsAward.order_id == order.id)).all()
    deltas = _deltas(awards, share)
    total = sum(d for _, _, d in deltas)
    if total == 0:
        return None
    on_short = get_settings().points_refund_policy
    entry, created = ledger.post(session, ledger.Command(
        member_id=order.member_id, amount=-total, kind="reverse",
        reason=f"退款扣回积分 订单 {order.external_id}"[:200], source="refund", external_id=str(refund.id),
        actor=ACTOR, store_id=order.store_id, order_id=order.id, on_short=on_short,
        explanation={"order": {"id": order.id, "external_id": order.external_id, "amount_fen": order.amount_fen,
                               "refunded_fen": order.refunded_fen},
                     "refund": {"id": refund.id, "external_id": refund.external_id},
                     "lines": [{"rule_id": r, "line": "order" if n is None else n, "points": d}
                               for r, n, d in deltas]},
        request={"refund_id": refund.id}), now=now)
    if not created:
        return entry
    _awards(session, [{"entry_id": entry.id if entry else None, "member_id": order.member_id, "rule_id": r,
                       "order_id": order.id, "line_no": n, "points": -d, "awarded_at": order.paid_at,
                       "refund_id": refund.id} for r, n, d in deltas])
    moved = -entry.amount if entry else 0
    if moved < total:
        audit.record(session, actor=ACTOR, action="points.reverse_shortfall", entity="member",
                     entity_id=order.member_id,
                     data={"order_id": order.id, "refund_id": refund.id, "due": total, "taken": moved,
                           "shortfall": total - moved, "policy": on_short})
    return entry


def _reverse_growth(session: Session, refund: Refund, order: Order, share: dict[int | None, Fraction],
                    now: dt.datetime) -> None:
    """Growth is never spent, so it is all there to take back — unless a manual adjustment lowered
    it; then what does not fit waits for a later refund of the order to be taken (never below 0)."""
    awards = session.execute(_sums(GrowthEntry.amount, GrowthEntry.rule_id, GrowthEntry.line_no)
                             .where(GrowthEntry.order_id == order.id)).all()
    deltas = _deltas(awards, share)
    if not deltas:
        return
    room = session.scalar(select(GrowthAccount.balance).where(GrowthAccount.member_id == order.member_id)
                          .with_for_update()) or 0
    rows = []
    for rule_id, line_no, d in deltas:
        take = min(d, room)
        room -= take
        rows.append({"kind": "reverse", "amount": -take, "rule_id": rule_id, "order_id": order.id,
                     "line_no": line_no, "refund_id": refund.id, "source": "refund", "actor": ACTOR,
                     "reason": f"退款扣回成长值 订单 {order.external_id}"[:200], "explanation": {"due": d},
                     "occurred_at": order.paid_at})
    growth.post(session, order.member_id, rows, now=now)
