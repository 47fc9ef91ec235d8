"""`orchard export` as a real subprocess against the test database: an unscoped operator's export."""

from __future__ import annotations

import os
import subprocess
import sys

import openpyxl
from sqlalchemy import select

from orchard.audit.models import AuditEntry
from tests.exports.conftest import read_csv

ORCHARD = [sys.executable, "-m", "orchard.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ORCHARD, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_export_members_writes_an_unmasked_csv_and_is_audited(world, tmp_path, session):
    # given
    out = tmp_path / "会员.csv"
    # when
    p = run("export", "members", "--out", str(out), "--fields", "id,name,phone,card_no", "--store", "EAST",
            "--joined-from", "2026-01-01")
    # then
    assert p.returncode == 0, p.stdout + p.stderr
    assert "exported 2 rows" in p.stdout and "rows/s" in p.stderr
    assert read_csv(out.read_bytes()) == [["会员ID", "姓名", "手机号", "会员卡号"],
                                          [str(world.sh), "王小明", "+8613912345678", "SHCARD-0001"],
                                          [str(world.hz), "李华", "+8613712340002", ""]]
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "export.members")).one()
    assert entry.actor == "cli" and entry.data["filters"] == {"store": "EAST", "joined_from": "2026-01-01T00:00:00"}
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left beside it


def test_export_orders_and_events_as_xlsx(world, tmp_path):
    orders, events = tmp_path / "orders.xlsx", tmp_path / "events.xlsx"
    p = run("export", "orders", "--format", "xlsx", "--out", str(orders), "--lang", "en",
            "--paid-from", "2026-10-01T00:00:00+08:00", "--paid-to", "2026-10-02T00:00:00+08:00")
    assert p.returncode == 0, p.stdout + p.stderr
    ws = openpyxl.load_workbook(orders)["orders"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0][:3] == ("Order ID", "Source", "External order ID")
    assert [r[2] for r in rows[1:]] == ["SH-O1", "SH-O1"]
    p = run("export", "events", "--format", "xlsx", "--out", str(events), "--name", "page_viewed")
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r[1] for r in openpyxl.load_workbook(events)["事件"].iter_rows(min_row=2, values_only=True)] == [
        "page_viewed"]


def test_export_refuses_bad_input_and_writes_nothing(world, tmp_path):
    out = tmp_path / "x.csv"
    bad_field = run("export", "members", "--out", str(out), "--fields", "id,mobile")
    bad_format = run("export", "members", "--out", str(out), "--format", "pdf")
    bad_time = run("export", "orders", "--out", str(out), "--paid-from", "yesterday")
    assert bad_field.returncode == 1 and "mobile" in bad_field.stderr
    assert bad_format.returncode == 2 and bad_time.returncode == 2
    assert not out.exists()
