"""Anomaly flags and held earning, on SQLite and PostgreSQL: spikes against a member's and a store's
own norm, order bursts at one counter, re-scans that add nothing, and review releasing or forfeiting
what was held."""

import datetime as dt

from orchard import db
from orchard.kit.clock import tenant_zone
from orchard.loyalty import anomalies, ledger
from orchard.loyalty.models import LoyaltyFlag
from orchard.org.models import OrgUnit
from tests.factories import api_key, headers, make_org, order, token_for
from tests.loyalty.helpers import member, summary, violations
from tests.loyalty.test_earning import AMOUNT_RULE, add_rule, settings  # noqa: F401

SH = dt.timezone(dt.timedelta(hours=8))
DAY = dt.date(2026, 11, 20)


def earn(m, amount, when, store="SH001", ext=[0]):  # noqa: B006 - a counter on purpose
    ext[0] += 1
    with db.transaction() as s:
        store_id = s.query(OrgUnit.id).filter(OrgUnit.code == store).scalar()
        ledger.post(s, ledger.Command(member_id=m, amount=amount, kind="earn", reason="t", source="t",
                                      external_id=f"A{ext[0]}", actor="t", store_id=store_id), now=when)


def flags():
    with db.transaction(readonly=True) as s:
        return sorted((f.kind, f.value) for f in s.query(LoyaltyFlag).all())


def test_spikes_against_their_own_norm_are_flagged_once(clean_db):
    make_org()
    steady, spiky = member("SH001"), member("SH001")
    for d in range(1, 31):
        when = dt.datetime(2026, 10, d, 12, tzinfo=SH)
        earn(steady, 2000, when, "GZ001")  # a big but steady earner at another store
        earn(spiky, 50, when)
    earn(steady, 2000, dt.datetime(2026, 11, 20, 12, tzinfo=SH), "GZ001")
    earn(spiky, 5000, dt.datetime(2026, 11, 20, 12, tzinfo=SH))
    with db.transaction() as s:
        r = anomalies.scan(s, DAY)
    assert (r.member_spikes, r.store_spikes) == (1, 1)
    assert flags() == [("member_earning_spike", 5000), ("store_earning_spike", 5000)]
    with db.transaction() as s:
        again = anomalies.scan(s, DAY)
    assert (again.member_spikes, again.store_spikes, again.order_bursts) == (0, 0, 0)


def test_an_order_burst_at_one_counter_is_flagged(client, settings):  # noqa: F811
    key = headers(api_key())
    for i in range(10):
        paid = dt.datetime(2026, 11, 20, 9 + i % 10, tzinfo=SH).isoformat()
        assert client.post("/api/v1/orders", headers=key, json=order(f"O{i}", paid_at=paid)).status_code == 201
    client.post("/api/v1/orders", headers=key, json=order("X1", phone="13900000001",
                                                          paid_at=dt.datetime(2026, 11, 20, 9, tzinfo=SH).isoformat()))
    with db.transaction() as s:
        assert anomalies.scan(s, DAY).order_bursts == 1


def test_a_flagged_members_earning_is_held_then_released_or_forfeited(client, settings):  # noqa: F811
    admin = headers(token_for(client, "admin"))
    key = headers(api_key())
    add_rule(client, admin, AMOUNT_RULE)
    today = dt.datetime.now(tenant_zone()).date()
    m = client.post("/api/v1/orders", headers=key, json=order("O1")).json()["member_id"]  # 130, before any flag
    with db.transaction() as s:
        assert anomalies.scan(s, today, min_points=100, factor=2).member_spikes == 1
    client.post("/api/v1/orders", headers=key, json=order("O2"))  # held
    p = client.get(f"/api/v1/members/{m}/points", headers=admin).json()
    assert (p["balance"], p["available"], p["pending"]) == (260, 130, 130)
    listed = client.get("/api/v1/points/flags", headers=admin).json()
    assert sorted(f["kind"] for f in listed) == ["member_earning_spike", "store_earning_spike"]
    flag_id = next(f["id"] for f in listed if f["kind"] == "member_earning_spike")
    r = client.post(f"/api/v1/points/flags/{flag_id}/clear", headers=admin, json={"note": "团购，正常"})
    assert r.status_code == 200 and r.json()["status"] == "cleared"
    assert client.get(f"/api/v1/members/{m}/points", headers=admin).json()["available"] == 260
    again = client.post(f"/api/v1/points/flags/{flag_id}/confirm", headers=admin, json={"note": "x"})
    assert again.status_code == 409
    # A second spike, confirmed this time: the held points are forfeited.
    with db.transaction() as s:
        s.query(LoyaltyFlag).filter(LoyaltyFlag.kind == "member_earning_spike").delete()
        assert anomalies.scan(s, today, min_points=100, factor=2).member_spikes == 1
        flag_id = s.query(LoyaltyFlag.id).filter(LoyaltyFlag.kind == "member_earning_spike").scalar()
    client.post("/api/v1/orders", headers=key, json=order("O3"))
    r = client.post(f"/api/v1/points/flags/{flag_id}/confirm", headers=admin, json={"note": "刷单"})
    assert r.status_code == 200
    p = client.get(f"/api/v1/members/{m}/points", headers=admin).json()
    assert (p["balance"], p["available"], p["pending"]) == (260, 260, 0)
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.get("/api/v1/points/flags", headers=clerk).status_code == 403
    assert violations() == {}


def test_scan_over_http(client, settings):  # noqa: F811
    admin = headers(token_for(client, "admin"))
    r = client.post("/api/v1/points/flags/scan", headers=admin, json={"day": "2026-11-20"})
    assert r.status_code == 200 and r.json() == {"day": "2026-11-20", "member_spikes": 0, "store_spikes": 0,
                                                 "order_bursts": 0}
    assert client.post("/api/v1/points/flags/scan", headers=admin, json={"factor": 1}).status_code == 422
    assert summary(member()).balance == 0
