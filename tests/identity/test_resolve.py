"""Identity resolution, through the real ingestion API."""

from sqlalchemy import select

from orchard.identity.models import Identity
from orchard.members.models import MergeCandidate
from tests.factories import api_key, headers


def _event(ext, identities=None, anonymous_id=None, name="login"):
    member = {}
    if identities:
        member["identities"] = identities
    if anonymous_id:
        member["anonymous_id"] = anonymous_id
    return {"source": "app", "external_id": ext, "name": name, "occurred_at": "2026-10-01T10:00:00Z", "member": member}


def test_an_unknown_phone_creates_a_member_and_a_known_one_finds_it(client, session):
    key = api_key()
    first = client.post("/api/v1/events", json=_event("e1", {"phone": "138 1234 1234"}), headers=headers(key)).json()
    second = client.post("/api/v1/events", json=_event("e2", {"phone": "+86 13812341234"}), headers=headers(key)).json()
    assert first["member_created"] is True
    assert second["member_created"] is False
    assert second["member_id"] == first["member_id"]
    assert session.scalar(select(Identity.value).where(Identity.kind == "phone")) == "+8613812341234"


def test_new_identities_are_linked_to_the_member_found(client):
    key = api_key()
    m = client.post("/api/v1/events", json=_event("e1", {"phone": "13812341234"}), headers=headers(key)).json()
    client.post("/api/v1/events", json=_event("e2", {"phone": "13812341234", "email": "Li.Na@Example.COM",
                                                     "wechat_unionid": "u-1"}), headers=headers(key))
    found = client.get("/api/v1/members", params={"identity": "email:li.na@example.com"}, headers=headers(key)).json()
    assert [x["id"] for x in found["items"]] == [m["member_id"]]
    kinds = {i["kind"] for i in found["items"][0]["identities"]}
    assert kinds == {"phone", "email", "wechat_unionid"}


def test_two_identities_of_two_members_record_a_candidate_and_do_not_guess(client, session):
    key = api_key()
    a = client.post("/api/v1/events", json=_event("e1", {"phone": "13812341234"}), headers=headers(key)).json()
    b = client.post("/api/v1/events", json=_event("e2", {"wechat_unionid": "u-9"}), headers=headers(key)).json()
    assert a["member_id"] != b["member_id"]
    # when: one call carries both keys
    c = client.post("/api/v1/events", json=_event("e3", {"phone": "13812341234", "wechat_unionid": "u-9"}),
                    headers=headers(key)).json()
    # then: it lands on the unionid's member (higher priority), nothing moves, a candidate is recorded
    assert c["member_id"] == b["member_id"]
    owners = dict(session.execute(select(Identity.kind, Identity.member_id)).tuples().all())
    assert owners == {"phone": a["member_id"], "wechat_unionid": b["member_id"]}
    cand = session.scalars(select(MergeCandidate)).all()
    assert [(x.member_a_id, x.member_b_id, x.reason) for x in cand] == [
        (min(a["member_id"], b["member_id"]), max(a["member_id"], b["member_id"]), "identity_conflict")]


def test_an_anonymous_id_alone_creates_no_member_and_is_attached_on_identify(client):
    key = api_key()
    anon = client.post("/api/v1/events", json=_event("e1", anonymous_id="anon-1", name="product_viewed"),
                       headers=headers(key)).json()
    assert anon["member_id"] is None
    assert client.get("/api/v1/members", headers=headers(key)).json()["items"] == []
    # when: a later event carries the anonymous id and a phone
    linked = client.post("/api/v1/events", json=_event("e2", {"phone": "13812341234"}, anonymous_id="anon-1"),
                         headers=headers(key)).json()
    # then: the earlier anonymous event now belongs to the member
    events = client.get(f"/api/v1/members/{linked['member_id']}/events", headers=headers(key)).json()["items"]
    assert sorted(e["external_id"] for e in events) == ["e1", "e2"]


def test_a_malformed_identity_fails_the_item_and_writes_nothing(client):
    key = api_key()
    r = client.post("/api/v1/events", json=_event("e1", {"phone": "12345"}), headers=headers(key))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "member.identities.phone"
    assert client.get("/api/v1/members", headers=headers(key)).json()["items"] == []


def test_member_lookup_by_phone_accepts_any_format(client):
    key = api_key()
    m = client.post("/api/v1/events", json=_event("e1", {"phone": "13812341234"}), headers=headers(key)).json()
    for phone in ("13812341234", "+86 138 1234 1234", "0086-138-1234-1234"):
        items = client.get("/api/v1/members", params={"phone": phone}, headers=headers(key)).json()["items"]
        assert [x["id"] for x in items] == [m["member_id"]]
