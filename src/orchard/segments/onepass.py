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

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    FromClause,
    MetaData,
    Table,
    and_,
    case,
    distinct,
    false,
    func,
    literal_column,
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
from orchard.events.models import Order, OrderLine
from orchard.segments import compiler as C
from orchard.segments import fields as F
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


def run(session: Session, probes: list[Probe], joins: Iterable[str], orders: SharedOrders | None = None) -> Table:
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
    source = orders.join(C.frame(ctx)) if orders is not None else C.frame(ctx)
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


#: The aliases of the batch's shared order aggregates (`SharedOrders`).
ORDERS, LINES = "onepass_orders", "onepass_lines"


def _needs_lines(node: Any) -> bool:
    return (node.measure == "distinct" and node.prop in ("category", "sku")) or any(
        f.prop in ("category", "sku") for f in node.where)


def _windows(tree: Any) -> list[Any]:
    if isinstance(tree, lang.All | lang.Any_ | lang.Not):
        return [w for child, _ in lang.children(tree, "$") for w in _windows(child)]
    return [tree] if SharedOrders.eligible(tree) else []


class SharedOrders:
    """The `$order` windows of a batch (count, or distinct store/channel/amount/category/sku; not
    `sum`, nor `since_joined`) read in one scan of the widest window's paid orders, grouped by member:
    one FILTERed count per window. Windows reading lines (a category or SKU filter or measure) share a
    second aggregate over the orders joined with their lines — only when the batch has a distinct
    category/SKU window at least as wide, which joins those lines anyway (else joining all lines
    would cost more than the compiled semi-join on the category index). Separately, each window read
    its orders again — a year of orders and lines twice in the benchmark's rule tags.

    Equal to the compiled window: an order counts when one of its lines passes the line filters (the
    compiled `o.id IN (lines …)`), and a member without orders in the scan measures 0, so `eq 0` /
    `lt n` (the compiled `NOT IN`) hold for it."""

    def __init__(self, ctx: C.Context, trees: Iterable[Any]) -> None:
        self.ctx = ctx
        self.parts: dict[str, list[tuple[str, ColumnElement[Any]]]] = {ORDERS: [], LINES: []}
        self.since: dict[str, dt.datetime] = {}
        windows = [w for tree in trees for w in _windows(tree)]
        self.lines_days = max((w.last_days for w in windows if w.measure == "distinct"
                               and w.prop in ("category", "sku")), default=0)

    @staticmethod
    def eligible(node: Any) -> bool:
        return isinstance(node, lang.Behaviour) and node.event == "$order" and not node.since_joined \
            and node.measure in ("count", "distinct")

    def hook(self, ctx: C.Context) -> Callable[[Any, str], ColumnElement[bool]]:
        """The `leaf` of `compiler.compile_condition` for a definition compiled in `ctx`."""
        return lambda node, path: self.leaf(node, ctx, path)

    def leaf(self, node: Any, ctx: C.Context, path: str) -> ColumnElement[bool]:
        """An eligible window from a shared aggregate; any other condition compiled as usual."""
        lines = self.eligible(node) and _needs_lines(node)
        if not self.eligible(node) or (lines and node.last_days > self.lines_days):
            return C.compile_condition(node, ctx, path)
        F.check_behaviour(node, path)
        o, line = Order.__table__, OrderLine.__table__
        since = ctx.midnight(ctx.today - dt.timedelta(days=node.last_days - 1))
        tests = [o.c.paid_at >= ctx.at(since)]
        for i, f in enumerate(node.where):
            fpath = f"{path}.where[{i}]"
            if f.prop in ("category", "sku"):
                tests.append(C._scalar_filter(line.c[f.prop], f, fpath, numeric=False))
            elif f.prop == "store":
                tests.append(C._store_filter(o.c.store_id, f, ctx, fpath))
            elif f.prop == "channel":
                tests.append(C._scalar_filter(o.c.channel, f, fpath, numeric=False))
            else:
                tests.append(C._scalar_filter(o.c.amount_fen - o.c.refunded_fen, f, fpath, numeric=True))
        if node.measure == "count":
            # Each order is one row of the orders-only scan; joined with its lines it may be several.
            measure = func.count(distinct(o.c.id)) if lines else func.count()
        else:
            measure = func.count(distinct({"store": o.c.store_id, "channel": o.c.channel, "amount_fen": o.c.amount_fen,
                                           "category": line.c.category, "sku": line.c.sku}[node.prop]))
        alias = LINES if lines else ORDERS
        name = f"w{len(self.parts[alias])}"
        self.parts[alias].append((name, measure.filter(and_(*tests))))
        self.since[alias] = min(self.since.get(alias, since), since)
        return C._COMPARE[node.op](func.coalesce(literal_column(f"{alias}.{name}"), 0), node.value)

    def join(self, source: FromClause) -> FromClause:
        """`source` LEFT JOIN each aggregate that some window uses."""
        o, line = Order.__table__, OrderLine.__table__
        for alias, parts in self.parts.items():
            if not parts:
                continue
            base = o.join(line, line.c.order_id == o.c.id) if alias == LINES else o
            agg = select(o.c.member_id, *(expr.label(name) for name, expr in parts)).select_from(base).where(
                o.c.status.in_(C._PAID), o.c.paid_at <= self.ctx.at(self.ctx.now),
                o.c.paid_at >= self.ctx.at(self.since[alias])).group_by(o.c.member_id).subquery(alias)
            source = source.outerjoin(agg, agg.c.member_id == C.m.c.id)
        return source
