"""Order and event exports: granularity, money, filters, scoping through the member, masking."""

from __future__ import annotations

import json
import re

import pytest

from orchard.exports import service
from tests.exports.conftest import export, export_csv, post
from tests.factories import order, token_for

MOBILE = re.compile(r"1[3-9]\d{9}")


def test_orders_export_one_row_per_line_by_default(client, world):
    # when
    rows = export_csv(client, world.admin, "orders")
    # then
    assert rows[0] == ["订单ID", "订单来源", "外部订单号", "会员ID", "会员姓名", "会员手机号", "门店编码", "门店名称",
                       "渠道", "订单状态", "币种", "实付金额(元)", "已退款金额(元)", "支付时间", "行号", "商品编码",
                       "商品名称", "品类", "数量", "单价(元)", "行金额(元)", "已退数量", "行已退金额(元)"]
    sh_lines = [r for r in rows[1:] if r[2] == "SH-O1"]
    assert [r[14:21] for r in sh_lines] == [["1", "A", "茶", "茶叶", "2", "50.00", "100.00"],
                                            ["2", "B", "杯", "茶具", "1", "30.00", "30.00"]]
    assert {tuple(r[3:6]) for r in sh_lines} == {(str(world.sh), "王小明", "+8613912345678")}
    assert sh_lines[0][11:14] == ["123.45", "0.00", "2026-10-01 10:00:00"]
    assert [r[2] for r in rows[1:]] == ["SH-O1", "SH-O1", "GZ-O1"]


def test_without_line_fields_there_is_one_row_per_order(client, world):
    rows = export_csv(client, world.admin, "orders", fields="external_id,amount,amount_fen,store_code")
    assert rows == [["外部订单号", "实付金额(元)", "实付金额(分)", "门店编码"],
                    ["SH-O1", "123.45", "12345", "SH001"], ["GZ-O1", "99.00", "9900", "GZ001"]]


def test_an_order_without_lines_still_has_its_row(client, world):
    post(client, world.admin, "/orders", order("BARE-1", phone="13712340002", lines=[], amount_fen=500,
                                               store_code="HZ001"))
    rows = export_csv(client, world.admin, "orders", fields="external_id,amount,sku,quantity", store="HZ001")
    assert rows[1:] == [["BARE-1", "5.00", "", ""]]


@pytest.mark.parametrize(("params", "expected"), [
    ({"paid_from": "2026-10-01T00:00:00+08:00", "paid_to": "2026-10-02T00:00:00+08:00"}, ["SH-O1"]),
    ({"paid_from": "2026-10-05T10:00:00"}, ["GZ-O1"]),  # naive: tenant time, inclusive
    ({"paid_to": "2026-10-05T10:00:00+08:00"}, ["SH-O1"]),  # exclusive
    ({"store": "GZ001"}, ["GZ-O1"]),
    ({"store": "EAST"}, ["SH-O1"]),
    ({"store": "HZ001"}, []),
])
def test_orders_filter_by_paid_time_and_store(client, world, params, expected):
    rows = export_csv(client, world.admin, "orders", fields="external_id", **params)
    assert [r[0] for r in rows[1:]] == expected


def test_store_staff_export_only_orders_of_their_members_masked(client, world):
    # given: an SH001 member also bought in GZ001; the order follows the member's home store
    post(client, world.admin, "/orders", order("SH-O2", phone="13912345678", store_code="GZ001"))
    gz_clerk = token_for(client, "clerk", ["GZ001"])
    east = token_for(client, "store_manager", ["EAST"])
    # when
    gz = export(client, gz_clerk, "orders")
    # then
    body = gz.content.decode("utf-8-sig")
    assert not MOBILE.search(body) and "王小明" not in body and "SH-O" not in body
    assert {r[2] for r in export_csv(client, gz_clerk, "orders")[1:]} == {"GZ-O1"}
    east_rows = export_csv(client, east, "orders", fields="external_id,member_phone")
    assert east_rows[1:] == [["SH-O1", "139****5678"], ["SH-O2", "139****5678"]]


def test_orders_are_read_in_keyset_chunks(client, world, monkeypatch):
    for i in range(5):
        post(client, world.admin, "/orders", order(f"X-{i}", phone="13712340002", store_code="HZ001"))
    monkeypatch.setattr(service, "CHUNK_SIZE", 2)
    rows = export_csv(client, world.admin, "orders", fields="order_id,external_id,line_no")
    assert [r[1] for r in rows[1:]] == ["SH-O1", "SH-O1", "GZ-O1"] + [f"X-{i}" for i in range(5) for _ in (1, 2)]
    assert [int(r[0]) for r in rows[1:]] == sorted(int(r[0]) for r in rows[1:])


def test_events_export(client, world):
    rows = export_csv(client, world.admin, "events", lang="en")
    assert rows[0] == ["Event ID", "Event name", "Occurred at", "Member ID", "Member name", "Member phone",
                       "Anonymous ID", "Store code", "Store name", "Source", "External event ID", "Received at",
                       "Properties"]
    by_ext = {r[10]: r for r in rows[1:]}
    visit = by_ext["SH-E1"]
    assert visit[1:9] == ["store_visit", "2026-10-01 09:00:00", str(world.sh), "王小明", "+8613912345678", "",
                          "SH001", "上海店"]
    assert json.loads(visit[12]) == {"渠道": "门店"}
    assert by_ext["AN-E1"][3:7] == ["", "", "", "anon-1"]  # not linked to any member yet


@pytest.mark.parametrize(("params", "expected"), [
    ({"name": "login"}, ["GZ-E1"]),
    ({"occurred_from": "2026-10-06T00:00:00+08:00"}, ["GZ-E1", "AN-E1"]),
    ({"occurred_from": "2026-10-01T00:00:00+08:00", "occurred_to": "2026-10-06T09:00:00+08:00"}, ["SH-E1"]),
    ({"store": "SH001"}, ["SH-E1"]),
    ({"name": "nothing"}, []),
])
def test_events_filter_by_name_time_and_store(client, world, params, expected):
    rows = export_csv(client, world.admin, "events", fields="external_id", **params)
    assert [r[0] for r in rows[1:]] == expected


def test_store_staff_export_only_events_of_their_members(client, world):
    clerk = token_for(client, "clerk", ["GZ001"])
    rows = export_csv(client, clerk, "events", fields="external_id,member_phone")
    assert rows[1:] == [["GZ-E1", "137****0001"]]  # neither SH001's event nor the unlinked one


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("orders", {"fields": "line_no,nope"}, "fields"),
    ("orders", {"paid_from": "not-a-time"}, "paid_from"),
    ("orders", {"store": "NOWHERE"}, "store"),
    ("events", {"fields": "phone"}, "fields"),  # events call it member_phone
    ("events", {"occurred_to": "9999-12-31T23:59:59-05:00"}, "occurred_to"),
    ("events", {"format": "json"}, "format"),
])
def test_bad_order_and_event_input_is_a_422(client, world, kind, params, field):
    r = export(client, world.admin, kind, **params)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == [field]


def test_order_and_event_exports_are_audited(client, world, session):
    from sqlalchemy import select

    from orchard.audit.models import AuditEntry

    export(client, world.admin, "orders", store="SH001", format="xlsx")
    export(client, world.admin, "events", name="login", lang="en")
    entries = {e.action: e.data for e in session.scalars(select(AuditEntry).where(AuditEntry.entity == "export"))}
    assert entries["export.orders"]["filters"] == {"store": "SH001"}
    assert entries["export.orders"]["format"] == "xlsx"
    assert entries["export.events"]["filters"] == {"name": "login"} and entries["export.events"]["lang"] == "en"
