"""Order files with one row per order line: the consecutive rows of an order id are one order, on
SQLite and PostgreSQL, through the per-row path and the COPY path alike; batches never split an
order; re-imports, overlapping files and a killed run behave as for one-row orders."""

import csv
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook
from sqlalchemy import select

from orchard import db
from orchard.events.models import Order, OrderLine
from orchard.imports import rows
from orchard.imports import service as import_service
from orchard.imports.service import run_import
from orchard.members.models import MemberAggregate
from tests.conftest import wipe_tables
from tests.factories import make_org
from tests.imports import every_table
from tests.imports.test_pg_orders import _dump

HEAD = ["订单号", "手机号", "支付时间", "实付金额", "门店编码", "商品编码", "商品名称", "品类", "数量", "单价",
        "行金额"]


def _write(path, table, encoding="utf-8-sig"):
    with path.open("w", encoding=encoding, newline="") as fh:
        csv.writer(fh).writerows(table)
    return path


def _basket(i):
    """Order i: 1 to 4 lines; its paid amount is the lines' sum less a discount on every third order."""
    lines = [(f"SKU{(i + j) % 7}", f"商品{j}", ["茶叶", "茶具", "点心"][j % 3], (i + j) % 3 + 1,
              f"{(i * 7 + j) % 50 + 1}.9") for j in range(i % 4 + 1)]
    total = sum(q * (int(p.split(".")[0]) * 100 + 90) for _, _, _, q, p in lines)
    paid = total - 100 if i % 3 == 0 else None
    return lines, total, paid


def _orders(n, start=0):
    table = [HEAD]
    for i in range(start, start + n):
        lines, _, paid = _basket(i)
        for sku, name, category, q, price in lines:
            table.append([f"L{i}", f"1390000{i % 40:04d}", f"2026-{i % 9 + 1:02d}-0{i % 8 + 1} 12:00",
                          "" if paid is None else f"{paid / 100:.2f}", "SH001", sku, name, category, str(q), price, ""])
    return table


def _spend(n, start=0):
    return sum((paid if paid is not None else total) for _, total, paid in map(_basket, range(start, start + n)))


def _lines():
    with db.transaction(readonly=True) as s:
        return sorted((o.external_id, ln.line_no, ln.sku, ln.category, ln.quantity, ln.unit_price_fen, ln.amount_fen)
                      for ln, o in s.execute(select(OrderLine, Order).join(Order, Order.id == OrderLine.order_id)))


def _totals():
    with db.transaction(readonly=True) as s:
        orders = s.scalars(select(Order)).all()
        aggregates = s.scalars(select(MemberAggregate)).all()
        return (len(orders), sum(o.amount_fen for o in orders), sum(a.order_count for a in aggregates),
                sum(a.total_spend_fen for a in aggregates))


def _report(result):
    if result.report_path is None:
        return []
    with result.report_path.open(encoding="utf-8-sig") as fh:
        return [r[:4] for r in list(csv.reader(fh))[1:]]


def test_units_stream_and_hold_one_order_at_a_time():
    """The grouping reads one row past the current order and no further; an order with too many rows
    is handed on in chunks (rejected) instead of being held whole."""
    consumed = []

    def table():
        for n in itertools.count(2):
            consumed.append(n)
            yield n, [f"O{n // 3}"]

    units = import_service._units("orders", table(), {"order_id": 0})
    first = next(units)
    assert [n for n, _ in first.rows] == [2] and consumed == [2, 3]
    assert [n for n, _ in next(units).rows] == [3, 4, 5] and consumed[-1] == 6

    big = import_service._units("orders", ((n, ["BIG"]) for n in range(2, 2 + 3 * rows.MAX_LINES)), {"order_id": 0})
    chunks = list(big)
    assert all(u.oversize and len(u.rows) <= rows.MAX_LINES + 1 for u in chunks)
    assert sum(len(u.rows) for u in chunks) == 3 * rows.MAX_LINES


def test_batches_never_split_an_order():
    units = [import_service._Unit([(n, [])] * size) for n, size in enumerate([2, 3, 1, 4, 2])]
    batches = list(import_service._batches(iter(units), 3))
    assert [[len(u.rows) for u in b] for b in batches] == [[2, 3], [1, 4], [2]]


def test_a_multi_line_file_imports_one_order_per_order_id_with_every_line(clean_db, tmp_path):
    make_org()
    result = run_import("orders", _write(tmp_path / "lines.csv", _orders(40)))
    assert (result.rows, result.created, result.errors) == (sum(i % 4 + 1 for i in range(40)), 40, 0)
    assert _totals() == (40, _spend(40), 40, _spend(40))
    lines = _lines()
    assert len(lines) == result.rows
    assert lines[0] == ("L0", 1, "SKU0", "茶叶", 1, 190, 190)
    with db.transaction(readonly=True) as s:
        discounted = s.scalar(select(Order).where(Order.external_id == "L3"))
        line_sum = sum(ln.amount_fen for ln in s.scalars(select(OrderLine).where(OrderLine.order_id == discounted.id)))
    assert discounted.amount_fen == line_sum - 100  # the order amount is what was paid


def test_a_bad_line_rejects_its_whole_order_and_reports_every_row(clean_db, tmp_path):
    make_org()
    table = _orders(3)  # L0: row 2; L1: rows 3-4; L2: rows 5-7
    table[3][8] = "0"  # L1's second line: quantity 0
    table[5][2] = "2026-03-04 12:00"  # L2's second row: another paid_at than its first
    result = run_import("orders", _write(tmp_path / "o.csv", table))
    assert (result.rows, result.created, result.errors) == (6, 1, 5)
    report = _report(result)
    assert report[:2] == [["3", "order_id", "not imported: row 4 of the same order has an error", "error"],
                          ["4", "quantity", report[1][2], "error"]]
    assert [r[:2] for r in report[2:]] == [["5", "order_id"], ["6", "paid_at"], ["7", "order_id"]]
    assert "row 5" in report[3][2]
    assert _totals()[0] == 1 and {ln[0] for ln in _lines()} == {"L0"}


def test_an_order_id_whose_rows_are_apart_is_a_replay_or_a_conflict(clean_db, tmp_path):
    """The first group makes the order; a later group under the same id is a duplicate if it says the
    same, else an id_reused conflict on each of its rows — as for an order sent twice over HTTP."""
    make_org()
    table = _orders(3)  # L0: row 2; L1: rows 3-4; L2: rows 5-7
    again, changed = [list(r) for r in table[2:4]], [list(r) for r in table[4:7]]
    changed[1][9] = "99.9"
    result = run_import("orders", _write(tmp_path / "o.csv", [*table, *again, *changed]))
    assert (result.rows, result.created, result.unchanged, result.errors) == (11, 3, 1, 3)
    assert [r[:2] for r in _report(result)] == [["10", "order_id"], ["11", "order_id"], ["12", "order_id"]]
    assert "ingest.id_reused" in _report(result)[0][2]
    assert _totals() == (3, _spend(3), 3, _spend(3))


def test_reimport_overlap_and_xlsx_of_multi_line_files(clean_db, tmp_path):
    make_org()
    first = run_import("orders", _write(tmp_path / "a.csv", _orders(30)))
    state = (_totals(), _lines())
    again = run_import("orders", _write(tmp_path / "a.csv", _orders(30)))
    assert (again.created, again.unchanged, again.errors) == (0, 30, 0) and (_totals(), _lines()) == state
    overlap = run_import("orders", _write(tmp_path / "b.csv", _orders(30, start=20), encoding="gb18030"))
    assert (first.created, overlap.created, overlap.unchanged) == (30, 20, 10)
    wb = Workbook(write_only=True)
    ws = wb.create_sheet()
    for r in _orders(50):
        ws.append(r)
    wb.save(tmp_path / "c.xlsx")
    xlsx = run_import("orders", tmp_path / "c.xlsx")
    assert (xlsx.created, xlsx.unchanged, xlsx.errors) == (0, 50, 0)
    assert _totals() == (50, _spend(50), 50, _spend(50))


def test_an_order_straddling_batch_boundaries_is_still_one_order(clean_db, tmp_path):
    """Batches of 3 rows against orders of 1 to 4 rows: most orders would straddle a boundary."""
    make_org()
    whole = run_import("orders", _write(tmp_path / "a.csv", _orders(25)))
    state = (_totals(), _lines(), _dump())
    wipe_tables()
    make_org()
    small = run_import("orders", _write(tmp_path / "a.csv", _orders(25)), batch_size=3)
    assert (small.rows, small.created) == (whole.rows, whole.created) == (sum(i % 4 + 1 for i in range(25)), 25)
    assert (_totals(), _lines(), _dump()) == state


_line = st.fixed_dictionaries({
    "sku": st.sampled_from(["S1", "S2", ""]), "category": st.sampled_from(["", "茶叶"]),
    "quantity": st.sampled_from(["", "1", "3", "0"]),  # 0: a bad line
    "unit_price": st.sampled_from(["", "9.90", "12"]), "line_amount": st.sampled_from(["", "20.00", "0.01"])})
_group = st.tuples(st.sampled_from([f"G{i}" for i in range(6)]),  # ids repeat: replays and conflicts
                   st.sampled_from(["13800000001", "13800000002", "13800000003"]),
                   st.sampled_from(["2026-10-01 10:00", "2026-09-01"]), st.sampled_from(["", "30.00"]),
                   st.sampled_from(["", "SH001"]), st.lists(_line, min_size=1, max_size=4),
                   st.sampled_from([None, "paid_at"]))  # a column one row disagrees on


def _file(path, groups):
    table = [["order_id", "member_phone", "paid_at", "amount", "store_code", "sku", "category", "quantity",
              "unit_price", "line_amount"]]
    for oid, phone, paid, amount, store, lines, disagree in groups:
        for j, ln in enumerate(lines):
            at = "2026-10-02" if disagree == "paid_at" and j == len(lines) - 1 and j else paid
            table.append([oid, phone, at, amount, store, ln["sku"], ln["category"], ln["quantity"], ln["unit_price"],
                          ln["line_amount"]])
    return _write(path, table)


def test_random_multi_line_files_end_alike_whatever_the_path_and_batch_size(clean_db, tmp_path, monkeypatch):
    """The set-based path in batches of 3 rows against the per-row path in one batch, on each database:
    same counts, same report, same end state."""
    fast_writers = dict(import_service._FAST)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(_group, min_size=1, max_size=10))
    def check(groups):
        path = _file(tmp_path / "r.csv", groups)
        ends = []
        for fast, size in ((False, 1000), (True, 3)):
            wipe_tables()
            make_org()
            monkeypatch.setattr(import_service, "_FAST", fast_writers if fast else {})
            result = run_import("orders", path, batch_size=size)
            # the COPY path reports a batch's invalid rows before its conflicts: compare by row number
            report = sorted(_report(result), key=lambda r: int(r[0]))
            ends.append(((result.rows, result.created, result.unchanged, result.errors), report, _dump(),
                         every_table.dump()))
        assert ends[1] == ends[0], groups

    check()


def test_a_killed_multi_line_import_rerun_ends_as_an_uninterrupted_run(clean_db, tmp_path):
    """Killed mid-file with batches of 100 rows (orders of 1 to 4 rows straddle them), then re-run:
    every order whole, with all its lines, none twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    make_org()
    n = 1200
    f = _write(tmp_path / "big.csv", _orders(n))
    cmd = [sys.executable, "-m", "orchard.cli", "import", "orders", str(f), "--batch-size", "100"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while _totals()[0] < 120:
        assert time.time() < deadline and proc.poll() is None, "import finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = _lines()
    assert 0 < len({ln[0] for ln in killed}) < n
    per_order = {}
    for line in killed:
        per_order[line[0]] = per_order.get(line[0], 0) + 1
    assert all(count == int(oid[1:]) % 4 + 1 for oid, count in per_order.items())  # no order half-written
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _totals() == (n, _spend(n), n, _spend(n))
    assert len(_lines()) == sum(i % 4 + 1 for i in range(n))
