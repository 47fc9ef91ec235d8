"""Which members a preference pass must recompute (`pref_dirty`), so that the nightly pass costs what
changed since the last one, not a year of orders.

A member's built-in preference tags are a function of

* the member's counted orders paid in the window [cut(now, WINDOW_DAYS), now], their lines and the
  coupon redemptions naming them, and the member's status;
* each bought SKU's first sale (`sku_first_sales`) and the first counted sale on record (t0);
* the thresholds (module constants) and the preference tags themselves (which names are owned, which
  are taken by someone else);
* for the diff, the member's current assignments of those tags.

So, after a pass at `P`, a pass at `now` ≥ `P` recomputes exactly the members for whom one of these
moved (`collect`):

* orders with an id above the mark (new, or moved in by a later merge: see merges), refunds and coupon
  redemptions with an id above the mark (the order's current owner), redemptions cancelled since the
  pass before the last (`cancelled_at` is the cancel's clock: no id moves; a sequential read of
  `coupon_redemptions`), merges above the mark (survivor and merged: orders and tags moved, status
  changed), tag changes above the mark on the preference tags not written by a rule (staff or an
  import gave or took one by hand);
* orders that left the window (paid in [cut(P), cut(now))) or entered it (paid in (P, now]), read
  through the paid_at index;
* buyers of a SKU whose first sale moved, appeared or vanished, who bought it between the earlier of
  the two first sales and 14 days after the later one (the only orders whose early-adopter test can
  flip), read through the paid_at index of that range.

Everyone is recomputed (a full pass) when there is no mark yet, when `now` is before the last pass,
or when the fingerprint of the inputs shared by all members changed: the thresholds, the preference
tags' rows, t0. Marks are read "from the mark of the pass before the last", as in
`scoring.first_sales`: a row whose transaction took its id before a pass and committed after it is
still read by the next one.

Assumptions (kept by every writer in the code base): orders change only by refunds and merges;
`member_tags` rows of these tags change only with a `tag_changes` row, a merge, or an import adoption
(rule → import, which changes no answer). A change written behind these paths (hand-made SQL) is seen
only by the next full pass: clear the marks (`reset`) to force one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from orchard.members.models import Tag
from orchard.scoring import days, marks
from orchard.scoring.models import RefreshMark

PREFIX = "preferences:"
#: Tables read by id mark: mark name → (table, id column).
ID_MARKS = {"orders": "orders", "refunds": "refunds", "redemptions": "coupon_redemptions",
            "merges": "member_merges", "tag_changes": "tag_changes"}
CLOCK, INPUTS = "clock", "inputs"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_COUNTED = "('paid','partially_refunded')"


def _us(t: dt.datetime) -> int:
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


def _at(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def reset(session: Session) -> None:
    """Forget the marks: the next pass recomputes everyone."""
    marks.forget(session, PREFIX)


def pref_tags(session: Session, names: tuple[str, ...], prefixes: tuple[str, ...]) -> list[Tag]:
    """Every tag a pass reads: kind 'preference', or named like one of ours (owned or taken)."""
    cond = Tag.kind == "preference"
    for n in names:
        cond = cond | (Tag.name == n)
    for p in prefixes:
        cond = cond | Tag.name.startswith(p, autoescape=True)
    return list(session.scalars(select(Tag).where(cond).order_by(Tag.id)))


def fingerprint(session: Session, constants: tuple, tags: list[Tag]) -> int:
    """A 60-bit digest of what every member's answer shares: thresholds, tag rows, t0."""
    t0 = session.scalar(text(f"SELECT MIN(paid_at) FROM orders WHERE status IN {_COUNTED}"))
    rows = [(t.id, t.name, t.kind, t.source,
             json.dumps(t.definition, sort_keys=True, ensure_ascii=False)) for t in tags]
    digest = hashlib.sha256(repr((constants, rows, str(t0))).encode()).hexdigest()
    return int(digest[:15], 16)


class Scope:
    """The outcome of `begin`: full or incremental, and the marks to write at the end of the pass."""

    def __init__(self, full: bool, tops: dict[str, int], marks: dict[str, RefreshMark]) -> None:
        self.full = full
        self.tops = tops
        self.marks = marks
        self.members = 0


def begin(session: Session, *, now: dt.datetime, fp: int) -> Scope:
    """Read the marks (locked) and the tables' top ids at the start of the pass; decide full or not."""
    found, tops = marks.locked(session, PREFIX), marks.top_ids(session, ID_MARKS)
    complete = all(k in found for k in (*ID_MARKS, CLOCK, INPUTS))
    full = (not complete or found[INPUTS].last_id != fp or _us(now) < found[CLOCK].last_id)
    return Scope(full, tops, found)


def collect(session: Session, scope: Scope, *, now: dt.datetime, window_days: int, early_days: int,
            tag_ids: list[int], sql: days.Sql, params: dict[str, Any]) -> int:
    """Fill pref_dirty (member_id, distinct) for an incremental pass; returns its size. Needs
    pref_fs_old (sku_first_sales before this pass's update)."""
    m = scope.marks
    last_now = _at(m[CLOCK].last_id)
    p = {**params, **{f"{k}_prev": m[k].prev_id for k in ID_MARKS}, "now": now,
         "cut_cancel": _at(m[CLOCK].prev_id), "cut_last": last_now,
         "cut_exit_lo": days.cut(last_now, window_days), "cut_exit_hi": days.cut(now, window_days)}
    parts = [
        "SELECT member_id FROM orders WHERE id > :orders_prev",
        "SELECT o.member_id FROM refunds r JOIN orders o ON o.id = r.order_id WHERE r.id > :refunds_prev",
        "SELECT o.member_id FROM coupon_redemptions r JOIN orders o ON o.source = r.order_source "
        "AND o.external_id = r.order_id WHERE r.id > :redemptions_prev",
        "SELECT o.member_id FROM coupon_redemptions r JOIN orders o ON o.source = r.order_source "
        "AND o.external_id = r.order_id WHERE r.cancelled_at >= :cut_cancel",
        "SELECT survivor_id FROM member_merges WHERE id > :merges_prev",
        "SELECT merged_id FROM member_merges WHERE id > :merges_prev",
        "SELECT member_id FROM orders WHERE paid_at > :cut_last AND paid_at <= :now",
    ]
    if p["cut_exit_hi"] > p["cut_exit_lo"]:
        parts.append("SELECT member_id FROM orders WHERE paid_at >= :cut_exit_lo AND paid_at < :cut_exit_hi")
    if tag_ids:
        parts.append("SELECT member_id FROM tag_changes WHERE id > :tag_changes_prev AND source <> 'rule' "
                     f"AND tag_id IN ({','.join(str(int(i)) for i in tag_ids)})")
    # SKUs whose first sale differs from before this pass's update: (sku, earliest first sale, 14 days
    # after the latest) — the orders in that range are the only ones whose early test can flip.
    days.run(session, "CREATE TEMP TABLE pref_skus AS SELECT sku, MIN(first_at) AS lo, MAX(hi) AS hi FROM ("
                      f"SELECT sku, first_at, {sql.midnight_after('first_at', early_days)} AS hi FROM ("
                      "SELECT o.sku, o.first_at FROM pref_fs_old o WHERE NOT EXISTS (SELECT 1 FROM sku_first_sales n "
                      "WHERE n.sku = o.sku AND n.first_at = o.first_at) UNION ALL "
                      "SELECT n.sku, n.first_at FROM sku_first_sales n WHERE NOT EXISTS (SELECT 1 FROM pref_fs_old o "
                      "WHERE o.sku = n.sku AND o.first_at = n.first_at)) c) x GROUP BY sku", p)
    if session.scalar(text("SELECT COUNT(*) FROM pref_skus")):
        parts.append("SELECT o.member_id FROM orders o JOIN order_lines l ON l.order_id = o.id "
                     "JOIN pref_skus c ON c.sku = l.sku AND o.paid_at >= c.lo AND o.paid_at < c.hi "
                     "WHERE o.paid_at >= (SELECT MIN(lo) FROM pref_skus) "
                     "AND o.paid_at < (SELECT MAX(hi) FROM pref_skus)")
    days.run(session, "CREATE TEMP TABLE pref_dirty AS SELECT DISTINCT member_id FROM ("
                      + " UNION ALL ".join(parts) + ") d", p)
    session.execute(text("DROP TABLE pref_skus"))
    if sql.pg:
        session.execute(text("ANALYZE pref_dirty"))
    scope.members = session.scalar(text("SELECT COUNT(*) FROM pref_dirty")) or 0
    return scope.members


def finish(session: Session, scope: Scope, *, now: dt.datetime, fp: int) -> None:
    """Move the marks: prev ← last, last ← this pass's top (ids, clock); store the fingerprint."""
    values = {**scope.tops, CLOCK: _us(now), INPUTS: fp}
    for k, top in values.items():
        mark = scope.marks.get(k)
        if mark is None or scope.full:
            # A full pass read everything up to its top: the next one reads from there.
            prev = top if mark is None or k == INPUTS else min(mark.last_id, top)
            if mark is None:
                session.add(RefreshMark(name=PREFIX + k, last_id=top, prev_id=prev, updated_at=now))
            else:
                mark.prev_id, mark.last_id, mark.updated_at = prev, top, now
        else:
            mark.prev_id, mark.last_id, mark.updated_at = (top if k == INPUTS else mark.last_id), top, now
    session.flush()
