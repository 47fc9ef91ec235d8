"""kit.tabular without a database: rendering, the formula guard, chunking, XLSX typing and sheets."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from openpyxl.worksheet import _writer as openpyxl_writer

from orchard.config import get_settings
from orchard.kit import tabular
from orchard.kit.tabular import Yuan

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON_UTC = dt.datetime(2026, 11, 23, 4, 5, 6, 789000, tzinfo=dt.UTC)


def _csv(header, rows, **kw) -> bytes:
    return b"".join(tabular.csv_chunks(header, rows, **kw))


@pytest.mark.parametrize(("value", "shown"), [
    (None, ""),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (Yuan(12345), "123.45"),
    (Yuan(5), "0.05"),
    (Yuan(0), "0.00"),
    (Yuan(-250), "-2.50"),
    (Yuan(10**15 + 1), "10000000000000.01"),
    (NOON_UTC, "2026-11-23 12:05:06"),  # UTC 04:05 is 12:05 in Shanghai; no microseconds
    (dt.datetime(2026, 11, 23, 23, 0), "2026-11-23 23:00:00"),  # naive: already tenant time
    (dt.date(1992, 3, 4), "1992-03-04"),
    ({"肤质": "干性", "sizes": [38]}, '{"肤质": "干性", "sizes": [38]}'),
    ("张敏", "张敏"),
])
def test_values_are_rendered_by_type(value, shown):
    assert tabular.text(value, SHANGHAI) == shown


def test_times_follow_the_configured_tenant_zone(monkeypatch):
    # given
    monkeypatch.setenv("ORCHARD_TIMEZONE", "America/New_York")
    get_settings.cache_clear()
    try:
        # when
        body = _csv(["t"], [[NOON_UTC]])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    # then
    assert body.decode("utf-8-sig").splitlines()[1] == "2026-11-22 23:05:06"


@pytest.mark.parametrize(("cell", "guarded"), [
    ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"),
    ("+SUM(A1:A9)", "'+SUM(A1:A9)"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(1)", "'@SUM(1)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("-", "'-"),
    ("+8613812341234", "+8613812341234"),  # a plain number carries no formula
    ("-12.50", "-12.50"),
    ("a=b", "a=b"),
    ("", ""),
])
def test_csv_cells_a_spreadsheet_would_evaluate_get_a_quote(cell, guarded):
    assert tabular.guard_formula(cell) == guarded
    assert list(csv.reader(io.StringIO(_csv(["h"], [[cell]]).decode("utf-8-sig"))))[1] == [guarded]


def test_csv_is_utf8_with_bom_crlf_and_quoting():
    # when
    body = _csv(["会员ID", "姓名"], [[1, "张, \"敏\""], [2, "多\n行"]])
    # then
    assert body.startswith(b"\xef\xbb\xbf\xe4\xbc\x9a")  # BOM, then 会
    assert body.count(b"\xef\xbb\xbf") == 1
    assert body.decode("utf-8-sig") == '会员ID,姓名\r\n1,"张, ""敏"""\r\n2,"多\n行"\r\n'


def test_csv_comes_out_in_bounded_chunks_header_first(monkeypatch):
    # given
    monkeypatch.setattr(tabular, "CHUNK_BYTES", 100)
    rows = ([i, "x" * 20] for i in range(100))
    # when
    chunks = list(tabular.csv_chunks(["id", "v"], rows))
    # then
    assert chunks[0] == b"\xef\xbb\xbfid,v\r\n"
    assert len(chunks) > 20 and all(len(c) < 100 + 40 for c in chunks)
    assert b"".join(chunks).decode("utf-8-sig").count("\r\n") == 101


def _xlsx(header, rows, **kw) -> openpyxl.Workbook:
    return openpyxl.load_workbook(io.BytesIO(b"".join(tabular.xlsx_chunks(header, rows, **kw))))


def test_xlsx_cells_are_typed_and_formulas_stay_text():
    # when
    wb = _xlsx(["ID", "姓名", "金额(元)", "时间", "生日", "标志", "属性"],
               [[1, "=1+1", Yuan(12345), NOON_UTC, dt.date(1992, 3, 4), True, {"a": 1}],
                [2, None, Yuan(-5), None, None, False, None]],
               sheet_title="会员", zone=SHANGHAI)
    # then
    ws = wb["会员"]
    assert [c.value for c in ws[1]] == ["ID", "姓名", "金额(元)", "时间", "生日", "标志", "属性"]
    assert ws["A1"].font.b and ws.freeze_panes == "A2"
    one = ws[2]
    assert [c.value for c in one] == [1, "=1+1", 123.45, dt.datetime(2026, 11, 23, 12, 5, 6),
                                      dt.datetime(1992, 3, 4), True, '{"a": 1}']
    assert one[1].data_type == "s"  # a string, never evaluated
    assert (one[2].number_format, one[3].number_format, one[4].number_format) == \
        ("0.00", "yyyy-mm-dd hh:mm:ss", "yyyy-mm-dd")
    assert [c.value for c in ws[3]] == [2, None, -0.05, None, None, False, None]


def test_xlsx_money_is_exact_decimal():
    assert Yuan(1999).decimal() == Decimal("19.99")


def test_xlsx_continues_on_a_new_sheet_at_the_row_limit(monkeypatch):
    # given: three rows per sheet, header included
    monkeypatch.setattr(tabular, "XLSX_MAX_ROWS", 3)
    # when
    wb = _xlsx(["id"], ([i] for i in range(5)), sheet_title="订单")
    # then
    assert wb.sheetnames == ["订单", "订单 (2)", "订单 (3)"]
    assert [[c.value for c in row] for ws in wb for row in ws.iter_rows()] == [
        ["id"], [0], [1], ["id"], [2], [3], ["id"], [4]]


def test_xlsx_survives_control_characters_and_huge_cells():
    wb = _xlsx(["v"], [["a\x00b\x07c"], ["x" * 40_000]])
    ws = wb.active
    assert ws["A2"].value == "a\ufffdb\ufffdc"
    assert len(ws["A3"].value) == tabular.XLSX_MAX_CELL_CHARS and ws["A3"].value.endswith("…")


def test_xlsx_with_no_rows_has_the_header():
    assert [[c.value for c in r] for r in _xlsx(["a", "b"], []).active.iter_rows()] == [["a", "b"]]


def test_a_failing_row_source_leaves_no_temporary_files():
    # given
    def rows():
        yield [1]
        raise RuntimeError("database went away")

    before = list(openpyxl_writer.ALL_TEMP_FILES)
    # when
    with pytest.raises(RuntimeError):
        b"".join(tabular.xlsx_chunks(["id"], rows()))
    # then
    assert openpyxl_writer.ALL_TEMP_FILES == before
