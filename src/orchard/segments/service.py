"""Saved segments (人群包): create, change, archive, refresh in dependency order, and the real-time
sweep that re-checks only members whose data changed or whose flip time has come.

Ownership: a segment belongs to an org unit (null = HQ). Store-scoped staff create segments owned by
one of their stores and see only those (their members lists are scoped and masked anyway).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from orchard.audit.service import record
from orchard.auth.service import Principal
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.org.models import OrgUnit
from orchard.segments import dirty, evaluate, language, onepass, order_summary
from orchard.segments.models import DirtyMember, Segment, SegmentFlip, SegmentMembership

#: Members handled per real-time sweep transaction.
SWEEP_BATCH = 10_000


def _visible(principal: Principal):
    if principal.store_ids is None:
        return None
    return Segment.owner_unit_id.in_(sorted(principal.store_ids))


def get(session: Session, principal: Principal, code: str) -> Segment:
    stmt = select(Segment).where(Segment.code == code)
    if (cond := _visible(principal)) is not None:
        stmt = stmt.where(cond)
    segment = session.scalar(stmt)
    if segment is None:
        raise NotFound("segment not found", code="segment.not_found")
    return segment


def list_segments(session: Session, principal: Principal, *, status: str | None = "active") -> list[Segment]:
    stmt = select(Segment).order_by(Segment.code)
    if status:
        stmt = stmt.where(Segment.status == status)
    if (cond := _visible(principal)) is not None:
        stmt = stmt.where(cond)
    return list(session.scalars(stmt))


def _owner(session: Session, principal: Principal, code: str | None) -> int | None:
    if code is None:
        if principal.store_ids is not None:
            raise InvalidInput.field("owner_unit_code", "store staff own segments through one of their stores")
        return None
    unit_id = session.scalar(select(OrgUnit.id).where(OrgUnit.code == code))
    if unit_id is None:
        raise InvalidInput.field("owner_unit_code", f"no org unit with code {code!r}")
    if principal.store_ids is not None and unit_id not in principal.store_ids:
        raise InvalidInput.field("owner_unit_code", "you can only own segments through your own stores")
    return unit_id


def _check(session: Session, code: str, definition: Any) -> tuple[dict[str, Any], list[str]]:
    """Validate and compile (naming the JSON path of a problem); refuse cycles through other segments."""
    compiled = evaluate.compile_definition(session, definition, self_code=code, root="$.definition")
    refs = sorted(compiled.ctx.segments)
    graph = {s.code: list(s.depends_on or []) for s in session.scalars(select(Segment))}
    graph[code] = refs
    cycle = _cycle(graph, code)
    if cycle:
        raise InvalidInput.field("definition", "segments would contain each other: " + " → ".join(cycle))
    return language.dump(compiled.tree), refs


def _cycle(graph: dict[str, list[str]], start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                stack.append((nxt, [*path, nxt]))
    return None


def create(session: Session, *, principal: Principal, code: str, name: str, definition: Any,
           description: str | None = None, owner_unit_code: str | None = None, realtime: bool = True,
           refresh_minutes: int | None = 1440, refresh_now: bool = True) -> Segment:
    if session.scalar(select(Segment.id).where(Segment.code == code)) is not None:
        raise Conflict(f"a segment with code {code!r} exists", code="segment.code_taken")
    owner = _owner(session, principal, owner_unit_code)
    canonical, refs = _check(session, code, definition)
    now = utcnow()
    segment = Segment(code=code, name=name, description=description, definition=canonical, depends_on=refs,
                      owner_unit_id=owner, status="active", realtime=realtime, refresh_minutes=refresh_minutes,
                      size=0, version=1, created_by=principal.actor, created_at=now, updated_at=now,
                      next_refresh_at=now)
    session.add(segment)
    session.flush()
    record(session, actor=principal.actor, action="segment.create", entity="segment", entity_id=segment.id,
           data={"code": code, "definition": canonical})
    if refresh_now:
        evaluate.apply(session, segment, now=now, cause="refresh")
    return segment


def change(session: Session, *, principal: Principal, code: str, fields: dict[str, Any]) -> Segment:
    """Change name, description, definition, realtime or refresh period. A new definition bumps the
    version and is applied at once (members who no longer match exit now, new ones enter now)."""
    segment = get(session, principal, code)
    if segment.status != "active":
        raise Conflict("the segment is archived", code="segment.archived")
    before = {k: getattr(segment, k) for k in fields}
    if "definition" in fields:
        canonical, refs = _check(session, code, fields["definition"])
        if canonical != segment.definition:
            segment.definition, segment.depends_on = canonical, refs
            segment.version += 1
        fields = {k: v for k, v in fields.items() if k != "definition"}
    for key, value in fields.items():
        setattr(segment, key, value)
    segment.updated_at = utcnow()
    record(session, actor=principal.actor, action="segment.change", entity="segment", entity_id=segment.id,
           data={"before": before, "version": segment.version})
    evaluate.apply(session, segment, now=segment.updated_at, cause="refresh")
    return segment


def archive(session: Session, *, principal: Principal, code: str) -> Segment:
    """Archive: every open spell is closed (members exit now), flips are dropped; history stays."""
    segment = get(session, principal, code)
    users = [s.code for s in session.scalars(select(Segment).where(Segment.status == "active"))
             if code in (s.depends_on or [])]
    if users:
        raise Conflict("other segments use this one: " + ", ".join(users), code="segment.in_use")
    now = utcnow()
    S = SegmentMembership
    exited = session.execute(update(S).where(S.segment_id == segment.id, S.exited_at.is_(None))
                             .values(exited_at=now, exited_by="archive")
                             .execution_options(synchronize_session=False)).rowcount or 0
    session.execute(delete(SegmentFlip).where(SegmentFlip.segment_id == segment.id))
    segment.status, segment.size, segment.updated_at, segment.next_refresh_at = "archived", 0, now, None
    record(session, actor=principal.actor, action="segment.archive", entity="segment", entity_id=segment.id,
           data={"exited": exited})
    return segment


def dependency_order(segments: list[Segment]) -> list[Segment]:
    """Segments that others read come first (definitions are acyclic by construction)."""
    by_code = {s.code: s for s in segments}
    done: set[str] = set()
    ordered: list[Segment] = []

    def visit(segment: Segment) -> None:
        if segment.code in done:
            return
        done.add(segment.code)
        for ref in segment.depends_on or []:
            if ref in by_code:
                visit(by_code[ref])
        ordered.append(segment)

    for s in sorted(segments, key=lambda s: s.code):
        visit(s)
    return ordered


def refresh(session: Session, *, codes: list[str] | None = None, due_only: bool = False,
            now: dt.datetime | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Full refresh of active segments (all, the named ones, or those due), in dependency order."""
    now = now or utcnow()
    segments = list(session.scalars(select(Segment).where(Segment.status == "active")))
    wanted = set(codes) if codes else None
    if wanted is not None and (missing := wanted - {s.code for s in segments}):
        raise NotFound("no active segment " + ", ".join(sorted(missing)), code="segment.not_found")
    chosen = [s for s in dependency_order(segments)
              if (wanted is None or s.code in wanted)
              and not (due_only and (s.next_refresh_at is None or s.next_refresh_at > now))]
    by_code = {s.code: s for s in chosen}
    if order_summary.needed(language.parse(s.definition) for s in chosen):
        order_summary.update(session, now=now)
    results = []
    # Segments that read none of the others in their batch are evaluated in one pass over members.
    for batch in onepass.batches(list(by_code), lambda code: set(by_code[code].depends_on or [])):
        for result in evaluate.apply_batch(session, [by_code[c] for c in batch], now=now, cause="refresh"):
            results.append(result)
            if progress:
                progress(result)
    if wanted is None and not due_only:
        # Every segment was just evaluated for everyone: members queued before this refresh (with a
        # margin for writers whose transactions were still open) need no separate re-check.
        session.execute(delete(DirtyMember).where(DirtyMember.since < now - dt.timedelta(minutes=5))
                        .execution_options(synchronize_session=False))
    return results


def sweep(session: Session, *, now: dt.datetime | None = None, limit: int = SWEEP_BATCH) -> dict[str, Any]:
    """Real-time pass: members whose flip time has come join the dirty queue; up to `limit` queued
    members are re-checked against every real-time segment (dependency order); the rows handled are
    removed — unless re-queued meanwhile (a newer `since`), so no change is ever lost."""
    now = now or utcnow()
    F = SegmentFlip
    due = select(F.member_id).where(F.flip_at <= now).distinct()
    flipped = session.scalar(select(func.count()).select_from(due.subquery())) or 0
    if flipped:
        dirty.mark_from(session, due, at=now)
        session.execute(delete(F).where(F.flip_at <= now).execution_options(synchronize_session=False))
    members = _batch_table(session, limit=limit)
    if not members:
        session.execute(text("DROP TABLE IF EXISTS _segment_batch"))
        return {"flipped": flipped, "members": 0, "segments": []}
    restrict = select(text("member_id")).select_from(text("_segment_batch"))
    results = []
    segments = list(session.scalars(select(Segment).where(Segment.status == "active", Segment.realtime.is_(True))))
    for segment in dependency_order(segments):
        result = evaluate.apply(session, segment, now=now, cause="realtime", restrict=restrict)
        if result["entered"] or result["exited"]:
            results.append(result)
    _forget_handled(session)
    return {"flipped": flipped, "members": members, "segments": results}


def _forget_handled(session: Session) -> None:
    """Remove the queue rows this sweep read — only those still carrying the `since` it read."""
    session.execute(text("DELETE FROM segment_dirty_members WHERE EXISTS (SELECT 1 FROM _segment_batch b WHERE "
                         "b.member_id = segment_dirty_members.member_id AND b.since = segment_dirty_members.since)"))
    session.execute(text("DROP TABLE IF EXISTS _segment_batch"))


def _batch_table(session: Session, *, limit: int) -> int:
    """Copy the `limit` oldest queue rows (member and `since`, as stored) into a temporary table, in one
    statement; returns how many."""
    pg = session.get_bind().dialect.name == "postgresql"
    session.execute(text("DROP TABLE IF EXISTS _segment_batch"))
    session.execute(text("CREATE TEMP TABLE _segment_batch (member_id bigint PRIMARY KEY, since "
                         + ("timestamptz" if pg else "TEXT") + ")" + (" ON COMMIT DROP" if pg else "")))
    session.execute(text(
        "INSERT INTO _segment_batch (member_id, since) SELECT member_id, since FROM segment_dirty_members "
        "ORDER BY since, member_id LIMIT :n"), {"n": limit})
    return session.scalar(text("SELECT count(*) FROM _segment_batch")) or 0
