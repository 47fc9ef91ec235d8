"""One pass over members for many definitions: how `orchard refresh` evaluates rule tags and segments.

Evaluating each definition on its own scanned and joined every member once per definition (40 passes
in the benchmark), wrote each matching set (up to every member) into a temporary table, anti-joined it
with the current assignments or spells, and ran a second member pass per segment for its flip times.
Here the definitions of one *batch* (none reads another's result) are evaluated in one statement: per
member, for each definition, its answer, its current state and its flip instant. Only the members for
whom something differs are written, into one temporary table (a few thousand rows on a steady night);
each tag and segment then writes its changes from that table with the same statements as the single
path.

The current state comes from one aggregate per source, joined once: per member, a bit mask of the
batch's tags it carries (`tag_state`) or of the batch's segments it is in (`spell_state`), and each
segment's stored flip instant (`flip_state`). Probing each definition's assignment, spell and flip
sets member by member — two to three hashed lookups per definition, ~60 per member for 20 segments —
was most of a 20-definition pass at a million members (~16 of 23 s for the segments); the aggregates
read those rows once. Whether a member's tag was given by somebody other than the rule (never taken
away) is asked only of the few members about to lose the tag, when the tag writes.

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
    Subquery,
    Table,
    and_,
    case,
    cast,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.segments import compiler as C
from orchard.segments import language as lang

#: The temporary table of one batch: member id, then per definition the columns of its `Probe`.
CHANGES = "_onepass_changes"

#: At most this many definitions per batch: each has one bit of a BIGINT mask, below the sign bit.
MAX_BATCH = 62


def batches(names: list[str], reads: Callable[[str], set[str]], size: int = MAX_BATCH) -> list[list[str]]:
    """Split `names` (in evaluation order) into consecutive batches of at most `size` such that no
    definition reads the result of one before it in its own batch. A definition reading one *after* it
    (or itself) reads the state before this refresh either way, as it did when each was evaluated alone
    in this order."""
    out: list[list[str]] = []
    current: list[str] = []
    for name in names:
        if len(current) == size or reads(name) & set(current):
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


def _bit(k: int) -> ColumnElement[int]:
    # Inline: a bound parameter would be typed by its first value on PostgreSQL (int4 for small bits).
    return literal_column(str(1 << k))


def _mask(column: ColumnElement[Any], ids: list[int]) -> ColumnElement[int]:
    """Bit k for the row whose `column` is ids[k]. Summed over rows unique per (member, id), it is the
    bit-or (SQLite has no bit_or)."""
    return cast(func.sum(case(*((column == i, _bit(k)) for k, i in enumerate(ids)), else_=literal_column("0"))),
                BigInteger)


def _has_bit(mask: ColumnElement[Any], k: int) -> ColumnElement[bool]:
    return func.coalesce(mask, 0).op("&")(_bit(k)) != 0


def tag_state(tag_ids: list[int]) -> Subquery:
    """Per member carrying any of the batch's tags (any source): `has`, bit k set for tag_ids[k]."""
    from orchard.members.models import MemberTag

    MT = MemberTag.__table__
    return select(MT.c.member_id, _mask(MT.c.tag_id, tag_ids).label("has")).where(
        MT.c.tag_id.in_(tag_ids)).group_by(MT.c.member_id).subquery("tag_state")


def spell_state(segment_ids: list[int]) -> Subquery:
    """Per member with an open spell in any of the batch's segments: `was`, bit k for segment_ids[k]
    (one open spell per segment and member: a unique index)."""
    from orchard.segments.models import SegmentMembership

    S = SegmentMembership.__table__
    return select(S.c.member_id, _mask(S.c.segment_id, segment_ids).label("was")).where(
        S.c.segment_id.in_(segment_ids), S.c.exited_at.is_(None)).group_by(S.c.member_id).subquery("spell_state")


def flip_state(segment_ids: list[int]) -> Subquery:
    """Per member with a stored flip in any of the batch's segments: `f{k}`, its flip instant in
    segment_ids[k] (NULL: none; one flip per segment and member: the primary key)."""
    from orchard.segments.models import SegmentFlip

    F = SegmentFlip.__table__
    return select(F.c.member_id, *(func.max(F.c.flip_at).filter(F.c.segment_id == i).label(f"f{k}")
                                   for k, i in enumerate(segment_ids))).where(
        F.c.segment_id.in_(segment_ids)).group_by(F.c.member_id).subquery("flip_state")


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


def tag_probe(key: str, condition: ColumnElement[bool], state: Subquery, k: int) -> Probe:
    """`b` the rule holds, `has` the member carries the tag (any source; bit k of `tag_state`). Kept
    when they differ: the tag writer adds it, or takes it away unless a person or an import gave it."""
    probe = Probe(key)
    probe.booleans = {"b": matches(condition), "has": _flag(_has_bit(state.c.has, k))}
    probe.changed = lambda r: r[f"{key}_b"] != r[f"{key}_has"]
    return probe


def segment_probe(key: str, condition: ColumnElement[bool], spells: Subquery, flips: Subquery, k: int,
                  flip: ColumnElement[Any] | None, gate: ColumnElement[bool] | None) -> Probe:
    """`b` the definition holds, `was` an open spell (bit k of `spell_state`), `stored` its stored flip
    instant (`flip_state`'s f{k}; null: none); with a flip expression, `flip` the wanted instant (null:
    none) and `same` the two are equal."""
    probe = Probe(key)
    probe.booleans = {"b": matches(condition), "was": _flag(_has_bit(spells.c.was, k))}
    probe.times = {"stored": flips.c[f"f{k}"]}

    def had(r: Any) -> ColumnElement[bool]:
        return r[f"{key}_stored"].is_not(None)

    if flip is not None:
        # Only members who pass the data-only conjuncts can change by time alone (`compiler.flip_gate`).
        probe.times["flip"] = case((and_(C.live(), *([gate] if gate is not None else [])), flip), else_=null())
        probe.late = {"same": lambda r: case((r[f"{key}_flip"].is_(None), false()),
                                             else_=_flag(r[f"{key}_flip"] == r[f"{key}_stored"]))}
        probe.changed = lambda r: or_(r[f"{key}_b"] != r[f"{key}_was"],
                                      and_(r[f"{key}_flip"].is_not(None), ~r[f"{key}_same"]),
                                      and_(r[f"{key}_flip"].is_(None), had(r)))
    else:
        probe.changed = lambda r: or_(r[f"{key}_b"] != r[f"{key}_was"], had(r))
    return probe


def run(session: Session, probes: list[Probe], joins: Iterable[str], states: Iterable[Subquery] = ()) -> Table:
    """Evaluate every probe over all members (merged ones too: their assignments, spells and flips must
    go) in one statement, with the `states` aggregates joined on member id; keep the members for whom
    some probe has something to write."""
    ctx = C.context(session)
    ctx.joins = set(joins)
    dialect = ctx.dialect
    source = C.frame(ctx)
    for state in states:
        source = source.outerjoin(state, state.c.member_id == C.m.c.id)
    columns = [C.m.c.id.label("member_id")]
    for p in probes:
        columns += [expr.label(f"{p.key}_{name}") for name, expr in p.booleans.items()]
        columns += [expr.label(f"{p.key}_{name}") for name, expr in p.times.items()]
    # OFFSET 0 keeps the planner from inlining a row set into the level above, which would repeat
    # each expression there (and build each hashed set twice).
    rows = select(*columns).select_from(source).offset(0).subquery("onepass")
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
