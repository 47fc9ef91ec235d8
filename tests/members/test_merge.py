"""Duplicates and merge: everything moves in one transaction and the old id resolves to the survivor."""

from sqlalchemy import func, select

from orchard.audit.models import AuditEntry
from orchard.identity.models import Identity
from tests.factories import api_key, headers, order, token_for


def _setup(client):
    key = api_key()
    ops = token_for(client, "hq_ops")
    a = client.post("/api/v1/orders", json=order("O1", phone="13812341234"), headers=headers(key)).json()["member_id"]
    b = client.post("/api/v1/orders", json=order("O2", phone="13900001111", amount_fen=5000,
                                                 paid_at="2026-09-01T00:00:00Z"),
                    headers=headers(key)).json()["member_id"]
    client.post("/api/v1/events", json={"source": "app", "external_id": "E1", "name": "login",
                                        "occurred_at": "2026-10-09T00:00:00Z",
                                        "member": {"identities": {"phone": "13900001111"}}}, headers=headers(key))
    client.post(f"/api/v1/members/{b}/notes", json={"body": "喜欢绿茶"}, headers=headers(ops))
    client.post(f"/api/v1/members/{b}/tags", json={"name": "VIP"}, headers=headers(ops))
    client.post(f"/api/v1/members/{a}/tags", json={"name": "VIP"}, headers=headers(ops))
    client.post(f"/api/v1/members/{b}/tags", json={"name": "茶友"}, headers=headers(ops))
    client.put(f"/api/v1/members/{b}/consents/sms/marketing", json={"granted": True, "source": "counter"},
               headers=headers(ops))
    client.patch(f"/api/v1/members/{b}", json={"name": "李娜", "birthday": "1990-05-01"}, headers=headers(ops))
    return ops, a, b


def test_merge_moves_history_and_the_old_id_resolves_to_the_survivor(client, session):
    ops, a, b = _setup(client)
    # when
    r = client.post(f"/api/v1/members/{a}/merge", json={"merge_id": b, "reason": "同一顾客两个手机号"},
                    headers=headers(ops))
    # then
    assert r.status_code == 200, r.text
    assert r.json()["moved"]["orders"] == 1 and r.json()["moved"]["identities"] == 1
    via_old = client.get(f"/api/v1/members/{b}", headers=headers(ops)).json()
    assert via_old["id"] == a and via_old["resolved_from"] == b
    assert via_old["name"] == "李娜" and via_old["birthday"] == "1990-05-01"
    assert sorted(via_old["tags"]) == ["VIP", "茶友"]
    assert {i["value"] for i in via_old["identities"] if i["kind"] == "phone"} == {"+8613812341234", "+8613900001111"}
    agg = via_old["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"]) == (2, 18000)
    assert agg["first_order_at"] == "2026-09-01T00:00:00Z" and agg["last_login_at"] == "2026-10-09T00:00:00Z"
    assert [n["body"] for n in client.get(f"/api/v1/members/{b}/notes", headers=headers(ops)).json()] == ["喜欢绿茶"]
    consents = client.get(f"/api/v1/members/{a}/consents", headers=headers(ops)).json()
    assert [c for c in consents if c["granted"]][0]["channel"] == "sms"
    assert len(client.get(f"/api/v1/members/{b}/orders", headers=headers(ops)).json()["items"]) == 2
    # the merged member is no longer listed, and its merge is recorded and audited
    ids = [m["id"] for m in client.get("/api/v1/members", headers=headers(ops)).json()["items"]]
    assert ids == [a]
    merges = client.get(f"/api/v1/members/{a}/merges", headers=headers(ops)).json()
    assert [(m["merged_id"], m["reason"], m["actor"].startswith("staff:")) for m in merges] == [
        (b, "同一顾客两个手机号", True)]
    assert session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "member.merged")) == 1


def test_new_events_for_the_merged_members_keys_land_on_the_survivor(client):
    ops, a, b = _setup(client)
    client.post(f"/api/v1/members/{a}/merge", json={"merge_id": b, "reason": "dup"}, headers=headers(ops))
    key = api_key(name="pos2")
    r = client.post("/api/v1/orders", json=order("O3", phone="13900001111"), headers=headers(key)).json()
    assert r["member_id"] == a
    # and an order sent with the merged member's id lands on the survivor too
    r2 = client.post("/api/v1/orders", json={**order("O4"), "member": {"id": b}}, headers=headers(key)).json()
    assert r2["member_id"] == a


def test_merging_twice_or_into_itself_is_refused(client):
    ops, a, b = _setup(client)
    assert client.post(f"/api/v1/members/{a}/merge", json={"merge_id": a, "reason": "x"},
                       headers=headers(ops)).status_code == 422
    client.post(f"/api/v1/members/{a}/merge", json={"merge_id": b, "reason": "x"}, headers=headers(ops))
    again = client.post(f"/api/v1/members/{a}/merge", json={"merge_id": b, "reason": "x"}, headers=headers(ops))
    assert again.status_code == 422


def test_a_chain_of_merges_resolves_in_one_hop(client, session):
    ops, a, b = _setup(client)
    key = api_key(name="pos3")
    c = client.post("/api/v1/orders", json=order("O9", phone="13700002222"), headers=headers(key)).json()["member_id"]
    client.post(f"/api/v1/members/{a}/merge", json={"merge_id": b, "reason": "x"}, headers=headers(ops))
    client.post(f"/api/v1/members/{c}/merge", json={"merge_id": a, "reason": "y"}, headers=headers(ops))
    assert client.get(f"/api/v1/members/{b}", headers=headers(ops)).json()["id"] == c
    assert session.scalar(select(func.count()).select_from(Identity).where(Identity.member_id == c)) == 3


def test_duplicate_candidates_by_name_and_birthday_are_found_by_a_set_based_scan(client):
    ops = token_for(client, "hq_ops")
    for phone in ("13812341234", "13912341234"):
        client.post("/api/v1/members", json={"name": "王伟", "birthday": "1988-08-08",
                                             "identities": [{"kind": "phone", "value": phone}]}, headers=headers(ops))
    client.post("/api/v1/members", json={"name": "王伟", "birthday": "1990-01-01"}, headers=headers(ops))
    r = client.post("/api/v1/members/duplicates/scan", headers=headers(ops))
    assert r.json() == {"recorded": 1}
    assert client.post("/api/v1/members/duplicates/scan", headers=headers(ops)).json() == {"recorded": 0}
    cands = client.get("/api/v1/members/duplicates", headers=headers(ops)).json()["items"]
    assert [c["reason"] for c in cands] == ["same_name_birthday"]
    # merging the pair closes the candidate
    client.post(f"/api/v1/members/{cands[0]['member_a_id']}/merge",
                json={"merge_id": cands[0]["member_b_id"], "reason": "dup"}, headers=headers(ops))
    assert client.get("/api/v1/members/duplicates", headers=headers(ops)).json()["items"] == []


def test_merged_tags_keep_their_source(client, session):
    """A rule's tag moves as the rule's (its refresh may remove it later); a manual tag stays manual, and
    where both members carry a tag, B's manual assignment outlives A's rule one."""
    import datetime as dt

    from orchard import db
    from orchard.members.models import MemberTag, Tag

    ops, a, b = _setup(client)
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as s:
        rule_only = Tag(name="规则标签", kind="behaviour", source="rule", definition={"tag": "VIP"})
        both = Tag(name="两者都有", kind="value", source="rule", definition={"tag": "茶友"})
        s.add_all([rule_only, both])
        s.flush()
        s.add_all([MemberTag(member_id=b, tag_id=rule_only.id, source="rule", added_by="rule:规则标签", added_at=now),
                   MemberTag(member_id=a, tag_id=both.id, source="rule", added_by="rule:两者都有", added_at=now),
                   MemberTag(member_id=b, tag_id=both.id, source="manual", added_by="staff:1", added_at=now)])
    r = client.post(f"/api/v1/members/{a}/merge", json={"merge_id": b, "reason": "同一人"}, headers=headers(ops))
    assert r.status_code == 200, r.text
    got = {(t.name, mt.source, mt.added_by) for mt, t in session.execute(
        select(MemberTag, Tag).join(Tag, Tag.id == MemberTag.tag_id).where(MemberTag.member_id == a))}
    assert ("规则标签", "rule", "rule:规则标签") in got and ("两者都有", "manual", "staff:1") in got
    assert {(name, source) for name, source, _ in got} >= {("VIP", "manual"), ("茶友", "manual")}
    assert not session.scalar(select(func.count()).select_from(MemberTag).where(MemberTag.member_id == b))
