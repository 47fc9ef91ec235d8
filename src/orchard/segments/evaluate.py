"""Evaluate definitions in the database: previews with per-condition counts, and the membership diff
that a refresh or a real-time sweep applies (spells opened and closed, flips recomputed, sizes kept).

Everything is set-based: the new member set is materialised once into a temporary table, then one
INSERT opens the spells of members who entered, one UPDATE closes the spells of those who left, and
one INSERT … SELECT stores the next flip times. `restrict` limits all three to a subset of members
(the dirty ones), which is how a real-time sweep reuses the same statements.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    MetaData,
    Select,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from orchard import db
from orchard.segments import compiler as C
from orchard.segments import language as lang
from orchard.segments import onepass
from orchard.segments.models import Segment, SegmentFlip, SegmentMembership, SegmentSize

_NEW = "_segment_new"
#: The new member set of one evaluation: a temporary table, created per `apply` in its transaction.
NEW = Table(_NEW, MetaData(), Column("member_id", BigInteger, primary_key=True))
#: Members of NEW without an open spell: the ones an evaluation lets in.
ENTERING = Table("_segment_entering", MetaData(), Column("member_id", BigInteger))


@dataclass
class Compiled:
    tree: Any
    ctx: C.Context
    condition: Any


def compile_definition(session: Session, definition: Any, *, now: dt.datetime | None = None,
                       self_code: str | None = None, root: str = "$", order_summary: bool = False) -> Compiled:
    """Parse and compile, raising `InvalidInput` that names the JSON path of the first problem.
    `order_summary`: answer order windows on categories from member_category_last (the refresh, right
    after `order_summary.update`)."""
    tree = lang.parse(definition, root=root)
    ctx = C.context(session, now=now, self_code=self_code, order_summary=order_summary)
    return Compiled(tree, ctx, C.compile_condition(tree, ctx, root))


def temp_table(session: Session, name: str = _NEW, *, primary_key: bool = True) -> None:
    """A fresh, empty temporary table of member ids (NEW by default) for this transaction."""
    dialect = session.get_bind().dialect.name
    key = " PRIMARY KEY" if primary_key else ""
    session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    if dialect == "postgresql":
        session.execute(text(f"CREATE TEMP TABLE {name} (member_id bigint{key}) ON COMMIT DROP"))
    else:
        session.execute(text(f"CREATE TEMP TABLE {name} (member_id INTEGER{key})"))


def apply(session: Session, segment: Segment, *, now: dt.datetime, cause: str,
          restrict: Select | None = None) -> dict[str, Any]:
    """Bring the segment's open spells in line with its definition (for `restrict`ed members only,
    when given), recompute their flip times, and record the size. Returns the counts."""
    started = time.perf_counter()
    # One evaluation of a segment at a time (the scheduler, a manual refresh and a sweep may meet).
    session.execute(select(Segment.id).where(Segment.id == segment.id).with_for_update())
    db.batch_settings(session)
    compiled = compile_definition(session, segment.definition, now=now, self_code=segment.code)
    ctx = compiled.ctx
    extra = [C.m.c.id.in_(restrict)] if restrict is not None else []
    temp_table(session)
    session.execute(insert(NEW).from_select(["member_id"], C.members_query(compiled.condition, ctx, *extra)))
    S = SegmentMembership
    # Counted first: psycopg does not always report a row count for INSERT … SELECT (it gave -1 here).
    # NOT EXISTS rather than NOT IN: an anti-join, where NOT IN over a set too large to hash in work_mem
    # is a rescan per row. Same answer (member ids are never null).
    # The entering members are computed once (counting them and opening their spells each evaluated
    # the anti-join against every open spell).
    entering = ~exists().where(S.segment_id == segment.id, S.exited_at.is_(None), S.member_id == NEW.c.member_id)
    leaving = ~exists().where(NEW.c.member_id == S.member_id)
    if restrict is not None:
        leaving = and_(leaving, S.member_id.in_(restrict))
    entered, exited = _write_spells(session, segment, select(NEW.c.member_id).where(entering), leaving,
                                    now=now, cause=cause)
    _flips(session, segment, compiled, restrict)
    drop_temp_table(session)
    return _finish(session, segment, now=now, cause=cause, entered=entered, exited=exited,
                   elapsed=int((time.perf_counter() - started) * 1000))


def _write_spells(session: Session, segment: Segment, entering: Select, leaving: ColumnElement[bool], *,
                  now: dt.datetime, cause: str) -> tuple[int, int]:
    """Open a spell for each `entering` member, close the open spells matching `leaving`; the counts."""
    S = SegmentMembership
    temp_table(session, ENTERING.name, primary_key=False)
    session.execute(insert(ENTERING).from_select(["member_id"], entering))
    entered = session.scalar(select(func.count()).select_from(ENTERING)) or 0
    session.execute(insert(S.__table__).from_select(
        ["segment_id", "member_id", "entered_at", "entered_by"],
        select(literal(segment.id), ENTERING.c.member_id, literal(now, C.UTCDateTime()), literal(cause))))
    exited = session.execute(update(S).where(S.segment_id == segment.id, S.exited_at.is_(None), leaving)
                             .values(exited_at=now, exited_by=cause)
                             .execution_options(synchronize_session=False)).rowcount or 0
    drop_temp_table(session, ENTERING.name)
    return entered, exited


def _finish(session: Session, segment: Segment, *, now: dt.datetime, cause: str, entered: int, exited: int,
            elapsed: int) -> dict[str, Any]:
    """Record the size (and the refresh times), as every evaluation ends."""
    S = SegmentMembership
    size = session.scalar(select(func.count()).select_from(S).where(S.segment_id == segment.id,
                                                                     S.exited_at.is_(None))) or 0
    if cause == "refresh" or entered or exited:
        session.add(SegmentSize(segment_id=segment.id, at=now, size=size, entered=entered, exited=exited,
                                cause=cause, duration_ms=elapsed))
    segment.size = size
    if cause == "refresh":
        segment.refreshed_at = now
        segment.next_refresh_at = now + dt.timedelta(minutes=segment.refresh_minutes) \
            if segment.refresh_minutes else None
    session.flush()
    return {"segment": segment.code, "size": size, "entered": entered, "exited": exited, "ms": elapsed}


def apply_batch(session: Session, segments: list[Segment], *, now: dt.datetime,
                cause: str = "refresh") -> list[dict[str, Any]]:
    """`apply` for segments none of which reads another of them (`onepass.batches`), for all members, in
    one pass over members (`onepass`): each segment then writes only the members whose spell or flip
    differs. Each result's `ms` is its own writes plus an equal share of the pass. Order windows on
    categories read member_category_last: the caller brings it up to date first
    (`order_summary.update`, as `service.refresh` does)."""
    started = time.perf_counter()
    for segment in segments:
        session.execute(select(Segment.id).where(Segment.id == segment.id).with_for_update())
    db.batch_settings(session)
    segment_ids = [segment.id for segment in segments]
    spells, flips = onepass.spell_state(segment_ids), onepass.flip_state(segment_ids)
    probes, joins = [], set()
    for i, segment in enumerate(segments):
        compiled = compile_definition(session, segment.definition, now=now, self_code=segment.code,
                                      order_summary=True)
        flip = C.flip_instant(compiled.ctx)
        gate = C.flip_gate(compiled.tree, compiled.ctx) if flip is not None else None
        probes.append(onepass.segment_probe(f"s{i}", compiled.condition, spells, flips, i, flip, gate))
        joins |= compiled.ctx.joins
    changes = onepass.run(session, probes, joins, [spells, flips])
    share = (time.perf_counter() - started) / len(segments)
    F = SegmentFlip.__table__
    results = []
    for segment, probe in zip(segments, probes, strict=True):
        own = time.perf_counter()
        b, was = probe.col(changes, "b"), probe.col(changes, "was")
        had = probe.col(changes, "stored").is_not(None)
        ids = select(changes.c.member_id)
        entered, exited = _write_spells(session, segment, ids.where(b, not_(was)),
                                        SegmentMembership.member_id.in_(ids.where(was, not_(b))), now=now, cause=cause)
        if "flip" in probe.times:
            flip, same = probe.col(changes, "flip"), probe.col(changes, "same")
            session.execute(delete(F).where(F.c.segment_id == segment.id,
                                            F.c.member_id.in_(ids.where(had, not_(same)))))
            session.execute(insert(F).from_select(["segment_id", "member_id", "flip_at"], select(
                literal(segment.id), changes.c.member_id, flip).where(flip.is_not(None), not_(same))))
        else:
            session.execute(delete(F).where(F.c.segment_id == segment.id, F.c.member_id.in_(ids.where(had))))
        elapsed = int((time.perf_counter() - own + share) * 1000)
        results.append(_finish(session, segment, now=now, cause=cause, entered=entered, exited=exited,
                               elapsed=elapsed))
    onepass.drop(session)
    return results


def drop_temp_table(session: Session, name: str = _NEW) -> None:
    session.execute(text(f"DROP TABLE IF EXISTS {name}"))


def _flips(session: Session, segment: Segment, compiled: Compiled, restrict: Select | None) -> None:
    """Bring the segment's flip rows (of the `restrict`ed members, when given) in line with the
    definition, writing only the rows that differ. From one day to the next almost every member's
    flip instant is the same (it derives from its own timestamps), so deleting and re-inserting them
    all — up to one row per member, each insert checking two foreign keys — was most of the cost of a
    segment with a `days_since_*` condition and no data-only gate."""
    F = SegmentFlip.__table__
    flip = C.flip_expression(compiled.ctx)
    mine = [F.c.segment_id == segment.id]
    if restrict is not None:
        mine.append(F.c.member_id.in_(restrict))
    if flip is None:
        session.execute(delete(F).where(*mine))
        return
    # Only members who pass the definition's data-only conjuncts can change by time alone.
    gate = C.flip_gate(compiled.tree, compiled.ctx)
    wanted = select(C.m.c.id.label("member_id"), flip.label("flip_at")).select_from(C.frame(compiled.ctx)).where(
        C.live(), flip.is_not(None), *([gate] if gate is not None else []))
    if restrict is not None:
        wanted = wanted.where(C.m.c.id.in_(restrict))
    wanted = wanted.subquery("wanted")
    session.execute(delete(F).where(*mine, ~exists().where(wanted.c.member_id == F.c.member_id,
                                                            wanted.c.flip_at == F.c.flip_at)))
    session.execute(insert(F).from_select(["segment_id", "member_id", "flip_at"], select(
        literal(segment.id), wanted.c.member_id, wanted.c.flip_at).where(
        ~exists().where(F.c.segment_id == segment.id, F.c.member_id == wanted.c.member_id))))
