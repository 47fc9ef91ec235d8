"""Journey triggers: each kind is one set-based SQL statement that finds the members to enter.

`candidates` returns a select of (member_id, trigger_key) — never a loop over members — and, for
cursor-based kinds, the journey's new cursor. The `trigger_key` names the occurrence (an event, an
order, a segment spell, a date), so a re-run of the sweep enters nobody twice: the engine
(`engine.enter`) applies the re-entry policy and the entry condition to these candidates in SQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String, cast, exists, func, literal, select, text
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.events.models import Event, Order
from orchard.journeys import graph as G
from orchard.journeys.models import Journey
from orchard.kit.clock import tenant_zone
from orchard.members.models import MemberAggregate
from orchard.segments import compiler as C
from orchard.segments.models import Segment, SegmentMembership

#: Candidates considered per journey per sweep (the cursor moves on; the rest come next sweep).
ENTRY_BATCH = 50_000
#: Grace for absence and date triggers: a sweep that did not run for a few days still finds them.
GRACE_DAYS = 7


def _at(value: dt.datetime):
    return literal(value, UTCDateTime())


def candidates(session: Session, journey: Journey, parsed: G.Graph, now: dt.datetime):
    """(member_id, trigger_key) candidates as a select, and the new cursor (or None)."""
    trigger = parsed.trigger
    if isinstance(trigger, G.EventTrigger):
        fresh = now - dt.timedelta(hours=trigger.max_age_hours)
        if trigger.event == "$order":
            o = Order.__table__
            rows = select(o.c.id.label("src"), o.c.member_id).where(
                o.c.id > journey.cursor, o.c.status != "refunded", o.c.paid_at >= _at(fresh))
            key = "o:"
        else:
            e = Event.__table__
            rows = select(e.c.id.label("src"), e.c.member_id).where(
                e.c.id > journey.cursor, e.c.name == trigger.event, e.c.member_id.is_not(None),
                e.c.occurred_at >= _at(fresh))
            ctx = C.context(session, now=now)
            for i, f in enumerate(trigger.where):
                rows = rows.where(C._prop_filter(e.c.properties, f, ctx, f"$.trigger.where[{i}]"))
            key = "e:"
        rows = rows.order_by(text("src")).limit(ENTRY_BATCH).subquery()
        cursor = session.scalar(select(func.max(rows.c.src)))
        return select(rows.c.member_id, (literal(key) + cast(rows.c.src, String)).label("k")), cursor
    if isinstance(trigger, G.SegmentTrigger):
        s = SegmentMembership.__table__
        seg_id = session.scalar(select(Segment.id).where(Segment.code == trigger.segment))
        rows = select(s.c.id.label("src"), s.c.member_id).where(s.c.segment_id == seg_id, s.c.id > journey.cursor) \
            .order_by(s.c.id).limit(ENTRY_BATCH).subquery()
        cursor = session.scalar(select(func.max(rows.c.src)))
        return select(rows.c.member_id, (literal("s:") + cast(rows.c.src, String)).label("k")), cursor
    if isinstance(trigger, G.AbsenceTrigger):
        return _absence(session, trigger, now), None
    return _date(session, trigger, now), None


def _absence(session: Session, trigger: G.AbsenceTrigger, now: dt.datetime):
    """Members whose anchor is at least `days` old (and at most `days` + grace), with nothing of
    `absent` since the anchor. Keyed by the anchor's time, so one anchor enters once."""
    a = MemberAggregate.__table__
    anchor = {"joined": C.m.c.joined_at, "first_order": a.c.first_order_at, "last_order": a.c.last_order_at,
              "last_visit": a.c.last_visit_at}[trigger.after]
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
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", column)
    return func.strftime("%s", column)


def _date(session: Session, trigger: G.DateTrigger, now: dt.datetime):
    zone = tenant_zone()
    target = now.astimezone(zone).date() + dt.timedelta(days=trigger.days_before)
    if trigger.field == "birthday":
        pg = session.get_bind().dialect.name == "postgresql"
        mmdd = func.to_char(C.m.c.birthday, "MMDD") if pg else func.strftime("%m%d", C.m.c.birthday)
        keys = [target.strftime("%m%d")] + (["0229"] if target.strftime("%m%d") == "0228" and not _leap(target.year)
                                             else [])
        return select(C.m.c.id.label("member_id"), literal(f"b:{target.isoformat()}").label("k")).where(
            C.live(), mmdd.in_(keys))
    from orchard.loyalty.models import PointsLot

    lot = PointsLot.__table__
    start = dt.datetime.combine(target, dt.time(), zone).astimezone(dt.UTC)
    return select(lot.c.member_id.label("member_id"), literal(f"p:{target.isoformat()}").label("k")).where(
        lot.c.remaining > 0, lot.c.expires_at >= _at(start), lot.c.expires_at < _at(start + dt.timedelta(days=1))
    ).group_by(lot.c.member_id)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
