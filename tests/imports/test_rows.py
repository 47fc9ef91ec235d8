"""Pure row validation, no database."""

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchard.imports import rows
from orchard.imports.rows import RowError


@pytest.mark.parametrize(("raw", "fen"), [("128.5", 12850), ("128.50", 12850), ("0.1", 10), ("1,288.00", 128800),
                                          ("¥19.9", 1990), (19.9, 1990), (100, 10000), ("1.230", 123)])
def test_yuan_is_converted_exactly(raw, fen):
    assert rows.yuan_to_fen(raw, "amount") == fen


@pytest.mark.parametrize("raw", ["1.234", "-5", "abc", "", "NaN", "1e20"])
def test_bad_amounts_name_the_column(raw):
    with pytest.raises(RowError) as err:
        rows.yuan_to_fen(raw, "amount")
    assert err.value.column == "amount"


@pytest.mark.parametrize(("raw", "utc"), [
    ("2026-10-01", "2026-09-30T16:00:00+00:00"),  # a bare date is midnight in Asia/Shanghai
    ("2026/10/01", "2026-09-30T16:00:00+00:00"),
    ("2026-10-01 08:30:00", "2026-10-01T00:30:00+00:00"),
    ("2026-10-01T08:30:00Z", "2026-10-01T08:30:00+00:00"),
    ("2026-10-01T08:30:00+09:00", "2026-09-30T23:30:00+00:00"),
    (dt.datetime(2026, 10, 1, 8, 30), "2026-10-01T00:30:00+00:00"),  # Excel cells carry no zone
    (dt.date(2026, 10, 1), "2026-09-30T16:00:00+00:00"),
])
def test_times(raw, utc):
    assert rows.parse_time(raw, "paid_at").isoformat() == utc


def _get(values):
    return lambda column: values.get(column)


def test_an_order_row_needs_a_member_key_and_an_amount():
    with pytest.raises(RowError) as e1:
        rows.order_row(_get({"order_id": "A", "paid_at": "2026-10-01", "amount": "1"}), {})
    with pytest.raises(RowError) as e2:
        rows.order_row(_get({"order_id": "A", "paid_at": "2026-10-01", "member_phone": "13812341234"}), {})
    assert (e1.value.column, e2.value.column) == ("member_phone", "amount")


def test_an_order_row_with_product_columns_gets_one_line():
    clean = rows.order_row(_get({"order_id": "A", "paid_at": "2026-10-01", "member_phone": "13812341234",
                                 "amount": "30", "sku": "S1", "category": "茶叶", "quantity": "3",
                                 "store_code": "SH001"}), {"SH001": 7})
    assert clean["lines"] == [{"line_no": None, "sku": "S1", "name": None, "category": "茶叶", "quantity": 3,
                               "unit_price_fen": 1000, "amount_fen": 3000}]
    assert clean["store_id"] == 7 and clean["keys"] == [("phone", "+8613812341234")]


@pytest.mark.parametrize(("values", "column"), [
    ({"phone": "123"}, "phone"), ({}, "phone"), ({"phone": "13812341234", "gender": "x"}, "gender"),
    ({"phone": "13812341234", "birthday": "1800-01-01"}, "birthday"),
    ({"phone": "13812341234", "store_code": "NOPE"}, "store_code"),
])
def test_member_rows_report_impossible_values(values, column):
    with pytest.raises(RowError) as err:
        rows.member_row(_get(values), {})
    assert err.value.column == column


def test_member_row_accepts_chinese_gender_and_dates():
    clean = rows.member_row(_get({"phone": "13812341234", "gender": "女", "birthday": "1990年05月01日"}), {})
    assert (clean["gender"], clean["birthday"]) == ("female", dt.date(1990, 5, 1))


@settings(max_examples=500, deadline=None)
@given(whole=st.integers(0, 10**11 - 1), cents=st.sampled_from(["", ".0", ".5", ".05", ".50", ".99"]))
def test_plain_yuan_fast_path_matches_decimal(whole, cents):
    from decimal import Decimal

    raw = f"{whole}{cents}"
    assert rows.yuan_to_fen(raw, "amount") == int(Decimal(raw) * 100)
