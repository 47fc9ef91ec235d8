"""The Segment-compatible /v1 routes through the ASGI app: auth, bodies, batches, idempotency, linking."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest

from tests.factories import api_key, headers

PHONE = "13812341234"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def identify(message_id: str = "i-1", user_id: str = "u-1", **traits) -> dict:
    return {"type": "identify", "messageId": message_id, "userId": user_id, "timestamp": "2026-10-01T10:00:00+08:00",
            "traits": traits or {"phone": PHONE, "email": "li@example.com", "lastName": "李", "firstName": "娜"}}


def order_completed(message_id: str = "t-1", order_id: str = "A-1", user_id: str = "u-1", **props) -> dict:
    return {"type": "track", "messageId": message_id, "userId": user_id, "event": "Order Completed",
            "timestamp": "2026-10-01T10:05:00+08:00",
            "properties": {"order_id": order_id, "total": "139.70", "currency": "CNY", **props,
                           "products": [
                               {"sku": "TEA-1", "name": "龙井", "category": "茶叶", "price": 59.9, "quantity": 2},
                               {"sku": "CUP-1", "name": "杯", "category": "茶具", "price": "19.9"}]}}


def track(event: str, message_id: str, **extra) -> dict:
    return {"type": "track", "messageId": message_id, "event": event, "timestamp": "2026-10-01T10:10:00+08:00",
            **({"userId": "u-1"} if "anonymousId" not in extra else {}), **extra}


def batch(client, key: str, *messages: dict, **kw):
    return client.post("/v1/batch", json={"batch": list(messages), "writeKey": key}, headers=basic(key), **kw)


def member_by_phone(client, key: str, phone: str = PHONE) -> dict:
    items = client.get("/api/v1/members", params={"phone": phone}, headers=headers(key)).json()["items"]
    assert len(items) == 1, items
    return items[0]


def test_basic_auth_batch_creates_the_member_and_the_order(client):
    key = api_key()
    r = batch(client, key, identify(), order_completed())
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["success"], body["accepted"], body["rejected"]) == (True, 2, 0)
    assert [(x["status"], x["kind"]) for x in body["results"]] == [("created", "member"), ("created", "order")]
    m = member_by_phone(client, key)
    assert (m["name"], m["source_channel"]) == ("李娜", "segment")
    assert {(i["kind"], i["value"]) for i in m["identities"]} == {
        ("external_id", "u-1"), ("phone", "+8613812341234"), ("email", "li@example.com")}
    assert (m["aggregates"]["order_count"], m["aggregates"]["total_spend_fen"]) == (1, 13970)
    order = client.get(f"/api/v1/orders/{body['results'][1]['id']}", headers=headers(key)).json()
    assert [(ln["sku"], ln["quantity"], ln["unit_price_fen"], ln["amount_fen"]) for ln in order["lines"]] == [
        ("TEA-1", 2, 5990, 11980), ("CUP-1", 1, 1990, 1990)]


def test_bearer_auth_and_single_message_routes(client):
    key = api_key()
    r = client.post("/v1/identify", json=identify(), headers=headers(key))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["status"] == "created"
    r = client.post("/v1/track", json=track("Signed In", "t-login"), headers=headers(key))
    assert r.status_code == 200 and r.json()["results"][0]["kind"] == "event"
    assert member_by_phone(client, key)["aggregates"]["last_login_at"] == "2026-10-01T02:10:00Z"


@pytest.mark.parametrize(("auth", "code"), [
    (None, "auth.missing"),
    ({"Authorization": "Basic !!!notbase64"}, "auth.bad_credential"),
    ({"Authorization": "Basic " + base64.b64encode(b":").decode()}, "auth.missing"),
    ({"Authorization": "Basic " + base64.b64encode(b"ork_nope:").decode()}, "auth.bad_api_key"),
    ({"Authorization": "Bearer ork_nope"}, "auth.bad_api_key"),
    ({"Authorization": "Bearer something"}, "auth.bad_credential"),
    ({"Authorization": "Digest abc"}, "auth.missing"),
])
def test_missing_or_bad_keys_are_401_problems_the_sdks_can_read(client, auth, code):
    api_key()
    r = client.post("/v1/batch", json={"batch": [identify()]}, headers=auth or {})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["message"] == problem["detail"]
    if code:
        assert problem["code"] == code


def test_a_key_without_ingest_permission_is_403(client):
    key = api_key(role="service", name="cs")
    r = batch(client, key, identify())
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"


def test_a_gzip_body_is_accepted(client):
    key = api_key()
    raw = gzip.compress(json.dumps({"batch": [identify(), order_completed()]}).encode())
    r = client.post("/v1/batch", content=raw, headers={**basic(key), "Content-Type": "application/json",
                                                        "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    assert member_by_phone(client, key)["aggregates"]["order_count"] == 1


def test_a_deflate_body_is_accepted(client):
    key = api_key()
    raw = zlib.compress(json.dumps(identify()).encode())
    r = client.post("/v1/identify", content=raw, headers={**basic(key), "Content-Encoding": "deflate"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("content", "extra", "status", "code"), [
    (b"{not json", {}, 400, "tracking.bad_json"),
    (b"", {}, 400, "tracking.empty_body"),
    (b'{"batch": [NaN]}', {}, 400, "tracking.bad_json"),
    (b'{"batch": [{"x": 1e999}]}', {}, 400, "tracking.bad_json"),
    (b"[" * 100_000 + b"]" * 100_000, {}, 400, "tracking.bad_json"),
    (b"\xff\xfe{}", {}, 400, "tracking.bad_json"),
    (b"[]", {}, 422, "invalid_input"),
    (b'{"batch": "x"}', {}, 422, "invalid_input"),
    (b'{"batch": [1, {"type": "identify"}]}', {}, 422, "invalid_input"),
    (b"{}", {}, 422, "invalid_input"),
    (b"not gzip", {"Content-Encoding": "gzip"}, 400, "tracking.bad_encoding"),
    (gzip.compress(b'{"batch": []}', mtime=0)[:-6], {"Content-Encoding": "gzip"}, 400, "tracking.bad_encoding"),
    (b"{}", {"Content-Encoding": "br"}, 415, "tracking.unsupported_encoding"),
])
def test_malformed_bodies_are_4xx_problems_never_500(client, content, extra, status, code):
    key = api_key()
    r = client.post("/v1/batch", content=content, headers={**basic(key), "Content-Type": "application/json", **extra})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["message"]


def test_bodies_over_4mb_are_413_also_after_decompression(client):
    key = api_key()
    big = b'{"batch": [], "pad": "' + b" " * (4 * 1024 * 1024) + b'"}'
    r = client.post("/v1/batch", content=big, headers=basic(key))
    assert r.status_code == 413 and r.json()["code"] == "tracking.too_large"
    bomb = gzip.compress(big)
    assert len(bomb) < 10_000
    r = client.post("/v1/batch", content=bomb, headers={**basic(key), "Content-Encoding": "gzip"})
    assert r.status_code == 413


def test_one_bad_message_never_fails_the_batch(client):
    key = api_key()
    r = batch(client, key,
              identify(),
              {"type": "track", "messageId": "bad-1", "userId": "u-1"},  # no event name
              order_completed(order_id="A-1", currency="USD", message_id="bad-2"),
              {"type": "teleport", "messageId": "bad-3"},
              order_completed(message_id="t-ok"),
              {"type": "track", "messageId": "bad-4", "userId": "u-1", "event": "x", "properties": {"a": "\x00"}},
              {"type": "track", "messageId": "bad-5", "userId": "u-1", "event": "x",
               "properties": {"store_code": "NOPE"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 5)
    rejected = [(x["index"], x["messageId"], x["error"]["status"]) for x in body["results"] if not x["ok"]]
    assert rejected == [(1, "bad-1", 422), (2, "bad-2", 422), (3, "bad-3", 422), (5, "bad-4", 422),
                        (6, "bad-5", 422)]
    assert all(x["error"]["code"] != "internal" for x in body["results"] if not x["ok"])
    m = member_by_phone(client, key)
    assert (m["aggregates"]["order_count"], m["aggregates"]["total_spend_fen"]) == (1, 13970)


def test_a_single_message_route_answers_the_message_error(client):
    key = api_key()
    r = client.post("/v1/track", json={"messageId": "m", "userId": "u", "event": "Order Completed"},
                    headers=basic(key))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "properties.order_id"
    r = client.post("/v1/track", json={"messageId": "m", "userId": ["u"], "event": "x"}, headers=basic(key))
    assert r.status_code == 422 and r.json()["message"]


def test_replaying_a_batch_changes_nothing(client):
    key = api_key()
    messages = [identify(), order_completed(), track("Product Viewed", "t-2", properties={"sku": "TEA-1"}),
                {"type": "page", "messageId": "p-1", "userId": "u-1", "name": "首页"}]
    first = batch(client, key, *messages).json()
    before = member_by_phone(client, key)
    again = batch(client, key, *messages).json()
    assert again["accepted"] == 4
    assert [x["status"] for x in again["results"]] == ["unchanged", "duplicate", "duplicate", "duplicate"]
    assert [x["id"] for x in again["results"]] == [x["id"] for x in first["results"]]
    after = member_by_phone(client, key)
    assert after["aggregates"] == before["aggregates"] and after["updated_at"] == before["updated_at"]
    events = client.get(f"/api/v1/members/{after['id']}/events", headers=headers(key)).json()["items"]
    assert sorted(e["name"] for e in events) == ["page_viewed", "product_viewed"]


def test_a_replayed_message_without_a_time_is_a_duplicate_not_a_conflict(client):
    key = api_key()
    message = {"type": "track", "messageId": "no-time", "userId": "u-1", "event": "Product Viewed"}
    assert batch(client, key, message).json()["results"][0]["status"] == "created"
    assert batch(client, key, message).json()["results"][0]["status"] == "duplicate"


def test_the_same_message_id_with_another_body_is_rejected_as_a_conflict(client):
    key = api_key()
    batch(client, key, track("Product Viewed", "t-1"))
    r = batch(client, key, track("Product Viewed", "t-1", properties={"sku": "other"})).json()
    assert r["rejected"] == 1 and r["results"][0]["error"]["code"] == "ingest.id_reused"


def test_anonymous_tracks_then_identify_back_fill_the_member_events_and_aggregates(client):
    key = api_key()
    anon = {"anonymousId": "anon-7"}
    r = batch(client, key, track("Product Viewed", "a-1", **anon), track("Signed In", "a-2", **anon))
    assert [x["member_id"] for x in r.json()["results"]] == [None, None]
    r = batch(client, key, {**identify(), "anonymousId": "anon-7"})
    assert r.json()["results"][0]["status"] == "created"
    m = member_by_phone(client, key)
    assert m["aggregates"]["last_login_at"] == "2026-10-01T02:10:00Z"
    assert m["aggregates"]["last_event_at"] == "2026-10-01T02:10:00Z"
    events = client.get(f"/api/v1/members/{m['id']}/events", headers=headers(key)).json()["items"]
    assert sorted(e["name"] for e in events) == ["login", "product_viewed"]
    later = batch(client, key, track("Product Viewed", "a-3", **anon)).json()["results"][0]
    assert later["member_id"] == m["id"]


def test_an_anonymous_identify_alone_creates_no_member(client):
    key = api_key()
    r = batch(client, key, {"type": "identify", "anonymousId": "anon-9", "traits": {"name": "访客"}}).json()
    assert r["results"][0]["ok"] and r["results"][0]["status"] == "no_member"


def test_an_order_from_an_unknown_anonymous_id_is_rejected_with_a_clear_reason(client):
    key = api_key()
    message = {**order_completed(), "anonymousId": "anon-3"}
    del message["userId"]
    r = batch(client, key, message).json()["results"][0]
    assert r["error"]["errors"][0]["field"] == "userId" and "anonymousId" in r["error"]["detail"]
    guest = {**message, "messageId": "t-guest", "context": {"traits": {"phone": "13900001111"}}}
    assert batch(client, key, guest).json()["results"][0]["status"] == "created"
    assert member_by_phone(client, key, "13900001111")["aggregates"]["order_count"] == 1


def test_identify_fills_only_empty_profile_fields_of_an_existing_member(client):
    key = api_key()
    r = client.post("/api/v1/members", json={"name": "王芳", "identities": [{"kind": "phone", "value": PHONE}],
                                             "attributes": {"plan": "silver"}}, headers=headers(key))
    assert r.status_code == 201, r.text
    res = batch(client, key, identify(phone=PHONE, name="Wang Fang", gender="F", birthday="1990-05-01",
                                      plan="gold", level=3)).json()["results"][0]
    assert (res["status"], res["member_id"]) == ("updated", r.json()["id"])
    m = member_by_phone(client, key)
    assert (m["name"], m["gender"], m["birthday"]) == ("王芳", "female", "1990-05-01")
    assert m["attributes"] == {"plan": "silver", "level": 3}
    assert ("external_id", "u-1") in {(i["kind"], i["value"]) for i in m["identities"]}


def test_order_refunded_reduces_spend(client):
    key = api_key()
    batch(client, key, identify(), order_completed())
    r = batch(client, key, track("Order Refunded", "r-1", properties={"order_id": "A-1",
                                                                     "products": [{"sku": "TEA-1", "quantity": 1}]}))
    assert r.json()["results"][0]["status"] == "created", r.text
    agg = member_by_phone(client, key)["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"], agg["refund_fen"]) == (1, 13970 - 5990, 5990)


def test_a_refund_before_its_order_waits(client):
    key = api_key()
    r = batch(client, key, track("Order Refunded", "r-1", properties={"order_id": "A-1"}), identify(),
              order_completed()).json()
    assert [x["status"] for x in r["results"]] == ["pending", "created", "created"]
    agg = member_by_phone(client, key)["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"]) == (0, 0)


def test_alias_links_the_previous_id_and_its_anonymous_events(client):
    key = api_key()
    batch(client, key, identify(), track("Product Viewed", "a-1", anonymousId="anon-5"))
    r = client.post("/v1/alias", json={"previousId": "anon-5", "userId": "u-1"}, headers=basic(key))
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "linked", r.text
    m = member_by_phone(client, key)
    assert {("external_id", "anon-5"), ("anonymous_id", "anon-5")} <= {(i["kind"], i["value"]) for i in m["identities"]}
    events = client.get(f"/api/v1/members/{m['id']}/events", headers=headers(key)).json()["items"]
    assert [e["name"] for e in events] == ["product_viewed"]
    again = client.post("/v1/alias", json={"previousId": "anon-5", "userId": "u-1"}, headers=basic(key))
    assert again.json()["results"][0]["status"] == "unchanged"


def test_group_is_accepted_and_ignored(client):
    key = api_key()
    r = client.post("/v1/group", json={"userId": "u-1", "groupId": "g-1", "traits": {"name": "ACME"}},
                    headers=basic(key))
    assert r.status_code == 200
    assert (r.json()["results"][0]["status"], r.json()["results"][0]["detail"]) == (
        "ignored", "group calls are accepted and ignored: Orchard has no account or group model")


def test_screen_and_page_routes(client):
    key = api_key()
    for route in ("/v1/page", "/v1/screen"):
        r = client.post(route, json={"userId": "u-1", "messageId": route, "name": "Home"}, headers=basic(key))
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["kind"] == "event"
    m = client.get("/api/v1/members", params={"identity": "external_id:u-1"}, headers=headers(key)).json()["items"][0]
    events = client.get(f"/api/v1/members/{m['id']}/events", headers=headers(key)).json()["items"]
    assert sorted(e["name"] for e in events) == ["page_viewed", "screen_viewed"]


def test_the_openapi_document_describes_the_tracking_routes(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/batch", "/v1/identify", "/v1/track", "/v1/page", "/v1/screen", "/v1/alias", "/v1/group"):
        op = spec["paths"][path]["post"]
        assert op["tags"] == ["tracking"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
        assert {"SegmentWriteKey": []} in op["security"]
    assert spec["paths"]["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["batch"]["type"] == "array"
