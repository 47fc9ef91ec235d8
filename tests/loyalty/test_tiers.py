"""Growth value and tiers on SQLite and PostgreSQL: growth rules and their reversal, upgrades at
once, scheduled downgrades after the hold (one level or recompute), renewals, overrides that end by
themselves, tier multipliers, every metric, and a member's standing."""

import datetime as dt

import pytest

from orchard import db
from orchard.loyalty import tiers
from tests.factories import headers, order, token_for
from tests.loyalty.test_earning import AMOUNT_RULE, add_rule, buy, points, recent, refund, settings  # noqa: F401

LEVELS = [{"code": "BASE", "name": "普通会员", "rank": 0, "threshold": 0},
          {"code": "SILVER", "name": "银卡", "rank": 1, "threshold": 100, "benefits": {"discount_rate": 0.98}},
          {"code": "GOLD", "name": "金卡", "rank": 2, "threshold": 1000, "benefits": {"discount_rate": 0.95,
                                                                                    "free_shipping": True}}]
GROWTH_RULE = {"name": "每元1成长值", "kind": "amount", "target": "growth", "config": {"points": 1, "per_fen": 100}}


@pytest.fixture
def ops(client, settings):  # noqa: F811
    from tests.factories import api_key

    return headers(token_for(client, "admin")), headers(api_key())


def program(client, admin, **kw):
    r = client.put("/api/v1/tiers", headers=admin, json={"levels": LEVELS, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def tier(client, admin, m):
    r = client.get(f"/api/v1/members/{m}/tier", headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


def history(client, admin, m):
    return [(c["reason"], c["from_level"], c["to_level"])
            for c in client.get(f"/api/v1/members/{m}/tier/history", headers=admin).json()]


def evaluate(now):
    with db.transaction() as s:
        return tiers.evaluate(s, now=now)


def test_an_order_crossing_a_threshold_upgrades_at_once_and_a_refund_takes_growth_back(client, ops):
    admin, key = ops
    program(client, admin)
    add_rule(client, admin, GROWTH_RULE)
    m = buy(client, key, "O1")  # ¥130 → 130 growth
    assert client.get(f"/api/v1/members/{m}/growth", headers=admin).json()["balance"] == 130
    t = tier(client, admin, m)
    assert t["level"]["code"] == "SILVER" and t["next_level"]["code"] == "GOLD" and t["next_needs"] == 870
    assert t["keep_needs"] == 0 and t["keep_until"]
    assert history(client, admin, m) == [("upgrade", "BASE", "SILVER")]
    assert points(client, admin, m)["balance"] == 0  # growth rules give no points
    refund(client, key, "R1", "O1", lines=[{"sku": "A"}])  # ¥100 of the ¥130
    assert client.get(f"/api/v1/members/{m}/growth", headers=admin).json()["balance"] == 30
    t = tier(client, admin, m)
    assert t["level"]["code"] == "SILVER" and t["keep_needs"] == 70  # kept until the hold runs out


def test_downgrade_waits_for_the_hold_then_goes_one_level(client, ops):
    admin, key = ops
    program(client, admin, hold_days=30, downgrade="one_level")
    add_rule(client, admin, GROWTH_RULE)
    m = buy(client, key, "O1", lines=[{"sku": "X", "quantity": 1, "unit_price_fen": 120000}])  # 1,200 → GOLD
    assert tier(client, admin, m)["level"]["code"] == "GOLD"
    refund(client, key, "R1", "O1")  # growth back to 0
    now = dt.datetime.now(dt.UTC)
    assert evaluate(now + dt.timedelta(days=10)).downgraded == 0  # inside the hold
    r = evaluate(now + dt.timedelta(days=31))
    assert (r.downgraded, tier(client, admin, m)["level"]["code"]) == (1, "SILVER")
    evaluate(now + dt.timedelta(days=45))  # the new hold at SILVER runs 30 days from day 31
    assert tier(client, admin, m)["level"]["code"] == "SILVER"
    evaluate(now + dt.timedelta(days=62))
    assert tier(client, admin, m)["level"]["code"] == "BASE"
    assert [h[0] for h in history(client, admin, m)] == ["downgrade", "downgrade", "upgrade"]


def test_recompute_goes_straight_to_the_target_and_qualifying_renews_the_hold(client, ops):
    admin, key = ops
    program(client, admin, hold_days=30, downgrade="recompute")
    add_rule(client, admin, GROWTH_RULE)
    gold = buy(client, key, "O1", lines=[{"sku": "X", "quantity": 1, "unit_price_fen": 120000}])
    keeper = buy(client, key, "O2", phone="13900000009", lines=[{"sku": "X", "quantity": 1, "unit_price_fen": 15000}])
    refund(client, key, "R1", "O1")
    now = dt.datetime.now(dt.UTC)
    r = evaluate(now + dt.timedelta(days=31))
    assert r.downgraded == 1 and tier(client, admin, gold)["level"]["code"] == "BASE"
    kept = tier(client, admin, keeper)
    assert kept["level"]["code"] == "SILVER"
    assert dt.datetime.fromisoformat(kept["keep_until"]) > now + dt.timedelta(days=60)  # renewed on day 31


def test_the_rolling_window_lets_old_growth_fall_away(client, ops):
    admin, key = ops
    program(client, admin, hold_days=0)
    add_rule(client, admin, GROWTH_RULE)
    m = buy(client, key, "O1")
    assert tier(client, admin, m)["level"]["code"] == "SILVER"
    assert evaluate(dt.datetime.now(dt.UTC) + dt.timedelta(days=380)).downgraded == 1


def test_an_override_wins_until_its_date_and_feeds_the_tier_multiplier(client, ops):
    admin, key = ops
    program(client, admin)
    add_rule(client, admin, AMOUNT_RULE)
    add_rule(client, admin, {"name": "金卡1.5倍", "kind": "multiplier",
                             "config": {"factor": "1.5", "when": {"type": "tier", "levels": ["GOLD"]}}})
    m = buy(client, key, "O1")
    assert points(client, admin, m)["balance"] == 130
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    r = client.post(f"/api/v1/members/{m}/tier/override", headers=admin,
                    json={"level": "GOLD", "until": until, "reason": "投诉补偿"})
    assert r.status_code == 200, r.text
    assert r.json()["effective_level"]["code"] == "GOLD" and r.json()["level"]["code"] == "BASE"
    buy(client, key, "O2")
    assert points(client, admin, m)["balance"] == 130 + 195
    assert evaluate(dt.datetime.now(dt.UTC) + dt.timedelta(days=31)).overrides_ended == 1
    assert tier(client, admin, m)["effective_level"]["code"] == "BASE"
    assert [h[0] for h in history(client, admin, m)] == ["override_ended", "override"]
    bad = client.post(f"/api/v1/members/{m}/tier/override", headers=admin,
                      json={"level": "DIAMOND", "until": until, "reason": "x"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "level"
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.post(f"/api/v1/members/{m}/tier/override", headers=clerk,
                       json={"level": "GOLD", "until": until, "reason": "x"}).status_code == 403


@pytest.mark.parametrize("metric,weights,expected", [
    ("spend", {}, ["BASE", "SILVER", "GOLD"]),
    ("orders", {}, ["SILVER", "SILVER", "SILVER"]),
    ("score", {"spend_yuan": 0, "orders": 150}, ["SILVER", "SILVER", "SILVER"]),
])
def test_every_metric_in_one_set_based_pass(client, ops, metric, weights, expected):
    admin, key = ops
    silver, gold = {"spend": (10000, 100000), "orders": (1, 3), "score": (100, 100000)}[metric]  # spend in fen
    levels = [{**LEVELS[0]}, {**LEVELS[1], "threshold": silver}, {**LEVELS[2], "threshold": gold}]
    r = client.put("/api/v1/tiers", headers=admin, json={"levels": levels, "metric": metric, "weights": weights,
                                                         "period": "calendar_year"})
    assert r.status_code == 200, r.text
    members = []
    for i, fen in enumerate([5000, 50000, 200000]):
        body = order(f"O{i}", phone=f"1390000000{i}", lines=[{"sku": "X", "quantity": 1, "unit_price_fen": fen}],
                     paid_at=dt.datetime.now(dt.UTC).isoformat())
        members.append(client.post("/api/v1/orders", headers=key, json=body).json()["member_id"])
    r = client.post("/api/v1/tiers/evaluate", headers=admin)
    assert r.status_code == 200 and r.json()["members"] >= 3
    assert [tier(client, admin, m)["level"]["code"] for m in members] == expected


@pytest.mark.parametrize("levels,field", [
    ([{**LEVELS[0], "threshold": 5}, LEVELS[1]], "levels"),
    ([LEVELS[0], {**LEVELS[1], "threshold": 0}], "levels"),
    ([LEVELS[0], {**LEVELS[1], "rank": 0}], "levels"),
    ([LEVELS[0]], "levels"),
])
def test_a_bad_program_is_refused(client, ops, levels, field):
    admin, _ = ops
    r = client.put("/api/v1/tiers", headers=admin, json={"levels": levels})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == field


def test_levels_can_be_retired_and_reordered(client, ops):
    admin, key = ops
    program(client, admin)
    r = client.put("/api/v1/tiers", headers=admin, json={"levels": [
        {"code": "GOLD", "name": "金卡", "rank": 0, "threshold": 0},
        {"code": "BASE", "name": "普通", "rank": 1, "threshold": 10}]})
    assert r.status_code == 200, r.text
    assert [lv["code"] for lv in r.json()["levels"]] == ["GOLD", "BASE"]
    assert client.get("/api/v1/tiers", headers=admin).json()["levels"][0]["code"] == "GOLD"


def test_no_program_is_a_clear_404(client, ops):
    admin, key = ops
    m = buy(client, key, "O1")
    r = client.get(f"/api/v1/members/{m}/tier", headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "tiers.none"


def test_growth_adjustments_are_idempotent_and_never_below_zero(client, ops):
    admin, key = ops
    program(client, admin)
    m = buy(client, key, "O1")
    body = {"amount": 150, "reason": "活动奖励", "external_id": "G1"}
    assert client.post(f"/api/v1/members/{m}/growth/adjust", headers=admin, json=body).json()["balance"] == 150
    assert client.post(f"/api/v1/members/{m}/growth/adjust", headers=admin, json=body).json()["balance"] == 150
    assert tier(client, admin, m)["level"]["code"] == "SILVER"
    r = client.post(f"/api/v1/members/{m}/growth/adjust", headers=admin,
                    json={"amount": -151, "reason": "纠错", "external_id": "G2"})
    assert r.status_code == 409 and r.json()["code"] == "growth.insufficient"
    r = client.post(f"/api/v1/members/{m}/growth/adjust", headers=admin, json={**body, "amount": 5})
    assert r.status_code == 409 and r.json()["code"] == "growth.id_reused"


def test_a_merge_hands_growth_to_the_survivor_and_upgrades_it(client, ops):
    admin, key = ops
    program(client, admin)
    add_rule(client, admin, GROWTH_RULE)
    a = buy(client, key, "OA", phone="13900000001", lines=[{"sku": "X", "quantity": 1, "unit_price_fen": 6000}])
    b = buy(client, key, "OB", phone="13900000002", lines=[{"sku": "X", "quantity": 1, "unit_price_fen": 6000}])
    assert tier(client, admin, a)["level"]["code"] == "BASE"
    r = client.post(f"/api/v1/members/{a}/merge", headers=admin, json={"merge_id": b, "reason": "同一人"})
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/members/{a}/growth", headers=admin).json()["balance"] == 120
    assert tier(client, admin, a)["level"]["code"] == "SILVER"
    refund(client, key, "RB", "OB")  # B's order is A's now: its growth comes back off A
    assert client.get(f"/api/v1/members/{a}/growth", headers=admin).json()["balance"] == 60


def test_verify_covers_growth(client, ops):
    from sqlalchemy import text

    from tests.loyalty.helpers import violations

    admin, key = ops
    add_rule(client, admin, GROWTH_RULE)
    buy(client, key, "O1")
    assert violations() == {}
    with db.transaction() as s:
        s.execute(text("UPDATE growth_accounts SET balance = balance + 1"))
    assert set(violations()) == {"growth_balance_is_sum_of_entries"}


def test_a_scheduled_pass_changes_only_who_moves_and_stores_everyone_s_metric_and_hold(client, ops):
    """The first pass places everyone (rows written once), later passes renew the hold of those who
    qualify again, keep the hold of those below their level until it runs out, and record a change only
    for members whose level moves — checked row by row, since the pass decides all of it in one statement."""
    from sqlalchemy import func, select

    from orchard.loyalty.models import MemberTier, TierChange, TierLevel

    admin, key = ops
    members = {}
    for name, phone, growth in (("a", "13900000001", 150), ("b", "13900000002", 1200), ("c", "13900000003", 50)):
        members[name] = buy(client, key, f"O{name}", phone=phone)
        r = client.post(f"/api/v1/members/{members[name]}/growth/adjust", headers=admin,
                        json={"amount": growth, "reason": "迁移", "external_id": f"G{name}"})
        assert r.status_code in (200, 201), r.text
    program(client, admin, hold_days=30, downgrade="one_level")  # after the growth: nobody placed yet
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def state():
        with db.transaction() as s:
            rows = {m.member_id: (m.level_id, m.keep_until, m.metric_value, m.evaluated_at)
                    for m in s.scalars(select(MemberTier))}
            changes = s.scalar(select(func.count()).select_from(TierChange))
        return rows, changes

    with db.transaction() as s:
        silver, gold = (s.scalar(select(TierLevel.id).where(TierLevel.code == code)) for code in ("SILVER", "GOLD"))
    a, b, c = members["a"], members["b"], members["c"]
    r = evaluate(now)
    assert (r.upgraded, r.downgraded) == (2, 0)
    rows, changes = state()
    hold = now + dt.timedelta(days=30)
    assert rows == {a: (silver, hold, 150, now), b: (gold, hold, 1200, now)} and changes == 2
    client.post(f"/api/v1/members/{b}/growth/adjust", headers=admin,
                json={"amount": -1050, "reason": "退款", "external_id": "Gb2"})
    day10 = now + dt.timedelta(days=10)
    assert (evaluate(day10).upgraded, evaluate(day10).downgraded) == (0, 0)
    rows, changes = state()  # a qualifies again: hold renewed; b is inside its hold: kept, metric stored
    assert rows == {a: (silver, day10 + dt.timedelta(days=30), 150, day10), b: (gold, hold, 150, day10)}
    assert changes == 2
    day31 = now + dt.timedelta(days=31)
    assert evaluate(day31).downgraded == 1
    rows, changes = state()
    assert rows == {a: (silver, day31 + dt.timedelta(days=30), 150, day31),
                    b: (silver, day31 + dt.timedelta(days=30), 150, day31)} and changes == 3
    assert history(client, admin, b) == [("downgrade", "GOLD", "SILVER"), ("upgrade", "BASE", "GOLD")]
    assert history(client, admin, c) == [] and tier(client, admin, c)["level"]["code"] == "BASE"
