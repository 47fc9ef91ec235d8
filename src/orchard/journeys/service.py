"""Journeys: create with a draft graph, edit drafts, publish (the published version is immutable),
go live, pause, archive. Publishing checks what only the database knows: templates published,
segments and tags existing, conditions compiling."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.audit.service import record
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.journeys import graph as G
from orchard.journeys import triggers
from orchard.journeys.models import OPEN, Journey, JourneyRun, JourneyVersion
from orchard.kit.clock import utcnow
from orchard.messaging.models import MessageTemplate
from orchard.segments import evaluate
from orchard.segments.models import Segment


def get(session: Session, code: str, *, lock: bool = False) -> Journey:
    stmt = select(Journey).where(Journey.code == code)
    if lock:
        stmt = stmt.with_for_update()
    journey = session.scalar(stmt)
    if journey is None:
        raise NotFound("journey not found", code="journey.not_found")
    return journey


def create(session: Session, *, code: str, name: str, graph: Any, actor: str, description: str | None = None,
           priority: int = 0, reentry: str = "once", reentry_days: int | None = None) -> Journey:
    if session.scalar(select(Journey.id).where(Journey.code == code)) is not None:
        raise Conflict(f"a journey with code {code!r} exists", code="journey.code_taken")
    _check_reentry(reentry, reentry_days)
    parsed = G.parse(graph)
    now = utcnow()
    journey = Journey(code=code, name=name, description=description, status="draft", priority=priority,
                      reentry=reentry, reentry_days=reentry_days, cursor=0, created_by=actor, created_at=now,
                      updated_at=now)
    session.add(journey)
    session.flush()
    session.add(JourneyVersion(journey_id=journey.id, version=1, graph=G.dump(parsed), status="draft",
                               created_by=actor, created_at=now))
    record(session, actor=actor, action="journey.create", entity="journey", entity_id=journey.id, data={"code": code})
    session.flush()
    return journey


def _check_reentry(reentry: str, days: int | None) -> None:
    if reentry not in ("once", "cooldown", "always"):
        raise InvalidInput.field("reentry", "once, cooldown or always")
    if (reentry == "cooldown") != (days is not None):
        raise InvalidInput.field("reentry_days", "required with cooldown (days before a member may enter again), "
                                                 "and only then")


def draft(session: Session, journey: Journey) -> JourneyVersion | None:
    return session.scalar(select(JourneyVersion).where(JourneyVersion.journey_id == journey.id,
                                                       JourneyVersion.status == "draft"))


def latest(session: Session, journey: Journey) -> JourneyVersion:
    return session.scalar(select(JourneyVersion).where(JourneyVersion.journey_id == journey.id)
                          .order_by(JourneyVersion.version.desc()).limit(1))


def edit(session: Session, *, code: str, graph: Any, actor: str) -> JourneyVersion:
    """Replace the draft's graph, or open a new draft after the last published version."""
    journey = get(session, code, lock=True)
    if journey.status == "archived":
        raise Conflict("the journey is archived", code="journey.archived")
    parsed = G.dump(G.parse(graph))
    version = draft(session, journey)
    if version is None:
        version = JourneyVersion(journey_id=journey.id, version=latest(session, journey).version + 1, graph=parsed,
                                 status="draft", created_by=actor, created_at=utcnow())
        session.add(version)
    else:
        version.graph = parsed
    journey.updated_at = utcnow()
    record(session, actor=actor, action="journey.edit", entity="journey", entity_id=journey.id,
           data={"version": version.version})
    session.flush()
    return version


def check_references(session: Session, parsed: G.Graph) -> None:
    """What only the database can tell: templates published, segments live, conditions compiling."""
    for sid, step in parsed.steps.items():
        if isinstance(step, G.Send):
            for i, code in enumerate([step.template, *step.fallback]):
                status = session.scalar(select(MessageTemplate.status).where(MessageTemplate.code == code))
                if status != "published":
                    field = "template" if i == 0 else f"fallback[{i - 1}]"
                    raise InvalidInput.field(f"$.steps.{sid}.{field}", f"template {code!r} is not published"
                                             if status else f"no template {code!r}")
        if isinstance(step, G.Condition):
            evaluate.compile_definition(session, step.if_, root=f"$.steps.{sid}.if")
    if parsed.entry_condition is not None:
        evaluate.compile_definition(session, parsed.entry_condition, root="$.entry_condition")
    trigger = parsed.trigger
    segment = getattr(trigger, "segment", None)  # segment_entry, segment_exit, schedule
    if segment is not None and session.scalar(
            select(Segment.id).where(Segment.code == segment, Segment.status == "active")) is None:
        raise InvalidInput.field("$.trigger.segment", f"no active segment {segment!r}")
    if isinstance(trigger, G.EventTrigger) and trigger.to_level is not None:
        from orchard.loyalty.models import TierLevel

        if session.scalar(select(TierLevel.id).where(TierLevel.code == trigger.to_level)) is None:
            raise InvalidInput.field("$.trigger.to_level", f"no tier level {trigger.to_level!r}")


def publish(session: Session, *, code: str, actor: str, go_live: bool = True,
            now: dt.datetime | None = None) -> JourneyVersion:
    """Freeze the draft as the live version. Runs already in flight keep the version they started on.
    `now` (tests) is where time-cursored triggers start: segment exits and schedule occurrences after it."""
    journey = get(session, code, lock=True)
    version = draft(session, journey)
    if version is None:
        raise Conflict("there is no draft to publish", code="journey.no_draft")
    parsed = G.parse(version.graph)
    check_references(session, parsed)
    now = now or utcnow()
    version.status, version.published_at = "published", now
    before = session.get(JourneyVersion, journey.live_version_id) if journey.live_version_id else None
    journey.live_version_id = version.id
    # A new journey's triggers start from now, not from the beginning of history; so does a version
    # whose trigger reads another source (the old cursor points into another table).
    if before is None or triggers.source(before.graph["trigger"]) != triggers.source(version.graph["trigger"]):
        journey.cursor, journey.cursor_at = triggers.start(session, parsed, now)
        journey.cursor_settled = journey.cursor_snapshot = None
    if go_live and journey.status in ("draft", "paused"):
        journey.status = "live"
    journey.updated_at = now
    record(session, actor=actor, action="journey.publish", entity="journey", entity_id=journey.id,
           data={"version": version.version, "status": journey.status})
    session.flush()
    return version


def set_status(session: Session, *, code: str, status: str, actor: str) -> Journey:
    """live ↔ paused; archived ends every open run (exited, reason archived)."""
    journey = get(session, code, lock=True)
    allowed = {"live": ("paused",), "paused": ("live", "archived"), "draft": ("archived",)}
    if status == "archived" and journey.status == "live":
        pass
    elif status not in allowed.get(journey.status, ()) and not (status == "live" and journey.status == "draft"):
        raise Conflict(f"a {journey.status} journey cannot become {status}", code="journey.status")
    if status == "live" and journey.live_version_id is None:
        raise Conflict("publish a version first", code="journey.unpublished")
    if status == "archived":
        from sqlalchemy import update

        now = utcnow()
        session.execute(update(JourneyRun).where(JourneyRun.journey_id == journey.id, JourneyRun.status.in_(OPEN))
                        .values(status="exited", ended_at=now, end_reason="archived", wake_at=None)
                        .execution_options(synchronize_session=False))
    journey.status, journey.updated_at = status, utcnow()
    record(session, actor=actor, action=f"journey.{status}", entity="journey", entity_id=journey.id, data={})
    session.flush()
    return journey
