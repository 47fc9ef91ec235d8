"""Points over HTTP: the fixed contract (GET points; spend and adjust with external ids; 409
points.insufficient), store scoping, permissions, and concurrent redemptions that never overspend."""

import concurrent.futures
import itertools

import httpx
import pytest

from tests.factories import api_key, headers, token_for
from tests.loyalty.helpers import member, violations


def test_adjust_spend_and_read_points(client):
    admin = headers(token_for(client, "admin"))
    m = member("SH001")
    r = client.post(f"/api/v1/members/{m}/points/adjust", headers=admin,
                    json={"amount": 500, "reason": "迁移旧积分", "external_id": "MIG-1"})
    assert r.status_code == 200, r.text
    assert r.json()["balance_after"] == 500 and r.json()["kind"] == "adjust"
    spend = {"amount": 120, "reason": "兑换 保温杯", "external_id": "POS-9", "store_code": "SH001"}
    first = client.post(f"/api/v1/members/{m}/points/spend", headers=admin, json=spend)
    again = client.post(f"/api/v1/members/{m}/points/spend", headers=admin, json=spend)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    points = client.get(f"/api/v1/members/{m}/points", headers=admin).json()
    assert (points["balance"], points["available"], points["pending"]) == (380, 380, 0)
    assert points["expiring"] == [] or points["expiring"][0]["amount"] == 380
    ahead = client.get(f"/api/v1/members/{m}/points?expiring_within_days=3660", headers=admin).json()
    assert [e["amount"] for e in ahead["expiring"]] == [380]  # year_end:1 by default: within ten years
    assert client.get(f"/api/v1/members/{m}/points?expiring_within_days=0", headers=admin).status_code == 422
    short = client.post(f"/api/v1/members/{m}/points/spend", headers=admin,
                        json={"amount": 381, "reason": "兑换", "external_id": "POS-10"})
    assert short.status_code == 409 and short.json()["code"] == "points.insufficient"
    assert short.json()["available"] == 380
    reused = client.post(f"/api/v1/members/{m}/points/spend", headers=admin, json={**spend, "amount": 1})
    assert reused.status_code == 409 and reused.json()["code"] == "points.id_reused"
    history = client.get(f"/api/v1/members/{m}/points/entries?limit=1", headers=admin).json()
    assert history["items"][0]["amount"] == -120 and history["next_cursor"]
    assert violations() == {}


@pytest.mark.parametrize("body", [{"amount": 0, "reason": "x", "external_id": "A"},
                                  {"amount": 5, "reason": "", "external_id": "A"},
                                  {"amount": -5, "reason": "x", "external_id": "A", "expires_at": "2027-01-01"},
                                  {"amount": 5, "reason": "x", "external_id": "A", "store_code": "NOPE"}])
def test_bad_adjustments_are_422_naming_the_field(client, body):
    admin = headers(token_for(client, "admin"))
    m = member()
    r = client.post(f"/api/v1/members/{m}/points/adjust", headers=admin, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"]


def test_store_staff_see_only_their_members_and_service_cannot_spend(client):
    admin = headers(token_for(client, "admin"))
    m = member("GZ001")
    client.post(f"/api/v1/members/{m}/points/adjust", headers=admin,
                json={"amount": 50, "reason": "补偿", "external_id": "C-1"})
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.get(f"/api/v1/members/{m}/points", headers=clerk).status_code == 404
    assert client.post(f"/api/v1/members/{m}/points/spend", headers=clerk,
                       json={"amount": 1, "reason": "x", "external_id": "S-1"}).status_code == 404
    service = headers(token_for(client, "service"))
    assert client.post(f"/api/v1/members/{m}/points/spend", headers=service,
                       json={"amount": 1, "reason": "x", "external_id": "S-2"}).status_code == 403
    gz_clerk = headers(token_for(client, "clerk", ["GZ001"], username="gz"))
    elsewhere = client.post(f"/api/v1/members/{m}/points/spend", headers=gz_clerk,
                            json={"amount": 1, "reason": "x", "external_id": "S-4", "store_code": "SH001"})
    assert elsewhere.status_code == 422 and elsewhere.json()["errors"][0]["field"] == "store_code"
    assert client.post(f"/api/v1/members/{m}/points/adjust", headers=gz_clerk,
                       json={"amount": 1, "reason": "x", "external_id": "S-3"}).status_code == 403


def test_two_hundred_concurrent_redemptions_never_overspend(live_server, clean_db, app):
    """200 concurrent spends of 10 against 1,000 points: exactly 100 succeed, every time (on PostgreSQL
    through the thin path, loyalty.spend_pg)."""
    key = api_key("integrator")
    admin_key = api_key("admin", name="ops")
    ids = itertools.count()
    for _round in range(3 if clean_db.startswith("postgresql") else 1):
        m = member()
        with httpx.Client(base_url=live_server, headers=headers(admin_key), timeout=60) as c:
            r = c.post(f"/api/v1/members/{m}/points/adjust",
                       json={"amount": 1000, "reason": "活动", "external_id": f"R{_round}"})
            assert r.status_code == 200, r.text

        def spend(_n, m=m):
            with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
                r = c.post(f"/api/v1/members/{m}/points/spend",
                           json={"amount": 10, "reason": "兑换", "external_id": f"X{next(ids)}"})
                return r.status_code, r.json().get("code")

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(pool.map(spend, range(200)))
        assert codes.count((200, None)) == 100 and codes.count((409, "points.insufficient")) == 100, \
            sorted(set(codes))
        with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
            assert c.get(f"/api/v1/members/{m}/points").json()["available"] == 0
    if clean_db.startswith("postgresql"):
        assert app.state.points_spend_stats.served == 600
    assert violations() == {}


def test_concurrent_retries_of_one_spend_debit_once(live_server, clean_db):
    """A POS retrying the same redemption from 20 threads at once: one entry, the same answer to all."""
    key = api_key("integrator")
    m = member()
    with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
        c.post(f"/api/v1/members/{m}/points/adjust", headers=headers(api_key("admin", name="ops")),
               json={"amount": 100, "reason": "活动", "external_id": "G-1"})
    body = {"amount": 30, "reason": "兑换", "external_id": "POS-RETRY"}

    def spend(_n):
        with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
            r = c.post(f"/api/v1/members/{m}/points/spend", json=body)
            return r.status_code, r.json().get("id")

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers = set(pool.map(spend, range(20)))
    assert len(answers) == 1 and next(iter(answers))[0] == 200
    with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
        assert c.get(f"/api/v1/members/{m}/points").json()["balance"] == 70
    assert violations() == {}
