"""Profile, consent, notes, tags and list filters through the API."""

import pytest
from sqlalchemy import select

from orchard.audit.models import AuditEntry
from tests.factories import headers, token_for


def _create(client, token, **body):
    r = client.post("/api/v1/members", json=body, headers=headers(token))
    assert r.status_code == 201, r.text
    return r.json()


def test_create_read_and_update_a_profile(client):
    ops = token_for(client, "hq_ops")
    m = _create(client, ops, name="张敏", gender="female", birthday="1992-03-04", region="上海",
                home_store_code="SH001", attributes={"肤质": "干性", "sizes": [38, 39]},
                identities=[{"kind": "phone", "value": "138 1234 1234"}, {"kind": "card_no", "value": "C001"}])
    assert m["phone"] == "+8613812341234" and m["home_store"]["code"] == "SH001"
    assert m["aggregates"] == {"order_count": 0, "total_spend_fen": 0, "refund_fen": 0, "first_order_at": None,
                               "last_order_at": None, "last_visit_at": None, "last_login_at": None,
                               "last_event_at": None}
    r = client.patch(f"/api/v1/members/{m['id']}", json={"region": "杭州", "reduce_disturbance": True},
                     headers=headers(ops))
    assert (r.json()["region"], r.json()["reduce_disturbance"], r.json()["name"]) == ("杭州", True, "张敏")


def test_the_reduce_disturbance_preference_is_audited(client, session):
    ops = token_for(client, "hq_ops")
    m = _create(client, ops)
    for value in (True, True, False):
        client.patch(f"/api/v1/members/{m['id']}", json={"reduce_disturbance": value}, headers=headers(ops))
    rows = session.scalars(select(AuditEntry).where(AuditEntry.action == "contact_preference.changed")).all()
    assert [r.data["reduce_disturbance"] for r in rows] == [True, False]


@pytest.mark.parametrize("attributes", [[1, 2], {"bad key!": 1}, {"a": {"b": {"c": {"d": 1}}}}, {"x": "y" * 20000}])
def test_invalid_custom_attributes_are_refused(client, attributes):
    ops = token_for(client, "hq_ops")
    r = client.post("/api/v1/members", json={"attributes": attributes}, headers=headers(ops))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"].startswith("attributes")


def test_an_identity_of_another_member_cannot_be_claimed(client):
    ops = token_for(client, "hq_ops")
    a = _create(client, ops, identities=[{"kind": "phone", "value": "13812341234"}])
    r = client.post("/api/v1/members", json={"identities": [{"kind": "phone", "value": "+8613812341234"}]},
                    headers=headers(ops))
    assert r.status_code == 409 and r.json()["member_id"] == a["id"]
    b = _create(client, ops)
    r = client.post(f"/api/v1/members/{b['id']}/identities", json={"kind": "phone", "value": "13812341234"},
                    headers=headers(ops))
    assert r.status_code == 409


def test_consent_is_never_granted_by_default_and_every_change_is_recorded(client, session):
    ops = token_for(client, "hq_ops")
    m = _create(client, ops)
    consents = client.get(f"/api/v1/members/{m['id']}/consents", headers=headers(ops)).json()
    assert len(consents) == 10 and not any(c["granted"] for c in consents)
    granted = client.put(f"/api/v1/members/{m['id']}/consents/wechat/marketing",
                         json={"granted": True, "source": "小程序授权"}, headers=headers(ops)).json()
    assert granted["granted"] and granted["granted_at"] and granted["source"] == "小程序授权"
    withdrawn = client.put(f"/api/v1/members/{m['id']}/consents/wechat/marketing",
                           json={"granted": False, "source": "回T退订"}, headers=headers(ops)).json()
    assert not withdrawn["granted"] and withdrawn["withdrawn_at"]
    actions = session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert [a for a in actions if a.startswith("consent")] == ["consent.granted", "consent.withdrawn"]
    assert client.put(f"/api/v1/members/{m['id']}/consents/fax/marketing", json={"granted": True},
                      headers=headers(ops)).status_code == 422


def test_notes_and_tags(client):
    clerk = token_for(client, "clerk", ["SH001"])
    m = _create(client, clerk, home_store_code="SH001")
    client.post(f"/api/v1/members/{m['id']}/notes", json={"body": "生日前提醒送小样"}, headers=headers(clerk))
    notes = client.get(f"/api/v1/members/{m['id']}/notes", headers=headers(clerk)).json()
    assert notes[0]["body"] == "生日前提醒送小样" and notes[0]["author"].startswith("staff:")
    assert client.post(f"/api/v1/members/{m['id']}/tags", json={"name": "高价值"}, headers=headers(clerk)).json() == [
        "高价值"]
    assert client.delete(f"/api/v1/members/{m['id']}/tags/高价值", headers=headers(clerk)).json() == []
    assert client.delete(f"/api/v1/members/{m['id']}/tags/高价值", headers=headers(clerk)).status_code == 404


def test_the_member_list_filters_and_pages(client):
    ops = token_for(client, "hq_ops")
    ids = []
    for i in range(5):
        m = _create(client, ops, name=f"会员{i}", home_store_code="SH001" if i % 2 else "GZ001",
                    joined_at=f"2026-0{i + 1}-15T00:00:00Z",
                    identities=[{"kind": "card_no", "value": f"C{i}"}])
        ids.append(m["id"])
    client.post(f"/api/v1/members/{ids[1]}/tags", json={"name": "VIP"}, headers=headers(ops))
    client.put(f"/api/v1/members/{ids[3]}/consents/sms/marketing", json={"granted": True}, headers=headers(ops))

    def q(**params):
        return [m["id"] for m in client.get("/api/v1/members", params=params, headers=headers(ops)).json()["items"]]

    assert q(store="SH001") == [ids[1], ids[3]]
    assert q(store="EAST") == [ids[1], ids[3]]
    assert q(tag="VIP") == [ids[1]]
    assert q(consent="sms:marketing") == [ids[3]]
    assert q(joined_from="2026-02-01T00:00:00Z", joined_to="2026-04-01T00:00:00Z") == [ids[1], ids[2]]
    assert q(identity="card_no:C4") == [ids[4]]
    assert q(q="会员2") == [ids[2]]
    page1 = client.get("/api/v1/members", params={"limit": 2}, headers=headers(ops)).json()
    page2 = client.get("/api/v1/members", params={"limit": 2, "cursor": page1["next_cursor"]},
                       headers=headers(ops)).json()
    assert [m["id"] for m in page1["items"] + page2["items"]] == ids[:4]
    assert client.get("/api/v1/members", params={"cursor": "garbage"}, headers=headers(ops)).status_code == 422
    assert client.get("/api/v1/members", params={"consent": "sms"}, headers=headers(ops)).status_code == 422


def test_an_out_of_range_join_date_filter_is_a_422(client):
    ops = token_for(client, "hq_ops")
    r = client.get("/api/v1/members", params={"joined_from": "0001-01-01T00:00:00+05:00"}, headers=headers(ops))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "joined_from"
