"""Idempotent, out-of-order and batch ingestion, and the aggregates it keeps."""

import pytest

from tests.factories import api_key, headers, order


def _member(client, key, member_id):
    return client.get(f"/api/v1/members/{member_id}", headers=headers(key)).json()


def test_a_resent_order_changes_nothing_and_returns_the_original_outcome(client):
    key = api_key()
    first = client.post("/api/v1/orders", json=order("O1"), headers=headers(key))
    again = client.post("/api/v1/orders", json=order("O1"), headers=headers(key))
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {**first.json(), "status": "duplicate", "member_created": False}
    assert _member(client, key, first.json()["member_id"])["aggregates"]["order_count"] == 1


def test_key_order_and_whitespace_do_not_make_a_different_body(client):
    key = api_key()
    body = order("O1")
    client.post("/api/v1/orders", json=body, headers=headers(key))
    reordered = dict(reversed(list(body.items())))
    assert client.post("/api/v1/orders", json=reordered, headers=headers(key)).status_code == 200


def test_the_same_id_with_another_body_is_a_409_and_changes_nothing(client):
    key = api_key()
    first = client.post("/api/v1/orders", json=order("O1"), headers=headers(key)).json()
    r = client.post("/api/v1/orders", json=order("O1", amount_fen=1), headers=headers(key))
    assert r.status_code == 409
    assert r.json()["code"] == "ingest.id_reused"
    assert _member(client, key, first["member_id"])["aggregates"]["total_spend_fen"] == 13000


def test_aggregates_follow_orders(client):
    key = api_key()
    a = client.post("/api/v1/orders", json=order("O1", paid_at="2026-10-05T10:00:00+08:00"), headers=headers(key))
    client.post("/api/v1/orders", json=order("O2", amount_fen=7000, paid_at="2026-09-01T10:00:00+08:00"),
                headers=headers(key))
    agg = _member(client, key, a.json()["member_id"])["aggregates"]
    assert agg["order_count"] == 2
    assert agg["total_spend_fen"] == 20000
    assert agg["first_order_at"] == "2026-09-01T02:00:00Z"
    assert agg["last_order_at"] == "2026-10-05T02:00:00Z"


def test_a_bare_time_means_the_tenant_zone(client):
    key = api_key()
    m = client.post("/api/v1/orders", json=order("O1", paid_at="2026-10-05T08:00:00"), headers=headers(key)).json()
    assert _member(client, key, m["member_id"])["aggregates"]["first_order_at"] == "2026-10-05T00:00:00Z"


def test_a_partial_refund_by_line_reduces_spend_and_keeps_the_order_counted(client):
    key = api_key()
    m = client.post("/api/v1/orders", json=order("O1"), headers=headers(key)).json()
    r = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R1", "order_external_id": "O1",
                                             "refunded_at": "2026-10-02T10:00:00+08:00",
                                             "lines": [{"sku": "A", "quantity": 1}]}, headers=headers(key))
    assert r.status_code == 201, r.text
    agg = _member(client, key, m["member_id"])["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"], agg["refund_fen"]) == (1, 8000, 5000)
    got = client.get(f"/api/v1/orders/{m['id']}", headers=headers(key)).json()
    assert got["status"] == "partially_refunded"
    assert [(ln["sku"], ln["refunded_quantity"], ln["refunded_fen"]) for ln in got["lines"]] == [
        ("A", 1, 5000), ("B", 0, 0)]


def test_a_full_refund_removes_the_order_from_the_counts(client):
    key = api_key()
    m = client.post("/api/v1/orders", json=order("O1", paid_at="2026-10-01T10:00:00Z"), headers=headers(key)).json()
    client.post("/api/v1/orders", json=order("O2", paid_at="2026-10-03T10:00:00Z"), headers=headers(key))
    client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R2", "order_external_id": "O2",
                                         "refunded_at": "2026-10-04T10:00:00Z"}, headers=headers(key))
    agg = _member(client, key, m["member_id"])["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"], agg["last_order_at"]) == (1, 13000, "2026-10-01T10:00:00Z")


def test_refunds_by_amount_cannot_exceed_what_was_paid(client):
    key = api_key()
    client.post("/api/v1/orders", json=order("O1"), headers=headers(key))
    ok = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R1", "order_external_id": "O1",
                                              "refunded_at": "2026-10-02T00:00:00Z", "amount_fen": 12000},
                     headers=headers(key))
    too_much = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R2", "order_external_id": "O1",
                                                    "refunded_at": "2026-10-02T00:00:00Z", "amount_fen": 1001},
                           headers=headers(key))
    assert ok.status_code == 201
    assert too_much.status_code == 422
    assert too_much.json()["errors"][0]["field"] == "amount_fen"
    # and nothing of the refused refund was written: the same id can be used again with a valid body
    fixed = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R2", "order_external_id": "O1",
                                                 "refunded_at": "2026-10-02T00:00:00Z", "amount_fen": 1000},
                        headers=headers(key))
    assert fixed.status_code == 201


def test_a_line_named_twice_in_one_refund_cannot_be_refunded_twice(client):
    key = api_key()
    client.post("/api/v1/orders", json=order("O1"), headers=headers(key))
    r = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R1", "order_external_id": "O1",
                                             "refunded_at": "2026-10-02T00:00:00Z",
                                             "lines": [{"line_no": 2}, {"line_no": 2}]}, headers=headers(key))
    assert r.status_code == 422


def test_a_refund_that_arrives_before_its_order_is_applied_when_the_order_arrives(client):
    key = api_key()
    early = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R1", "order_external_id": "O1",
                                                 "refunded_at": "2026-10-02T00:00:00Z",
                                                 "lines": [{"line_no": 1, "quantity": 1}]}, headers=headers(key))
    assert early.status_code == 200
    assert early.json()["status"] == "pending"
    m = client.post("/api/v1/orders", json=order("O1"), headers=headers(key)).json()
    refund = client.get(f"/api/v1/refunds/{early.json()['id']}", headers=headers(key)).json()
    assert (refund["status"], refund["amount_fen"], refund["member_id"]) == ("applied", 5000, m["member_id"])
    assert _member(client, key, m["member_id"])["aggregates"]["total_spend_fen"] == 8000


def test_a_pending_refund_that_does_not_fit_is_rejected_and_the_order_still_lands(client):
    key = api_key()
    early = client.post("/api/v1/refunds", json={"source": "pos", "external_id": "R1", "order_external_id": "O1",
                                                 "refunded_at": "2026-10-02T00:00:00Z", "amount_fen": 999999},
                        headers=headers(key)).json()
    m = client.post("/api/v1/orders", json=order("O1"), headers=headers(key))
    assert m.status_code == 201
    refund = client.get(f"/api/v1/refunds/{early['id']}", headers=headers(key)).json()
    assert refund["status"] == "rejected" and "exceeds" in refund["error"]


def test_a_batch_reports_per_item_and_a_bad_item_blocks_nothing(client):
    key = api_key()
    items = [
        {"type": "order", **order("O1")},
        {"type": "order", **order("O2", phone="12")},  # bad phone
        {"type": "event", "source": "app", "external_id": "E1", "name": "store_visit",
         "occurred_at": "2026-10-01T00:00:00Z", "member": {"identities": {"phone": "13812341234"}}},
        {"type": "bogus"},
        {"type": "refund", "source": "pos", "external_id": "R1", "order_external_id": "O1",
         "refunded_at": "2026-10-02T00:00:00Z", "amount_fen": 100},
        "not an object",
    ]
    r = client.post("/api/v1/ingest", json={"items": items}, headers=headers(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["ok"] for x in body["results"]] == [True, False, True, False, True, False]
    assert (body["accepted"], body["rejected"]) == (3, 3)
    assert body["results"][1]["error"]["errors"][0]["field"] == "member.identities.phone"
    member = _member(client, key, body["results"][0]["outcome"]["member_id"])
    assert member["aggregates"]["total_spend_fen"] == 12900
    assert member["aggregates"]["last_visit_at"] == "2026-10-01T00:00:00Z"
    # a re-sent batch is all duplicates for the good items
    again = client.post("/api/v1/ingest", json={"items": items}, headers=headers(key)).json()
    assert [x["outcome"]["status"] for x in again["results"] if x["ok"]] == ["duplicate"] * 3


def test_a_batch_over_1000_items_is_refused(client):
    key = api_key()
    r = client.post("/api/v1/ingest", json={"items": [{"type": "event"}] * 1001}, headers=headers(key))
    assert r.status_code == 422


@pytest.mark.parametrize("body", [
    {"source": "pos", "external_id": "X", "paid_at": "2026-10-01T00:00:00Z", "member": {}},
    {"source": "pos", "external_id": "X", "paid_at": "not a date", "member": {"id": 1}, "amount_fen": 1},
    {"source": "pos", "external_id": "X", "paid_at": "2026-10-01T00:00:00Z", "member": {"id": 1}, "amount_fen": -1},
    {"source": "pos", "external_id": "X", "paid_at": "2026-10-01T00:00:00Z", "member": {"id": 1}},
    {"source": "pos", "external_id": "X", "paid_at": "2099-10-01T00:00:00Z",
     "member": {"identities": {"phone": "13812341234"}}, "amount_fen": 1},
    {"source": "pos", "external_id": "X", "paid_at": "2026-10-01T00:00:00Z", "store_code": "NOPE",
     "member": {"identities": {"phone": "13812341234"}}, "amount_fen": 1},
])
def test_malformed_orders_get_a_problem_naming_the_field(client, body):
    key = api_key()
    r = client.post("/api/v1/orders", json=body, headers=headers(key))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"]
    assert client.get("/api/v1/members", headers=headers(key)).json()["items"] == []


def test_a_batch_item_with_a_model_level_error_is_reported_not_a_500(client):
    key = api_key()
    bad = {"type": "order", "source": "pos", "external_id": "X", "paid_at": "2026-10-01T00:00:00Z",
           "member": {"identities": {"phone": "13812341234"}}}
    r = client.post("/api/v1/ingest", json={"items": [bad]}, headers=headers(key))
    assert r.status_code == 200
    assert r.json()["results"][0]["error"]["status"] == 422


def test_an_order_from_an_unknown_anonymous_id_alone_is_refused(client):
    key = api_key()
    body = {**order("O1"), "member": {"anonymous_id": "anon-x"}}
    r = client.post("/api/v1/orders", json=body, headers=headers(key))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "member"


def test_a_store_bound_key_enrols_new_members_into_its_store(client):
    key = api_key(role="clerk", name="pad", store="HZ001")
    clerk_key_events = client.post("/api/v1/events", json={
        "source": "pad", "external_id": "e1", "name": "sign_up", "occurred_at": "2026-10-01T00:00:00Z",
        "member": {"identities": {"phone": "13812341234"}}}, headers=headers(key))
    assert clerk_key_events.status_code == 403  # clerks do not ingest
    pos = api_key(role="integrator", name="pos-hz", store="HZ001")
    r = client.post("/api/v1/orders", json=order("O1", store_code="HZ001"), headers=headers(pos))
    assert r.status_code == 201, r.text
    m = client.get(f"/api/v1/members/{r.json()['member_id']}", headers=headers(pos)).json()
    assert m["home_store"]["code"] == "HZ001"


def test_an_unstorable_value_fails_only_its_own_batch_item(client):
    key = api_key()
    nul = {"type": "event", "source": "app", "external_id": "E1", "name": "login",
           "occurred_at": "2026-10-01T00:00:00Z", "properties": {"note": "a\u0000b"},
           "member": {"identities": {"phone": "13812341234"}}}
    good = {**nul, "external_id": "E2", "properties": {}}
    r = client.post("/api/v1/ingest", json={"items": [nul, good]}, headers=headers(key))
    assert r.status_code == 200
    assert [x["ok"] for x in r.json()["results"]][1] is True


def test_a_member_first_seen_at_a_store_belongs_to_that_store(client):
    from tests.factories import token_for

    key = api_key()
    m = client.post("/api/v1/orders", json=order("O1", store_code="HZ001"), headers=headers(key)).json()
    client.post("/api/v1/orders", json=order("O2", store_code="SH001"), headers=headers(key))
    assert _member(client, key, m["member_id"])["home_store"]["code"] == "HZ001"
    clerk = token_for(client, "clerk", ["HZ001"])
    assert client.get(f"/api/v1/members/{m['member_id']}", headers=headers(clerk)).status_code == 200


def test_malformed_json_is_a_problem_naming_the_body(client):
    key = api_key()
    h = {**headers(key), "content-type": "application/json"}
    r = client.post("/api/v1/orders", content=b"{bad json", headers=h)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"
    assert "invalid JSON" in r.json()["errors"][0]["reason"]
