"""The first counted sale of each SKU (`sku_first_sales`), kept incrementally for the early-adopter tag.

Taking every SKU's minimum paid_at over all orders and lines on each refresh cost a join of every
order with every line (10M × 10M at full size) to produce a few thousand rows that hardly ever change.
A SKU's first sale changes only when

* an order is added — it has an id above the mark of an earlier pass: folded in by taking the
  minimum with the stored row (`_fold`, reading orders by primary key range);
* the order that held it stops counting — refunded in full, deleted, or its line no longer names the
  SKU: each stored row's order is re-checked by primary key (a few thousand probes), and the SKUs that
  fail are recomputed from all orders (`_recompute`, a full scan; rare: it takes the refund of a
  SKU's very first sale).

Merges move orders between members and change no SKU's first sale. A pass folds from the mark of the
pass before the last (`RefreshMark.prev_id`), so an order whose transaction took its id before a pass
and committed after it is still read by the next pass. With no mark (first run, or after an
`orchard db upgrade` created the tables) everything is computed from scratch.

Ties (two sales of a SKU at the same instant) keep the lower order id; only `first_at` is read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard.scoring.models import RefreshMark

MARK = "sku_first_sales"
_COUNTED = "('paid','partially_refunded')"


def _first(where: str) -> str:
    """(sku, first_at, order_id) of the earliest counted sale of each SKU among the lines `where` admits."""
    return f"""SELECT sku, paid_at AS first_at, order_id FROM (
    SELECT l.sku, o.paid_at, o.id AS order_id,
           ROW_NUMBER() OVER (PARTITION BY l.sku ORDER BY o.paid_at, o.id) AS rn
    FROM order_lines l JOIN orders o ON o.id = l.order_id
    WHERE l.sku IS NOT NULL AND o.status IN {_COUNTED} AND {where}
) x WHERE rn = 1"""


def recompute_sql() -> str:
    """Every SKU's first sale from all orders: what the table must equal (tests compare with it)."""
    return _first("1 = 1")


def update(session: Session, *, now: dt.datetime) -> dict[str, Any]:
    """Bring sku_first_sales up to date with the orders. Returns {"rebuilt", "rechecked", "folded"}."""
    top = session.scalar(text("SELECT COALESCE(MAX(id), 0) FROM orders"))
    mark = session.get(RefreshMark, MARK, with_for_update=True)
    out = {"rebuilt": mark is None, "rechecked": 0, "folded": 0}
    if mark is None:
        session.execute(text("DELETE FROM sku_first_sales"))
        session.execute(text(f"INSERT INTO sku_first_sales (sku, first_at, order_id) {recompute_sql()}"))
        session.add(RefreshMark(name=MARK, last_id=top, prev_id=top, updated_at=now))
    else:
        out["rechecked"] = _recheck(session)
        out["folded"] = _fold(session, mark.prev_id)
        mark.prev_id, mark.last_id, mark.updated_at = mark.last_id, top, now
    session.flush()
    return out


def _recheck(session: Session) -> int:
    """Recompute the SKUs whose recorded first sale no longer counts (one primary-key probe per SKU)."""
    stale = ("SELECT f.sku FROM sku_first_sales f WHERE NOT EXISTS (SELECT 1 FROM orders o "
             "JOIN order_lines l ON l.order_id = o.id AND l.sku = f.sku WHERE o.id = f.order_id "
             f"AND o.status IN {_COUNTED} AND o.paid_at = f.first_at)")
    skus = list(session.scalars(text(stale)))
    if not skus:
        return 0
    found = ",".join(f":s{i}" for i in range(len(skus)))
    params = {f"s{i}": s for i, s in enumerate(skus)}
    session.execute(text(f"DELETE FROM sku_first_sales WHERE sku IN ({found})"), params)
    session.execute(text(f"INSERT INTO sku_first_sales (sku, first_at, order_id) {_first(f'l.sku IN ({found})')}"),
                    params)
    return len(skus)


def _fold(session: Session, since: int) -> int:
    """Take the minimum of each stored row and the sales of orders with an id above `since`."""
    session.execute(text("DROP TABLE IF EXISTS first_sales_new"))
    session.execute(text(f"CREATE TEMP TABLE first_sales_new AS {_first('o.id > :since')}"), {"since": since})
    n = session.scalar(text("SELECT COUNT(*) FROM first_sales_new")) or 0
    if n:
        session.execute(text("UPDATE sku_first_sales SET first_at = n.first_at, order_id = n.order_id "
                             "FROM first_sales_new n WHERE n.sku = sku_first_sales.sku "
                             "AND n.first_at < sku_first_sales.first_at"))
        session.execute(text("INSERT INTO sku_first_sales (sku, first_at, order_id) "
                             "SELECT n.sku, n.first_at, n.order_id FROM first_sales_new n WHERE NOT EXISTS "
                             "(SELECT 1 FROM sku_first_sales f WHERE f.sku = n.sku)"))
    session.execute(text("DROP TABLE first_sales_new"))
    return n
