"""Earning-rule arithmetic without a database: rates and rounding, filters, multipliers stacking in
the documented order in Asia/Shanghai, priority and stop_further, caps, and the line split."""

import datetime as dt
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchard.loyalty.rules import (
    Cart,
    EventFacts,
    Line,
    Rule,
    distribute,
    evaluate_event,
    evaluate_order,
    parse_config,
    period_end,
    period_start,
)

SH = dt.timezone(dt.timedelta(hours=8))
WED_NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=SH)  # a Wednesday in Shanghai


def rule(id, kind, config, **kw) -> Rule:
    return Rule(id=id, name=kw.pop("name", f"R{id}"), kind=kind, config=parse_config(kind, config), **kw)


BASE = rule(1, "amount", {"points": 10, "per_fen": 10000})  # 10 points per ¥100
PER_YUAN = rule(2, "amount", {"points": 1, "per_fen": 100}, name="每元1分")


def cart(amount_fen=12800, at=WED_NOON, lines=(), **kw) -> Cart:
    return Cart(paid_at=at, amount_fen=amount_fen, lines=list(lines), **kw)


def total(outcomes) -> int:
    return sum(o.points for o in outcomes)


def test_the_issue_example_128_yuan_member_day_and_birthday():
    member_day = rule(10, "multiplier", {"factor": "2", "when": {"type": "member_day", "weekdays": [3]}},
                      name="会员日")
    birthday = rule(11, "multiplier", {"factor": "1.2", "when": {"type": "birthday_month"}}, name="生日月")
    out = evaluate_order(cart(birthday=dt.date(1990, 11, 3)), [PER_YUAN, birthday, member_day])
    assert total(out) == 307  # 128 × 2 × 1.2 = 307.2, floor
    assert out[0].text.startswith("¥128.00 × 1/¥1.00 × 2 会员日 × 1.2 生日月 = 307")
    assert [m["when"] for m in out[0].inputs["multipliers"]] == ["member_day", "birthday_month"]


@pytest.mark.parametrize("mode,expected", [("floor", 12), ("round", 13), ("ceil", 13)])
def test_rounding_per_rule(mode, expected):
    r = rule(1, "amount", {"points": 10, "per_fen": 10000, "rounding": mode})
    assert total(evaluate_order(cart(12500), [r])) == expected  # 12.5


def test_round_is_half_up_and_exact():
    r = rule(1, "amount", {"points": 1, "per_fen": 3, "rounding": "round"})
    assert total(evaluate_order(cart(4), [r])) == 1  # 1.333…
    assert total(evaluate_order(cart(5), [r])) == 2  # 1.666…


def test_member_day_is_the_shanghai_weekday_and_window():
    md = rule(10, "multiplier", {"factor": "2", "when": {"type": "member_day", "weekdays": [3],
                                                         "from": "10:00", "to": "22:00"}})
    # Tuesday 23:30 UTC is Wednesday 07:30 in Shanghai: a Wednesday, but before the window.
    early = dt.datetime(2026, 11, 24, 23, 30, tzinfo=dt.UTC)
    assert total(evaluate_order(cart(10000, at=early), [BASE, md])) == 10
    # Wednesday 02:00 UTC = 10:00 Shanghai: inside.
    assert total(evaluate_order(cart(10000, at=dt.datetime(2026, 11, 25, 2, tzinfo=dt.UTC)), [BASE, md])) == 20
    # Wednesday 15:00 UTC = Thursday 23:00 Shanghai: not a Wednesday there.
    assert total(evaluate_order(cart(10000, at=dt.datetime(2026, 11, 25, 15, tzinfo=dt.UTC)), [BASE, md])) == 10


def test_member_day_on_the_8th_of_each_month():
    md = rule(10, "multiplier", {"factor": "3", "when": {"type": "member_day", "month_days": [8]}})
    # 7 Dec 17:00 UTC is 8 Dec 01:00 in Shanghai.
    assert total(evaluate_order(cart(10000, at=dt.datetime(2026, 12, 7, 17, tzinfo=dt.UTC)), [BASE, md])) == 30
    assert total(evaluate_order(cart(10000, at=dt.datetime(2026, 12, 7, 15, tzinfo=dt.UTC)), [BASE, md])) == 10


def test_birthday_month_needs_a_birthday_in_this_shanghai_month():
    bd = rule(11, "multiplier", {"factor": "2", "when": {"type": "birthday_month"}})
    # 30 Nov 17:00 UTC is 1 Dec in Shanghai.
    at = dt.datetime(2026, 11, 30, 17, tzinfo=dt.UTC)
    assert total(evaluate_order(cart(10000, at=at, birthday=dt.date(2000, 12, 31)), [BASE, bd])) == 20
    assert total(evaluate_order(cart(10000, at=at, birthday=dt.date(2000, 11, 1)), [BASE, bd])) == 10
    assert total(evaluate_order(cart(10000, at=at), [BASE, bd])) == 10


def test_campaign_multiplier_follows_its_dates():
    camp = rule(12, "multiplier", {"factor": "1.5", "when": {"type": "campaign"}},
                starts_at=dt.datetime(2026, 11, 11, tzinfo=SH), ends_at=dt.datetime(2026, 11, 12, tzinfo=SH))
    assert total(evaluate_order(cart(10000, at=dt.datetime(2026, 11, 11, 23, 59, tzinfo=SH)), [BASE, camp])) == 15
    assert total(evaluate_order(cart(10000, at=dt.datetime(2026, 11, 12, 0, 0, tzinfo=SH)), [BASE, camp])) == 10


def test_stop_further_among_multipliers_follows_the_documented_order():
    md = rule(10, "multiplier", {"factor": "2", "when": {"type": "member_day", "weekdays": [3]}}, stop_further=True)
    camp = rule(12, "multiplier", {"factor": "5", "when": {"type": "campaign"}}, priority=100)
    # The campaign has the higher priority, but member_day comes first in the stacking order and stops.
    assert total(evaluate_order(cart(10000), [BASE, camp, md])) == 20


def test_category_filters_exclusions_and_discount_spread():
    lines = [Line(1, 6000, "运动鞋", "S1"), Line(2, 4000, "袜子", "S2"), Line(3, 10000, "运动鞋", "GIFT")]
    shoes = rule(1, "amount", {"points": 1, "per_fen": 100, "categories": ["运动鞋"], "exclude_skus": ["GIFT"]})
    # ¥200 of lines paid as ¥150 (an order-level discount): each line counts at 75 %.
    out = evaluate_order(cart(15000, lines=lines), [shoes])
    assert total(out) == 45 and out[0].lines == {1: 45}
    double_shoes = rule(9, "multiplier", {"factor": "2", "when": {"type": "campaign"}, "categories": ["运动鞋"]})
    every = rule(2, "amount", {"points": 1, "per_fen": 100})
    out = evaluate_order(cart(20000, lines=lines), [every, double_shoes])
    assert out[0].lines == {1: 120, 2: 40, 3: 200} and "部分商品" in out[0].text


def test_store_channel_and_minimum():
    r = rule(1, "amount", {"points": 1, "per_fen": 100, "stores": ["SH001"], "exclude_channels": ["meituan"],
                           "min_order_fen": 5000})
    assert total(evaluate_order(cart(10000, store="SH001", channel="pos"), [r])) == 100
    assert total(evaluate_order(cart(10000, store="GZ001", channel="pos"), [r])) == 0
    assert total(evaluate_order(cart(10000, store="SH001", channel="meituan"), [r])) == 0
    out = evaluate_order(cart(4999, store="SH001"), [r])
    assert total(out) == 0 and "minimum" in out[0].text


def test_priority_and_stop_further_among_amount_rules():
    vip_store = rule(5, "amount", {"points": 3, "per_fen": 100, "stores": ["SH001"]}, priority=10, stop_further=True)
    out = evaluate_order(cart(10000, store="SH001"), [PER_YUAN, vip_store])
    assert [o.rule_id for o in out] == [5] and total(out) == 300
    out = evaluate_order(cart(10000, store="HZ001"), [PER_YUAN, vip_store])
    assert total(out) == 100  # the stopping rule did not match, so the rules below it run


def test_rules_outside_their_dates_do_not_apply():
    later = rule(1, "amount", {"points": 1, "per_fen": 100}, starts_at=WED_NOON + dt.timedelta(seconds=1))
    assert evaluate_order(cart(), [later]) == []


def test_caps_cut_by_what_the_period_already_gave():
    capped = rule(1, "amount", {"points": 1, "per_fen": 100, "caps": {"day": 500, "lifetime": 2000}})
    used = {("day",): 450, ("lifetime",): 0}
    out = evaluate_order(cart(10000), [capped], lambda rid, period, at: used[(period,)])
    assert total(out) == 50 and out[0].inputs["capped_to"] == 50 and "cap per day" in out[0].text
    used = {("day",): 0, ("lifetime",): 1990}
    assert total(evaluate_order(cart(10000), [capped], lambda rid, period, at: used[(period,)])) == 10


def test_the_tightest_cap_binds_not_the_first_in_period_order():
    """A day's room (100) below the points (300) must not hide a lifetime room (40) below it."""
    capped = rule(1, "amount", {"points": 1, "per_fen": 100, "caps": {"day": 100, "week": 1000, "lifetime": 520}})
    used = {"day": 0, "week": 0, "lifetime": 480}
    out = evaluate_order(cart(30000), [capped], lambda rid, period, at: used[period])
    assert total(out) == 40 and out[0].inputs["capped_to"] == 40 and "cap per lifetime" in out[0].text
    used = {"day": 60, "week": 960, "lifetime": 0}  # day and week leave 40 each: named by the day
    out = evaluate_order(cart(30000), [capped], lambda rid, period, at: used[period])
    assert total(out) == 40 and "cap per day" in out[0].text
    share = rule(2, "event", {"event": "share", "points": 50, "caps": {"day": 30, "month": 45}})
    used = {"day": 0, "month": 25}
    out = evaluate_event(EventFacts("share", WED_NOON), [share], lambda rid, period, at: used[period])
    assert total(out) == 20 and "cap per month" in out[0].text


def test_event_rules_match_name_properties_and_caps():
    signup = rule(20, "event", {"event": "sign_up", "points": 100, "caps": {"lifetime": 100}})
    review = rule(21, "event", {"event": "review", "points": 20, "properties": {"with_photo": True}})
    ev = EventFacts("sign_up", WED_NOON)
    assert total(evaluate_event(ev, [signup, review], lambda *a: 0)) == 100
    assert total(evaluate_event(ev, [signup, review], lambda *a: 100)) == 0
    assert total(evaluate_event(EventFacts("review", WED_NOON, properties={"with_photo": True}), [review])) == 20
    assert evaluate_event(EventFacts("review", WED_NOON, properties={"with_photo": False}), [review]) == []


@pytest.mark.parametrize("config,field", [
    ({"points": 0, "per_fen": 100}, "points"),
    ({"points": 1}, "per_fen"),
    ({"points": 1, "per_fen": 100, "rounding": "up"}, "rounding"),
    ({"points": 1, "per_fen": 100, "caps": {"hour": 3}}, "caps"),
])
def test_bad_amount_configs_are_refused(config, field):
    with pytest.raises(ValueError, match=field):
        parse_config("amount", config)


def test_bad_multiplier_configs_are_refused():
    for config in ({"factor": "0", "when": {"type": "campaign"}},
                   {"factor": "2", "when": {"type": "member_day"}},
                   {"factor": "2", "when": {"type": "member_day", "weekdays": [8]}},
                   {"factor": "2", "when": {"type": "member_day", "weekdays": [3], "from": "22:00", "to": "10:00"}},
                   {"factor": "2", "when": {"type": "full_moon"}}):
        with pytest.raises(ValueError):
            parse_config("multiplier", config)


def test_periods_are_shanghai_days_iso_weeks_and_months():
    at = dt.datetime(2026, 11, 30, 17, tzinfo=dt.UTC)  # Tue 1 Dec 01:00 Shanghai
    assert period_start("day", at) == dt.datetime(2026, 11, 30, 16, tzinfo=dt.UTC)
    assert period_start("week", at) == dt.datetime(2026, 11, 29, 16, tzinfo=dt.UTC)  # Monday 30 Nov
    assert period_start("month", at) == dt.datetime(2026, 11, 30, 16, tzinfo=dt.UTC)
    assert period_end("month", period_start("month", at)) == dt.datetime(2026, 12, 31, 16, tzinfo=dt.UTC)
    assert period_end("week", period_start("week", at)) == dt.datetime(2026, 12, 6, 16, tzinfo=dt.UTC)
    assert period_start("lifetime", at) is None


@given(st.integers(0, 10**6), st.dictionaries(st.integers(1, 50), st.integers(0, 10**6), min_size=1))
def test_distribute_sums_exactly_and_stays_proportional(total_points, weights):
    parts = distribute(total_points, {k: Fraction(v) for k, v in weights.items()})
    if sum(weights.values()) == 0:
        assert set(parts.values()) == {0}
        return
    assert sum(parts.values()) == total_points
    whole = sum(weights.values())
    for k, v in weights.items():
        assert abs(parts[k] - Fraction(total_points * v, whole)) < 1
