"""The points catalog on SQLite and PostgreSQL: stock, per-member limits and balance checked
atomically, idempotent redemptions, cancellation, and no overselling under concurrency."""

import concurrent.futures
import itertools

import httpx

from tests.factories import api_key, headers, token_for
from tests.loyalty.helpers import member, post, summary, violations


def item(client, admin, code="CUP", **kw):
    body = {"code": code, "name": "保温杯", "points_cost": 100, **kw}
    r = client.put(f"/api/v1/catalog/{code}", headers=admin, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_redeem_checks_stock_limit_and_points_and_cancel_puts_them_back(client):
    admin = headers(token_for(client, "admin"))
    item(client, admin, stock=3, per_member_limit=2, cash_fen=990)
    m = member("SH001")
    post(m, 250)
    url = f"/api/v1/members/{m}/catalog/CUP/redeem"
    first = client.post(url, headers=admin, json={"external_id": "R1", "store_code": "SH001"})
    again = client.post(url, headers=admin, json={"external_id": "R1", "store_code": "SH001"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert (first.json()["points"], first.json()["cash_fen"]) == (100, 990)
    assert client.post(url, headers=admin, json={"external_id": "R1", "quantity": 2}).status_code == 409
    limit = client.post(url, headers=admin, json={"external_id": "R2", "quantity": 2})
    assert limit.status_code == 409 and limit.json()["code"] == "catalog.limit"
    assert client.post(url, headers=admin, json={"external_id": "R3"}).status_code == 200
    short = client.post(f"/api/v1/members/{member()}/catalog/CUP/redeem", headers=admin, json={"external_id": "R4"})
    assert short.status_code == 409 and short.json()["code"] == "points.insufficient"
    listed = client.get("/api/v1/catalog", headers=admin).json()[0]
    assert (listed["stock"], listed["redeemed"]) == (1, 2)  # R4's stock went back with its rollback
    r = client.post(f"/api/v1/members/{m}/catalog/redemptions/R1/cancel", headers=admin, json={"reason": "未领取"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/api/v1/members/{m}/catalog/redemptions/R1/cancel", headers=admin,
                       json={"reason": "x"}).json()["status"] == "cancelled"
    assert summary(m).balance == 150
    assert client.get("/api/v1/catalog", headers=admin).json()[0]["stock"] == 2
    m2 = member()
    post(m2, 1000)
    url2 = f"/api/v1/members/{m2}/catalog/CUP/redeem"
    assert client.post(url2, headers=admin, json={"external_id": "R5", "quantity": 2}).status_code == 200
    m3 = member()
    post(m3, 1000)
    out = client.post(f"/api/v1/members/{m3}/catalog/CUP/redeem", headers=admin, json={"external_id": "R6"})
    assert out.status_code == 409 and out.json()["code"] == "catalog.out_of_stock"
    item(client, admin, active=False)
    off = client.post(url2, headers=admin, json={"external_id": "R7"})
    assert off.status_code == 409 and off.json()["code"] == "catalog.unavailable"
    assert client.put("/api/v1/catalog/X", headers=admin, json={"code": "Y", "name": "x", "points_cost": 1}
                      ).status_code == 422
    assert client.put("/api/v1/catalog/X", headers=admin, json={"code": "X", "name": "x", "points_cost": 1,
                                                                "kind": "coupon"}).status_code == 422
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.put("/api/v1/catalog/X", headers=clerk, json={"code": "X", "name": "x", "points_cost": 1}
                      ).status_code == 403
    assert violations() == {}


def test_concurrent_redemptions_never_oversell(live_server, clean_db):
    """60 members race for 10 units; one member races 20 times for items they can afford 3 of."""
    admin = headers(api_key("admin", name="ops"))
    key = headers(api_key("integrator"))
    ids = itertools.count()
    with httpx.Client(base_url=live_server, headers=admin, timeout=60) as c:
        assert c.put("/api/v1/catalog/LAMP", json={"code": "LAMP", "name": "台灯", "points_cost": 10,
                                                   "stock": 10}).status_code == 200
        assert c.put("/api/v1/catalog/PEN", json={"code": "PEN", "name": "笔", "points_cost": 100}).status_code == 200
    buyers = [member() for _ in range(60)]
    for m in buyers:
        post(m, 10)
    rich = member()
    post(rich, 350)

    def redeem(args):
        m, code = args
        with httpx.Client(base_url=live_server, headers=key, timeout=60) as c:
            return c.post(f"/api/v1/members/{m}/catalog/{code}/redeem",
                          json={"external_id": f"C{next(ids)}"}).status_code

    jobs = [(m, "LAMP") for m in buyers] + [(rich, "PEN")] * 20
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(redeem, jobs))
    lamps, pens = codes[:60], codes[60:]
    assert lamps.count(200) == 10 and lamps.count(409) == 50, sorted(set(lamps))
    assert pens.count(200) == 3 and pens.count(409) == 17, sorted(set(pens))
    with httpx.Client(base_url=live_server, headers=admin, timeout=60) as c:
        stock = {i["code"]: i["stock"] for i in c.get("/api/v1/catalog").json()}
    assert stock["LAMP"] == 0 and summary(rich).balance == 50
    assert violations() == {}


def test_a_coupon_item_issues_its_coupons_and_cancelling_voids_them(client):
    admin = headers(token_for(client, "admin"))
    t = client.post("/api/v1/coupon-templates", headers=admin, json={
        "name": "满100减10", "kind": "amount_off", "off_fen": 1000, "threshold_fen": 10000,
        "validity": "relative", "valid_days": 30, "per_member_limit": 2})
    assert t.status_code == 201, t.text
    item(client, admin, "C10", kind="coupon", coupon_template_id=t.json()["id"], points_cost=50)
    m = member("SH001")
    post(m, 500)
    r = client.post(f"/api/v1/members/{m}/catalog/C10/redeem", headers=admin, json={"external_id": "K1",
                                                                                   "quantity": 2})
    assert r.status_code == 200, r.text
    codes = r.json()["coupon_codes"]
    assert len(codes) == 2
    wallet = client.get(f"/api/v1/members/{m}/coupons", headers=admin).json()
    assert len(wallet["items"] if isinstance(wallet, dict) else wallet) == 2
    over = client.post(f"/api/v1/members/{m}/catalog/C10/redeem", headers=admin, json={"external_id": "K2"})
    assert over.status_code == 409  # the template's own per-member limit; points and stock untouched
    assert summary(m).balance == 400
    c = client.post(f"/api/v1/members/{m}/catalog/redemptions/K1/cancel", headers=admin, json={"reason": "退回"})
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    assert {client.get(f"/api/v1/coupons/{code}", headers=admin).json()["status"] for code in codes} == {"voided"}
    assert summary(m).balance == 500
    bad = client.put("/api/v1/catalog/C11", headers=admin, json={"code": "C11", "name": "x", "points_cost": 1,
                                                                 "kind": "coupon", "coupon_template_id": 999})
    assert bad.status_code == 422
    assert violations() == {}
