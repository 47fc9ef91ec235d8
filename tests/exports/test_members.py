"""Member export over HTTP: headers and language, field choice, XLSX, formatting, filters, scoping,
masking, keyset chunking, audit and input errors. Runs on every database backend."""

from __future__ import annotations

import io
import re

import openpyxl
import pytest
from sqlalchemy import select

from orchard.audit.models import AuditEntry
from orchard.exports import service
from tests.exports.conftest import create_member, export, export_csv, read_csv
from tests.factories import headers, token_for

MOBILE = re.compile(r"1[3-9]\d{9}")


def _ids(rows: list[list[str]]) -> list[int]:
    return [int(r[0]) for r in rows[1:]]


def test_csv_has_a_bom_chinese_headers_and_a_chinese_file_name(client, world):
    # when
    r = export(client, world.admin, "members")
    # then
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    disposition = r.headers["content-disposition"]
    assert re.fullmatch(r"attachment; filename=\"members-export-\d{8}\.csv\"; "
                        r"filename\*=UTF-8''%E4%BC%9A%E5%91%98%E5%AF%BC%E5%87%BA-\d{8}\.csv", disposition)
    rows = read_csv(r.content)
    assert rows[0][:10] == ["会员ID", "姓名", "性别", "生日", "地区", "来源渠道", "门店编码", "门店名称", "入会时间",
                            "手机号"]
    assert {"累计消费(元)", "标签", "短信营销授权", "自定义属性"} <= set(rows[0])
    assert "累计消费(分)" not in rows[0]  # _fen twins only on request
    assert _ids(rows) == [world.sh, world.hz, world.gz]


@pytest.mark.parametrize(("params", "extra_headers"), [
    ({"lang": "en"}, {}),
    ({}, {"Accept-Language": "en-US,en;q=0.9,zh;q=0.5"}),
])
def test_english_headers_on_request(client, world, params, extra_headers):
    r = client.get("/api/v1/exports/members", params={"fields": "id,name,phone,home_store_code,total_spend", **params},
                   headers=headers(world.admin, **extra_headers))
    assert read_csv(r.content)[0] == ["Member ID", "Name", "Phone", "Store code", "Total spend (CNY)"]
    assert "filename*=UTF-8''members-export-" in r.headers["content-disposition"]


def test_lang_zh_wins_over_an_english_accept_language(client, world):
    r = client.get("/api/v1/exports/members", params={"fields": "name", "lang": "zh"},
                   headers=headers(world.admin, **{"Accept-Language": "en"}))
    assert read_csv(r.content)[0] == ["姓名"]


def test_fields_choose_the_columns_and_their_order(client, world):
    # when
    rows = export_csv(client, world.admin, "members", fields="phone, name,id,tags,sms_marketing,total_spend_fen")
    # then
    assert rows == [
        ["手机号", "姓名", "会员ID", "标签", "短信营销授权", "累计消费(分)"],
        ["+8613912345678", "王小明", str(world.sh), "VIP", "true", "12345"],
        ["+8613712340002", "李华", str(world.hz), "", "false", "0"],
        ["+8613712340001", "陈广州", str(world.gz), "", "false", "9900"],
    ]


def test_times_are_in_the_tenant_zone_and_money_in_yuan(client, world):
    rows = export_csv(client, world.admin, "members",
                      fields="joined_at,last_order_at,total_spend,total_spend_fen,order_count,first_order_at")
    assert rows[1] == ["2026-01-15 08:00:00", "2026-10-01 10:00:00", "123.45", "12345", "1", "2026-10-01 10:00:00"]
    assert rows[2] == ["2026-03-10 08:00:00", "", "0.00", "0", "0", ""]


def test_xlsx_holds_the_same_rows_as_csv(client, world):
    # given
    fields = "id,name,phone,card_no,home_store_code,joined_at,total_spend,total_spend_fen,sms_marketing,tags"
    csv_rows = export_csv(client, world.admin, "members", fields=fields)
    # when
    r = export(client, world.admin, "members", fields=fields, format="xlsx")
    # then
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert r.headers["content-disposition"].endswith(".xlsx")
    ws = openpyxl.load_workbook(io.BytesIO(r.content))["会员"]
    xlsx_rows = [list(row) for row in ws.iter_rows(values_only=True)]
    assert xlsx_rows[0] == csv_rows[0]
    assert len(xlsx_rows) == len(csv_rows) == 4
    first = xlsx_rows[1]
    assert first[:5] == [world.sh, "王小明", "+8613912345678", "SHCARD-0001", "SH001"]
    assert f"{first[5]:%Y-%m-%d %H:%M:%S}" == csv_rows[1][5] == "2026-01-15 08:00:00"
    assert (f"{first[6]:.2f}", first[7], first[8], first[9]) == ("123.45", 12345, True, "VIP")


def test_formula_like_values_are_neutralised(client, world):
    # given
    bad = create_member(client, world.admin, name="=HYPERLINK(\"http://evil.example\",\"点我\")",
                        region="+SUM(A1)", home_store_code="SH001")
    client.post(f"/api/v1/members/{bad}/tags", json={"name": "@cmd"}, headers=headers(world.admin))
    # when
    rows = export_csv(client, world.admin, "members", fields="id,name,region,tags", store="SH001")
    # then
    row = next(r for r in rows if r[0] == str(bad))
    assert row[1:] == ["'=HYPERLINK(\"http://evil.example\",\"点我\")", "'+SUM(A1)", "'@cmd"]


@pytest.mark.parametrize("params", [
    {"store": "SH001"}, {"store": "EAST"}, {"store": "GZ001"}, {"tag": "VIP"}, {"consent": "sms:marketing"},
    {"joined_from": "2026-02-01T00:00:00Z", "joined_to": "2026-06-01T00:00:00+08:00"},
    {"joined_from": "2026-03-10T08:00:00"},  # naive: tenant time, so exactly 李华's join time
    {"phone": "139 1234 5678"}, {"identity": "card_no:SHCARD-0001"}, {"q": "李"}, {"tag": "nobody"},
])
def test_filters_select_exactly_what_the_member_list_selects(client, world, params):
    # when
    exported = _ids(export_csv(client, world.admin, "members", fields="id", **params))
    # then
    listed = client.get("/api/v1/members", params={**params, "limit": 200}, headers=headers(world.admin)).json()
    assert exported == [m["id"] for m in listed["items"]]


def test_filters_pick_the_expected_members(client, world):
    assert _ids(export_csv(client, world.admin, "members", store="EAST")) == [world.sh, world.hz]
    assert _ids(export_csv(client, world.admin, "members", tag="VIP")) == [world.sh]
    assert _ids(export_csv(client, world.admin, "members", consent="sms:marketing")) == [world.sh]
    assert _ids(export_csv(client, world.admin, "members", joined_from="2026-02-01T00:00:00Z",
                           joined_to="2026-06-01T00:00:00Z")) == [world.hz, world.gz]


def test_a_gz001_clerk_exports_only_gz001_members_with_masked_identities(client, world):
    # given
    clerk = token_for(client, "clerk", ["GZ001"])
    # when
    r = export(client, clerk, "members", fields="id,name,phone,email,card_no,home_store_code")
    everything = export(client, clerk, "members")
    by_store = export(client, clerk, "members", store="SH001")
    # then
    rows = read_csv(r.content)
    assert rows[1:] == [[str(world.gz), "陈广州", "137****0001", "g***@example.com", "", "GZ001"]]
    for resp in (r, everything, by_store):
        body = resp.content.decode("utf-8-sig")
        assert not MOBILE.search(body), body
        assert "王小明" not in body and "SHCARD" not in body
    assert _ids(read_csv(everything.content)) == [world.gz]
    assert _ids(read_csv(by_store.content)) == []


def test_a_store_manager_of_region_east_exports_sh001_and_hz001(client, world):
    manager = token_for(client, "store_manager", ["EAST"])
    rows = export_csv(client, manager, "members", fields="id,home_store_code,phone,card_no")
    assert rows[1:] == [[str(world.sh), "SH001", "139****5678", "SHC***01"],
                        [str(world.hz), "HZ001", "137****0002", ""]]


def test_customer_service_sees_every_member_masked(client, world):
    rows = export_csv(client, token_for(client, "service"), "members", fields="id,phone")
    assert [r[1] for r in rows[1:]] == ["139****5678", "137****0002", "137****0001"]


def test_members_are_read_in_keyset_chunks(client, world, monkeypatch):
    # given: ten more members and three rows per query
    ids = [world.sh, world.hz, world.gz] + [create_member(client, world.admin, name=f"会员{i}") for i in range(10)]
    monkeypatch.setattr(service, "CHUNK_SIZE", 3)
    chunks: list[list[int]] = []
    real = service._BUILDERS["members"]

    def spy(session, plan, chunk):
        chunks.append([r.id for r in chunk])
        return real(session, plan, chunk)

    monkeypatch.setitem(service._BUILDERS, "members", spy)
    # when
    rows = export_csv(client, world.admin, "members", fields="id,name,phone,tags")
    # then
    assert _ids(rows) == sorted(ids)
    assert [len(c) for c in chunks] == [3, 3, 3, 3, 1]
    assert [i for c in chunks for i in c] == sorted(ids)


def test_a_chunk_boundary_on_the_last_row_ends_cleanly(client, world, monkeypatch):
    monkeypatch.setattr(service, "CHUNK_SIZE", 3)
    assert _ids(export_csv(client, world.admin, "members", fields="id")) == [world.sh, world.hz, world.gz]


def test_every_export_is_audited_with_its_filters(client, world, session):
    # given
    clerk = token_for(client, "clerk", ["GZ001"])
    # when
    export(client, clerk, "members", fields="id,phone", format="xlsx", store="GZ001",
           joined_from="2026-01-01T00:00:00Z")
    # then
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "export.members")).one()
    assert entry.actor.startswith("staff:") and (entry.entity, entry.entity_id) == ("export", "members")
    assert entry.data == {"format": "xlsx", "fields": ["id", "phone"], "lang": "zh",
                          "filters": {"store": "GZ001", "joined_from": "2026-01-01T00:00:00+00:00"}}


@pytest.mark.parametrize(("params", "field"), [
    ({"fields": "id,bogus"}, "fields"),
    ({"fields": "id,id"}, "fields"),
    ({"fields": " , "}, "fields"),
    ({"format": "pdf"}, "format"),
    ({"lang": "fr"}, "lang"),
    ({"joined_from": "yesterday"}, "joined_from"),
    ({"joined_from": "0001-01-01T00:00:00+05:00"}, "joined_from"),
    ({"store": "NOWHERE"}, "store"),
    ({"consent": "fax:marketing"}, "consent"),
    ({"identity": "card_no"}, "identity"),
    ({"phone": "12"}, "phone"),
])
def test_bad_input_is_a_422_naming_the_field(client, world, session, params, field):
    r = export(client, world.admin, "members", **params)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    [error] = r.json()["errors"]
    assert error["field"].startswith(field)  # phone: "phone[0].value", as GET /members says it
    assert session.scalar(select(AuditEntry.id).where(AuditEntry.action == "export.members")) is None


def test_the_unknown_field_problem_lists_the_catalog(client, world):
    r = export(client, world.admin, "members", fields="mobile")
    assert "'mobile'" in r.json()["detail"] and "phone" in r.json()["detail"]


def test_exports_need_credentials(client, world):
    for kind in ("members", "orders", "events"):
        assert client.get(f"/api/v1/exports/{kind}").status_code == 401


def test_the_exports_are_documented_in_openapi(app):
    # when
    paths = app.openapi()["paths"]
    # then
    for kind, op_id in (("members", "exportMembers"), ("orders", "exportOrders"), ("events", "exportEvents")):
        get = paths[f"/api/v1/exports/{kind}"]["get"]
        assert get["operationId"] == op_id
        assert set(get["responses"]["200"]["content"]) == {
            "text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
        assert {"format", "fields", "lang"} <= {p["name"] for p in get["parameters"]}
    fields = next(p for p in paths["/api/v1/exports/members"]["get"]["parameters"] if p["name"] == "fields")
    assert "total_spend_fen" in fields["description"]


def test_the_catalog_documents_masking_as_the_member_service_applies_it():
    from orchard.exports.columns import MEMBERS
    from orchard.members.service import _MASKED_KINDS

    documented = {c.needs.partition(":")[2] for c in MEMBERS
                  if c.needs and c.needs.startswith("identity:") and "masked" in c.doc}
    identity_kinds = {c.needs.partition(":")[2] for c in MEMBERS if c.needs and c.needs.startswith("identity:")}
    assert documented == _MASKED_KINDS & identity_kinds
