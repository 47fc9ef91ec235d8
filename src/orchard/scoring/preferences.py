"""Built-in preference tags (SPEC S1 偏好/心理标签), refreshed set-based.

Each is a Tag with kind 'preference', source 'rule' and definition {"builtin": <name>} (category and
channel tags also carry {"value": …}: one tag per category / channel, created when first needed):

    价格敏感          price_sensitive  at least PRICE_PCT % of the member's orders were discounted: a coupon
                                       redeemed on it (not cancelled), or paid below its lines' list price
                                       (Σ quantity × unit price). Order `properties` are free-form and not read.
    偏好:<品类>       category         the category with the most net line spend (ties: name order)
    渠道偏好:<渠道>   channel          the most used orders.channel (ties: name order)
    尝鲜者            early_adopter    bought EARLY_MIN_SKUS different SKUs within EARLY_DAYS tenant-zone days
                                       of each SKU's first sale (over all orders: `sku_first_sales`,
                                       kept incrementally by `scoring.first_sales`). SKUs first sold
                                       within EARLY_DAYS of the first order on record are ignored: the
                                       data's start is not a launch.

All read the counted orders (paid, partially refunded) of the last WINDOW_DAYS days of live members,
and need MIN_ORDERS of them (one order is not a preference). The thresholds are constants here, not
yet part of the scoring policy (changing one makes the next pass recompute everyone).

A nightly refresh recomputes only the members whose inputs changed since the last pass
(`scoring.pref_scope`: new orders, refunds, coupon redemptions and cancellations, merges, hand-made
changes of these tags, orders leaving or entering the window, buyers of SKUs whose first sale moved)
and diffs their wanted tags against their current assignments; at full size that is ~3–5 % of the
buyers a day instead of a year of orders and lines. The first pass, and any pass after a threshold
here, a preference tag or the first sale on record changed, recomputes everyone (`full=True` forces
it). Both give the same assignments and the same history (property test
`tests/scoring/test_preferences_incremental.py`).

A refresh adds or removes only assignments whose own source is 'rule'; a member who was given one of
these tags by staff (manual) or an import keeps it untouched, whatever the rule says. Every add and
remove writes a TagChange with actor "rule:<tag name>". A name already used by a tag this module does
not own (a manual tag "偏好:茶叶") is left alone and reported under "skipped".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from orchard import db
from orchard.members.models import Tag
from orchard.scoring import days, first_sales, pref_scope

WINDOW_DAYS = 365
MIN_ORDERS = 2
PRICE_PCT = 50
EARLY_DAYS = 14
EARLY_MIN_SKUS = 2

PRICE_SENSITIVE = "价格敏感"
EARLY_ADOPTER = "尝鲜者"
CATEGORY_PREFIX = "偏好:"
CHANNEL_PREFIX = "渠道偏好:"
BUILTINS = ("price_sensitive", "category", "channel", "early_adopter")

_COUNTED = "('paid','partially_refunded')"


def _want_sql(sql: days.Sql, full: bool) -> list[str]:
    """Statements filling pref_want (member_id, name, builtin, value): for everyone, or (not `full`) for
    the members of pref_dirty only, whose orders are read through ix_orders_member_paid."""
    buyers = "SELECT member_id FROM pref_buyers"
    source = "orders o" if full else "pref_dirty d JOIN orders o ON o.member_id = d.member_id"
    return [
        f"""CREATE TEMP TABLE pref_orders AS
SELECT o.id, o.member_id, o.source, o.external_id, o.channel, o.paid_at, o.amount_fen
FROM {source} JOIN members m ON m.id = o.member_id AND m.status = 'active'
WHERE o.paid_at >= :cut_window AND o.paid_at <= :now AND o.status IN {_COUNTED}""",
        # Analyzed, so the planner knows it holds every order of the window (unanalyzed it guessed a
        # seventh and planned spilling hashes and per-row loops), and the buyers kept once.
        *(["ANALYZE pref_orders"] if sql.pg else []),
        """CREATE TEMP TABLE pref_buyers AS
SELECT member_id FROM pref_orders GROUP BY member_id HAVING COUNT(*) >= :min_orders""",
        *(["ANALYZE pref_buyers"] if sql.pg else []),
        # The window's lines, joined to their orders once (one hash join) for every tag: the list-price
        # sum of the price-sensitive test read them before by one index probe per order of the window.
        """CREATE TEMP TABLE pref_lines AS
SELECT p.id AS order_id, p.member_id, p.paid_at, l.sku, l.category, l.amount_fen - l.refunded_fen AS net,
       l.quantity * l.unit_price_fen AS list
FROM pref_orders p JOIN order_lines l ON l.order_id = p.id""",
        *(["ANALYZE pref_lines"] if sql.pg else []),
        "CREATE TEMP TABLE pref_want (member_id BIGINT, name VARCHAR(64), builtin VARCHAR(32), value VARCHAR(100))",
        f"""INSERT INTO pref_want (member_id, name, builtin, value)
SELECT o.member_id, '{PRICE_SENSITIVE}', 'price_sensitive', NULL
FROM pref_orders o LEFT JOIN (SELECT order_id, SUM(list) AS list FROM pref_lines GROUP BY order_id) l
     ON l.order_id = o.id
GROUP BY o.member_id
HAVING COUNT(*) >= :min_orders AND SUM(
    CASE WHEN EXISTS (SELECT 1 FROM coupon_redemptions r WHERE r.order_source = o.source
                      AND r.order_id = o.external_id AND r.cancelled_at IS NULL)
           OR o.amount_fen < l.list THEN 1 ELSE 0 END) * 100 >= :price_pct * COUNT(*)""",
        f"""INSERT INTO pref_want (member_id, name, builtin, value)
SELECT member_id, '{CATEGORY_PREFIX}' || substr(category, 1, 58), 'category', substr(category, 1, 58) FROM (
    SELECT member_id, category,
           ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY SUM(net) DESC, category) AS rn
    FROM pref_lines WHERE category IS NOT NULL AND category <> '' AND member_id IN ({buyers})
    GROUP BY member_id, category
) x WHERE rn = 1""",
        f"""INSERT INTO pref_want (member_id, name, builtin, value)
SELECT member_id, '{CHANNEL_PREFIX}' || substr(channel, 1, 32), 'channel', substr(channel, 1, 32) FROM (
    SELECT member_id, channel, ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY COUNT(*) DESC, channel) AS rn
    FROM pref_orders WHERE channel IS NOT NULL AND channel <> '' AND member_id IN ({buyers})
    GROUP BY member_id, channel
) x WHERE rn = 1""",
        f"""INSERT INTO pref_want (member_id, name, builtin, value)
SELECT p.member_id, '{EARLY_ADOPTER}', 'early_adopter', NULL
FROM pref_lines p
JOIN sku_first_sales f ON f.sku = p.sku
CROSS JOIN (SELECT MIN(paid_at) AS t0 FROM orders WHERE status IN {_COUNTED}) s
WHERE p.member_id IN ({buyers}) AND p.paid_at < {sql.midnight_after('f.first_at', EARLY_DAYS)}
  AND f.first_at >= {sql.midnight_after('s.t0', EARLY_DAYS)}
GROUP BY p.member_id HAVING COUNT(DISTINCT p.sku) >= :early_min""",
    ]


def _owned(session: Session) -> dict[str, Tag]:
    tags = session.scalars(select(Tag).where(Tag.kind == "preference", Tag.source == "rule")).all()
    return {t.name: t for t in tags if isinstance(t.definition, dict) and t.definition.get("builtin") in BUILTINS}


def _ensure_tags(session: Session) -> list[str]:
    """Create the tags pref_want names that do not exist yet (a handful: one per category and
    channel); drop from pref_want the names taken by tags this module does not own."""
    owned = _owned(session)
    wanted = session.execute(text("SELECT DISTINCT name, builtin, value FROM pref_want")).all()
    taken = set(session.scalars(select(Tag.name).where(Tag.name.in_([w.name for w in wanted])))) - set(owned)
    for w in wanted:
        if w.name not in owned and w.name not in taken:
            definition = {"builtin": w.builtin} | ({"value": w.value} if w.value is not None else {})
            session.add(Tag(name=w.name, kind="preference", source="rule", definition=definition,
                            description="内置偏好标签 / built-in preference tag (scoring.preferences)"))
    session.flush()
    for name in taken:
        session.execute(text("DELETE FROM pref_want WHERE name = :n"), {"n": name})
    return sorted(taken)


TEMP = ("pref_orders", "pref_buyers", "pref_lines", "pref_want", "pref_dirty", "pref_fs_old", "pref_skus")
CONSTANTS = (WINDOW_DAYS, MIN_ORDERS, PRICE_PCT, EARLY_DAYS, EARLY_MIN_SKUS, _COUNTED)
_NAMES = (PRICE_SENSITIVE, EARLY_ADOPTER)
_PREFIXES = (CATEGORY_PREFIX, CHANNEL_PREFIX)


def refresh(session: Session, *, now: dt.datetime, full: bool = False) -> dict[str, Any]:
    """Bring the rule assignments of the built-in preference tags in line with the orders: recompute the
    members whose inputs changed since the last pass (`pref_scope`), or everyone (`full`, the first
    pass, or when a threshold or a preference tag changed) — the same assignments and history either
    way. Returns {"tags", "added", "removed", "skipped": [names of tags owned by someone else],
    "full": bool, "members": members recomputed (incremental passes)}."""
    sql = days.Sql(session, now)
    params = {**sql.params(), "now": now, "cut_window": days.cut(now, WINDOW_DAYS), "min_orders": MIN_ORDERS,
              "price_pct": PRICE_PCT, "early_min": EARLY_MIN_SKUS}
    session.flush()
    db.batch_settings(session)
    for t in TEMP:
        session.execute(text(f"DROP TABLE IF EXISTS {t}"))
    session.execute(text("CREATE TEMP TABLE pref_fs_old AS SELECT sku, first_at FROM sku_first_sales"))
    first_sales.update(session, now=now)
    scope = pref_scope.begin(session, now=now, fp=_fingerprint(session))
    scope.full = scope.full or full
    if not scope.full:
        tag_ids = [t.id for t in pref_scope.pref_tags(session, _NAMES, _PREFIXES)]
        pref_scope.collect(session, scope, now=now, window_days=WINDOW_DAYS, early_days=EARLY_DAYS,
                           tag_ids=tag_ids, sql=sql, params=params)
    for stmt in _want_sql(sql, scope.full):
        days.run(session, stmt, params)
    skipped = _ensure_tags(session)
    owned = _owned(session)
    ids = sorted(t.id for t in owned.values())
    removed = added = 0
    if ids:
        id_list = ",".join(str(i) for i in ids)
        only = "" if scope.full else "AND mt.member_id IN (SELECT member_id FROM pref_dirty) "
        want_ids = ("SELECT w.member_id, t.id AS tag_id, t.name FROM pref_want w "
                    f"JOIN tags t ON t.name = w.name AND t.id IN ({id_list})")
        stale = (f"FROM member_tags mt JOIN tags t ON t.id = mt.tag_id WHERE mt.tag_id IN ({id_list}) "
                 f"AND mt.source = 'rule' {only}AND NOT EXISTS (SELECT 1 FROM pref_want w "
                 "WHERE w.member_id = mt.member_id AND w.name = t.name)")
        days.run(session, "INSERT INTO tag_changes (member_id, tag_id, change, source, actor, at) "
                          f"SELECT mt.member_id, mt.tag_id, 'removed', 'rule', substr('rule:' || t.name, 1, 64), :now "
                          f"{stale}", params)
        removed = days.run(session, "DELETE FROM member_tags WHERE (member_id, tag_id) IN "
                                    f"(SELECT mt.member_id, mt.tag_id {stale})", params).rowcount
        new = (f"FROM ({want_ids}) w WHERE NOT EXISTS "
               "(SELECT 1 FROM member_tags mt WHERE mt.member_id = w.member_id AND mt.tag_id = w.tag_id)")
        days.run(session, "INSERT INTO tag_changes (member_id, tag_id, change, source, actor, at) "
                          f"SELECT w.member_id, w.tag_id, 'added', 'rule', substr('rule:' || w.name, 1, 64), :now "
                          f"{new}", params)
        added = days.run(session, "INSERT INTO member_tags (member_id, tag_id, source, added_by, added_at) "
                                  f"SELECT w.member_id, w.tag_id, 'rule', substr('rule:' || w.name, 1, 64), :now "
                                  f"{new}", params).rowcount
        session.execute(update(Tag).where(Tag.id.in_(ids)).values(refreshed_at=now))
    # The fingerprint after the tags this pass created: the next pass compares with it.
    pref_scope.finish(session, scope, now=now, fp=_fingerprint(session))
    for t in TEMP:
        session.execute(text(f"DROP TABLE IF EXISTS {t}"))
    session.expire_all()
    return {"tags": len(ids), "added": added, "removed": removed, "skipped": skipped, "full": scope.full,
            "members": scope.members}


def _fingerprint(session: Session) -> int:
    return pref_scope.fingerprint(session, CONSTANTS, pref_scope.pref_tags(session, _NAMES, _PREFIXES))
