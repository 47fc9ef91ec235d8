"""The benefit library on SQLite and PostgreSQL: HQ and store benefits, the share HQ allows stores
per tier, non-monetary benefits, and what a member sees."""

from tests.factories import headers, token_for
from tests.loyalty.helpers import member


def hq_benefit(client, admin, code, tiers=(), kind="discount", monetary=True):
    r = client.post("/api/v1/benefits", headers=admin, json={"code": code, "name": code, "kind": kind,
                                                             "monetary": monetary, "tier_codes": list(tiers)})
    assert r.status_code == 201, r.text
    return r.json()


def test_stores_add_their_own_within_hqs_share_and_members_see_theirs(client):
    admin = headers(token_for(client, "admin"))
    client.put("/api/v1/tiers", headers=admin, json={"levels": [
        {"code": "NORMAL", "name": "普通", "rank": 0, "threshold": 0},
        {"code": "GOLD", "name": "金卡", "rank": 1, "threshold": 100, "benefits": {"discount_rate": 0.95}}]})
    assert client.put("/api/v1/benefits/policy", headers=admin, json={"store_share_max_pct": 25}).status_code == 200
    for code in ("hq-discount", "hq-birthday", "hq-priority"):
        hq_benefit(client, admin, code)
    hq_benefit(client, admin, "hq-lounge", tiers=["GOLD"], kind="event_access", monetary=False)
    manager = headers(token_for(client, "store_manager", ["SH001"]))
    own = {"code": "sh-parking", "name": "免费停车", "kind": "parking", "store_code": "SH001"}
    r = client.post("/api/v1/benefits", headers=manager, json=own)
    assert r.status_code == 201, r.text  # NORMAL: 1 of 4 = 25 %
    r = client.post("/api/v1/benefits", headers=manager, json={**own, "code": "sh-tea", "name": "免费茶饮"})
    assert r.status_code == 409 and r.json()["code"] == "benefit.store_share"  # 2 of 5 = 40 %
    r = client.post("/api/v1/benefits", headers=manager, json={**own, "code": "sh-hq"} | {"store_code": None})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "store_code"
    r = client.post("/api/v1/benefits", headers=manager, json={**own, "code": "gz-x", "store_code": "GZ001"})
    assert r.status_code == 422
    m = member("SH001")
    seen = client.get(f"/api/v1/members/{m}/benefits", headers=manager).json()
    assert seen["tier"] == "NORMAL" and {b["code"] for b in seen["benefits"]} == {
        "hq-discount", "hq-birthday", "hq-priority", "sh-parking"}
    until = "2099-01-01T00:00:00Z"
    client.post(f"/api/v1/members/{m}/tier/override", headers=admin, json={"level": "GOLD", "until": until,
                                                                           "reason": "VIP"})
    gold = client.get(f"/api/v1/members/{m}/benefits", headers=admin).json()
    assert gold["tier_benefits"] == {"discount_rate": 0.95}
    assert "hq-lounge" in {b["code"] for b in gold["benefits"]}
    lounge = next(b for b in gold["benefits"] if b["code"] == "hq-lounge")
    assert lounge["monetary"] is False and lounge["kind"] == "event_access"
    other = member("GZ001")
    assert "sh-parking" not in {b["code"] for b in client.get(f"/api/v1/members/{other}/benefits",
                                                                headers=admin).json()["benefits"]}
    gz_manager = headers(token_for(client, "store_manager", ["GZ001"], username="gzm"))
    listed = client.get("/api/v1/benefits", headers=gz_manager).json()
    assert "sh-parking" not in {b["code"] for b in listed}
    parking = next(b for b in client.get("/api/v1/benefits", headers=admin).json() if b["code"] == "sh-parking")
    assert client.post(f"/api/v1/benefits/{parking['id']}/deactivate", headers=gz_manager).status_code == 404
    assert client.post(f"/api/v1/benefits/{parking['id']}/deactivate", headers=manager).json()["active"] is False
    assert client.post("/api/v1/benefits", headers=manager,
                       json={**own, "code": "sh-tea", "name": "免费茶饮"}).status_code == 201
    assert client.post(f"/api/v1/benefits/{parking['id']}/activate", headers=manager).status_code == 409
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.post("/api/v1/benefits", headers=clerk, json={**own, "code": "c"}).status_code == 403
    dup = client.post("/api/v1/benefits", headers=admin, json={"code": "hq-discount", "name": "x", "kind": "x"})
    assert dup.status_code == 409
    bad = client.post("/api/v1/benefits", headers=admin, json={"code": "b", "name": "x", "kind": "x",
                                                               "tier_codes": ["DIAMOND"]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "tier_codes[0]"
