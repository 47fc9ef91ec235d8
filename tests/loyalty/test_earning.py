"""Earning from orders and events through the rules, and refunds reversing it — over HTTP on SQLite
and PostgreSQL: proportional partial refunds, refunds before their orders, refunds after the points
were spent under each policy, cancelled redemptions, caps, and a clean `points verify` after each."""

import datetime as dt

import pytest

from orchard.config import get_settings
from tests.factories import api_key, headers, order, token_for
from tests.loyalty.helpers import violations

AMOUNT_RULE = {"name": "每元1分", "kind": "amount", "config": {"points": 1, "per_fen": 100}}


@pytest.fixture
def settings(monkeypatch):
    """Points never expire unless a test says so (no dates that turn stale), refunds run on debt."""
    def apply(**values):
        for k, v in values.items():
            monkeypatch.setenv(f"ORCHARD_{k.upper()}", str(v))
        get_settings.cache_clear()
    apply(points_expiry="never", points_refund_policy="debt", points_order_pending_days=0)
    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def pos(client, settings):
    """An admin token (rules, points) and an integrator key (orders, refunds, events)."""
    admin = headers(token_for(client, "admin"))
    key = headers(api_key())
    return admin, key


CST = dt.timezone(dt.timedelta(hours=8))


def recent(days: float = 1) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat()


def add_rule(client, admin, body):
    r = client.post("/api/v1/points/rules", headers=admin, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def buy(client, key, external_id, **kw):
    kw.setdefault("paid_at", recent())
    r = client.post("/api/v1/orders", headers=key, json=order(external_id, **kw))
    assert r.status_code == 201, r.text
    return r.json()["member_id"]


def refund(client, key, external_id, order_id, **body):
    r = client.post("/api/v1/refunds", headers=key, json={"source": "pos", "external_id": external_id,
                                                          "order_external_id": order_id,
                                                          "refunded_at": recent(0.5), **body})
    assert r.status_code in (200, 201), r.text  # 200: pending, its order not here yet
    return r.json()


def points(client, admin, member_id):
    return client.get(f"/api/v1/members/{member_id}/points", headers=admin).json()


def entries(client, admin, member_id):
    return client.get(f"/api/v1/members/{member_id}/points/entries", headers=admin).json()["items"]


def test_an_order_earns_once_with_its_explanation(client, pos):
    admin, key = pos
    add_rule(client, admin, AMOUNT_RULE)
    m = buy(client, key, "O1")  # ¥100 + ¥30 = ¥130
    again = client.post("/api/v1/orders", headers=key, json=order("O1", paid_at=recent()))
    assert again.status_code in (200, 409)
    assert points(client, admin, m)["balance"] == 130
    (earn,) = entries(client, admin, m)
    assert earn["kind"] == "earn" and earn["order_id"] and earn["source"] == "order"
    assert earn["explanation"]["rules"][0]["text"].startswith("¥130.00 × 1/¥1.00 = 130")
    assert earn["explanation"]["rules"][0]["lines"] == {"1": 100, "2": 30}
    assert violations() == {}


def test_no_rules_no_points_and_expired_history_earns_nothing(client, pos, settings):
    admin, key = pos
    m = buy(client, key, "O1")
    assert points(client, admin, m)["balance"] == 0
    add_rule(client, admin, AMOUNT_RULE)
    settings(points_expiry="days:30")
    buy(client, key, "O2", paid_at=recent(40))  # its points would have expired ten days ago
    assert points(client, admin, m)["balance"] == 0
    buy(client, key, "O3", paid_at=recent(10))
    p = points(client, admin, m)
    assert p["balance"] == 130 and p["expiring"][0]["amount"] == 130  # expires 20 days from now
    assert violations() == {}


def test_partial_refunds_reverse_proportionally_and_a_full_refund_everything(client, pos):
    admin, key = pos
    add_rule(client, admin, {**AMOUNT_RULE, "config": {"points": 1, "per_fen": 300, "rounding": "round"}})
    lines = [{"line_no": 1, "sku": "A", "category": "茶叶", "quantity": 3, "unit_price_fen": 1000},
             {"line_no": 2, "sku": "B", "category": "茶具", "quantity": 1, "unit_price_fen": 2000}]
    m = buy(client, key, "O1", lines=lines)  # ¥50 → 16.67 → 17 points: line 1 gets 10, line 2 gets 7
    assert points(client, admin, m)["balance"] == 17
    refund(client, key, "R1", "O1", lines=[{"line_no": 1, "quantity": 1}])  # a third of line 1
    assert points(client, admin, m)["balance"] == 17 - 3
    refund(client, key, "R2", "O1", amount_fen=1000)  # ¥10 not attributed: spread over what is open
    mid = points(client, admin, m)["balance"]
    assert 0 < mid < 14
    refund(client, key, "R3", "O1")  # the rest
    assert points(client, admin, m)["balance"] == 0
    kinds = [e["kind"] for e in entries(client, admin, m)]
    assert kinds == ["reverse", "reverse", "reverse", "earn"]
    assert violations() == {}


def test_a_refund_before_its_order_reverses_when_the_order_arrives(client, pos):
    admin, key = pos
    add_rule(client, admin, AMOUNT_RULE)
    early = refund(client, key, "R1", "O1", lines=[{"sku": "B"}])
    assert early["status"] == "pending"
    m = buy(client, key, "O1")
    p = points(client, admin, m)
    assert p["balance"] == 100  # 130 earned, line B's 30 taken back
    assert [e["kind"] for e in entries(client, admin, m)] == ["reverse", "earn"]
    assert violations() == {}


def test_refund_after_spend_under_debt_then_repaid_by_the_next_earning(client, pos):
    admin, key = pos
    add_rule(client, admin, AMOUNT_RULE)
    m = buy(client, key, "O1")
    spend = client.post(f"/api/v1/members/{m}/points/spend", headers=admin,
                        json={"amount": 100, "reason": "兑换", "external_id": "S1"})
    assert spend.status_code == 200
    refund(client, key, "R1", "O1")
    p = points(client, admin, m)
    assert (p["balance"], p["debt"], p["available"]) == (-100, 100, 0)
    assert entries(client, admin, m)[0]["explanation"]["shortfall"] == 100
    assert violations() == {}
    buy(client, key, "O2", lines=[{"sku": "C", "quantity": 1, "unit_price_fen": 6000}])  # earns 60
    p = points(client, admin, m)
    assert (p["balance"], p["debt"], p["available"]) == (-40, 40, 0)
    buy(client, key, "O3", lines=[{"sku": "C", "quantity": 1, "unit_price_fen": 5000}])  # earns 50
    p = points(client, admin, m)
    assert (p["balance"], p["debt"], p["available"]) == (10, 0, 10)
    assert violations() == {}


def test_refund_after_spend_under_cap_takes_what_is_left_and_records_the_shortfall(client, pos, settings):
    admin, key = pos
    settings(points_refund_policy="cap")
    add_rule(client, admin, AMOUNT_RULE)
    m = buy(client, key, "O1")
    client.post(f"/api/v1/members/{m}/points/spend", headers=admin,
                json={"amount": 100, "reason": "兑换", "external_id": "S1"})
    refund(client, key, "R1", "O1")
    p = points(client, admin, m)
    assert (p["balance"], p["debt"]) == (0, 0)
    reverse = entries(client, admin, m)[0]
    assert reverse["amount"] == -30 and reverse["explanation"]["shortfall"] == 100
    # Nothing left at all: no entry, but the shortfall is on record and the next refund does not retry.
    m2 = buy(client, key, "O2", phone="13900000002")
    client.post(f"/api/v1/members/{m2}/points/spend", headers=admin,
                json={"amount": 130, "reason": "兑换", "external_id": "S2"})
    refund(client, key, "R2", "O2", lines=[{"sku": "B"}])
    buy(client, key, "O3", phone="13900000002", lines=[{"sku": "C", "quantity": 1, "unit_price_fen": 500}])
    refund(client, key, "R3", "O2")
    p = points(client, admin, m2)
    assert p["balance"] == 0  # O3's 5 points went to R3's share of O2 (line A), not to R2's forgiven 30
    with_audit = client.get(f"/api/v1/members/{m2}/points/entries", headers=admin).json()["items"]
    assert [e["kind"] for e in with_audit] == ["reverse", "earn", "spend", "earn"]
    assert violations() == {}


def test_cancelling_a_redemption_restores_the_lots_it_came_from(client, pos):
    admin, key = pos
    m = buy(client, key, "O0")
    for i, (amount, exp) in enumerate([(100, "2099-01-01T00:00:00Z"), (50, "2098-01-01T00:00:00Z")]):
        client.post(f"/api/v1/members/{m}/points/adjust", headers=admin,
                    json={"amount": amount, "reason": "迁移", "external_id": f"A{i}", "expires_at": exp})
    client.post(f"/api/v1/members/{m}/points/spend", headers=admin,
                json={"amount": 80, "reason": "兑换", "external_id": "S1"})
    before = points(client, admin, m)
    assert before["balance"] == 70
    r = client.post(f"/api/v1/members/{m}/points/spends/S1/cancel", headers=admin, json={"reason": "订单取消"})
    assert r.status_code == 200, r.text
    again = client.post(f"/api/v1/members/{m}/points/spends/S1/cancel", headers=admin, json={"reason": "重复"})
    assert again.json() == r.json() and r.json()["kind"] == "restore" and r.json()["amount"] == 80
    p = points(client, admin, m)
    assert p["balance"] == 150
    ahead = client.get(f"/api/v1/members/{m}/points?expiring_within_days=3660", headers=admin).json()
    assert ahead["expiring"] == []  # both lots back to full, with their own (far) expiry
    assert client.post(f"/api/v1/members/{m}/points/spends/NOPE/cancel", headers=admin,
                       json={"reason": "x"}).status_code == 404
    assert client.post(f"/api/v1/members/{m}/points/spends/A0/cancel?source=api", headers=admin,
                       json={"reason": "x"}).status_code == 422  # an adjustment is not a spend
    assert violations() == {}


def test_event_rules_award_within_caps(client, pos):
    admin, key = pos
    add_rule(client, admin, {"name": "注册礼", "kind": "event",
                             "config": {"event": "sign_up", "points": 100, "caps": {"lifetime": 100}}})
    add_rule(client, admin, {"name": "签到", "kind": "event", "config": {"event": "check_in", "points": 5,
                                                                        "caps": {"day": 5}}})
    m = buy(client, key, "O1")
    base = {"source": "app", "member": {"identities": {"phone": "13812341234"}}}
    # Both check-ins fall on one Asia/Shanghai day, whatever the time the test runs (the day cap is local).
    second = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    midnight = second.astimezone(CST).replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight + (second - midnight) / 2
    for i, (name, at) in enumerate([("sign_up", recent(2)), ("sign_up", recent(1)),
                                    ("check_in", first.isoformat()), ("check_in", second.isoformat())]):
        r = client.post("/api/v1/events", headers=key, json={**base, "external_id": f"E{i}", "name": name,
                                                             "occurred_at": at})
        assert r.status_code == 201, r.text
    assert points(client, admin, m)["balance"] == 105
    assert violations() == {}


def test_amount_caps_per_day_across_orders(client, pos):
    admin, key = pos
    add_rule(client, admin, {**AMOUNT_RULE, "config": {"points": 1, "per_fen": 100, "caps": {"day": 200}}})
    at = recent(1)
    m = buy(client, key, "O1", paid_at=at)
    buy(client, key, "O2", paid_at=at)
    assert points(client, admin, m)["balance"] == 200  # 130 + 70 of 130
    e = entries(client, admin, m)[0]
    assert "cap per day" in e["explanation"]["rules"][0]["text"]
    refund(client, key, "R1", "O1")  # frees the day's cap for later orders of that day (net awards)
    buy(client, key, "O3", paid_at=at)
    assert points(client, admin, m)["balance"] == 70 + 130
    assert violations() == {}


def test_rules_api_validates_and_audits_edits(client, pos):
    admin, key = pos
    bad = client.post("/api/v1/points/rules", headers=admin,
                      json={"name": "x", "kind": "amount", "config": {"points": 1, "per_fen": 0}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "config.per_fen"
    bad = client.post("/api/v1/points/rules", headers=admin,
                      json={"name": "x", "kind": "amount", "config": {"points": 1, "per_fen": 1, "stores": ["NOPE"]}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "config.stores[0]"
    bad = client.post("/api/v1/points/rules", headers=admin,
                      json={"name": "x", "kind": "multiplier", "config": {"factor": 2, "when": {"type": "moon"}}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("config.when")
    rule = add_rule(client, admin, AMOUNT_RULE)
    m = buy(client, key, "O1")
    off = client.put(f"/api/v1/points/rules/{rule['id']}", headers=admin, json={**AMOUNT_RULE, "status": "inactive"})
    assert off.status_code == 200 and off.json()["status"] == "inactive"
    kind = client.put(f"/api/v1/points/rules/{rule['id']}", headers=admin, json={**AMOUNT_RULE, "kind": "event"})
    assert kind.status_code == 422
    buy(client, key, "O2")
    assert points(client, admin, m)["balance"] == 130
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.post("/api/v1/points/rules", headers=clerk, json=AMOUNT_RULE).status_code == 403
    assert len(client.get("/api/v1/points/rules", headers=clerk).json()) == 1
    assert client.get(f"/api/v1/points/rules/{rule['id'] + 99}", headers=admin).status_code == 404


def test_dry_run_explains_a_cart_rule_by_rule(client, pos):
    admin, key = pos
    add_rule(client, admin, AMOUNT_RULE)
    add_rule(client, admin, {"name": "会员日", "kind": "multiplier",
                             "config": {"factor": "2", "when": {"type": "member_day", "weekdays": [3]}}})
    add_rule(client, admin, {"name": "生日月", "kind": "multiplier",
                             "config": {"factor": "1.2", "when": {"type": "birthday_month"}}})
    r = client.post("/api/v1/points/rules/dry-run", headers=admin, json={
        "paid_at": "2026-11-25T12:00:00+08:00", "birthday": "1990-11-03", "lines": [{"amount_fen": 12800}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 307 and body["rules"][0]["text"].startswith("¥128.00 × 1/¥1.00 × 2 会员日 × 1.2 生日月")
    assert client.post("/api/v1/points/rules/dry-run", headers=admin, json={}).status_code == 422
    assert client.post("/api/v1/points/rules/dry-run", headers=admin,
                       json={"member_id": 10**9, "amount_fen": 1}).status_code == 404


def test_a_merge_moves_points_with_their_expiry_and_debt(client, pos):
    admin, key = pos
    add_rule(client, admin, AMOUNT_RULE)
    a = buy(client, key, "OA", phone="13900000001")  # A: 130
    b = buy(client, key, "OB", phone="13900000002")  # B: 130 from an order, and a lot of its own expiry
    client.post(f"/api/v1/members/{b}/points/adjust", headers=admin,
                json={"amount": 20, "reason": "补偿", "external_id": "B-1", "expires_at": "2099-06-30T16:00:00Z"})
    r = client.post(f"/api/v1/members/{a}/merge", headers=admin, json={"merge_id": b, "reason": "同一人"})
    assert r.status_code == 200, r.text
    assert r.json()["moved"]["points"] == 150
    p = points(client, admin, a)
    assert p["balance"] == 280
    far = client.get(f"/api/v1/members/{a}/points?expiring_within_days=3660", headers=admin).json()
    assert far["expiring"] == []  # never (the test policy) and 2099 are both beyond ten years
    # OB is A's order now: its refund takes the points back from A.
    refund(client, key, "RB", "OB")
    assert points(client, admin, a)["balance"] == 150
    assert violations() == {}


def test_a_merge_carries_the_merged_members_debt(client, pos):
    admin, key = pos
    add_rule(client, admin, AMOUNT_RULE)
    a = buy(client, key, "OA", phone="13900000001")  # A: 130
    b = buy(client, key, "OB", phone="13900000002")
    client.post(f"/api/v1/members/{b}/points/spend", headers=admin,
                json={"amount": 130, "reason": "兑换", "external_id": "S-B"})
    refund(client, key, "RB", "OB")  # B owes 130
    assert points(client, admin, b)["debt"] == 130
    r = client.post(f"/api/v1/members/{a}/merge", headers=admin, json={"merge_id": b, "reason": "同一人"})
    assert r.status_code == 200, r.text
    p = points(client, admin, a)
    assert (p["balance"], p["debt"]) == (0, 0)  # A's 130 paid B's debt
    assert violations() == {}


def test_points_wait_for_the_orders_delivery_event(client, pos, settings):
    admin, key = pos
    settings(points_order_pending_event="order_delivered")
    add_rule(client, admin, AMOUNT_RULE)
    m = buy(client, key, "O1")
    buy(client, key, "O2")
    p = points(client, admin, m)
    assert (p["balance"], p["available"], p["pending"]) == (260, 0, 260)
    base = {"source": "pos", "member": {"identities": {"phone": "13812341234"}}, "occurred_at": recent(0.1)}
    other = client.post("/api/v1/events", headers=key, json={**base, "external_id": "D0", "name": "order_shipped",
                                                              "properties": {"order_id": "O1"}})
    assert other.status_code == 201
    r = client.post("/api/v1/events", headers=key, json={**base, "external_id": "D1", "name": "order_delivered",
                                                          "properties": {"order_id": "O1"}})
    assert r.status_code == 201, r.text
    p = points(client, admin, m)
    assert (p["available"], p["pending"]) == (130, 130)
    settings(points_order_pending_days=7)  # delivered, but the return window still runs
    client.post("/api/v1/events", headers=key, json={**base, "external_id": "D2", "name": "order_delivered",
                                                     "properties": {"order_id": "O2"}})
    assert points(client, admin, m)["pending"] == 130
    assert violations() == {}
