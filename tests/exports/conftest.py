"""A small world for export tests: members in SH001, HZ001 (region EAST) and GZ001 (SOUTH), with
phones, cards, tags, consent, orders with lines and events (one unlinked anonymous event)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import pytest

from tests.factories import headers, order, token_for

API = "/api/v1"


@dataclass
class World:
    admin: str
    sh: int  # 王小明, SH001
    hz: int  # 李华, HZ001
    gz: int  # 陈广州, GZ001


def read_csv(body: bytes) -> list[list[str]]:
    assert body.startswith(b"\xef\xbb\xbf"), "CSV must start with a UTF-8 BOM"
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))


def export(client, token: str, kind: str, **params):
    return client.get(f"{API}/exports/{kind}", params=params, headers=headers(token))


def export_csv(client, token: str, kind: str, **params) -> list[list[str]]:
    r = export(client, token, kind, **params)
    assert r.status_code == 200, r.text
    return read_csv(r.content)


def create_member(client, token: str, **body) -> int:
    r = client.post(f"{API}/members", json=body, headers=headers(token))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post(client, token: str, path: str, body: dict) -> dict:
    r = client.post(f"{API}{path}", json=body, headers=headers(token))
    assert r.status_code in (200, 201), r.text
    return r.json()


@pytest.fixture
def world(client) -> World:
    admin = token_for(client, "admin")
    sh = create_member(client, admin, name="王小明", home_store_code="SH001", joined_at="2026-01-15T00:00:00Z",
                       identities=[{"kind": "phone", "value": "13912345678"},
                                   {"kind": "card_no", "value": "SHCARD-0001"}])
    hz = create_member(client, admin, name="李华", home_store_code="HZ001", joined_at="2026-03-10T00:00:00Z",
                       identities=[{"kind": "phone", "value": "13712340002"}])
    gz = create_member(client, admin, name="陈广州", home_store_code="GZ001", joined_at="2026-05-20T00:00:00Z",
                       identities=[{"kind": "phone", "value": "13712340001"},
                                   {"kind": "email", "value": "gz@example.com"}])
    post(client, admin, f"/members/{sh}/tags", {"name": "VIP"})
    r = client.put(f"{API}/members/{sh}/consents/sms/marketing", json={"granted": True}, headers=headers(admin))
    assert r.status_code == 200, r.text
    post(client, admin, "/orders", order("SH-O1", phone="13912345678", amount_fen=12345, store_code="SH001",
                                         paid_at="2026-10-01T10:00:00+08:00"))
    post(client, admin, "/orders", order("GZ-O1", phone="13712340001", store_code="GZ001",
                                         paid_at="2026-10-05T10:00:00+08:00",
                                         lines=[{"sku": "C", "name": "壶", "quantity": 1, "unit_price_fen": 9900}]))
    post(client, admin, "/events", {"source": "app", "external_id": "SH-E1", "name": "store_visit",
                                    "member": {"id": sh}, "store_code": "SH001",
                                    "occurred_at": "2026-10-01T09:00:00+08:00", "properties": {"渠道": "门店"}})
    post(client, admin, "/events", {"source": "app", "external_id": "GZ-E1", "name": "login", "member": {"id": gz},
                                    "occurred_at": "2026-10-06T09:00:00+08:00"})
    post(client, admin, "/events", {"source": "web", "external_id": "AN-E1", "name": "page_viewed",
                                    "member": {"anonymous_id": "anon-1"}, "occurred_at": "2026-10-07T09:00:00+08:00"})
    return World(admin=admin, sh=sh, hz=hz, gz=gz)
