"""Live previews: the count of a definition, each condition's own count and a sample, in one pass.

Why this shape. A preview must count every member the caller can see once per condition (an
operator reads which condition narrows the group), so it is one pass over the members whatever
the definition — the cost to beat is that pass. It is a single aggregate:

* each condition is evaluated once per member in a subquery (`preview_rows`), fenced with
  `OFFSET NULL` on PostgreSQL so the planner does not inline the condition into every place that
  reads it (a behaviour window would be scanned once per reference);
* the aggregate groups the members by **block** — `member_id >> 5` (32 consecutive ids) when the
  whole definition holds, NULL otherwise — and counts each condition with `count(*) FILTER`; each
  matching block also sums `1 << (member_id & 31)`, the bitmap of its matching ids (one row per
  member, so the sum is the bit-or);
* the overall count is the population of the non-NULL blocks, the per-condition counts are sums
  over blocks, and the sample — the smallest matching ids — is decoded from the first
  `sample_size` blocks in block order (each holds at least one match).

So nothing is materialised per member (the previous shape wrote every member's row to a
`MATERIALIZED` CTE and read it twice), the groups are at most one per 32 ids, and plain
aggregates (count, sum) combine across PostgreSQL's parallel workers: the member pass runs as a
parallel partial aggregate. The result equals the compiled definition's member query
(`compiler.members_query`) exactly; tests check it condition by condition.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from sqlalchemy import BigInteger, Integer, Select, case, cast, func, literal, literal_column, select, true
from sqlalchemy.orm import Session

from orchard import db
from orchard.auth.service import Principal
from orchard.members import scope
from orchard.members.models import Member
from orchard.segments import compiler as C
from orchard.segments import language as lang
from orchard.segments.evaluate import compile_definition

#: Ids per block are 2**BLOCK_BITS: 32, so a block's bitmap sum stays below 2**32 (exact in every
#: integer type both databases use) and a million members make at most ~31k groups.
BLOCK_BITS = 5
_MASK = (1 << BLOCK_BITS) - 1


def preview(session: Session, *, principal: Principal, definition: Any, sample_size: int = 10,
            now: dt.datetime | None = None) -> dict[str, Any]:
    """The live count, each condition's own count and a sample (members masked as the caller reads
    them), from one statement."""
    from orchard.members.service import read_many  # members.service imports widely; keep this edge late

    started = time.perf_counter()
    db.batch_settings(session)
    compiled = compile_definition(session, definition, now=now)
    leaves = lang.leaves(compiled.tree)
    result = session.execute(statement(compiled.tree, compiled.ctx, principal, sample_size)).all()
    row = result[0]
    ids = sample_ids(((r.block, r.bits) for r in result if r.block is not None), sample_size)
    members = {mm.id: mm for mm in session.scalars(select(Member).where(Member.id.in_(ids)))} if ids else {}
    sample = [r.model_dump(mode="json") for r in read_many(session, principal, [members[i] for i in ids])]
    return {
        "count": int(row.count),
        "population": int(row.population),
        "conditions": [{"path": path, "condition": lang.dump(leaf), "count": int(row._mapping[f"c{i}"])}
                       for i, (leaf, path) in enumerate(leaves)],
        "sample": sample,
        "definition": lang.dump(compiled.tree),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def statement(tree: Any, ctx: C.Context, principal: Principal, sample_size: int) -> Select:
    """One row per sampled block (at least one row), each with `population`, `count`, the count of
    every leaf condition (c0, c1, … in document order), and `block` / `bits` (NULL without a sample):
    the matching ids of that block are `block << BLOCK_BITS | j` for each bit j set in `bits`."""
    leaves = lang.leaves(tree)
    labels = {path: f"c{i}" for i, (_, path) in enumerate(leaves)}
    rows = select(C.m.c.id.label("member_id"),
                  *(C.compile_condition(leaf, ctx, path).label(labels[path]) for leaf, path in leaves)
                  ).select_from(C.frame(ctx)).where(C.live(), scope.visible(principal))
    rows = _fenced(rows, ctx).subquery("preview_rows")
    member_id = rows.c.member_id
    combined = C.compile_condition(tree, ctx, leaf=lambda _, path: rows.c[labels[path]])
    # Constants inline: PostgreSQL shifts an int8 by an int4, and a bound parameter would be an int8.
    block = _case(combined, member_id.op(">>")(literal_column(str(BLOCK_BITS))))
    bit = cast(literal_column("1"), BigInteger).op("<<")(cast(member_id.op("&")(literal_column(str(_MASK))), Integer))
    # The block is computed in a second fenced subquery and grouped on as its column: grouped on as an
    # expression of member_id, the planner would expect a million groups (member_id's distinct count)
    # and not aggregate in parallel workers; a computed column gets its default estimate (200).
    marked = _fenced(select(block.label("block"), bit.label("bit"), *(rows.c[name] for name in labels.values()))
                     .select_from(rows), ctx).subquery("preview_marked")
    groups = select(marked.c.block, func.count().label("population"), func.sum(marked.c.bit).label("bits"),
                    *(func.count().filter(marked.c[name]).label(name) for name in labels.values())
                    ).group_by(marked.c.block).cte("preview_groups")
    matched = func.sum(_case(groups.c.block.is_not(None), groups.c.population))
    totals = select(func.coalesce(func.sum(groups.c.population), 0).label("population"),
                    func.coalesce(matched, 0).label("count"),
                    *(func.coalesce(func.sum(groups.c[name]), 0).label(name) for name in labels.values())
                    ).subquery("preview_totals")
    if not sample_size:
        return select(totals, literal(None, BigInteger).label("block"), literal(None, BigInteger).label("bits"))
    sample = select(groups.c.block, groups.c.bits).where(groups.c.block.is_not(None)).order_by(
        groups.c.block).limit(sample_size).subquery("preview_sample")
    return select(totals, sample.c.block, sample.c.bits).select_from(
        totals.outerjoin(sample, true())).order_by(sample.c.block)


def _fenced(query: Select, ctx: C.Context) -> Select:
    """On PostgreSQL, `OFFSET NULL` (no offset): the planner keeps the subquery whole — each condition
    computed once per member, not inlined into every expression that reads it — and may still run it in
    parallel workers. A bound parameter or a literal `OFFSET 0` would not do: the planner sees a
    parameter or a cast to bigint, not a constant, and keeps any subquery with such an offset out of
    parallel workers."""
    return query.offset(literal_column("NULL")) if ctx.dialect == "postgresql" else query


def _case(condition, value):
    return case((condition, value), else_=None)


def sample_ids(blocks, sample_size: int) -> list[int]:
    """The first `sample_size` member ids of (block, bitmap) pairs given in block order."""
    out: list[int] = []
    for block, bits in blocks:
        bits = int(bits)
        for j in range(1 << BLOCK_BITS):
            if bits >> j & 1:
                out.append((int(block) << BLOCK_BITS) | j)
                if len(out) == sample_size:
                    return out
    return out
