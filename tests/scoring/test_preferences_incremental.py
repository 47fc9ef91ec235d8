"""Property test: the incremental preference pass (only the members whose inputs changed, `pref_scope`)
leaves, after every pass, exactly the assignments and the rule history that recomputing everyone at
each pass leaves — whatever mix of orders (SKU lines in two categories, two channels, some paid below
list price, old ones arriving late, some paid after the pass), refunds (in full, by amount, by line),
coupon redemptions and their cancellation, merges, staff adding or removing a preference tag by hand,
and time moving forward (orders leaving the 365-day window, entering it, SKUs' first sales moving)
happens between passes.

The same operations run twice on an emptied database: once with incremental passes, once with
`refresh(full=True)` at each pass; members are compared by their creation order, tags by name."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from orchard import db
from orchard.coupons.models import Coupon, CouponRedemption, CouponTemplate
from orchard.errors import OrchardError
from orchard.events import ingest
from orchard.events.schemas import OrderIn, RefundIn
from orchard.members import merge, notes_tags
from orchard.members.service import list_members
from orchard.scoring import preferences
from tests.events.test_aggregate_invariants import SYSTEM, _wipe

PHONES = [f"1380000000{i}" for i in range(1, 7)]
ANCHOR = "13800000009"  # one order long before everything: the data's start (t0) stays put
SKUS = {"A": "茶叶", "B": "运动鞋", "C": "茶叶"}
T0 = dt.datetime(2023, 1, 1, 2, tzinfo=dt.UTC)  # orders may not lie in the (real) future
START = 400  # the clock's first day (T0 + days): orders are paid before the window, in it, after the clock

orders = st.tuples(st.just("order"), st.just(0), st.sampled_from([PHONES[0], *PHONES]),
                   st.lists(st.sampled_from(sorted(SKUS)), min_size=1, max_size=2, unique=True),
                   st.integers(START - 380, START + 300), st.sampled_from(["pos", "miniapp"]), st.booleans())
others = st.one_of(
    st.tuples(st.just("refund"), st.integers(1, 12), st.sampled_from(["full", "amount", "line"])),
    st.tuples(st.just("redeem"), st.integers(1, 12)),
    st.tuples(st.just("cancel"), st.integers(1, 12)),
    st.tuples(st.just("merge"), st.sampled_from(PHONES), st.sampled_from(PHONES)),
    st.tuples(st.just("manual"), st.sampled_from(PHONES), st.sampled_from(["价格敏感", "偏好:运动鞋"]),
              st.booleans()),
)
#: Rounds of orders and other operations, interleaved, each round ending with a pass some days later.
rounds = st.tuples(st.lists(orders, max_size=6), st.lists(others, max_size=5),
                   st.sampled_from([0, 1, 1, 3, 30, 120])).flatmap(
    lambda r: st.permutations(r[0] + r[1]).map(lambda mixed: [*mixed, ("pass", r[2])]))
ops = st.lists(rounds, min_size=1, max_size=6).map(lambda rs: [op for r in rs for op in r])


def _member(s, phone: str) -> int | None:
    items, _ = list_members(s, principal=SYSTEM, phone=phone, limit=1)
    return items[0].id if items else None


def _order(s, ext: str, phone: str, skus: list[str], paid_at: dt.datetime, channel: str, discount: bool) -> None:
    lines = [{"sku": k, "category": SKUS.get(k, "其他"), "quantity": 1, "unit_price_fen": 1000} for k in skus]
    ingest.ingest(s, principal=SYSTEM, kind="order", data=OrderIn(
        source="pos", external_id=ext, member={"identities": {"phone": phone}}, paid_at=paid_at, channel=channel,
        amount_fen=1000 * len(skus) - (300 if discount else 0), lines=lines))


class Run:
    """One replay of the operations; `snapshots` holds the state after each pass."""

    def __init__(self, full: bool) -> None:
        self.full = full
        self.day = START
        self.snapshots: list[tuple] = []
        self.incremental = 0
        self.orders = 0
        self.errors: list[tuple[str, str]] = []
        _wipe()
        with db.transaction() as s:
            _order(s, "ANCHOR", ANCHOR, ["Z"], T0 - dt.timedelta(days=400), "pos", False)
            tpl = CouponTemplate(name="t", kind="amount_off", off_fen=100, validity="relative", valid_days=7,
                                 created_by="t")
            s.add(tpl)
            s.flush()
            coupon = Coupon(code="C1", template_id=tpl.id, member_id=_member(s, ANCHOR), issued_at=T0,
                            valid_from=T0, valid_to=T0 + dt.timedelta(days=9999), issued_by="t")
            s.add(coupon)
            s.flush()
            self.coupon_id = coupon.id

    @property
    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(days=self.day)

    def apply(self, op) -> None:
        kind = op[0]
        with db.transaction() as s:
            try:
                if kind == "order":
                    _, _, phone, skus, day, channel, discount = op
                    self.orders += 1  # the n-th order is O<n>; refunds and redemptions may come first
                    _order(s, f"O{self.orders}", phone, skus, T0 + dt.timedelta(days=day), channel, discount)
                elif kind == "refund":
                    _, n, how = op
                    extra = ({"amount_fen": 300} if how == "amount" else
                             {"lines": [{"line_no": 1}]} if how == "line" else {})
                    ingest.ingest(s, principal=SYSTEM, kind="refund", data=RefundIn(
                        source="pos", external_id=f"R{n}-{how}-{self.day}", order_external_id=f"O{n}",
                        refunded_at=self.now, **extra))
                elif kind == "redeem":
                    if s.scalar(text("SELECT COUNT(*) FROM coupon_redemptions WHERE order_id = :o"),
                                {"o": f"O{op[1]}"}) == 0:
                        s.add(CouponRedemption(coupon_id=self.coupon_id, order_source="pos", order_id=f"O{op[1]}",
                                               order_amount_fen=1000, eligible_fen=1000, discount_fen=100,
                                               body_hash="x", actor="t", redeemed_at=self.now))
                elif kind == "cancel":
                    s.execute(text("UPDATE coupon_redemptions SET cancelled_at = :at "
                                   "WHERE order_id = :o AND cancelled_at IS NULL"),
                              {"o": f"O{op[1]}", "at": self.now + dt.timedelta(seconds=1)})
                elif kind == "merge":
                    ids = [_member(s, p) for p in op[1:]]
                    if None not in ids:
                        merge.merge(s, principal=SYSTEM, survivor_id=ids[0], merged_id=ids[1], reason="test")
                elif kind == "manual":
                    _, phone, name, add = op
                    m = _member(s, phone)
                    if m is not None:
                        (notes_tags.add_tag if add else notes_tags.remove_tag)(
                            s, principal=SYSTEM, member_id=m, name=name)
                else:
                    self.day += op[1]
                    result = preferences.refresh(s, now=self.now, full=self.full)
                    self.incremental += not result["full"]
            except OrchardError as e:
                # refused inputs (over-refund, self-merge, no such tag) write nothing
                self.errors.append((kind, str(e)[:60]))
        if kind == "pass":
            self.snapshots.append(self.state())

    def state(self) -> tuple:
        with db.transaction(readonly=True) as s:
            rank = {mid: i for i, mid in enumerate(s.scalars(text("SELECT id FROM members ORDER BY id")))}
            held = sorted((rank[r.member_id], r.name, r.source) for r in s.execute(text(
                "SELECT mt.member_id, t.name, mt.source FROM member_tags mt JOIN tags t ON t.id = mt.tag_id")))
            history = sorted((rank[r.member_id], r.name, r.change, str(r.at)[:19]) for r in s.execute(text(
                "SELECT c.member_id, t.name, c.change, c.at FROM tag_changes c JOIN tags t ON t.id = c.tag_id "
                "WHERE c.source = 'rule'")))
        return held, history


def replay(ops, *, full: bool) -> Run:
    run = Run(full)
    for op in [*ops, ("pass", 1)]:
        run.apply(op)
    return run


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_incremental_passes_equal_recomputing_everyone(clean_db, ops):
    incremental = replay(ops, full=False)
    full = replay(ops, full=True)
    assert incremental.snapshots == full.snapshots


def test_a_pass_after_nothing_changed_recomputes_nobody_and_an_order_leaving_the_window_is_seen(clean_db):
    run = Run(full=False)
    for op in [("order", 1, PHONES[0], ["B"], START - 364, "pos", True),
               ("order", 2, PHONES[0], ["B"], START - 10, "pos", True), ("pass", 0), ("pass", 0)]:
        run.apply(op)
    assert ("偏好:运动鞋" in {name for _, name, _ in run.snapshots[-1][0]})
    with db.transaction() as s:
        again = preferences.refresh(s, now=run.now)
        assert (again["full"], again["members"], again["added"], again["removed"]) == (False, 0, 0, 0)
        # two days on, order 1 has left the window: one order is no preference
        later = preferences.refresh(s, now=run.now + dt.timedelta(days=2))
        assert (later["full"], later["members"], later["removed"]) == (False, 1, 3)


P1, P2, P3 = PHONES[:3]
S = START
#: One scenario per kind of change, each made after two passes (so the member's own orders lie below
#: the re-read mark) and seen by a third: each fails when its source of changed members is left out.
SCENARIOS = {
    # P2 sold A first: the refund moves no first sale
    "refund": [("order", 0, P2, ["A"], S - 20, "pos", False), ("order", 0, P1, ["A"], S - 9, "pos", True),
               ("order", 0, P1, ["A"], S - 8, "pos", True), ("pass", 0), ("pass", 0), ("refund", 2, "full"),
               ("pass", 0)],
    "redemption": [("order", 0, P1, ["A"], S - 9, "pos", False), ("order", 0, P1, ["A"], S - 8, "pos", False),
                   ("pass", 0), ("pass", 0), ("redeem", 1), ("redeem", 2), ("pass", 0)],
    "cancellation": [("order", 0, P1, ["A"], S - 9, "pos", False), ("order", 0, P1, ["A"], S - 8, "pos", False),
                     ("redeem", 1), ("redeem", 2), ("pass", 0), ("pass", 1), ("pass", 1), ("cancel", 1),
                     ("cancel", 2), ("pass", 1)],
    "merge": [("order", 0, P1, ["A"], S - 9, "pos", False), ("order", 0, P2, ["B"], S - 8, "pos", False),
              ("pass", 0), ("pass", 0), ("merge", P1, P2), ("pass", 0)],
    "staff removed a rule tag": [("order", 0, P1, ["A"], S - 9, "pos", True),
                                 ("order", 0, P1, ["A"], S - 8, "pos", True), ("pass", 0), ("pass", 0),
                                 ("manual", P1, "价格敏感", False), ("pass", 0)],
    "window exit": [("order", 0, P1, ["A"], S - 364, "pos", True), ("order", 0, P1, ["A"], S - 8, "pos", True),
                    ("pass", 0), ("pass", 0), ("pass", 3)],
    "window entry": [("order", 0, P1, ["A"], S - 8, "pos", True), ("order", 0, P1, ["A"], S + 5, "pos", True),
                     ("pass", 0), ("pass", 0), ("pass", 10)],
    # P3 bought A 20 days after P2's first sale of it (late) and was B's first buyer (early): one early
    # SKU. P2's order refunded in full, A's first sale moves to P3's own order: two early SKUs.
    "first sale moved": [("order", 0, P2, ["A"], S - 40, "pos", False), ("order", 0, P3, ["A"], S - 20, "pos", False),
                         ("order", 0, P3, ["B"], S - 19, "pos", False), ("pass", 0), ("pass", 0),
                         ("refund", 1, "full"), ("pass", 0)],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_kind_of_change_reaches_its_members(clean_db, name):
    incremental = Run(False)
    for op in SCENARIOS[name]:
        incremental.apply(op)
    full = Run(True)
    for op in SCENARIOS[name]:
        full.apply(op)
    assert incremental.snapshots[-1] != incremental.snapshots[-2]  # the change changed something
    assert incremental.incremental == len(SCENARIOS[name]) - sum(op[0] != "pass" for op in SCENARIOS[name]) - 1
    assert incremental.snapshots == full.snapshots
