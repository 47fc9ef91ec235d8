"""Refund imports end to end on the real databases: the three refund modes, the error report,
idempotent re-imports, refunds that arrive before their orders, and the CLI."""

import csv
import subprocess
import sys

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select

from orchard import db
from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.events import ingest
from orchard.events.models import Order, Refund, RefundLine
from orchard.events.schemas import RefundIn
from orchard.imports.readers import FileUnreadable
from orchard.imports.service import run_import
from orchard.members.models import MemberAggregate
from tests.factories import make_org

ORDERS = [["订单号", "手机号", "支付时间", "金额", "商品编码", "数量", "门店编码"],
          ["P1", "13812341234", "2026-10-01 10:00", "100.00", "A", "2", "SH001"],
          ["P2", "13812341234", "2026-10-02 10:00", "50.00", "B", "1", "SH001"],
          ["P3", "13812341234", "2026-10-03 10:00", "30.00", "C", "3", "SH001"]]
REFUNDS = [["退款单号", "原订单号", "退款时间", "退款金额", "商品编码", "数量", "退款原因"],
           ["R1", "P1", "2026-10-05 12:00", "", "A", "1", "尺码不合适"],  # one of two units: 50.00
           ["R2", "P2", "2026-10-05 12:00", "", "", "", ""],  # full: 50.00, the order stops counting
           ["R3", "P3", "2026-10-05 12:00", "10", "", "", "破损"]]  # amount only: 10.00


def _file(tmp_path, name, rows, fmt="utf-8-sig"):
    if fmt == "xlsx":
        wb = Workbook(write_only=True)
        ws = wb.create_sheet()
        for r in rows:
            ws.append(r)
        path = tmp_path / f"{name}.xlsx"
        wb.save(path)
        return path
    path = tmp_path / f"{name}.csv"
    with path.open("w", encoding=fmt, newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _report(result):
    with result.report_path.open(encoding="utf-8-sig") as fh:
        return [r[:4] for r in list(csv.reader(fh))[1:]]


def _aggregates():
    with db.transaction(readonly=True) as s:
        a = s.scalar(select(MemberAggregate))
        return a.order_count, a.total_spend_fen, a.refund_fen


def _counts():
    with db.transaction(readonly=True) as s:
        return (s.scalar(select(func.count()).select_from(Refund)),
                s.scalar(select(func.count()).select_from(RefundLine)),
                s.scalar(select(func.sum(Order.refunded_fen))))


@pytest.mark.parametrize("fmt", ["utf-8-sig", "gb18030", "xlsx"])
def test_full_amount_and_line_refunds_reduce_the_members_spend(clean_db, tmp_path, fmt):
    # given
    make_org()
    run_import("orders", _file(tmp_path, "orders", ORDERS, fmt))
    # when
    result = run_import("refunds", _file(tmp_path, "refunds", REFUNDS, fmt))
    # then
    assert (result.rows, result.created, result.errors, result.warnings) == (3, 3, 0, 0)
    assert result.report_path is None
    assert _aggregates() == (2, 18000 - 5000 - 5000 - 1000, 11000)
    with db.transaction(readonly=True) as s:
        status = dict(s.execute(select(Order.external_id, Order.status)).tuples().all())
        reasons = dict(s.execute(select(Refund.external_id, Refund.reason)).tuples().all())
    assert status == {"P1": "partially_refunded", "P2": "refunded", "P3": "partially_refunded"}
    assert reasons == {"R1": "尺码不合适", "R2": None, "R3": "破损"}


def test_refunds_that_do_not_fit_are_reported_with_row_and_column(clean_db, tmp_path):
    # given
    make_org()
    run_import("orders", _file(tmp_path, "orders", ORDERS))
    f = _file(tmp_path, "refunds", [["refund_id", "order_id", "refunded_at", "amount", "amount_fen", "sku", "quantity"],
                                    ["R1", "P1", "2026-10-05", "100.01", "", "", ""],
                                    ["R2", "P1", "2026-10-05", "", "", "Z", ""],
                                    ["R3", "P1", "2026-10-05", "", "", "A", "3"],
                                    ["R4", "P1", "2026-10-05", "", "10001", "", ""],
                                    ["R5", "P1", "2026-10-05", "100.01", "", "A", "1"],
                                    ["", "P1", "2026-10-05", "1", "", "", ""],
                                    ["R7", "P1", "yesterday", "1", "", "", ""],
                                    ["R8", "P2", "2026-10-05", "", "", "", ""],
                                    ["R9", "P2", "2026-10-06", "", "", "", ""]])
    # when
    result = run_import("refunds", f)
    # then
    assert (result.rows, result.created, result.errors) == (9, 1, 8)
    assert [r[:2] for r in _report(result)] == [["2", "amount"], ["3", "sku"], ["4", "quantity"],
                                                ["5", "amount_fen"], ["6", "amount"], ["7", "refund_id"],
                                                ["8", "refunded_at"], ["10", "order_id"]]
    assert _report(result)[0][2] == "refund of 10001 fen exceeds the 10000 fen not yet refunded"
    assert _counts() == (1, 1, 5000)  # only R8; nothing of a refused row remains


def test_reimporting_refunds_changes_nothing(clean_db, tmp_path):
    # given
    make_org()
    run_import("orders", _file(tmp_path, "orders", ORDERS))
    first = run_import("refunds", _file(tmp_path, "refunds", REFUNDS))
    before = _aggregates(), _counts()
    # when
    again = run_import("refunds", _file(tmp_path, "refunds", REFUNDS, "gb18030"))
    # then
    assert (first.created, again.created, again.unchanged, again.errors) == (3, 0, 3, 0)
    assert (_aggregates(), _counts()) == before == ((2, 7000, 11000), (3, 2, 11000))


def test_a_refund_id_reused_with_other_content_is_a_reported_conflict(clean_db, tmp_path):
    make_org()
    run_import("orders", _file(tmp_path, "orders", ORDERS))
    run_import("refunds", _file(tmp_path, "refunds", REFUNDS))
    changed = [row[:] for row in REFUNDS]
    changed[3][3] = "20"
    result = run_import("refunds", _file(tmp_path, "refunds", changed))
    assert (result.unchanged, result.errors) == (2, 1)
    assert [r[:2] for r in _report(result)] == [["4", "refund_id"]]
    assert _aggregates() == (2, 7000, 11000)


def test_a_refund_before_its_order_is_pending_then_applied_when_the_orders_arrive(clean_db, tmp_path):
    # given
    make_org()
    refunds = _file(tmp_path, "refunds", REFUNDS)
    # when
    early = run_import("refunds", refunds)
    early_report = _report(early)
    still = run_import("refunds", refunds)
    orders = run_import("orders", _file(tmp_path, "orders", ORDERS))
    after = run_import("refunds", refunds)
    # then
    assert (early.created, early.warnings) == (3, 3)
    assert early_report[0] == ["2", "order_id", "order not found yet; kept pending until it arrives", "warning"]
    assert (still.unchanged, still.warnings) == (3, 3)
    assert (orders.created, orders.errors) == (3, 0)
    assert (after.unchanged, after.warnings, after.report_path) == (3, 0, None)
    assert _aggregates() == (2, 7000, 11000)
    with db.transaction(readonly=True) as s:
        assert set(s.scalars(select(Refund.status))) == {"applied"}


def test_a_pending_refund_that_does_not_fit_its_order_is_reported_on_reimport(clean_db, tmp_path):
    make_org()
    refunds = _file(tmp_path, "refunds", [["refund_id", "order_id", "refunded_at", "amount"],
                                          ["R1", "P2", "2026-10-05", "80"]])
    run_import("refunds", refunds)
    run_import("orders", _file(tmp_path, "orders", ORDERS))
    again = run_import("refunds", refunds)
    assert (again.unchanged, again.warnings) == (1, 1)
    assert _report(again)[0][1:] == ["order_id", "rejected when its order arrived: amount_fen: refund of 8000 fen "
                                                 "exceeds the 5000 fen not yet refunded", "warning"]
    assert _aggregates() == (3, 18000, 0)


def test_an_imported_refund_is_a_duplicate_of_the_same_refund_sent_by_http(clean_db, tmp_path):
    # given
    make_org()
    run_import("orders", _file(tmp_path, "orders", ORDERS))
    run_import("refunds", _file(tmp_path, "refunds", REFUNDS))
    system = Principal("system", 0, "test", Role.admin, None, False)
    # when
    with db.transaction() as s:
        outcome = ingest.ingest(s, principal=system, kind="refund", data=RefundIn.model_validate(
            {"source": "import", "external_id": "R3", "order_external_id": "P3",
             "refunded_at": "2026-10-05T04:00:00Z", "amount_fen": 1000, "reason": "破损"}))
    # then
    assert outcome.status == "duplicate"
    assert _counts() == (3, 2, 11000)


@pytest.mark.parametrize(("kind", "header"), [
    ("refunds", ["退款单号", "退款时间", "退款金额"]), ("refunds", ["退款单号", "订单号", "金额"]),
    ("events", ["事件ID", "事件", "发生时间"]), ("events", ["事件ID", "手机号", "发生时间"]),
])
def test_a_header_without_a_required_column_is_refused(clean_db, tmp_path, kind, header):
    with pytest.raises(FileUnreadable, match="no column for"):
        run_import(kind, _file(tmp_path, "x", [header, ["1", "2", "3"]]))


def test_the_cli_imports_refunds_and_reports_bad_rows_with_exit_code_zero(clean_db, tmp_path):
    make_org()
    f = _file(tmp_path, "r", [["退款单号", "原订单号", "退款时间"], ["R1", "P1", "2026-10-05"], ["R2", "P1", "later"]])
    done = subprocess.run([sys.executable, "-m", "orchard.cli", "import", "refunds", str(f)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "created 1" in done.stdout and "errors 1" in done.stdout and "warnings 1" in done.stdout
    assert "r.csv.errors.csv" in done.stdout
