"""One pass over members for many definitions: how `orchard refresh` evaluates rule tags and segments.

Evaluating each definition on its own scanned and joined every member once per definition (40 passes
in the benchmark), wrote each matching set (up to every member) into a temporary table, anti-joined it
with the current assignments or spells, and ran a second member pass per segment for its flip times.
Here the definitions of one *batch* (none reads another's result) are evaluated in one statement: per
member, for each definition, its answer, its current state — carried tag / open spell / stored flip,
each a hashed set built once from an index — and its flip instant. Only the members for whom something
differs are written, into one temporary table (a few thousand rows on a steady night); each tag and
segment then writes its changes from that table with the same statements as the single path.

The result equals evaluating each definition alone in the same order (`tests/segments/test_onepass.py`
compares both paths over several days): a batch never holds a definition that reads another member of
the same batch, so each reads exactly the state it read before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    MetaData,
    Table,
    and_,
    case,
    false,
    not_,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.segments import compiler as C
from orchard.segments import language as lang

#: The temporary table of one batch: member id, then per definition the columns of its `Probe`.
CHANGES = "_onepass_changes"


def batches(names: list[str], reads: Callable[[str], set[str]]) -> list[list[str]]:
    """Split `names` (in evaluation order) into consecutive batches such that no definition reads the
    result of one before it in its own batch. A definition reading one *after* it (or itself) reads the
    state before this refresh either way, as it did when each was evaluated alone in this order."""
    out: list[list[str]] = []
    current: list[str] = []
    for name in names:
        if reads(name) & set(current):
            out.append(current)
            current = []
        current.append(name)
    if current:
        out.append(current)
    return out


def references(tree: Any, kind: type) -> set[str]:
    """Names of the tags (`lang.Tag_`) or codes of the segments (`lang.SegmentRef`) a definition reads."""
    if isinstance(tree, lang.All | lang.Any_ | lang.Not):
        return set().union(*(references(child, kind) for child, _ in lang.children(tree, "$")))
    if isinstance(tree, kind):
        return {tree.tag if isinstance(tree, lang.Tag_) else tree.segment}
    return set()


def _flag(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """A two-valued boolean: NULL (an unknown answer) counts as false, as in a WHERE clause."""
    return case((condition, true()), else_=false())


@dataclass
class Probe:
    """What the pass computes for one definition: named boolean columns (and timestamp columns for
    flips), and the test of whether anything must be written for a member."""

    key: str
    booleans: dict[str, ColumnElement[bool]] = field(default_factory=dict)
    times: dict[str, ColumnElement[Any]] = field(default_factory=dict)
    #: Booleans computed from the columns above (a row set's `c`), one level up: a flip instant is
    #: computed once and then compared, where repeating its expression repeated its zone arithmetic.
    late: dict[str, Callable[[Any], ColumnElement[bool]]] = field(default_factory=dict)
    changed: Callable[[Any], ColumnElement[bool]] = lambda cols: false()

    def col(self, table: Table, name: str):
        return table.c[f"{self.key}_{name}"]


def matches(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """A member's answer: live (not merged) and the definition holds — `members_query`'s WHERE."""
    return _flag(and_(C.live(), condition))


def tag_probe(key: str, condition: ColumnElement[bool], tag_id: int) -> Probe:
    """`b` the rule holds, `has` the member carries the tag (any source), `other` it carries it from a
    source other than the rule (staff, an import: never taken away). One assignment per (member, tag)."""
    from orchard.members.models import MemberTag

    MT = MemberTag.__table__
    probe = Probe(key)
    probe.booleans = {
        "b": matches(condition),
        "has": _flag(C.m.c.id.in_(select(MT.c.member_id).where(MT.c.tag_id == tag_id))),
        "other": _flag(C.m.c.id.in_(select(MT.c.member_id).where(MT.c.tag_id == tag_id, MT.c.source != "rule"))),
    }
    probe.changed = lambda r: or_(and_(r[f"{key}_b"], not_(r[f"{key}_has"])),
                                  and_(not_(r[f"{key}_b"]), r[f"{key}_has"], not_(r[f"{key}_other"])))
    return probe


def segment_probe(key: str, condition: ColumnElement[bool], segment_id: int, flip: ColumnElement[Any] | None,
                  gate: ColumnElement[bool] | None) -> Probe:
    """`b` the definition holds, `was` an open spell; `flip` the wanted flip instant (null: none),
    `had` a stored flip, `same` the stored flip equals the wanted one."""
    from orchard.segments.models import SegmentFlip, SegmentMembership

    S, F = SegmentMembership.__table__, SegmentFlip.__table__
    probe = Probe(key)
    probe.booleans = {
        "b": matches(condition),
        "was": _flag(C.m.c.id.in_(select(S.c.member_id).where(S.c.segment_id == segment_id,
                                                               S.c.exited_at.is_(None)))),
        "had": _flag(C.m.c.id.in_(select(F.c.member_id).where(F.c.segment_id == segment_id))),
    }
    if flip is not None:
        # Only members who pass the data-only conjuncts can change by time alone (`compiler.flip_gate`).
        wanted = case((and_(C.live(), *([gate] if gate is not None else [])), flip), else_=null())
        probe.times = {"flip": wanted}
        stored = select(F.c.member_id, F.c.flip_at).where(F.c.segment_id == segment_id)
        probe.late = {"same": lambda r: case((r[f"{key}_flip"].is_(None), false()),
                                             else_=_flag(tuple_(r.member_id, r[f"{key}_flip"]).in_(stored)))}
        probe.changed = lambda r: or_(r[f"{key}_b"] != r[f"{key}_was"],
                                      and_(r[f"{key}_flip"].is_not(None), not_(r[f"{key}_same"])),
                                      and_(r[f"{key}_flip"].is_(None), r[f"{key}_had"]))
    else:
        probe.changed = lambda r: or_(r[f"{key}_b"] != r[f"{key}_was"], r[f"{key}_had"])
    return probe


def run(session: Session, probes: list[Probe], joins: Iterable[str]) -> Table:
    """Evaluate every probe over all members (merged ones too: their assignments, spells and flips must
    go) in one statement; keep the members for whom some probe has something to write."""
    ctx = C.context(session)
    ctx.joins = set(joins)
    dialect = ctx.dialect
    columns = [C.m.c.id.label("member_id")]
    for p in probes:
        columns += [expr.label(f"{p.key}_{name}") for name, expr in p.booleans.items()]
        columns += [expr.label(f"{p.key}_{name}") for name, expr in p.times.items()]
    # OFFSET 0 keeps the planner from inlining a row set into the level above, which would repeat
    # each expression there (and build each hashed set twice).
    rows = select(*columns).select_from(C.frame(ctx)).offset(0).subquery("onepass")
    rows = select(rows, *(fn(rows.c).label(f"{p.key}_{name}") for p in probes for name, fn in p.late.items())
                  ).offset(0).subquery("onepass_late")
    changed = or_(*(p.changed(rows.c) for p in probes))
    table = Table(CHANGES, MetaData(), Column("member_id", BigInteger, primary_key=True),
                  *(Column(f"{p.key}_{name}", Boolean(create_constraint=False)) for p in probes
                    for name in p.booleans),
                  *(Column(f"{p.key}_{name}", UTCDateTime()) for p in probes for name in p.times),
                  *(Column(f"{p.key}_{name}", Boolean(create_constraint=False)) for p in probes for name in p.late),
                  prefixes=["TEMPORARY"])
    session.execute(text(f"DROP TABLE IF EXISTS {CHANGES}"))
    table.create(session.connection())
    session.execute(table.insert().from_select([c.name for c in rows.c], select(rows).where(changed)))
    if dialect == "postgresql":
        # Unanalyzed, a temp table is guessed at a few hundred rows whatever it holds (see tags.py).
        session.execute(text(f"ANALYZE {CHANGES}"))
    return table


def drop(session: Session) -> None:
    session.execute(text(f"DROP TABLE IF EXISTS {CHANGES}"))
