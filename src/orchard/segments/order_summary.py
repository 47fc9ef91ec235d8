"""Each member's latest counted order per category (`member_category_last`), kept incrementally, so that
`orchard refresh` answers order windows on categories without reading a year of orders and lines.

Rules such as 美妆女性 ("bought 美妆 in the last 365 days") or 多品类 ("bought from 3 categories in a
year") read, for every definition every night, the window's orders and their lines: at 10M orders a
join of 5M orders with 10M lines (~8 s for 多品类 alone). Both are functions of the latest counted order
(paid or partially refunded) of each (member, category) — as long as that order is not later than the
refresh's `now`:

* some counted order with a line in category c paid in [start, now]  ⇔  start ≤ last(member, c) ≤ now;
* the number of distinct categories of such orders  =  #{c : start ≤ last(member, c) ≤ now}.

A member holding a row later than `now` (an order dated after the refresh's clock) is answered from the
orders instead (`compiler._summarised`), so the answer is exact for any `now`. The compiler uses the
table only when asked (`Context.order_summary`): in the refresh's one-pass evaluation, right after
`update`; previews and real-time sweeps read the orders, as the table is only as fresh as the last
refresh.

Kept like `scoring.first_sales`. A row changes only when

* an order is added (an id above the mark): the maximum of the stored row and the new order (`_fold`);
* an order stops counting or changes hands — a refund or a merge with an id above its mark: every
  category of the members concerned is recomputed from their orders (`_recompute`, through
  `ix_orders_member_paid`).

A pass reads from the mark of the pass before the last (`RefreshMark.prev_id`), so a row whose
transaction took its id before one pass and committed after it is still read by the next. Assumptions
(kept by every writer in the code base, as for the preference marks): orders change only by refunds
(a refund waiting for its order is applied in the transaction that stores the order) and merges; order
lines never change. A change made behind these paths (hand-made SQL) is seen after `reset`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard.scoring import marks as id_marks
from orchard.scoring.models import RefreshMark

PREFIX = "category_last:"
#: Tables read by id mark: mark name → table.
ID_MARKS = {"orders": "orders", "refunds": "refunds", "merges": "member_merges"}
_COUNTED = "('paid','partially_refunded')"


def latest_sql(where: str = "1 = 1") -> str:
    """(member_id, category, last_paid_at) over the counted orders `where` admits: what the table must
    hold for those orders' members (tests compare the whole table with it)."""
    return ("SELECT o.member_id, l.category, MAX(o.paid_at) AS last_paid_at FROM orders o "
            "JOIN order_lines l ON l.order_id = o.id "
            f"WHERE l.category IS NOT NULL AND o.status IN {_COUNTED} AND {where} "
            "GROUP BY o.member_id, l.category")


def needed(trees: Iterable[Any]) -> bool:
    """Whether any of these parsed definitions has an order window the table answers: a refresh with
    none leaves the table (and its first build, 33 s at 10M orders) alone; the marks keep everything
    since."""
    from orchard.segments import compiler, language

    return any(isinstance(leaf, language.Behaviour) and compiler.summary_shape(leaf)
               for tree in trees for leaf, _ in language.leaves(tree))


def reset(session: Session) -> None:
    """Forget the marks: the next update rebuilds the table from all orders."""
    id_marks.forget(session, PREFIX)


def update(session: Session, *, now: dt.datetime) -> dict[str, Any]:
    """Bring member_category_last up to date with the orders. Returns {"rebuilt", "folded",
    "recomputed"} (rows folded in, members recomputed)."""
    marks, tops = id_marks.locked(session, PREFIX), id_marks.top_ids(session, ID_MARKS)
    out: dict[str, Any] = {"rebuilt": set(marks) != set(ID_MARKS), "folded": 0, "recomputed": 0}
    if out["rebuilt"]:
        pg = session.get_bind().dialect.name == "postgresql"
        # TRUNCATE on PostgreSQL (transactional there): a DELETE leaves every old row for the new
        # rows' unique checks to visit.
        session.execute(text("TRUNCATE member_category_last" if pg else "DELETE FROM member_category_last"))
        # In key order: the rows of a member lie together, so reading the table by its primary key (a
        # plan the per-member counts may take) reads it in order.
        session.execute(text("INSERT INTO member_category_last (member_id, category, last_paid_at) "
                             f"{latest_sql()} ORDER BY 1, 2"))
        if pg:
            session.execute(text("ANALYZE member_category_last"))
        for k, top in tops.items():
            if k in marks:
                marks[k].prev_id, marks[k].last_id, marks[k].updated_at = top, top, now
            else:
                session.add(RefreshMark(name=PREFIX + k, last_id=top, prev_id=top, updated_at=now))
    else:
        since = {k: m.prev_id for k, m in marks.items()}
        out["folded"] = _fold(session, since["orders"])
        out["recomputed"] = _recompute(session, since["refunds"], since["merges"])
        for k, m in marks.items():
            # Moved only when the table grew: two updates in a row (rule tags, then segments) must not
            # bring `prev` up to the top and lose a row still being committed below it.
            if tops[k] > m.last_id:
                m.prev_id, m.last_id = m.last_id, tops[k]
            m.updated_at = now
    session.flush()
    return out


def _fold(session: Session, since: int) -> int:
    """Take the maximum of each stored row and the orders with an id above `since`."""
    session.execute(text("DROP TABLE IF EXISTS _category_last_new"))
    session.execute(text(f"CREATE TEMP TABLE _category_last_new AS {latest_sql('o.id > :since')}"),
                    {"since": since})
    n = session.scalar(text("SELECT COUNT(*) FROM _category_last_new")) or 0
    if n and session.get_bind().dialect.name == "postgresql":
        # Unanalyzed, a temporary table is guessed at a few hundred rows whatever it holds.
        session.execute(text("ANALYZE _category_last_new"))
    if n:
        session.execute(text(
            "UPDATE member_category_last SET last_paid_at = n.last_paid_at FROM _category_last_new n "
            "WHERE n.member_id = member_category_last.member_id AND n.category = member_category_last.category "
            "AND n.last_paid_at > member_category_last.last_paid_at"))
        session.execute(text(
            "INSERT INTO member_category_last (member_id, category, last_paid_at) "
            "SELECT n.member_id, n.category, n.last_paid_at FROM _category_last_new n WHERE NOT EXISTS "
            "(SELECT 1 FROM member_category_last c WHERE c.member_id = n.member_id AND c.category = n.category)"))
    session.execute(text("DROP TABLE _category_last_new"))
    return n


def _recompute(session: Session, refunds_since: int, merges_since: int) -> int:
    """Recompute every row of the members whose orders may have stopped counting or changed hands."""
    session.execute(text("DROP TABLE IF EXISTS _category_last_members"))
    session.execute(text(
        "CREATE TEMP TABLE _category_last_members AS SELECT DISTINCT member_id FROM ("
        "SELECT o.member_id FROM refunds r JOIN orders o ON o.id = r.order_id WHERE r.id > :refunds "
        "UNION ALL SELECT survivor_id FROM member_merges WHERE id > :merges "
        "UNION ALL SELECT merged_id FROM member_merges WHERE id > :merges) x"),
        {"refunds": refunds_since, "merges": merges_since})
    n = session.scalar(text("SELECT COUNT(*) FROM _category_last_members")) or 0
    if n:
        chosen = "SELECT member_id FROM _category_last_members"
        session.execute(text(f"DELETE FROM member_category_last WHERE member_id IN ({chosen})"))
        session.execute(text("INSERT INTO member_category_last (member_id, category, last_paid_at) "
                             + latest_sql(f"o.member_id IN ({chosen})")))
    session.execute(text("DROP TABLE _category_last_members"))
    return n
