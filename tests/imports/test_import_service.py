"""Imports end to end on the real databases (orders and members take the set-based path on both):
error report, idempotent and overlapping re-imports, and a run killed with SIGKILL then re-run ends
in exactly the state of an uninterrupted run (every table compared: tests/imports/every_table.py)."""

import csv
import os
import signal
import subprocess
import sys
import time

from openpyxl import Workbook
from sqlalchemy import func, select

from orchard import db
from orchard.events.models import Order
from orchard.imports.service import run_import
from orchard.members.models import Member, MemberAggregate
from tests.conftest import wipe_tables
from tests.factories import make_org
from tests.imports import every_table


def _write(path, rows, encoding="utf-8-sig"):
    with path.open("w", encoding=encoding, newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _orders(n, start=0):
    rows = [["订单号", "手机号", "支付时间", "金额", "门店编码"]]
    for i in range(start, start + n):
        rows.append([f"P{i}", f"1380000{i % 50:04d}", f"2026-{(i % 9) + 1:02d}-0{(i % 8) + 1}", f"{(i % 97) + 1}.5",
                     "SH001"])
    return rows


def _state():
    with db.transaction(readonly=True) as s:
        return (s.scalar(select(func.count()).select_from(Order)),
                s.scalar(select(func.count()).select_from(Member)),
                s.scalar(select(func.sum(MemberAggregate.total_spend_fen))),
                s.scalar(select(func.sum(MemberAggregate.order_count))))


def test_valid_rows_go_in_and_invalid_rows_are_reported_with_row_and_column(clean_db, tmp_path):
    make_org()
    f = _write(tmp_path / "o.csv", [["order_id", "member_phone", "paid_at", "amount_fen", "store_code"],
                                   ["A1", "13812341234", "2026-10-01", "12850", "SH001"],
                                   ["A2", "12345", "2026-10-01", "100", ""],
                                   ["A3", "13812341234", "2026-10-02", "-1", ""],
                                   ["A4", "13812341234", "2026-10-03", "500", "NOPE"]])
    result = run_import("orders", f)
    assert (result.rows, result.created, result.errors) == (4, 1, 3)
    with result.report_path.open(encoding="utf-8-sig") as fh:
        report = list(csv.reader(fh))
    assert [r[:2] for r in report[1:]] == [["3", "member_phone"], ["4", "amount_fen"], ["5", "store_code"]]
    assert report[1][4:] == ["A2", "12345", "2026-10-01", "100", ""]  # the original row follows
    assert _state()[:3] == (1, 1, 12850)


def test_importing_twice_or_an_overlapping_file_creates_no_duplicates(clean_db, tmp_path):
    make_org()
    first = run_import("orders", _write(tmp_path / "a.csv", _orders(100)))
    again = run_import("orders", _write(tmp_path / "a.csv", _orders(100)))
    overlap = run_import("orders", _write(tmp_path / "b.csv", _orders(100, start=50), encoding="gb18030"))
    assert (first.created, again.created, again.unchanged) == (100, 0, 100)
    assert (overlap.created, overlap.unchanged) == (50, 50)
    orders, members, spend, count = _state()
    assert (orders, members, count) == (150, 50, 150)
    assert spend == sum((i % 97 + 1) * 100 + 50 for i in range(150))
    replayed = every_table.dump()
    wipe_tables()
    make_org()
    assert run_import("orders", _write(tmp_path / "once.csv", _orders(150))).created == 150
    assert every_table.dump() == replayed  # as if the union had been imported once


def test_the_same_order_id_with_other_content_is_a_reported_conflict(clean_db, tmp_path):
    make_org()
    run_import("orders", _write(tmp_path / "a.csv", _orders(3)))
    changed = _orders(3)
    changed[2][3] = "999"
    result = run_import("orders", _write(tmp_path / "a.csv", changed))
    assert (result.unchanged, result.errors) == (2, 1)


def test_xlsx_orders_import(clean_db, tmp_path):
    make_org()
    wb = Workbook(write_only=True)
    ws = wb.create_sheet()
    for r in _orders(20):
        ws.append(r)
    wb.save(tmp_path / "o.xlsx")
    assert run_import("orders", tmp_path / "o.xlsx").created == 20


def test_members_import_creates_fills_blanks_and_never_overwrites(clean_db, tmp_path):
    make_org()
    f = _write(tmp_path / "m.csv", [["手机号", "姓名", "性别", "生日", "门店编码", "注册时间"],
                                   ["13812341234", "王芳", "女", "1990-05-01", "SH001", "2020-01-01"],
                                   ["13900001111", "", "男", "", "", ""],
                                   ["123", "坏", "", "", "", ""]])
    first = run_import("members", f)
    assert (first.created, first.errors) == (2, 1)
    later = _write(tmp_path / "m2.csv", [["phone", "name", "gender"], ["13812341234", "别名", "male"],
                                        ["13900001111", "李雷", ""]])
    second = run_import("members", later)
    assert (second.updated, second.unchanged) == (1, 1)
    with db.transaction(readonly=True) as s:
        names = dict(s.execute(select(Member.gender, Member.name)).tuples().all())
        home = s.scalar(select(Member.home_store_id).where(Member.name == "王芳"))
    assert names == {"female": "王芳", "male": "李雷"}
    assert home is not None


def test_a_killed_import_rerun_ends_as_an_uninterrupted_run(clean_db, tmp_path):
    make_org()
    f = _write(tmp_path / "big.csv", _orders(3000))
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "orchard.cli", "import", "orders", str(f), "--batch-size", "100"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while _state()[0] < 300:
        assert time.time() < deadline and proc.poll() is None, "import finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _state()[0]
    assert 0 < killed_at < 3000
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    orders, members, spend, count = _state()
    assert (orders, members, count) == (3000, 50, 3000)
    assert spend == sum((i % 97 + 1) * 100 + 50 for i in range(3000))
    rerun_state = every_table.dump()
    wipe_tables()
    make_org()
    assert run_import("orders", f, batch_size=100).created == 3000
    assert every_table.dump() == rerun_state


def test_the_cli_exits_non_zero_only_for_an_unreadable_file(clean_db, tmp_path):
    make_org()
    bad_rows = _write(tmp_path / "o.csv", [["order_id", "member_phone", "paid_at", "amount"], ["A", "1", "x", "y"]])
    ok = subprocess.run([sys.executable, "-m", "orchard.cli", "import", "orders", str(bad_rows)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "o.csv.errors.csv" in ok.stdout
    no_header = _write(tmp_path / "h.csv", [["foo", "bar"], ["1", "2"]])
    bad = subprocess.run([sys.executable, "-m", "orchard.cli", "import", "orders", str(no_header)],
                         capture_output=True, text=True, timeout=120)
    missing = subprocess.run([sys.executable, "-m", "orchard.cli", "import", "orders", str(tmp_path / "nope.csv")],
                             capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and missing.returncode != 0


def test_a_nul_character_is_an_error_row_not_a_failed_import(clean_db, tmp_path):
    make_org()
    f = _write(tmp_path / "o.csv", [["order_id", "member_phone", "paid_at", "amount_fen"],
                                   ["A\x00", "13812341234", "2026-10-01", "100"],
                                   ["A2", "13812341234", "2026-10-01", "100"]])
    result = run_import("orders", f)
    assert (result.created, result.errors) == (1, 1)
    m = _write(tmp_path / "m.csv", [["phone", "name"], ["13812341234", "王\x00芳"], ["13900001111", "李雷"]])
    assert run_import("members", m).errors == 1


def test_member_import_sets_marketing_consent_with_history(clean_db, tmp_path):
    from orchard.audit.models import AuditEntry
    from orchard.members.models import Consent, ConsentChange

    make_org()
    path = _write(tmp_path / "m.csv", [["手机号", "姓名", "短信营销", "邮件营销"],
                                       ["13812340001", "王芳", "是", ""],
                                       ["13812340002", "李雷", "否", "yes"],
                                       ["13812340003", "韩梅", "也许", ""]])
    first = run_import("members", path)
    assert (first.created, first.errors) == (2, 1)
    report = list(csv.reader(first.report_path.open(encoding="utf-8-sig")))
    assert report[1][:2] == ["4", "consent_sms"]
    again = run_import("members", _write(tmp_path / "m2.csv", [["手机号", "短信营销"], ["13812340001", "是"],
                                                                ["13812340002", "同意"]]))
    assert (again.unchanged, again.updated) == (1, 1)  # the same answer changes nothing; a new one does
    with db.transaction(readonly=True) as s:
        rows = sorted((c.channel, c.granted) for c in s.scalars(select(Consent)))
        assert rows == [("email", True), ("sms", True), ("sms", True)]
        assert s.scalar(select(func.count()).select_from(ConsentChange)) == 4
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action.like("consent.%"))) == 4
