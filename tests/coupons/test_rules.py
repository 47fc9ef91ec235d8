"""The pure rules: validity windows in the tenant zone, discounts and their rounding, scope,
threshold, stacking, labels and codes. No database."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from orchard.coupons import codes, rules
from orchard.coupons.kinds import KINDS, Terms
from orchard.coupons.rules import Line, OrderIn, Other, Refused, Scope
from orchard.errors import InvalidInput

SH = ZoneInfo("Asia/Shanghai")


def at(y, m, d, h=0, minute=0):
    return dt.datetime(y, m, d, h, minute, tzinfo=SH)


@pytest.mark.parametrize("issued, days, after, start, end", [
    # the issue day counts as day one; windows end at a Shanghai midnight
    (at(2026, 1, 31, 20), 1, 0, at(2026, 1, 31, 20), at(2026, 2, 1)),
    (at(2026, 1, 31, 20), 28, 0, at(2026, 1, 31, 20), at(2026, 2, 28)),
    (at(2026, 1, 31, 20), 29, 0, at(2026, 1, 31, 20), at(2026, 3, 1)),
    # 01:00 on 1 Feb in Shanghai is still 31 Jan in UTC: the tenant's day counts
    (at(2026, 2, 1, 1), 28, 0, at(2026, 2, 1, 1), at(2026, 3, 1)),
    (at(2026, 12, 31, 23, 59), 1, 0, at(2026, 12, 31, 23, 59), at(2027, 1, 1)),
    # starting the next day: from that midnight, for N days
    (at(2026, 1, 31, 20), 3, 1, at(2026, 2, 1), at(2026, 2, 4)),
])
def test_validity_n_days_after_issue_in_the_tenant_zone(issued, days, after, start, end):
    # when
    valid_from, valid_to = rules.window(issued.astimezone(dt.UTC), zone=SH, valid_days=days, starts_after_days=after)
    # then
    assert (valid_from, valid_to) == (start, end)
    assert valid_to.tzinfo is dt.UTC


def test_leap_year_february():
    _, valid_to = rules.window(at(2028, 2, 1, 9).astimezone(dt.UTC), zone=SH, valid_days=29)
    assert valid_to == at(2028, 3, 1)


PERCENT = Terms(kind="percent_off", percent=20, max_off_fen=5000)


@pytest.mark.parametrize("terms, eligible, off", [
    (Terms(kind="amount_off", off_fen=2000, threshold_fen=10000), 10000, 2000),
    (Terms(kind="amount_off", off_fen=2000), 1500, 1500),  # never more than the order
    (PERCENT, 10000, 2000),
    (PERCENT, 100000, 5000),  # the cap
    (Terms(kind="percent_off", percent=33), 999, 329),  # 329.67 rounds down
    (Terms(kind="percent_off", percent=15, max_off_fen=100), 1, 0),
    (Terms(kind="gift", benefit={"name": "试用装"}), 5000, 0),
])
def test_discounts_are_whole_fen_rounded_down_and_capped(terms, eligible, off):
    assert rules.discount(terms, Scope(), OrderIn(amount_fen=eligible)) == (eligible, off)


def test_threshold_counts_only_lines_in_the_coupons_categories():
    terms = Terms(kind="amount_off", off_fen=3000, threshold_fen=20000)
    scope = Scope(categories=("茶叶",))
    order = OrderIn(amount_fen=30000, lines=(Line("茶叶", 15000), Line("茶具", 15000)))
    with pytest.raises(Refused) as e:
        rules.discount(terms, scope, order)
    assert e.value.code == "coupon.below_threshold" and e.value.extra["eligible_fen"] == 15000
    order = OrderIn(amount_fen=30000, lines=(Line("茶叶", 25000), Line("茶具", 5000)))
    assert rules.discount(terms, scope, order) == (25000, 3000)


@pytest.mark.parametrize("scope, order, code", [
    (Scope(stores=("SH001",)), OrderIn(amount_fen=100, store_code="GZ001"), "coupon.store_not_allowed"),
    (Scope(stores=("SH001",)), OrderIn(amount_fen=100), "coupon.store_not_allowed"),
    (Scope(channels=("wechat_mp",)), OrderIn(amount_fen=100, channel="pos"), "coupon.channel_not_allowed"),
    (Scope(categories=("茶叶",)), OrderIn(amount_fen=100, lines=(Line("茶具", 100),)), "coupon.category_not_allowed"),
])
def test_scope_refusals(scope, order, code):
    with pytest.raises(Refused) as e:
        rules.discount(Terms(kind="amount_off", off_fen=10), scope, order)
    assert e.value.code == code and e.value.status_code == 409


@pytest.mark.parametrize("mine, others, ok", [
    (Scope(), [], True),
    (Scope(), [Other(1, True, None)], False),  # a non-stackable coupon is alone
    (Scope(stackable=True), [Other(1, False, None)], False),  # the other one is not stackable
    (Scope(stackable=True), [Other(1, True, None)], True),
    (Scope(stackable=True, exclusive_group="店庆"), [Other(1, True, "店庆")], False),
    (Scope(stackable=True, exclusive_group="店庆"), [Other(1, True, "会员日")], True),
])
def test_stacking(mine, others, ok):
    if ok:
        rules.check_stacking(mine, others)
    else:
        with pytest.raises(Refused) as e:
            rules.check_stacking(mine, others)
        assert e.value.code == "coupon.not_stackable"


def test_state_refusals():
    now = at(2026, 5, 1).astimezone(dt.UTC)
    start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=1)
    rules.check_state("issued", start, end, now)
    for status, vf, vt, code in [("redeemed", start, end, "coupon.already_redeemed"),
                                 ("voided", start, end, "coupon.voided"),
                                 ("issued", start, now, "coupon.expired"),  # valid_to is exclusive
                                 ("issued", now + dt.timedelta(seconds=1), end, "coupon.not_yet_valid")]:
        with pytest.raises(Refused) as e:
            rules.check_state(status, vf, vt, now)
        assert e.value.code == code


@pytest.mark.parametrize("terms, text", [
    (Terms(kind="amount_off", off_fen=2000, threshold_fen=10000), "满100减20"),
    (Terms(kind="amount_off", off_fen=550), "无门槛减5.50"),
    (Terms(kind="percent_off", percent=20, max_off_fen=5000), "8折 最高减50"),
    (Terms(kind="percent_off", percent=15, threshold_fen=9900), "满99 8.5折"),
    (Terms(kind="gift", benefit={"name": "试用装"}), "赠品 试用装"),
    (Terms(kind="service", benefit={"description": "免费护理一次"}), "服务券 免费护理一次"),
])
def test_labels(terms, text):
    assert KINDS[terms.kind].describe(terms) == text


@pytest.mark.parametrize("terms, field", [
    (Terms(kind="amount_off"), "off_fen"),
    (Terms(kind="amount_off", off_fen=5000, threshold_fen=3000), "off_fen"),
    (Terms(kind="amount_off", off_fen=5, percent=3), "percent"),
    (Terms(kind="percent_off"), "percent"),
    (Terms(kind="gift"), "benefit.name"),
    (Terms(kind="service", off_fen=5, benefit={"description": "x"}), "off_fen"),
])
def test_kind_checks_name_the_field(terms, field):
    with pytest.raises(InvalidInput) as e:
        KINDS[terms.kind].check(terms)
    assert e.value.errors[0]["field"] == field


def test_codes_are_typable():
    code = codes.new_code()
    assert len(code) == 12 and set(code) <= set(codes.ALPHABET)
    assert codes.normalize(codes.display(code).lower()) == code
    assert codes.normalize("o1il-2345") == "0111" + "2345"
    assert codes.normalize("ABC") is None and codes.normalize("UUUU") is None and codes.normalize("A\x00BCD") is None
    assert len({codes.new_code() for _ in range(10000)}) == 10000
