"""Points liability by month and store, and cross-store settlement, on SQLite and PostgreSQL: months
in Asia/Shanghai, debits attributed to the issuing store, cancelled spends netted, expiry counted."""

import datetime as dt

from orchard import db
from orchard.loyalty import ledger, reports
from orchard.loyalty.expiry import expire_due
from orchard.loyalty.models import PointsEntry
from orchard.org.models import OrgUnit
from tests.factories import headers, make_org, token_for
from tests.loyalty.helpers import member, violations

SH = dt.timezone(dt.timedelta(hours=8))


def at(y, m, d, h=12):
    return dt.datetime(y, m, d, h, tzinfo=SH).astimezone(dt.UTC)


def post(m, amount, store, when, kind=None, expires=None, ext=[0]):  # noqa: B006 - a counter on purpose
    ext[0] += 1
    with db.transaction() as s:
        store_id = s.query(OrgUnit.id).filter(OrgUnit.code == store).scalar()
        entry, _ = ledger.post(s, ledger.Command(
            member_id=m, amount=amount, kind=kind or ("earn" if amount > 0 else "spend"), reason="t", source="t",
            external_id=f"R{ext[0]}", actor="t", store_id=store_id, expires_at=expires), now=when)
        return entry.id


def scenario():
    make_org()
    m = member("SH001")
    # 1 March 00:30 Shanghai is still 28 February in UTC: it belongs to March.
    post(m, 100, "SH001", dt.datetime(2026, 3, 1, 0, 30, tzinfo=SH), expires=at(2026, 5, 1, 0))
    post(m, 50, "GZ001", at(2026, 3, 20))
    spend = post(m, -120, "GZ001", at(2026, 4, 2))  # 100 from SH's lot (soonest expiring), 20 from GZ's
    with db.transaction() as s:
        ledger.restore(s, spend=s.get(PointsEntry, spend), reason="取消", actor="t", now=at(2026, 4, 3))
    post(m, -30, "GZ001", at(2026, 4, 4))
    with db.transaction() as s:
        expire_due(s, now=at(2026, 5, 2))
    return m


def test_liability_by_month_and_issuing_store(clean_db):
    scenario()
    with db.transaction(readonly=True) as s:
        codes = dict(s.query(OrgUnit.id, OrgUnit.code).all())
        rows = {(r.month, codes.get(r.store_id)): r for r in reports.liability(s, "2026-02", "2026-05")}
    assert ("2026-02", "SH001") not in rows
    mar_sh, mar_gz = rows[("2026-03", "SH001")], rows[("2026-03", "GZ001")]
    assert (mar_sh.issued, mar_sh.outstanding, mar_gz.issued, mar_gz.outstanding) == (100, 100, 50, 50)
    apr_sh, apr_gz = rows[("2026-04", "SH001")], rows[("2026-04", "GZ001")]
    assert (apr_sh.spent, apr_sh.outstanding) == (30, 70)
    assert (apr_gz.spent, apr_gz.outstanding) == (0, 50)  # 20 spent, 20 restored
    may_sh = rows[("2026-05", "SH001")]
    assert (may_sh.expired, may_sh.outstanding) == (70, 0)
    assert rows[("2026-05", "GZ001")].outstanding == 50
    with db.transaction(readonly=True) as s:
        later = reports.liability(s, "2026-05", "2026-05")  # the opening balance carries the history
    assert {codes.get(r.store_id): r.outstanding for r in later} == {"SH001": 0, "GZ001": 50}
    assert violations() == {}


def test_settlement_nets_cancelled_spends_and_marks_cross_store(client):
    scenario()
    admin = headers(token_for(client, "admin"))
    r = client.get("/api/v1/points/settlement?from=2026-03&to=2026-05", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"issuing_store_code": "SH001", "redeeming_store_code": "GZ001", "points": 30,
                                 "cross_store": True}]
    r = client.get("/api/v1/points/liability?from=2026-03&to=2026-04", headers=admin)
    assert r.status_code == 200 and len(r.json()["rows"]) == 4
    manager = headers(token_for(client, "store_manager", ["GZ001"]))
    mine = client.get("/api/v1/points/liability?from=2026-03&to=2026-04", headers=manager).json()["rows"]
    assert {row["store_code"] for row in mine} == {"GZ001"}
    clerk = headers(token_for(client, "clerk", ["GZ001"]))
    assert client.get("/api/v1/points/liability", headers=clerk).status_code == 403
    assert client.get("/api/v1/points/liability?from=2026-13", headers=admin).status_code == 422
    assert client.get("/api/v1/points/liability?from=2026-05&to=2026-03", headers=admin).status_code == 422
    assert client.get("/api/v1/points/liability?from=2000-01&to=2026-03", headers=admin).status_code == 422
