"""Behaviour-event imports end to end on the real databases: names in Chinese or English, member
aggregates, properties, the error report, idempotent re-imports, and the CLI."""

import csv
import datetime as dt
import subprocess
import sys

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select

from orchard import db
from orchard.events.models import Event
from orchard.identity.models import Identity
from orchard.imports.service import run_import
from orchard.members.models import Member, MemberAggregate
from tests.factories import make_org

EVENTS = [["事件ID", "事件", "手机号", "发生时间", "门店编码", "商品编码", "属性"],
          ["E1", "到店", "13812341234", "2026-10-01 10:00", "SH001", "", ""],
          ["E2", "登录", "13812341234", "2026-10-03 08:30", "", "", ""],
          ["E3", "到店", "13812341234", "2026-10-02 15:00", "HZ001", "", ""],  # a later visit moves last_visit_at
          ["E4", "浏览商品", "13900001111", "2026-10-04 20:00", "", "S1", '{"page": "详情页"}'],
          ["E5", "wine_tasting", "13900001111", "2026-10-05 19:00", "SH001", "", '{"seats": 2}']]
UTC = dt.UTC


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


def _aggregates(phone):
    with db.transaction(readonly=True) as s:
        a = s.scalar(select(MemberAggregate).join(Identity, Identity.member_id == MemberAggregate.member_id)
                     .where(Identity.kind == "phone", Identity.value == f"+86{phone}"))
        return a.last_visit_at, a.last_login_at, a.last_event_at


def _events():
    with db.transaction(readonly=True) as s:
        return {e.external_id: (e.name, e.properties) for e in s.scalars(select(Event))}


@pytest.mark.parametrize("fmt", ["utf-8-sig", "gb18030", "xlsx"])
def test_events_are_created_with_standard_names_and_move_the_members_aggregates(clean_db, tmp_path, fmt):
    # given
    make_org()
    # when
    result = run_import("events", _file(tmp_path, "events", EVENTS, fmt))
    # then
    assert (result.rows, result.created, result.errors) == (5, 5, 0)
    assert _events() == {"E1": ("store_visit", {}), "E2": ("login", {}), "E3": ("store_visit", {}),
                         "E4": ("product_viewed", {"page": "详情页", "sku": "S1"}),
                         "E5": ("wine_tasting", {"seats": 2})}
    assert _aggregates("13812341234") == (dt.datetime(2026, 10, 2, 7, tzinfo=UTC),
                                          dt.datetime(2026, 10, 3, 0, 30, tzinfo=UTC),
                                          dt.datetime(2026, 10, 3, 0, 30, tzinfo=UTC))
    assert _aggregates("13900001111") == (None, None, dt.datetime(2026, 10, 5, 11, tzinfo=UTC))
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 2


def test_xlsx_event_times_are_read_in_the_tenants_zone(clean_db, tmp_path):
    make_org()
    f = _file(tmp_path, "e", [["event_id", "event", "member_card_no", "occurred_at"],
                              ["E1", "checked_in", "VIP001", dt.datetime(2026, 10, 1, 9, 0)]], "xlsx")
    assert run_import("events", f).created == 1
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(Event.occurred_at)) == dt.datetime(2026, 10, 1, 1, tzinfo=UTC)


def test_bad_event_rows_are_reported_with_row_and_column(clean_db, tmp_path):
    # given
    make_org()
    f = _file(tmp_path, "e", [["event_id", "name", "member_phone", "occurred_at", "store_code", "properties"],
                              ["E1", "login", "13812341234", "2026-10-01", "", '{"os": "ios"}'],
                              ["E2", "login", "13812341234", "2026-10-01", "", "{os: ios}"],
                              ["E3", "login", "13812341234", "2026-10-01", "", "[1]"],
                              ["E4", "9lives", "13812341234", "2026-10-01", "", ""],
                              ["E5", "login", "", "2026-10-01", "", ""],
                              ["E6", "login", "13812341234", "2026-10-01", "NOPE", ""],
                              ["E7", "login", "13812341234", "2099-01-01", "", ""],
                              ["", "login", "13812341234", "2026-10-01", "", ""]])
    # when
    result = run_import("events", f)
    # then
    assert (result.rows, result.created, result.errors) == (8, 1, 7)
    assert [r[:2] for r in _report(result)] == [["3", "properties"], ["4", "properties"], ["5", "name"],
                                                ["6", "member_phone"], ["7", "store_code"], ["8", "occurred_at"],
                                                ["9", "event_id"]]
    assert _events() == {"E1": ("login", {"os": "ios"})}


def test_reimporting_events_changes_nothing(clean_db, tmp_path):
    # given
    make_org()
    first = run_import("events", _file(tmp_path, "events", EVENTS))
    before = _events(), _aggregates("13812341234")
    # when
    again = run_import("events", _file(tmp_path, "events", EVENTS, "xlsx"))
    changed = [row[:] for row in EVENTS]
    changed[2][3] = "2026-10-04 08:30"
    conflict = run_import("events", _file(tmp_path, "events", changed))
    # then
    assert (first.created, again.created, again.unchanged, again.errors) == (5, 0, 5, 0)
    assert (conflict.unchanged, conflict.errors) == (4, 1)
    assert [r[:2] for r in _report(conflict)] == [["3", "event_id"]]
    assert (_events(), _aggregates("13812341234")) == before


def test_the_cli_imports_events_and_reports_bad_rows_with_exit_code_zero(clean_db, tmp_path):
    make_org()
    f = _file(tmp_path, "e", [["事件ID", "事件名称", "手机号", "时间"], ["E1", "签到", "13812341234", "2026-10-05"],
                              ["E2", "签到", "13812341234", "2026-13-05"]])
    done = subprocess.run([sys.executable, "-m", "orchard.cli", "import", "events", str(f)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "created 1" in done.stdout and "errors 1" in done.stdout and "e.csv.errors.csv" in done.stdout


def test_a_killed_event_import_rerun_ends_as_an_uninterrupted_run(clean_db, tmp_path):
    """Events of known members take the set-based path, a batch per transaction: a run killed between
    batches and started again writes the rest and replays the committed ones."""
    import os
    import signal
    import time

    from tests.conftest import wipe_tables
    from tests.imports import every_table

    def members():
        make_org()
        run_import("members", _file(tmp_path, "m", [["手机号", "注册时间"],
                                                    *([f"1380000{i:04d}", "2025-01-01"] for i in range(50))]))

    rows = [["事件ID", "事件", "手机号", "发生时间", "门店编码"]]
    rows += [[f"V{i}", ("到店", "登录", "浏览商品")[i % 3], f"1380000{i % 50:04d}",
              f"2026-{i % 9 + 1:02d}-{i % 27 + 1:02d} 10:{i % 60:02d}", ("", "SH001")[i % 2]] for i in range(3000)]
    f = _file(tmp_path, "big", rows)
    members()
    cmd = [sys.executable, "-m", "orchard.cli", "import", "events", str(f), "--batch-size", "100"]
    proc = subprocess.Popen(cmd, env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def stored():
        with db.transaction(readonly=True) as s:
            return s.scalar(select(func.count()).select_from(Event))
    deadline = time.time() + 60
    while stored() < 300:
        assert time.time() < deadline and proc.poll() is None, "import finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < stored() < 3000
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert stored() == 3000
    rerun_state = every_table.dump()
    wipe_tables()
    members()
    assert run_import("events", f, batch_size=100).created == 3000
    assert every_table.dump() == rerun_state
