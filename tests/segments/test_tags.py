"""Rule tags: applied from a definition, refreshed with history, never taking away a manual tag."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from orchard import db
from orchard.segments import tags
from tests.factories import headers, make_org, token_for
from tests.segments.helpers import member


@pytest.fixture
def admin(client):
    make_org()
    return headers(token_for(client, "admin"))


def test_rule_tag_adds_removes_and_keeps_manual_assignments(client, admin):
    with db.transaction() as s:
        big = member(s, "big", orders=[(dt.datetime.now(dt.UTC), 90_000)])
        small = member(s, "small", orders=[(dt.datetime.now(dt.UTC), 100)])
    r = client.post("/api/v1/tags", headers=admin, json={"name": "高消费", "kind": "value", "definition": {
        "field": "total_spend_fen", "op": "gte", "value": 50_000}})
    assert r.status_code == 201, r.text
    assert (r.json()["source"], r.json()["members"]) == ("rule", 1)
    # Staff give the same tag to `small` by hand: a refresh must not take it away.
    r = client.post(f"/api/v1/members/{small}/tags", headers=admin, json={"name": "高消费"})
    assert r.status_code in (200, 201), r.text
    # `big` stops matching (a refund, say): the rule removes its own assignment.
    with db.transaction() as s:
        s.execute(text("UPDATE member_aggregates SET total_spend_fen = 0 WHERE member_id = :m"), {"m": big})
    out = client.post("/api/v1/tags/高消费/refresh", headers=admin).json()
    assert (out["added"], out["removed"], out["size"]) == (0, 1, 1)
    with db.transaction() as s:
        assert tags.refresh(s) == [{"tag": "高消费", "added": 0, "removed": 0, "size": 1}]
    history = client.get("/api/v1/tags/高消费/changes", headers=admin).json()
    assert [(h["member_id"], h["change"], h["source"], h["actor"][:5]) for h in history] == [
        (big, "removed", "rule", "rule:"), (small, "added", "manual", "staff"), (big, "added", "rule", "rule:")]
    listed = {t["name"]: t for t in client.get("/api/v1/tags", headers=admin, params={"source": "rule"}).json()}
    assert listed["高消费"]["members"] == 1


def test_rule_tag_definition_errors_name_the_path(client, admin):
    r = client.post("/api/v1/tags", headers=admin, json={"name": "x", "definition": {"field": "nope", "op": "eq",
                                                                                     "value": 1}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "$.definition.field"


def test_a_manual_tag_in_the_catalog(client, admin):
    r = client.post("/api/v1/tags", headers=admin, json={"name": "门店VIP", "kind": "value"})
    assert r.status_code == 201 and (r.json()["source"], r.json()["definition"]) == ("manual", None)


def test_staff_adding_a_tag_a_rule_gave_makes_it_manual(client, admin):
    """A member who carries a rule tag and is then given it by hand keeps it when the rule stops matching."""
    with db.transaction() as s:
        big = member(s, "big", orders=[(dt.datetime.now(dt.UTC), 90_000)])
    r = client.post("/api/v1/tags", headers=admin, json={"name": "高消费", "kind": "value", "definition": {
        "field": "total_spend_fen", "op": "gte", "value": 50_000}})
    assert r.status_code == 201 and r.json()["members"] == 1
    r = client.post(f"/api/v1/members/{big}/tags", headers=admin, json={"name": "高消费"})
    assert r.status_code in (200, 201), r.text
    with db.transaction() as s:
        s.execute(text("UPDATE member_aggregates SET total_spend_fen = 0 WHERE member_id = :m"), {"m": big})
        assert tags.refresh(s) == [{"tag": "高消费", "added": 0, "removed": 0, "size": 1}]
        assert s.execute(text("SELECT source, added_by FROM member_tags")).one()[0] == "manual"
