"""Anti-abuse (SPEC L8): flags for review, set-based, and earning held while a member is flagged.

A scan of one day (the tenant zone's date) flags, in a few INSERT … SELECT statements:

* `member_earning_spike` — a member earned at least `min_points` that day and at least `factor`
  times their own daily average over the 90 days before;
* `store_earning_spike` — the same for the points issued at a store;
* `order_burst` — a member placed `burst_orders` or more orders at one store that day (the classic
  clerk farming points on a card at the counter).

One flag per kind, subject and day (a unique key), so a scan can run again. While a member has an
open flag, what they earn from orders and events is held: a lot pending until the flag is reviewed.
Clearing the flag releases the held lots; confirming it forfeits them (an `adjust` entry drawing
exactly those lots). Rule caps (`loyalty.rules`) are the first line; flags catch what caps allow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Date, bindparam, case, select, text, update
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.db import UTCDateTime
from orchard.errors import Conflict, NotFound
from orchard.kit.clock import tenant_zone, utcnow
from orchard.loyalty import ledger
from orchard.loyalty.models import LoyaltyFlag, PointsLot

#: Held lots are pending "until review": far enough to never come by itself.
HELD_UNTIL = dt.datetime(2999, 12, 31, tzinfo=dt.UTC)
HISTORY_DAYS = 90


@dataclass
class ScanResult:
    day: dt.date
    member_spikes: int
    store_spikes: int
    order_bursts: int


def _sql(statement: str):
    binds = [bindparam(n, type_=UTCDateTime) for n in ("start", "end", "since", "now") if f":{n}" in statement]
    if ":day" in statement:
        binds.append(bindparam("day", type_=Date()))
    return text(statement).bindparams(*binds)


def scan(session: Session, day: dt.date, *, factor: int = 10, min_points: int = 1000, burst_orders: int = 10,
         now: dt.datetime | None = None) -> ScanResult:
    zone = tenant_zone()
    start = dt.datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(dt.UTC)
    end = (dt.datetime(day.year, day.month, day.day, tzinfo=zone) + dt.timedelta(days=1)).astimezone(dt.UTC)
    p = {"day": day, "start": start, "end": end, "since": start - dt.timedelta(days=HISTORY_DAYS),
         "now": now or utcnow(), "factor": factor, "min_points": min_points, "burst": burst_orders,
         "history": HISTORY_DAYS}
    counts = []
    for kind, key, subject, member_col, store_col in (
            ("member_earning_spike", "member_id", "'member:'", "d.k", "NULL"),
            ("store_earning_spike", "store_id", "'store:'", "NULL", "d.k")):
        counts.append(session.execute(_sql(
            "INSERT INTO loyalty_flags (kind, subject, member_id, store_id, day, value, baseline, details, status, "
            "created_at) "
            f"SELECT '{kind}', {subject} || CAST(d.k AS VARCHAR(20)), {member_col}, {store_col}, :day, d.today, "
            "CAST(coalesce(h.total, 0) / :history AS BIGINT), '{}', 'open', :now "
            f"FROM (SELECT {key} AS k, sum(amount) AS today FROM points_entries WHERE kind = 'earn' "
            f"AND {key} IS NOT NULL AND created_at >= :start AND created_at < :end GROUP BY {key}) d "
            f"LEFT JOIN (SELECT {key} AS k, sum(amount) AS total FROM points_entries WHERE kind = 'earn' "
            f"AND {key} IS NOT NULL AND created_at >= :since AND created_at < :start GROUP BY {key}) h ON h.k = d.k "
            "WHERE d.today >= :min_points AND d.today * :history >= :factor * coalesce(h.total, 0) "
            "AND NOT EXISTS (SELECT 1 FROM loyalty_flags f WHERE f.kind = "
            f"'{kind}' AND f.subject = {subject} || CAST(d.k AS VARCHAR(20)) AND f.day = :day)"), p).rowcount or 0)
    counts.append(session.execute(_sql(
        "INSERT INTO loyalty_flags (kind, subject, member_id, store_id, day, value, baseline, details, status, "
        "created_at) "
        "SELECT 'order_burst', 'member:' || CAST(b.member_id AS VARCHAR(20)), b.member_id, max(b.store_id), :day, "
        "max(b.n), :burst, '{}', 'open', :now FROM (SELECT member_id, store_id, count(*) AS n FROM orders "
        "WHERE paid_at >= :start AND paid_at < :end AND store_id IS NOT NULL GROUP BY member_id, store_id "
        "HAVING count(*) >= :burst) b WHERE NOT EXISTS (SELECT 1 FROM loyalty_flags f WHERE f.kind = 'order_burst' "
        "AND f.subject = 'member:' || CAST(b.member_id AS VARCHAR(20)) AND f.day = :day) GROUP BY b.member_id"),
        p).rowcount or 0)
    if any(counts):
        audit.record(session, actor="system:anomalies", action="points.flags_raised", entity="loyalty_flags",
                     entity_id=day.isoformat(), data={"member_spikes": counts[0], "store_spikes": counts[1],
                                                      "order_bursts": counts[2]})
    return ScanResult(day, *counts)


def open_flag(session: Session, member_id: int) -> int | None:
    """The member's oldest open flag, if any: their new earning is held under it."""
    return session.scalar(select(LoyaltyFlag.id).where(LoyaltyFlag.member_id == member_id,
                                                       LoyaltyFlag.status == "open").order_by(LoyaltyFlag.id).limit(1))


def hold(session: Session, entry: ledger.PointsEntry | None, flag_id: int) -> None:
    """Hold the lot an earn entry created (pending until the flag is reviewed)."""
    if entry is not None:
        session.execute(update(PointsLot).where(PointsLot.entry_id == entry.id)
                        .values(held_flag_id=flag_id, pending_until=HELD_UNTIL))


def get(session: Session, flag_id: int, *, lock: bool = False) -> LoyaltyFlag:
    q = select(LoyaltyFlag).where(LoyaltyFlag.id == flag_id)
    flag = session.scalar(q.with_for_update() if lock else q)
    if flag is None:
        raise NotFound(f"no flag {flag_id}")
    return flag


def resolve(session: Session, flag_id: int, *, confirm: bool, note: str, actor: str,
            now: dt.datetime | None = None) -> LoyaltyFlag:
    """Clear (release what was held) or confirm (forfeit what was held) an open flag, once."""
    now = now or utcnow()
    flag = get(session, flag_id, lock=True)
    if flag.status != "open":
        raise Conflict(f"flag {flag_id} is already {flag.status}", code="flag.resolved", status=flag.status)
    held = session.execute(select(PointsLot.id, PointsLot.remaining, PointsLot.member_id)
                           .where(PointsLot.held_flag_id == flag.id).order_by(PointsLot.id)).all()
    flag.status = "confirmed" if confirm else "cleared"
    flag.resolved_at, flag.resolved_by, flag.note = now, actor, note
    forfeited = 0
    if confirm and held:
        forfeited = _forfeit(session, flag, [(lot_id, left) for lot_id, left, _ in held if left > 0], note, actor, now)
    # A lot that also waits for its order's event keeps waiting for it.
    session.execute(update(PointsLot).where(PointsLot.held_flag_id == flag.id).values(
        held_flag_id=None, pending_until=case((PointsLot.pending_event.is_(None), None),
                                              else_=PointsLot.pending_until)))
    session.flush()
    audit.record(session, actor=actor, action=f"points.flag_{flag.status}", entity="loyalty_flag", entity_id=flag.id,
                 data={"member_id": flag.member_id, "store_id": flag.store_id, "note": note,
                       "held_lots": len(held), "forfeited": forfeited})
    return flag


def _forfeit(session: Session, flag: LoyaltyFlag, lots: list[tuple[int, int]], note: str, actor: str,
             now: dt.datetime) -> int:
    if not lots:
        return 0
    total = sum(left for _, left in lots)
    ledger.debit_lots(session, ledger.Command(
        member_id=flag.member_id, amount=-total, kind="adjust", reason=f"异常积分作废 {note}"[:200], source="flag",
        external_id=str(flag.id), actor=actor, explanation={"flag_id": flag.id}, request={"flag": flag.id}),
        lots, now=now)
    return total
