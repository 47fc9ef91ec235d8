"""The journey engine: triggers enter members (set-based sweeps), runs advance step by step.

* **Entry** — each trigger kind is one SQL statement that finds candidates (new events after the
  journey's cursor, new segment spells, members whose anchor is `days` old with nothing since,
  birthdays and expiring points `days_before` ahead), written with a `trigger_key` that makes a
  re-run enter nobody twice; the re-entry policy and the entry condition filter in the same SQL, and
  members turned away are logged with the reason.
* **Advance** — runs due (`wake_at <= now`) are claimed (`SKIP LOCKED` on PostgreSQL) and executed
  until they wait or end; each step is logged. Sends go through the outbox (caps, consent, quiet
  hours decided there and recorded); a held-out control group gets nothing and is still tracked.
* **Exit on conversion** — one UPDATE per journey ends open runs whose member converted after
  entering; `wait_event` runs whose event arrived are woken by another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, and_, cast, exists, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.events.models import Event, Order
from orchard.journeys import graph as G
from orchard.journeys.models import OPEN, Journey, JourneyLog, JourneyRun, JourneyVersion
from orchard.kit.clock import tenant_zone, utcnow
from orchard.members.models import MemberAggregate
from orchard.segments import compiler as C
from orchard.segments import evaluate
from orchard.segments.models import Segment, SegmentMembership

#: Candidates considered per journey per sweep (the cursor moves on; the rest come next sweep).
ENTRY_BATCH = 50_000
#: Grace for absence and date triggers: a sweep that did not run for a few days still finds them.
GRACE_DAYS = 7


def _at(value: dt.datetime):
    return literal(value, UTCDateTime())


def _version(session: Session, journey: Journey) -> tuple[JourneyVersion, G.Graph]:
    version = session.get(JourneyVersion, journey.live_version_id)
    return version, G.parse(version.graph)


# -- entry -----------------------------------------------------------------------------------------

def _candidates(session: Session, journey: Journey, parsed: G.Graph, now: dt.datetime):
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


def enter(session: Session, journey: Journey, *, now: dt.datetime | None = None) -> dict[str, int]:
    """Enter this journey's new candidates (set-based); log who entered and who was turned away."""
    now = now or utcnow()
    version, parsed = _version(session, journey)
    cand, cursor = _candidates(session, journey, parsed, now)
    cand = cand.subquery("cand")
    R = JourneyRun.__table__
    # Re-entry policy, as SQL over the member's earlier runs of this journey.
    earlier = select(R.c.id).where(R.c.journey_id == journey.id, R.c.member_id == cand.c.member_id)
    if journey.reentry == "once":
        blocked = exists(earlier)
    elif journey.reentry == "cooldown":
        blocked = exists(earlier.where(R.c.entered_at > _at(now - dt.timedelta(days=journey.reentry_days or 0))))
    else:
        blocked = exists(earlier.where(R.c.status.in_(OPEN)))
    already = exists().where(R.c.journey_id == journey.id, R.c.trigger_key == cand.c.k)
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
    turned_away = 0
    for reason, cond in refused.items():
        turned_away += session.execute(insert(L).from_select(
            ["journey_id", "member_id", "kind", "reason", "detail", "at"],
            select(literal(journey.id), cand.c.member_id, literal("not_entered"), literal(reason),
                   literal({}, L.c.detail.type), _at(now)).where(cond).distinct())).rowcount or 0
    if cursor is not None:
        journey.cursor = cursor
    session.flush()
    return {"entered": entered, "turned_away": max(turned_away, 0)}


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


def _log(session: Session, run: JourneyRun, kind: str, now: dt.datetime, *, step: str | None = None,
         reason: str | None = None, **detail: Any) -> None:
    session.add(JourneyLog(journey_id=run.journey_id, run_id=run.id, member_id=run.member_id,
                           step=step or run.step, kind=kind, reason=reason, detail=detail, at=now))


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
    """Claim due runs and execute each until it waits or ends (one transaction per call)."""
    now = now or utcnow()
    stats = AdvanceStats()
    due = select(JourneyRun).join(Journey, Journey.id == JourneyRun.journey_id).where(
        JourneyRun.status.in_(OPEN), JourneyRun.wake_at <= now, Journey.status == "live"
    ).order_by(JourneyRun.wake_at, JourneyRun.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=JourneyRun)
    runs = list(session.scalars(due))
    graphs: dict[int, G.Graph] = {}
    journeys: dict[int, Journey] = {}
    conditions: dict[tuple[int, str], Any] = {}
    for run in runs:
        if run.version_id not in graphs:
            graphs[run.version_id] = G.parse(session.get(JourneyVersion, run.version_id).graph)
        if run.journey_id not in journeys:
            journeys[run.journey_id] = session.get(Journey, run.journey_id)
        stats.runs += 1
        _run(session, run, journeys[run.journey_id], graphs[run.version_id], conditions, now, stats)
    session.flush()
    return stats


def _run(session: Session, run: JourneyRun, journey: Journey, parsed: G.Graph, conditions: dict, now: dt.datetime,
         stats: AdvanceStats) -> None:
    from orchard.messaging import outbox

    for _ in range(len(parsed.steps) + 1):  # a graph has no wait-free loop, so this bounds one advance
        sid = run.step
        step = parsed.steps[sid]
        stats.steps += 1
        nxt: str | None
        if run.status == "waiting" and isinstance(step, G.WaitEvent):
            happened = session.scalar(select(Event.id).where(
                Event.member_id == run.member_id, Event.name == step.event,
                Event.occurred_at >= _dt(run.context.get("waiting_since"), run.entered_at)).limit(1))
            nxt = step.next if happened else step.timeout_next
            _log(session, run, "waited", now, reason="event" if happened else "timeout")
            run.status, run.wait_event = "active", None
        elif run.status == "waiting" and isinstance(step, G.Wait):
            nxt = step.next
            run.status = "active"
        elif isinstance(step, G.Wait):
            run.status, run.wake_at = "waiting", _wake_after(step, now)
            _log(session, run, "step", now, reason="wait", until=run.wake_at.isoformat())
            return
        elif isinstance(step, G.WaitEvent):
            run.status, run.wait_event = "waiting", step.event
            run.wake_at = now + dt.timedelta(hours=step.timeout_hours)
            run.context = {**run.context, "waiting_since": now.isoformat()}
            _log(session, run, "step", now, reason="wait_event", event=step.event)
            return
        elif isinstance(step, G.Condition):
            key = (run.version_id, sid)
            if key not in conditions:
                compiled = evaluate.compile_definition(session, step.if_, now=now)
                conditions[key] = compiled
            compiled = conditions[key]
            hit = session.scalar(select(func.count()).select_from(
                C.members_query(compiled.condition, compiled.ctx, C.m.c.id == run.member_id).subquery())) == 1
            nxt = step.then if hit else step.else_
            _log(session, run, "branch", now, reason="then" if hit else "else")
        elif isinstance(step, G.Split):
            run.variant = _variant(run, sid, step)
            nxt = None if run.variant == "control" else next(v.next for v in step.variants if v.name == run.variant)
            _log(session, run, "branch", now, reason=f"variant:{run.variant}")
            if run.variant == "control":  # held out: nothing more happens to them, and they are counted
                _end(session, run, "completed", "control", now, stats)
                return
        elif isinstance(step, G.Send):
            nxt = step.next
            for code in [step.template, *step.fallback]:
                message = outbox.enqueue(session, key=f"j{journey.id}:r{run.id}:{sid}:{code}", member_id=run.member_id,
                                         template_code=code, context={"event": run.context.get("event", {})},
                                         priority=journey.priority, journey_id=journey.id, run_id=run.id, step=sid,
                                         now=now)
                if message.status == "queued":
                    stats.sent += 1
                    _log(session, run, "sent", now, reason=None, message_id=message.id, template=code)
                    break
                stats.suppressed += 1
                stats.by_reason[message.reason or "?"] = stats.by_reason.get(message.reason or "?", 0) + 1
                _log(session, run, "suppressed", now, reason=message.reason, message_id=message.id, template=code)
                if not (message.reason or "").startswith(("consent.", "no_recipient")):
                    break  # caps, quiet days, exclusions apply to every channel: no fallback
        elif isinstance(step, G.CouponStep):
            from orchard.coupons.issuing import issue_one

            coupon, _ = issue_one(session, template_id=step.template_id, member_id=run.member_id, source="journey",
                                  external_id=f"j{journey.id}:r{run.id}:{sid}", reason=journey.code,
                                  actor=f"journey:{journey.code}"[:64], now=now)
            _log(session, run, "step", now, reason="coupon", coupon_id=coupon.id)
            nxt = step.next
        elif isinstance(step, G.PointsStep):
            from orchard.loyalty.ledger import Command, post

            post(session, Command(member_id=run.member_id, amount=step.amount, kind="adjust", reason=step.reason,
                                  source="journey", external_id=f"j{journey.id}:r{run.id}:{sid}",
                                  actor=f"journey:{journey.code}"[:64]), now=now)
            _log(session, run, "step", now, reason="points", amount=step.amount)
            nxt = step.next
        elif isinstance(step, G.TagStep):
            from orchard.imports.pg_bulk import SYSTEM
            from orchard.members import notes_tags

            for name in step.add:
                notes_tags.add_tag(session, principal=SYSTEM, member_id=run.member_id, name=name)
            for name in step.remove:
                tag = notes_tags.tag_by_name(session, name, create=False)
                if tag is not None and name in notes_tags.member_tags(session, run.member_id):
                    notes_tags.remove_tag(session, principal=SYSTEM, member_id=run.member_id, name=name)
            _log(session, run, "step", now, reason="tag", add=step.add, remove=step.remove)
            nxt = step.next
        elif isinstance(step, G.TaskStep):
            from orchard.journeys import tasks

            task = tasks.create(session, key=f"j{journey.id}:r{run.id}:{sid}", member_id=run.member_id,
                                kind=step.kind, title=step.title, body=step.body,
                                due_at=now + dt.timedelta(hours=step.due_hours), journey_id=journey.id, run_id=run.id)
            _log(session, run, "step", now, reason="task", task_id=task.id, task_kind=step.kind)
            nxt = step.next
        elif isinstance(step, G.Exit):
            _end(session, run, "exited", "exit_step", now, stats)
            return
        else:  # pragma: no cover — the graph parser admits nothing else
            raise AssertionError(type(step).__name__)
        if nxt is None:
            _end(session, run, "completed", None, now, stats)
            return
        run.step = nxt
    raise AssertionError("a journey step loop without a wait")  # pragma: no cover


def _dt(value: str | None, default: dt.datetime) -> dt.datetime:
    return dt.datetime.fromisoformat(value) if value else default


def _end(session: Session, run: JourneyRun, status: str, reason: str | None, now: dt.datetime,
         stats: AdvanceStats) -> None:
    run.status, run.end_reason, run.ended_at, run.wake_at = status, reason, now, None
    _log(session, run, "completed" if status == "completed" else "exited", now, reason=reason)
    if status == "completed":
        stats.completed += 1
    else:
        stats.exited += 1


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


def sweep(session: Session, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything periodic, for every live journey: conversions, entries, event wake-ups."""
    now = now or utcnow()
    out: dict[str, Any] = {"journeys": {}, "woken": wake_on_events(session, now)}
    for journey in session.scalars(select(Journey).where(Journey.status == "live").order_by(Journey.id)):
        _, parsed = _version(session, journey)
        converted = exit_converted(session, journey, parsed, now)
        result = enter(session, journey, now=now)
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
