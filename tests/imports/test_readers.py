"""Formats and encodings, streamed."""

import datetime as dt

import pytest
from openpyxl import Workbook

from orchard.imports.columns import map_headers
from orchard.imports.readers import FileUnreadable, open_table

ROWS = [["订单号", "手机号", "金额"], ["A1", "13812341234", "128.50"], ["A2", "13900001111", "9.9"]]


def _csv(path, encoding, rows=ROWS):
    path.write_bytes(("\r\n".join(",".join(r) for r in rows) + "\r\n").encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk"])
def test_csv_in_every_encoding_reads_the_same(tmp_path, encoding):
    table = open_table(_csv(tmp_path / "o.csv", encoding))
    assert table.headers == ROWS[0]
    assert list(table.rows) == [(2, ROWS[1]), (3, ROWS[2])]


def test_xlsx_reads_with_excel_types(tmp_path):
    wb = Workbook()
    ws = wb.active
    ws.append(["订单号", "手机号", "支付时间", "金额"])
    ws.append(["A1", 13812341234, dt.datetime(2026, 10, 1, 8, 30), 128.5])
    ws.append([None, None, None, None])
    ws.append(["A2", "13900001111", "2026-10-02", 99])
    wb.save(tmp_path / "o.xlsx")
    table = open_table(tmp_path / "o.xlsx")
    assert table.headers == ["订单号", "手机号", "支付时间", "金额"]
    assert list(table.rows) == [(2, ["A1", 13812341234, dt.datetime(2026, 10, 1, 8, 30), 128.5]),
                                (4, ["A2", "13900001111", "2026-10-02", 99])]


def test_headers_map_in_chinese_and_english_and_unknown_ones_are_listed():
    mapping, unknown = map_headers("orders", ["Order ID", "手机号", "支付 时间", "金额", "备注"])
    assert mapping == {"order_id": 0, "member_phone": 1, "paid_at": 2, "amount": 3}
    assert unknown == ["备注"]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04not really a zip"])
def test_unreadable_files_raise(tmp_path, content):
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(FileUnreadable):
        open_table(tmp_path / "bad.csv")
    with pytest.raises(FileUnreadable):
        open_table(tmp_path / "missing.csv")
