"""Acceptance: the published Segment and RudderStack Python SDKs, unchanged, send to a live Orchard
server (write key = an integrator API key); the result is read back through the Orchard API."""

from __future__ import annotations

import datetime as dt

import pytest
import rudderstack.analytics as rudder_analytics
from segment.analytics import Client as SegmentClient

from tests.factories import api_key, headers

WHEN = dt.datetime(2026, 10, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def _send(sdk, user_id: str, phone: str) -> None:
    """The same three calls through either SDK's public API."""
    sdk.identify(user_id, {"phone": phone, "email": f"{user_id}@example.com", "lastName": "李",
                           "firstName": "娜", "gender": "female", "address": {"city": "上海"}},
                 timestamp=WHEN)
    sdk.track(user_id, "Order Completed", {
        "order_id": f"{user_id}-O1", "total": 139.7, "currency": "CNY", "store_code": "SH001",
        "products": [{"sku": "TEA-1", "name": "龙井", "category": "茶叶", "price": 59.9, "quantity": 2},
                     {"product_id": "CUP-1", "name": "杯", "category": "茶具", "price": "19.9", "quantity": 1}]},
        timestamp=WHEN + dt.timedelta(minutes=5))
    sdk.track(user_id, "Product Viewed", {"sku": "TEA-2", "name": "碧螺春", "price": 88},
              timestamp=WHEN + dt.timedelta(minutes=6))


def _assert_member(client, key: str, user_id: str, phone: str) -> None:
    r = client.get("/api/v1/members", params={"phone": phone}, headers=headers(key))
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 1, items
    m = items[0]
    assert (m["name"], m["gender"], m["region"], m["phone"]) == ("李娜", "female", "上海", f"+86{phone}")
    assert {(i["kind"], i["value"]) for i in m["identities"]} >= {
        ("external_id", user_id), ("email", f"{user_id}@example.com")}
    agg = m["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"]) == (1, 13970)
    assert agg["last_event_at"] == "2026-10-01T02:06:00Z"
    orders = client.get(f"/api/v1/members/{m['id']}/orders", headers=headers(key)).json()["items"]
    assert [(o["amount_fen"], o["store_id"] is not None) for o in orders] == [(13970, True)]
    events = client.get(f"/api/v1/members/{m['id']}/events", headers=headers(key)).json()["items"]
    assert [e["name"] for e in events] == ["product_viewed"]


@pytest.mark.parametrize("gzip", [False, True])
def test_the_segment_sdk_sends_to_orchard_unchanged(live_server, client, gzip):
    key = api_key(name="segment")
    errors: list = []
    sdk = SegmentClient(write_key=key, host=live_server, gzip=gzip, max_retries=1, upload_interval=0.05,
                        max_total_backoff_duration=5, on_error=lambda exc, batch: errors.append((exc, batch)))
    try:
        _send(sdk, "seg-1", "13812341234")
        sdk.flush()
    finally:
        sdk.shutdown()
    assert errors == []
    _assert_member(client, key, "seg-1", "13812341234")


def test_the_rudderstack_sdk_sends_to_orchard_unchanged(live_server, client, monkeypatch):
    key = api_key(name="rudder")
    errors: list = []
    monkeypatch.setattr(rudder_analytics, "default_client", None)
    monkeypatch.setattr(rudder_analytics, "write_key", key)
    monkeypatch.setattr(rudder_analytics, "dataPlaneUrl", live_server)
    monkeypatch.setattr(rudder_analytics, "max_retries", 1)
    monkeypatch.setattr(rudder_analytics, "on_error", lambda exc, batch: errors.append((exc, batch)))
    assert rudder_analytics.gzip is True  # the SDK's default: Orchard must take gzip bodies
    try:
        _send(rudder_analytics, "rud-1", "13912341234")
        rudder_analytics.flush()
    finally:
        rudder_analytics.shutdown()
    assert errors == []
    _assert_member(client, key, "rud-1", "13912341234")


def test_a_bad_write_key_is_reported_once_by_the_sdks_and_not_retried(live_server):
    api_key()
    seen: list = []
    sdk = SegmentClient(write_key="ork_wrong", host=live_server, max_retries=3, upload_interval=0.05,
                        on_error=lambda exc, batch: seen.append(exc))
    try:
        sdk.track("u", "Product Viewed", {})
        sdk.flush()
    finally:
        sdk.shutdown()
    assert [(e.status, e.code) for e in seen] == [(401, "auth.bad_api_key")]


def test_rudderstack_reads_orchard_errors_and_does_not_retry_them(live_server, monkeypatch):
    api_key()
    seen: list = []
    client = rudder_analytics.Client(write_key="ork_wrong", host=live_server, max_retries=3,
                                     upload_interval=0.05, on_error=lambda exc, batch: seen.append(exc))
    try:
        client.track("u", "Product Viewed", {})
        client.flush()
    finally:
        client.shutdown()
    assert [(e.status, e.code) for e in seen] == [(401, "auth.bad_api_key")]
