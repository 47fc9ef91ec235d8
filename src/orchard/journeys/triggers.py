"""Journey triggers: each kind is one set-based SQL statement that finds the members to enter.

`candidates` returns a select of (member_id, trigger_key) — never a loop over members — and where
the kind has one, the journey's new cursor. The `trigger_key` names the occurrence (an event, an
order, a tier change, a segment spell, a date, a schedule occurrence), so a re-run of the sweep
enters nobody twice: the engine (`engine.enter`) applies the re-entry policy and the entry condition
to these candidates in SQL, and logs a refusal once per key.

Two families, run at different rates by the scheduler (`engine.sweep(kinds=…)`):

* **Cursor-based** (`CURSOR_KINDS`: event, segment_entry, segment_exit) read only what is new since
  the journey's cursor, so they are cheap enough to run every few seconds ("event triggers start
  within seconds of the event"). Events, orders, tier changes, points entries and segment spells are
  followed by id (`journey.cursor`). A spell *ends* by an update in place, so exits are followed by
  time (`journey.cursor_at`, see `EXIT_OVERLAP`).
* **Set-based sweeps** (`SWEEP_KINDS`: absence, date, schedule) look at every member against the
  clock; they are keyed by the anchor or the target day, so running them every few minutes is
  harmless.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, Select, String, and_, cast, exists, func, literal, or_, select, text
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.events.models import Event, Order
from orchard.journeys import graph as G
from orchard.journeys.models import Journey, JourneyLog, JourneyRun
from orchard.kit.clock import tenant_zone
from orchard.members.models import MemberAggregate
from orchard.segments import compiler as C
from orchard.segments.models import Segment, SegmentMembership

#: Candidates considered per journey per sweep (the cursor moves on; the rest come next sweep).
ENTRY_BATCH = 50_000
#: Grace for absence and date triggers: a sweep that did not run for a few days still finds them.
GRACE_DAYS = 7
#: A segment refresh stamps its exits with the time it started and commits minutes later (a nightly
#: refresh of every segment at a million members takes several); exits stamped up to this long
#: before the latest one seen are read again, and the trigger key (with the logged refusals) keeps
#: anyone from entering — or being turned away — twice.
EXIT_OVERLAP = dt.timedelta(hours=1)
#: repurchase_due: a "typical interval" longer than this is not a consumption cycle (and the bound
#: lets the sweep read member_aggregates by its last_order_at index).
MAX_CYCLE = dt.timedelta(days=365)
#: A schedule occurrence missed by more than this (the server was down) does not fire late.
SCHEDULE_LATE = dt.timedelta(days=1)

CURSOR_KINDS = frozenset({"event", "segment_entry", "segment_exit"})
SWEEP_KINDS = frozenset({"absence", "date", "schedule"})


@dataclass
class Found:
    """What one trigger found: candidates (None: nothing to do this sweep) and where its cursors go."""

    rows: Select | None
    cursor: int | None = None
    cursor_at: dt.datetime | None = None
    settled: int | None = None
    snapshot: str | None = None


def _at(value: dt.datetime):
    return literal(value, UTCDateTime())


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def candidates(session: Session, journey: Journey, parsed: G.Graph, now: dt.datetime) -> Found:
    """(member_id, k) candidates of the journey's trigger as a select, and its new cursors."""
    trigger = parsed.trigger
    if isinstance(trigger, G.EventTrigger):
        return _event(session, journey, trigger, now)
    if isinstance(trigger, G.SegmentTrigger):
        s = SegmentMembership.__table__
        seg_id = session.scalar(select(Segment.id).where(Segment.code == trigger.segment))
        return _by_id(session, journey, s, select(s.c.id.label("src"), s.c.member_id).where(s.c.segment_id == seg_id),
                      "s:")
    if isinstance(trigger, G.SegmentExitTrigger):
        return _segment_exit(session, journey, trigger, now)
    if isinstance(trigger, G.AbsenceTrigger):
        return Found(_absence(session, trigger, now))
    if isinstance(trigger, G.ScheduleTrigger):
        return _schedule(session, journey, trigger, now)
    return Found(_date(session, trigger, now))


def start(session: Session, parsed: G.Graph, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """Where a newly published trigger starts: from now, not from the beginning of history (the
    highest id of its source table; exits and schedule occurrences after now)."""
    from orchard.loyalty.models import PointsEntry, TierChange

    trigger = parsed.trigger
    table: Any = None
    if isinstance(trigger, G.EventTrigger):
        table = {"$order": Order, "$tier_changed": TierChange, "$points_earned": PointsEntry}.get(trigger.event, Event)
    elif isinstance(trigger, G.SegmentTrigger):
        table = SegmentMembership
    cursor = 0
    if table is not None:
        cursor = session.scalar(select(func.coalesce(func.max(table.id), 0))) or 0
    return cursor, now if isinstance(trigger, G.SegmentExitTrigger | G.ScheduleTrigger) else None


def source(trigger: dict[str, Any]) -> str | None:
    """What a stored trigger's cursor points into (read from the stored JSON, so an old version that
    no longer validates still answers): a new version with another source starts it again."""
    if trigger.get("type") == "event":
        event = str(trigger.get("event", ""))
        return event if event.startswith("$") else "events"
    return trigger.get("type") if trigger.get("type") in ("segment_entry", "segment_exit", "schedule") else None


def refusal_logged(journey_id: int, member_id, key):
    """A refusal of this candidate (journey, member, trigger key) is already in the decision log."""
    L = JourneyLog.__table__
    return exists().where(L.c.member_id == member_id, L.c.journey_id == journey_id, L.c.kind == "not_entered",
                          L.c.detail["key"].as_string() == key)


def _unseen(journey: Journey, member_id, key):
    """Neither entered nor turned away yet (for candidates read more than once, see EXIT_OVERLAP)."""
    R = JourneyRun.__table__
    return ~exists().where(R.c.journey_id == journey.id, R.c.member_id == member_id, R.c.trigger_key == key) \
        & ~refusal_logged(journey.id, member_id, key)


# -- cursor-based ------------------------------------------------------------------------------------

def _event(session: Session, journey: Journey, trigger: G.EventTrigger, now: dt.datetime) -> Found:
    """New rows of the event's source after the cursor, no older than `max_age_hours`."""
    from orchard.loyalty.models import PointsEntry, TierChange, TierLevel

    fresh = _at(now - dt.timedelta(hours=trigger.max_age_hours))
    if trigger.event == "$order":
        table = o = Order.__table__
        rows = select(o.c.id.label("src"), o.c.member_id).where(o.c.status != "refunded", o.c.paid_at >= fresh)
        key = "o:"
    elif trigger.event == "$tier_changed":
        table = tc = TierChange.__table__
        to, fr = TierLevel.__table__.alias("lt"), TierLevel.__table__.alias("lf")
        rows = select(tc.c.id.label("src"), tc.c.member_id).select_from(
            tc.join(to, to.c.id == tc.c.to_level_id).outerjoin(fr, fr.c.id == tc.c.from_level_id)).where(
            tc.c.at >= fresh)
        if trigger.direction == "up":  # no level before: the member started at the base
            rows = rows.where(or_(fr.c.id.is_(None), to.c.rank > fr.c.rank))
        elif trigger.direction == "down":
            rows = rows.where(to.c.rank < fr.c.rank)
        if trigger.to_level:
            rows = rows.where(to.c.code == trigger.to_level)
        key = "tc:"
    elif trigger.event == "$points_earned":
        table = pe = PointsEntry.__table__
        rows = select(pe.c.id.label("src"), pe.c.member_id).where(
            pe.c.kind == "earn", pe.c.amount >= (trigger.min_points or 1), pe.c.created_at >= fresh)
        key = "pe:"
    else:
        table = e = Event.__table__
        rows = select(e.c.id.label("src"), e.c.member_id).where(
            e.c.name == trigger.event, e.c.member_id.is_not(None), e.c.occurred_at >= fresh)
        ctx = C.context(session, now=now)
        for i, f in enumerate(trigger.where):
            rows = rows.where(C.prop_filter(e.c.properties, f, ctx, f"$.trigger.where[{i}]"))
        key = "e:"
    return _by_id(session, journey, table, rows, key)


def _xid8(xid: str) -> str:
    """A 32-bit transaction id (a row's xmin, a lock's transactionid) as an xid8: placed in the epoch of
    the newest xid now (the ids read here are far younger than 2^31 transactions)."""
    return ("(pg_snapshot_xmax(pg_current_snapshot())::text::bigint - ((pg_snapshot_xmax(pg_current_snapshot())"
            f"::text::bigint - {xid}::text::bigint) & 4294967295))::text::xid8")


#: No other transaction of this database that was running when the kept snapshot was taken is still
#: running (transaction-id locks are visible to every role; a snapshot's xmin would also wait for
#: other databases of the cluster, which cannot write these tables).
_SETTLED = ("NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted "
            "AND a.datname = current_database() AND l.pid <> pg_backend_pid() "
            f"AND {_xid8('l.transactionid')} "
            "< pg_snapshot_xmax(CAST(:jprev AS pg_snapshot)))")


def _by_id(session: Session, journey: Journey, table: Any, rows: Select, key: str) -> Found:
    """The rows of `rows` (src, member_id; over `table`) the journey has not read yet, in id order, a
    batch at most, and where its cursors go.

    Ids are taken when a row is inserted and become visible when its transaction commits, so a sweep
    can read id 101 while id 100 is still uncommitted: a plain `id > cursor` would never read 100.
    On PostgreSQL the sweep therefore keeps the snapshot it read under (`cursor_snapshot`) and also
    reads, above `cursor_settled`, the rows that snapshot could not see. The settled mark moves up to
    the previous sweep's cursor once every transaction of this database that snapshot saw running
    has ended: any id up to there was taken before that snapshot and is now committed or never will
    be. (A transaction that took an id just before that snapshot but was given its transaction id
    just after it — microseconds within one INSERT — and is still open a sweep later is the one case
    this does not cover.) A row read twice — an updated order or
    spell has a new xmin — is skipped by its trigger key (runs, logged refusals). SQLite writes one
    transaction at a time, so ids commit in order there and the id cursor is exact."""
    after = table.c.id > journey.cursor
    pg, kept = _pg(session), journey.cursor_snapshot
    settled = journey.cursor if journey.cursor_settled is None else journey.cursor_settled
    if pg and kept is not None:
        late = text(f"NOT pg_visible_in_snapshot({_xid8(table.name + '.xmin')}, CAST(:jsnap AS pg_snapshot))") \
            .bindparams(jsnap=kept)
        after = or_(after, and_(table.c.id > settled, late))
    batch = rows.where(after).order_by(text("src")).limit(ENTRY_BATCH).subquery()
    candidates = select(batch.c.member_id, (literal(key) + cast(batch.c.src, String)).label("k"))
    if not pg:
        return Found(candidates, cursor=session.scalar(select(func.max(batch.c.src))))
    # The snapshot of the statement that reads the batch's extent: the later statements that enter
    # the candidates see at least these rows; what this one could not see, the next sweep reads.
    # Without a kept snapshot (a new cursor) the marks start together.
    moved = literal(True) if kept is None else text(_SETTLED).bindparams(jprev=kept)
    top, snapshot, passed = session.execute(select(
        func.max(batch.c.src), text("pg_current_snapshot()::text"), moved)).one()
    return Found(candidates, cursor=max(journey.cursor, top or 0), settled=journey.cursor if passed else settled,
                 snapshot=snapshot)


def _segment_exit(session: Session, journey: Journey, trigger: G.SegmentExitTrigger, now: dt.datetime) -> Found:
    """Spells of the segment that ended after the time cursor, not yet entered or turned away.

    The cursor is a low-water mark: it follows the latest exit read less `EXIT_OVERLAP`, so exits a
    long refresh stamped early and committed late are still read; those already handled are skipped
    by their key before the batch limit, so the batch always moves on."""
    s = SegmentMembership.__table__
    since = journey.cursor_at or now  # published before the time cursor existed: from now on
    seg_id = session.scalar(select(Segment.id).where(Segment.code == trigger.segment))
    key = literal("x:") + cast(s.c.id, String)
    rows = select(s.c.id.label("src"), s.c.member_id, s.c.exited_at).select_from(
        s.join(C.m, C.m.c.id == s.c.member_id)).where(
        s.c.segment_id == seg_id, s.c.exited_at > _at(since), C.live(), _unseen(journey, s.c.member_id, key)) \
        .order_by(s.c.exited_at, s.c.id).limit(ENTRY_BATCH).subquery()
    last = session.scalar(select(func.max(rows.c.exited_at)))
    cursor_at = max(since, last - EXIT_OVERLAP) if last is not None else since
    return Found(select(rows.c.member_id, (literal("x:") + cast(rows.c.src, String)).label("k")),
                 cursor_at=cursor_at)


# -- set-based sweeps --------------------------------------------------------------------------------

def _absence(session: Session, trigger: G.AbsenceTrigger, now: dt.datetime):
    """Members whose anchor is at least `days` old (and at most `days` + grace), with nothing of
    `absent` since the anchor. Keyed by the anchor's time, so one anchor enters once."""
    a = MemberAggregate.__table__
    anchor = {"joined": C.m.c.joined_at, "first_order": a.c.first_order_at, "last_order": a.c.last_order_at,
              "last_visit": a.c.last_visit_at, "last_login": a.c.last_login_at,
              "last_event": a.c.last_event_at}[trigger.after]
    due = now - dt.timedelta(days=trigger.days)
    if trigger.absent == "$order":
        o = Order.__table__
        since = exists().where(o.c.member_id == C.m.c.id, o.c.paid_at > anchor, o.c.status != "refunded")
    else:
        e = Event.__table__
        since = exists().where(e.c.member_id == C.m.c.id, e.c.name == trigger.absent, e.c.occurred_at > anchor)
    epoch = cast(cast(_epoch(session, anchor), Integer), String)
    return select(C.m.c.id.label("member_id"), (literal("a:") + epoch).label("k")).select_from(
        C.m.outerjoin(a, a.c.member_id == C.m.c.id)).where(
        C.live(), anchor <= _at(due), anchor > _at(due - dt.timedelta(days=GRACE_DAYS)), ~since)


def _epoch(session: Session, column):
    if _pg(session):
        return func.extract("epoch", column)
    return func.strftime("%s", column)


def _mmdd_keys(target: dt.date) -> list[str]:
    """The month-days celebrated on `target`: 29 February is celebrated on the 28th in other years."""
    mmdd = target.strftime("%m%d")
    return [mmdd] + (["0229"] if mmdd == "0228" and not _leap(target.year) else [])


def _local_mmdd(session: Session, column, now: dt.datetime):
    """MMDD of a timestamp in the tenant zone. SQLite has no zone database: the zone's offset now is
    used (exact for zones without DST, such as Asia/Shanghai)."""
    zone = tenant_zone()
    if _pg(session):
        return func.to_char(func.timezone(zone.key, column), "MMDD")
    offset = int(now.astimezone(zone).utcoffset().total_seconds())
    return func.strftime("%m%d", column, f"{offset:+d} seconds")


def _date(session: Session, trigger: G.DateTrigger, now: dt.datetime):
    """Members whose date falls on the target day (today + `days_before`, tenant zone), keyed by
    the kind and the target day."""
    zone = tenant_zone()
    target = now.astimezone(zone).date() + dt.timedelta(days=trigger.days_before)
    start = dt.datetime.combine(target, dt.time(), zone).astimezone(dt.UTC)
    end = dt.datetime.combine(target + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
    if trigger.field == "birthday":
        mmdd = func.to_char(C.m.c.birthday, "MMDD") if _pg(session) else func.strftime("%m%d", C.m.c.birthday)
        return select(C.m.c.id.label("member_id"), literal(f"b:{target.isoformat()}").label("k")).where(
            C.live(), mmdd.in_(_mmdd_keys(target)))
    if trigger.field == "anniversary":
        # Joined on this month-day (local), in an earlier year: one year ago at least.
        first_year = dt.datetime(target.year, 1, 1, tzinfo=zone).astimezone(dt.UTC)
        return select(C.m.c.id.label("member_id"), literal(f"n:{target.isoformat()}").label("k")).where(
            C.live(), C.m.c.joined_at < _at(first_year),
            _local_mmdd(session, C.m.c.joined_at, now).in_(_mmdd_keys(target)))
    if trigger.field == "coupon_expiring":
        from orchard.coupons.models import Coupon

        # valid_to is exclusive: a coupon whose last usable day is the target ends in (start, end].
        cp = Coupon.__table__
        return select(cp.c.member_id.label("member_id"), literal(f"c:{target.isoformat()}").label("k")).where(
            cp.c.status == "issued", cp.c.valid_to > _at(start), cp.c.valid_to <= _at(end)).group_by(cp.c.member_id)
    if trigger.field == "repurchase_due":
        return _repurchase_due(session, target, start, end)
    from orchard.loyalty.models import PointsLot

    lot = PointsLot.__table__
    return select(lot.c.member_id.label("member_id"), literal(f"p:{target.isoformat()}").label("k")).where(
        lot.c.remaining > 0, lot.c.expires_at >= _at(start), lot.c.expires_at < _at(end)
    ).group_by(lot.c.member_id)


def _repurchase_due(session: Session, target: dt.date, start: dt.datetime, end: dt.datetime):
    """Consumption cycle (消费周期): the member's typical repurchase interval is
    (last_order_at − first_order_at) / (order_count − 1), for members with two orders or more and an
    interval of one day to `MAX_CYCLE`; due when last_order_at + interval falls on the target day."""
    a = MemberAggregate.__table__
    last = cast(_epoch(session, a.c.last_order_at), BigInteger)
    span = last - cast(_epoch(session, a.c.first_order_at), BigInteger)
    gaps = cast(a.c.order_count - 1, BigInteger)  # seconds × orders overflows a 32-bit integer
    due = last + span / gaps
    return select(a.c.member_id.label("member_id"), literal(f"r:{target.isoformat()}").label("k")).select_from(
        a.join(C.m, C.m.c.id == a.c.member_id)).where(
        C.live(), a.c.order_count >= 2,
        a.c.last_order_at >= _at(start - MAX_CYCLE), a.c.last_order_at < _at(end),
        span >= gaps * 86_400, span <= gaps * int(MAX_CYCLE.total_seconds()),
        due >= int(start.timestamp()), due < int(end.timestamp()))


def occurrence(trigger: G.ScheduleTrigger, now: dt.datetime) -> dt.datetime:
    """The schedule's latest occurrence at or before `now` (UTC), in the tenant zone's calendar."""
    zone = tenant_zone()
    local = now.astimezone(zone)
    hh, mm = map(int, trigger.at.split(":"))

    def at(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hh, mm), zone)

    def in_month(year: int, month: int) -> dt.datetime:
        return at(dt.date(year, month, min(trigger.day or 1, calendar.monthrange(year, month)[1])))

    today = local.date()
    if trigger.every == "day":
        when = at(today) if at(today) <= local else at(today - dt.timedelta(days=1))
    elif trigger.every == "week":
        day = today - dt.timedelta(days=(today.isoweekday() - (trigger.weekday or 1)) % 7)
        when = at(day) if at(day) <= local else at(day - dt.timedelta(days=7))
    else:
        when = in_month(today.year, today.month)
        if when > local:
            when = in_month(today.year - (today.month == 1), 12 if today.month == 1 else today.month - 1)
    return when.astimezone(dt.UTC)


def _schedule(session: Session, journey: Journey, trigger: G.ScheduleTrigger, now: dt.datetime) -> Found:
    """At the first sweep on or after an occurrence (and within `SCHEDULE_LATE` of it), the
    segment's current members (every live member without a segment), keyed by the occurrence's
    local date; `cursor_at` remembers the occurrence fired, so later sweeps skip it at no cost."""
    when = occurrence(trigger, now)
    if now - when > SCHEDULE_LATE or (journey.cursor_at is not None and journey.cursor_at >= when):
        return Found(None)
    key = literal(f"t:{when.astimezone(tenant_zone()).date().isoformat()}")
    if trigger.segment is None:
        return Found(select(C.m.c.id.label("member_id"), key.label("k")).where(C.live()), cursor_at=when)
    s = SegmentMembership.__table__
    seg_id = session.scalar(select(Segment.id).where(Segment.code == trigger.segment))
    return Found(select(s.c.member_id.label("member_id"), key.label("k")).select_from(
        s.join(C.m, C.m.c.id == s.c.member_id)).where(
        s.c.segment_id == seg_id, s.c.exited_at.is_(None), C.live()), cursor_at=when)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
