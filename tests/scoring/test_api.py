"""Scoring routes: store scope, the policy (permissions, validation as problem responses, audit),
names in zh-CN by default and English on request."""

from __future__ import annotations

from sqlalchemy import select

from orchard import db
from orchard.audit.models import AuditEntry
from orchard.org.models import OrgUnit
from orchard.scoring import lifecycle, rfm
from tests.factories import headers, make_org, token_for
from tests.scoring.helpers import local, member, order

NOW = local(2026, 4, 1, 10)


def _seed() -> tuple[int, int]:
    """One buyer at SH001, one at GZ001, scored."""
    make_org()
    with db.transaction() as s:
        stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id)).all())
        sh = member(s, store_id=stores["SH001"])
        gz = member(s, store_id=stores["GZ001"])
        order(s, sh, local(2026, 3, 30), 50_000)
        order(s, gz, local(2025, 6, 1), 1_000)
        lifecycle.refresh(s, now=NOW)
        rfm.refresh(s, now=NOW)
    return sh, gz


def test_store_staff_see_only_their_stores_members(client):
    # given
    sh, gz = _seed()
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    # when
    mine = client.get(f"/api/v1/members/{sh}/scores", headers=clerk)
    other = client.get(f"/api/v1/members/{gz}/scores", headers=clerk)
    summary = client.get("/api/v1/scoring/rfm/summary", headers=clerk).json()
    changes = client.get("/api/v1/scoring/lifecycle/changes", headers=clerk).json()
    # then
    assert mine.status_code == 200 and other.status_code == 404
    body = mine.json()
    assert body["stage"] == "new" and body["value_tier"] == "high"
    # F is 1 for both buyers, so not above the mean of 1: recent, high M, low F
    assert body["rfm_class"]["code"] == "important_develop" and body["rfm_class"]["name"] == "重要发展客户"
    assert body["rfm_class"]["action"]
    assert [(c["from_stage"], c["to_stage"]) for c in body["lifecycle_history"]] == [(None, "new")]
    assert summary["members"] == 1 and summary["value_tiers"] == {"high": 1, "medium": 0, "low": 0}
    assert [c["member_id"] for c in changes["items"]] == [sh]


def test_hq_sees_everyone_in_english_on_request(client):
    # given
    sh, gz = _seed()
    hq = headers(token_for(client, "hq_ops"), **{"Accept-Language": "en"})
    # when
    summary = client.get("/api/v1/scoring/rfm/summary", headers=hq).json()
    lost = client.get("/api/v1/scoring/lifecycle/changes", params={"to_stage": "lost", "since": "2026-04-01"},
                      headers=hq).json()
    # then
    assert summary["members"] == 2 and summary["scored"] == 2
    by_code = {c["code"]: c for c in summary["classes"]}
    assert by_code["important_develop"]["members"] == 1 and by_code["general_retain"]["members"] == 1
    lapsed = by_code["general_retain"]
    assert (lapsed["name"], lapsed["name_zh"]) == ("Low value, lapsed", "一般挽留客户")
    assert [c["member_id"] for c in lost["items"]] == [gz]


def test_policy_is_set_by_hq_audited_and_validated(client):
    # given
    hq = headers(token_for(client, "hq_ops"))
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    # when
    default = client.get("/api/v1/scoring/policy", headers=clerk).json()
    refused = client.put("/api/v1/scoring/policy", json={"preset": "gym"}, headers=clerk)
    bad = client.put("/api/v1/scoring/policy", json={"lifecycle": {"active_days": 90, "dormant_days": 60}},
                     headers=hq)
    bad_cuts = client.put("/api/v1/scoring/policy", json={"rfm": {"scoring": "cuts"}}, headers=hq)
    unknown = client.put("/api/v1/scoring/policy", json={"preset": "spa"}, headers=hq)
    ok = client.put("/api/v1/scoring/policy", json={"preset": "restaurant", "value": {"high_pct": 70}}, headers=hq)
    # then
    assert default["preset"] == "retail" and default["lifecycle"]["dormant_days"] == 90
    assert refused.status_code == 403
    for r in (bad, bad_cuts, unknown):
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"] and r.json()["errors"][0]["reason"]
    assert ok.status_code == 200, ok.text
    assert ok.json()["lifecycle"]["active_days"] == 30 and ok.json()["value"] == {"high_pct": 70, "medium_pct": 15}
    assert client.get("/api/v1/scoring/policy", headers=clerk).json()["preset"] == "restaurant"
    with db.transaction() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "scoring.policy_set")).one()
        assert entry.data["after"]["preset"] == "restaurant" and entry.data["before"] is None


def test_bad_query_parameters_are_problems_not_errors(client):
    hq = headers(token_for(client, "hq_ops"))
    for params in ({"to_stage": "asleep"}, {"since": "yesterday"}, {"since": "2026-02-01", "until": "2026-01-01"},
                   {"cursor": "zzz"}, {"limit": 0}):
        r = client.get("/api/v1/scoring/lifecycle/changes", params=params, headers=hq)
        assert r.status_code == 422, (params, r.text)
    assert client.get("/api/v1/members/999/scores", headers=hq).status_code == 404
