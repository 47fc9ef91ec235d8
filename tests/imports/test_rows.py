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


_ORDER = {"order_id": "A", "paid_at": "2026-10-01 10:00", "member_phone": "13812341234", "store_code": "SH001"}


def _group(*lines, **order):
    """Rows of one order: the order's columns repeated on each row, one line each (row numbers from 2)."""
    return [(n, _get({**_ORDER, **order, **line})) for n, line in enumerate(lines, start=2)]


def test_an_order_of_several_rows_is_one_order_with_its_lines_and_their_sum():
    clean = rows.order_group(_group({"sku": "S1", "product_name": "龙井", "category": "茶叶", "quantity": "2",
                                     "unit_price": "19.90"},
                                    {"sku": "S2", "quantity": "3", "line_amount": "10.01"},
                                    {"sku": "S3", "unit_price_fen": "500", "line_amount_fen": "450", "line_no": "7"}),
                             {"SH001": 7})
    assert clean["amount_fen"] == 3980 + 1001 + 450
    assert clean["lines"] == [
        {"line_no": None, "sku": "S1", "name": "龙井", "category": "茶叶", "quantity": 2, "unit_price_fen": 1990,
         "amount_fen": 3980},
        {"line_no": None, "sku": "S2", "name": None, "category": None, "quantity": 3, "unit_price_fen": 333,
         "amount_fen": 1001},
        {"line_no": 7, "sku": "S3", "name": None, "category": None, "quantity": 1, "unit_price_fen": 500,
         "amount_fen": 450}]
    assert (clean["store_id"], clean["order_id"]) == (7, "A")


def test_the_order_amount_is_what_was_paid_even_below_the_lines():
    clean = rows.order_group(_group({"sku": "S1", "unit_price": "30"}, {"sku": "S2", "unit_price": "20"},
                                    amount="45.5"), {"SH001": 1})
    assert clean["amount_fen"] == 4550 and [ln["amount_fen"] for ln in clean["lines"]] == [3000, 2000]


def test_empty_order_cells_on_later_rows_take_the_filled_ones():
    group = _group({"sku": "S1", "unit_price": "1"}, {"sku": "S2", "unit_price": "2"})
    group[1] = (3, _get({"order_id": "A", "sku": "S2", "unit_price": "2"}))  # merged cells: only the first row
    clean = rows.order_group(group, {"SH001": 1})
    assert clean["keys"] == [("phone", "+8613812341234")] and clean["amount_fen"] == 300


@pytest.mark.parametrize(("other", "column"), [
    ({"paid_at": "2026-10-02 10:00"}, "paid_at"), ({"member_phone": "13900001111"}, "member_phone"),
    ({"amount": "9.01"}, "amount"), ({"amount_fen": "901"}, "amount_fen"), ({"store_code": "GZ001"}, "store_code"),
    ({"channel": "app"}, "channel"),
])
def test_order_columns_that_disagree_reject_the_order_naming_row_and_column(other, column):
    first = {"sku": "S1", "unit_price": "1", "amount": "9.00", "channel": "pos"}
    with pytest.raises(rows.GroupError) as err:
        rows.order_group([(2, _get({**_ORDER, **first})), (3, _get({**_ORDER, **first, "sku": "S2"})),
                          (4, _get({**_ORDER, **first, "sku": "S3", **other}))], {"SH001": 1, "GZ001": 2})
    assert list(err.value.errors) == [4]
    assert err.value.errors[4].column == column and "row 2" in err.value.errors[4].reason


def test_the_same_value_written_differently_agrees():
    clean = rows.order_group(_group({"sku": "S1", "unit_price": "1", "amount": "3", "paid_at": "2026-10-01 10:00"},
                                    {"sku": "S2", "unit_price": "2", "amount": "3.00", "paid_at": "2026/10/01 10:00",
                                     "member_phone": "+86 138 1234 1234"}), {"SH001": 1})
    assert clean["amount_fen"] == 300


@pytest.mark.parametrize(("line", "column"), [
    ({"quantity": "0"}, "quantity"), ({"quantity": "1.5"}, "quantity"), ({"quantity": "1000001"}, "quantity"),
    ({"unit_price": "1.234"}, "unit_price"), ({"line_amount": "-1"}, "line_amount"),
    ({"unit_price_fen": "1.5"}, "unit_price_fen"), ({"line_no": "0"}, "line_no"),
    ({"unit_price": "", "line_amount": ""}, "line_amount"),  # a line of a several-line order needs its price
    ({"sku": "", "unit_price": ""}, "sku"),  # a row of a several-line order that describes no line
    ({"line_no": "1"}, "line_no"),  # collides with the first line's number
])
def test_one_bad_line_rejects_the_whole_order_and_names_only_its_row(line, column):
    with pytest.raises(rows.GroupError) as err:
        rows.order_group(_group({"sku": "S1", "unit_price": "1"}, {"sku": "S2", "unit_price": "2", **line},
                                {"sku": "S3", "unit_price": "3"}), {"SH001": 1})
    assert list(err.value.errors) == [3] and err.value.errors[3].column == column


def test_every_bad_row_of_an_order_is_named():
    with pytest.raises(rows.GroupError) as err:
        rows.order_group(_group({"sku": "S1", "unit_price": "x"}, {"sku": "S2", "unit_price": "2"},
                                {"sku": "S3", "quantity": "-2", "unit_price": "3"}), {"SH001": 1})
    assert {n: e.column for n, e in err.value.errors.items()} == {2: "unit_price", 4: "quantity"}


def test_an_order_of_more_lines_than_allowed_is_rejected_row_by_row():
    group = _group(*[{"sku": f"S{i}", "unit_price": "1"} for i in range(rows.MAX_LINES + 1)])
    with pytest.raises(rows.GroupError) as err:
        rows.order_group(group, {"SH001": 1})
    assert len(err.value.errors) == rows.MAX_LINES + 1
    assert len(rows.order_group(group[:-1], {"SH001": 1})["lines"]) == rows.MAX_LINES


def test_repeated_rows_without_line_columns_are_one_order_without_lines():
    clean = rows.order_group(_group({}, {}, amount="12.5"), {"SH001": 1})
    assert (clean["amount_fen"], clean["lines"]) == (1250, [])


def test_one_line_without_a_price_is_the_whole_order_as_before():
    clean = rows.order_row(_get({**_ORDER, "amount": "10", "sku": "S1", "quantity": "3"}), {"SH001": 1})
    assert clean["lines"][0]["amount_fen"] == 1000 and clean["lines"][0]["unit_price_fen"] == 333
    with pytest.raises(RowError) as err:
        rows.order_row(_get({**_ORDER, "sku": "S1"}), {"SH001": 1})
    assert err.value.column == "amount"
    assert rows.order_row(_get({**_ORDER, "sku": "S1", "unit_price": "2.5", "quantity": "2"}),
                          {"SH001": 1})["amount_fen"] == 500
