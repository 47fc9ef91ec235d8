"""Pure validation of refund and event rows, no database."""

import pytest

from orchard.imports import rows
from orchard.imports.columns import map_headers
from orchard.imports.rows import RowError

REFUND = {"refund_id": "R1", "order_id": "P1", "refunded_at": "2026-10-05"}
EVENT = {"event_id": "E1", "name": "login", "member_phone": "13812341234", "occurred_at": "2026-10-05 09:00"}


def _get(values):
    return lambda column: values.get(column)


@pytest.mark.parametrize(("extra", "amount_fen", "line"), [
    ({}, None, None),  # full refund
    ({"amount": "12.5"}, 1250, None),
    ({"amount_fen": "1250", "amount": "99"}, 1250, None),  # fen wins, as for orders
    ({"sku": "A"}, None, {"sku": "A", "quantity": None, "amount_fen": None}),  # every open unit of the line
    ({"sku": "A", "quantity": "2", "amount": "10"}, None, {"sku": "A", "quantity": 2, "amount_fen": 1000}),
])
def test_a_refund_row_is_full_by_amount_or_by_line(extra, amount_fen, line):
    clean = rows.refund_row(_get({**REFUND, **extra}))
    assert (clean["amount_fen"], clean["line"]) == (amount_fen, line)


@pytest.mark.parametrize(("extra", "column"), [
    ({"refund_id": ""}, "refund_id"), ({"order_id": "x" * 129}, "order_id"), ({"refunded_at": "soon"}, "refunded_at"),
    ({"refunded_at": "2099-01-01"}, "refunded_at"), ({"amount": "0"}, "amount"), ({"amount": "1.234"}, "amount"),
    ({"amount_fen": "1.5"}, "amount_fen"), ({"sku": "A", "quantity": "0"}, "quantity"), ({"quantity": "1"}, "quantity"),
    ({"reason": "a\x00b"}, "reason"),  # PostgreSQL cannot store it
])
def test_refund_rows_report_impossible_values(extra, column):
    with pytest.raises(RowError) as err:
        rows.refund_row(_get({**REFUND, **extra}))
    assert err.value.column == column


@pytest.mark.parametrize(("raw", "name"), [
    ("到店", "store_visit"), ("登录", "login"), ("咨询客服", "service_contacted"), ("Login", "login"),
    ("STORE_VISIT", "store_visit"), ("wine_tasting", "wine_tasting"), ("品酒会", "品酒会"),
])
def test_event_names_standard_chinese_or_custom(raw, name):
    assert rows.event_name(raw) == name


@pytest.mark.parametrize("raw", ["", "1st_visit", "a/b", "x" * 65])
def test_impossible_event_names_are_refused(raw):
    with pytest.raises(RowError) as err:
        rows.event_name(raw)
    assert err.value.column == "name"


def test_event_properties_come_from_the_json_column_and_the_product_columns():
    clean = rows.event_row(_get({**EVENT, "properties": '{"coupon": "C1", "sku": "old"}', "sku": "S1",
                                 "category": "茶叶", "store_code": "SH001"}), {"SH001": 7})
    assert clean["properties"] == {"coupon": "C1", "sku": "S1", "category": "茶叶"}
    assert (clean["store_id"], clean["keys"]) == (7, [("phone", "+8613812341234")])


@pytest.mark.parametrize(("extra", "column"), [
    ({"properties": "{coupon: C1}"}, "properties"), ({"properties": "[1, 2]"}, "properties"),
    ({"properties": '{"bad key": 1}'}, "properties"), ({"properties": '{"a": {"b": {"c": {"d": 1}}}}'}, "properties"),
    ({"member_phone": ""}, "member_phone"), ({"member_phone": "123"}, "member_phone"),
    ({"event_id": ""}, "event_id"), ({"occurred_at": ""}, "occurred_at"), ({"store_code": "NOPE"}, "store_code"),
    ({"event_id": "E\x001"}, "event_id"), ({"properties": '{"a": ["\\u0000"]}'}, "properties"),
    ({"properties": '{"a": Infinity}'}, "properties"), ({"properties": '{"a": {"b": 1e400}}'}, "properties"),
])
def test_event_rows_report_impossible_values(extra, column):
    with pytest.raises(RowError) as err:
        rows.event_row(_get({**EVENT, **extra}), {})
    assert err.value.column == column


def test_refund_and_event_headers_map_in_chinese():
    refunds, _ = map_headers("refunds", ["退款单号", "原订单号", "退款时间", "退款金额", "商品编码", "数量",
                                         "退款原因"])
    events, unknown = map_headers("events", ["事件ID", "事件名称", "手机号", "发生时间", "门店编码", "品类", "属性",
                                             "备注"])
    assert list(refunds) == ["refund_id", "order_id", "refunded_at", "amount", "sku", "quantity", "reason"]
    assert list(events) == ["event_id", "name", "member_phone", "occurred_at", "store_code", "category", "properties"]
    assert unknown == ["备注"]
