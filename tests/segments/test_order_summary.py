"""member_category_last (`segments.order_summary`) and the order windows the refresh answers from it.

Two properties, on SQLite and PostgreSQL, over random histories written through the real services
(orders, full / partial / pending refunds, merges, orders dated after the refresh's clock):

* after every update the table equals a recomputation from all orders (`latest_sql`);
* every order window it can answer gives the same members from the table as from the orders, at
  clocks before, between and after the orders.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import func, select, text

from orchard import db
from orchard.events import orders as O
from orchard.events.schemas import OrderIn, RefundIn
from orchard.members import merge
from orchard.members.models import Member, MemberAggregate
from orchard.scoring.models import RefreshMark
from orchard.segments import compiler as C
from orchard.segments import evaluate, language, order_summary
from orchard.segments.models import MemberCategoryLast
from tests.segments.helpers import ADMIN, NOW

CATEGORIES = ["运动鞋", "美妆", "服装", "茶叶"]


def _cat(*values: str, op: str = "eq") -> list[dict]:
    return [{"prop": "category", "op": op, "value": list(values) if op in ("in", "not_in") else values[0]}]


#: Definitions the table answers, with edges: presence and absence written each way, distinct counts
#: with and without filters, thresholds zero satisfies, one-day and year-long windows.
ANSWERED = [
    {"event": "$order", "last_days": 30, "op": "gte", "value": 1, "where": _cat("美妆")},
    {"event": "$order", "last_days": 365, "op": "gt", "value": 0, "where": _cat("美妆", "茶叶", op="in")},
    {"event": "$order", "last_days": 7, "op": "ne", "value": 0, "where": _cat("服装", op="ne")},
    {"event": "$order", "last_days": 30, "op": "eq", "value": 0, "where": _cat("运动鞋")},
    {"event": "$order", "last_days": 1, "op": "lt", "value": 1, "where": _cat("美妆", op="not_in")},
    {"event": "$order", "last_days": 90, "op": "lte", "value": 0, "where": [{"prop": "category", "op": "exists"}]},
    {"event": "$order", "last_days": 365, "measure": "distinct", "prop": "category", "op": "gte", "value": 2},
    {"event": "$order", "last_days": 60, "measure": "distinct", "prop": "category", "op": "lt", "value": 2},
    {"event": "$order", "last_days": 60, "measure": "distinct", "prop": "category", "op": "eq", "value": 0},
    {"event": "$order", "last_days": 400, "measure": "distinct", "prop": "category", "op": "gte", "value": 2,
     "where": _cat("美妆", "茶叶", "服装", op="in") + [{"prop": "category", "op": "ne", "value": "茶叶"}]},
]
#: Order windows read from the orders whatever the flag: counts above one, several filters on
#: different lines, amounts, stores, SKUs, windows since joining, sums.
NOT_ANSWERED = [
    {"event": "$order", "last_days": 30, "op": "gte", "value": 2, "where": _cat("美妆")},
    {"event": "$order", "last_days": 30, "op": "gte", "value": 1},
    {"event": "$order", "last_days": 30, "op": "gte", "value": 1, "where": _cat("美妆") + _cat("茶叶")},
    {"event": "$order", "last_days": 30, "op": "gte", "value": 1,
     "where": [{"prop": "amount_fen", "op": "gte", "value": 100}]},
    {"event": "$order", "since_joined": True, "op": "gte", "value": 1, "where": _cat("美妆")},
    {"event": "$order", "last_days": 30, "measure": "distinct", "prop": "sku", "op": "gte", "value": 2},
    {"event": "$order", "last_days": 30, "measure": "sum", "op": "gte", "value": 100},
    {"event": "product_viewed", "last_days": 30, "op": "gte", "value": 1, "where": _cat("美妆")},
]


def test_the_table_answers_presence_and_distinct_category_windows_only():
    for d in ANSWERED:
        assert C.summary_shape(language.parse(d)) is not None, d
    for d in NOT_ANSWERED:
        assert C.summary_shape(language.parse(d)) is None, d


class History:
    """Random orders, refunds and merges through the services, with the clock of each write."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0
        self.orders: list[str] = []

    def member(self, s) -> int:
        m = Member(name=f"m{self.rng.random():.12f}", joined_at=NOW - dt.timedelta(days=500))
        s.add(m)
        s.flush()
        s.add(MemberAggregate(member_id=m.id, order_count=0, total_spend_fen=0, refund_fen=0))
        return m.id

    def order(self, s, member_id: int, paid_at: dt.datetime, categories: list[str] | None = None) -> str:
        self.n += 1
        key = f"o{self.n}"
        if categories is None:
            categories = [self.rng.choice(CATEGORIES + [None]) for _ in range(self.rng.choice([1, 1, 2, 3]))]
        lines = [{"category": c, "unit_price_fen": self.rng.choice([100, 900])} for c in categories]
        O.insert_order(s, data=OrderIn(external_id=key, member={"id": member_id}, paid_at=paid_at, lines=lines),
                       member_id=member_id, store_id=None, body_hash="x", earn=False)
        self.orders.append(key)
        return key

    def refund(self, s, key: str, at: dt.datetime, *, full: bool) -> None:
        self.n += 1
        data = RefundIn(external_id=f"r{self.n}", order_external_id=key, refunded_at=at,
                        amount_fen=None if full else 1)
        O.insert_refund(s, data=data, body_hash="x")
        if full:
            self.orders.remove(key)

    def day(self, s, now: dt.datetime) -> None:
        """A day of business before `now`: new members and orders (a few dated after `now`, a few far
        back, arriving late), refunds in full and in part, a refund before its order, a merge."""
        rng = self.rng
        ids = list(s.scalars(select(Member.id).where(Member.status == "active").order_by(Member.id)))
        ids += [self.member(s) for _ in range(3)]
        s.flush()
        for mid in rng.sample(ids, min(len(ids), 10)):
            back = rng.choice([dt.timedelta(hours=rng.randint(1, 30)), dt.timedelta(days=rng.randint(1, 420)),
                               -dt.timedelta(days=rng.randint(0, 3), hours=1)])
            self.order(s, mid, now - back)
        for key in rng.sample(self.orders, min(len(self.orders), 3)):
            self.refund(s, key, now, full=rng.random() < 0.7)
        # A refund that arrives before its order: applied in the transaction that stores the order.
        self.n += 1
        early = f"o{self.n}"
        self.orders.append(early)
        self.refund(s, early, now, full=True)
        O.insert_order(s, data=OrderIn(external_id=early, member={"id": rng.choice(ids)}, paid_at=now,
                                       lines=[{"category": "美妆", "unit_price_fen": 500}]),
                       member_id=rng.choice(ids), store_id=None, body_hash="x", earn=False)
        if len(ids) > 2 and rng.random() < 0.8:
            survivor, merged = rng.sample(ids, 2)
            merge.merge(s, principal=ADMIN, survivor_id=survivor, merged_id=merged, reason="same person")
        s.flush()


def _table(s) -> set[tuple]:
    return {(r[0], r[1], str(r[2])) for r in s.execute(text(
        "SELECT member_id, category, last_paid_at FROM member_category_last"))}


def _expected(s) -> set[tuple]:
    return {(r[0], r[1], str(r[2])) for r in s.execute(text(order_summary.latest_sql()))}


def _members(s, definition: dict, now: dt.datetime, summary: bool) -> set[int]:
    compiled = evaluate.compile_definition(s, definition, now=now, order_summary=summary)
    return set(s.scalars(C.members_query(compiled.condition, compiled.ctx)))


@pytest.mark.parametrize("seed", [3, 4])
def test_kept_table_equals_a_recomputation_and_answers_as_the_orders_do(clean_db, seed):
    rng = random.Random(seed)
    history = History(rng)
    with db.transaction() as s:
        ids = [history.member(s) for _ in range(12)]
        s.flush()
        for mid in ids:
            for _ in range(rng.choice([0, 1, 3])):
                history.order(s, mid, NOW - dt.timedelta(days=rng.randint(0, 400), hours=rng.randint(0, 23)))
    checked = late = 0
    for day in (0, 1, 2, 5, 40):
        now = NOW + dt.timedelta(days=day)
        if day:
            with db.transaction() as s:
                history.day(s, now)
        with db.transaction() as s:
            result = order_summary.update(s, now=now)
            assert result["rebuilt"] == (day == 0)
            assert _table(s) == _expected(s), f"day {day}"
            # The clock of a refresh, and clocks before and after it: rows later than the clock exist.
            for clock in (now, now - dt.timedelta(days=2), now + dt.timedelta(days=30)):
                for d in ANSWERED:
                    got = _members(s, d, clock, True)
                    assert got == _members(s, d, clock, False), (day, clock, d)
                    checked += bool(got)
            late += s.scalar(select(func.count()).where(
                MemberCategoryLast.last_paid_at > now - dt.timedelta(days=2))) or 0
    assert checked > 20
    assert late, "the history holds orders later than a clock (the fallback to the orders is exercised)"


def _summarised_buyer(s, history: History) -> int:
    """A member with one 美妆 order three days ago, and the table brought up to date (built)."""
    mid = history.member(s)
    s.flush()
    history.order(s, mid, NOW - dt.timedelta(days=3), ["美妆"])
    order_summary.update(s, now=NOW)
    return mid


def test_two_updates_in_a_row_keep_the_mark_of_the_pass_before(clean_db):
    """Rule tags and then segments each update the table: the second must not move `prev` up to the
    top, or a row still being committed below it would never be read."""
    history = History(random.Random(7))
    with db.transaction() as s:
        mid = _summarised_buyer(s, history)
        history.order(s, mid, NOW - dt.timedelta(days=1), ["美妆", "茶叶"])
        order_summary.update(s, now=NOW)
        first = s.get(RefreshMark, order_summary.PREFIX + "orders")
        prev, last = first.prev_id, first.last_id
        order_summary.update(s, now=NOW)
        assert (first.prev_id, first.last_id) == (prev, last) and prev < last
        assert _table(s) == _expected(s)


def test_reset_rebuilds_after_a_change_behind_the_services(clean_db):
    history = History(random.Random(8))
    with db.transaction() as s:
        _summarised_buyer(s, history)
        s.execute(text("UPDATE orders SET status = 'refunded'"))  # hand-made SQL: no refund row
        order_summary.update(s, now=NOW)
        assert _table(s) and not _expected(s)
        order_summary.reset(s)
        assert order_summary.update(s, now=NOW)["rebuilt"]
        assert _table(s) == _expected(s)


def test_only_definitions_with_an_answered_window_need_the_table():
    def needed(definitions: list[dict]) -> bool:
        return order_summary.needed(language.parse(d) for d in definitions)

    assert needed([{"all": [{"field": "gender", "op": "eq", "value": "female"}, ANSWERED[0]]}])
    assert needed([NOT_ANSWERED[0], {"not": ANSWERED[6]}])
    assert not needed(NOT_ANSWERED + [{"field": "order_count", "op": "gte", "value": 2}])
    assert not needed([])
