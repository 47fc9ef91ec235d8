"""`orchard import orders --earn` and the `earn` field of `POST /api/v1/imports`, end to end on both
databases: imported orders earn as over the API, nothing without the flag, a re-import earns nothing
twice, a run killed with SIGKILL and re-run ends in the ledger of an uninterrupted run, refunds (in a
file, and waiting before their orders) reverse, and `points verify` is clean after each."""

from __future__ import annotations

import csv
import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from orchard import db
from orchard.config import get_settings
from orchard.identity.models import Identity
from orchard.imports.models import ImportJob
from orchard.imports.service import run_import
from orchard.loyalty import tiers
from orchard.loyalty.models import EarningRule, MemberTier, PointsEntry
from orchard.loyalty.schemas import TierProgramIn
from tests.factories import make_org, token_for
from tests.imports.test_jobs import upload, wait_done
from tests.loyalty.helpers import violations

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def rules(monkeypatch):
    """1 point per yuan capped at 50 a day, ×2 for gold members (silver at 60 points of growth, gold
    at 150), growth 1 per yuan; points never expire."""
    monkeypatch.setenv("ORCHARD_POINTS_EXPIRY", "never")
    monkeypatch.setenv("ORCHARD_POINTS_ORDER_PENDING_DAYS", "0")
    get_settings.cache_clear()
    _install_rules()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _write(path, rows):
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _orders(n: int, prefix: str = "E") -> list[list[str]]:
    rows = [["订单号", "手机号", "支付时间", "金额", "门店编码"]]
    for i in range(n):
        paid = (NOW - dt.timedelta(days=30 - (i % 29), hours=i % 7)).isoformat()
        rows.append([f"{prefix}{i}", f"1390000{i % 40:04d}", paid, f"{(i * 37) % 60 + 1}.5", "SH001"])
    return rows


def _ledger() -> dict:
    """Per member (by phone): its points entries in order (amount, balance_after, order), its tier."""
    with db.transaction(readonly=True) as s:
        phone = dict(s.execute(select(Identity.member_id, Identity.value).where(Identity.kind == "phone")).all())
        out: dict = {}
        for e in s.scalars(select(PointsEntry).order_by(PointsEntry.id)):
            out.setdefault(phone[e.member_id], []).append((e.kind, e.amount, e.balance_after, e.reason))
        levels = {t.member_id: t.level_id for t in s.scalars(select(MemberTier))}
    return {"entries": out, "tiers": sorted((phone[m], lv) for m, lv in levels.items())}


def _entries() -> int:
    with db.transaction(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(PointsEntry))


def test_imported_orders_earn_once_and_only_with_the_flag(clean_db, rules, tmp_path):
    history = _write(tmp_path / "history.csv", _orders(30, "H"))
    run_import("orders", history)
    assert _entries() == 0  # without --earn an import loads history

    f = _write(tmp_path / "orders.csv", _orders(200))
    result = run_import("orders", f, earn=True, batch_size=37)
    assert result.created == 200 and result.errors == 0
    first = _ledger()
    earned = sum(len(v) for v in first["entries"].values())
    assert 150 < earned <= 200 and first["tiers"]  # an order past its day's cap earns nothing
    with db.transaction(readonly=True) as s:
        texts = [str(x) for x in s.scalars(select(PointsEntry.explanation))]
    assert any("金卡双倍" in t for t in texts) and any("cap per day" in t for t in texts)
    assert violations() == {}

    again = run_import("orders", f, earn=True, batch_size=50)  # a re-import earns nothing twice
    assert again.unchanged == 200 and again.created == 0
    assert _ledger() == first
    run_import("orders", history, earn=True)  # orders stored before do not earn after the fact
    assert _ledger() == first
    assert violations() == {}


def test_refunds_reverse_what_imported_orders_earned_in_a_file_or_waiting(clean_db, rules, tmp_path):
    refunds = [["退款单号", "订单号", "退款时间", "退款金额"],
               ["R1", "E3", NOW.isoformat(), ""],  # waits for its order, then a full refund
               ["R2", "E5", NOW.isoformat(), "1.00"]]
    run_import("refunds", _write(tmp_path / "early.csv", refunds[:2]))
    run_import("orders", _write(tmp_path / "orders.csv", _orders(10)), earn=True)
    run_import("refunds", _write(tmp_path / "late.csv", [refunds[0], refunds[2]]))
    with db.transaction(readonly=True) as s:
        kinds = dict(s.execute(select(PointsEntry.kind, func.count()).group_by(PointsEntry.kind)).all())
        e3 = s.scalar(select(func.sum(PointsEntry.amount)).where(PointsEntry.reason.like("%E3")))
    assert kinds == {"earn": 10, "reverse": 2}
    assert e3 == 0
    assert violations() == {}


def test_a_killed_earning_import_rerun_ends_in_the_ledger_of_an_uninterrupted_run(clean_db, rules, tmp_path):
    from tests.conftest import wipe_tables

    n = 1500 if clean_db.startswith("postgresql") else 600
    f = _write(tmp_path / "orders.csv", _orders(n))
    cmd = [sys.executable, "-m", "orchard.cli", "import", "orders", str(f), "--earn", "--batch-size", "50"]
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    uninterrupted = _ledger()
    assert sum(len(v) for v in uninterrupted["entries"].values()) > n // 2

    wipe_tables()
    _install_rules()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _entries() < 100:
        assert time.time() < deadline and proc.poll() is None, "import finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < _entries() < n
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert _ledger() == uninterrupted
    assert violations() == {}


def _install_rules() -> None:
    make_org()
    with db.transaction() as s:
        s.add(EarningRule(name="每元1分", kind="amount", target="points", created_by="test",
                          config={"points": 1, "per_fen": 100, "caps": {"day": 50}}))
        s.add(EarningRule(name="金卡双倍", kind="multiplier", target="points", created_by="test",
                          config={"factor": "2", "when": {"type": "tier", "levels": ["gold"]}}))
        s.add(EarningRule(name="成长值", kind="amount", target="growth", created_by="test",
                          config={"points": 1, "per_fen": 100}))
        tiers.set_program(s, TierProgramIn.model_validate({"metric": "growth", "levels": [
            {"code": "base", "name": "普通", "rank": 0, "threshold": 0},
            {"code": "silver", "name": "银卡", "rank": 1, "threshold": 60},
            {"code": "gold", "name": "金卡", "rank": 2, "threshold": 150}]}), actor="test")


def test_an_http_upload_with_earn_earns_and_the_job_says_so(client, rules, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    admin = token_for(client, "admin")
    body = "\n".join(",".join(r) for r in _orders(20)).encode("utf-8-sig")
    r = upload(client, admin, "orders", body, earn="true")
    assert r.status_code == 202, r.text
    assert r.json()["earn"] is True
    job = wait_done(client, admin, r.json()["id"])
    assert job["status"] == "succeeded" and job["created"] == 20 and job["earn"] is True
    assert _entries() == 20
    plain = upload(client, admin, "orders", "\n".join(",".join(r) for r in _orders(5, "P")).encode(), name="b.csv")
    assert plain.json()["earn"] is False
    wait_done(client, admin, plain.json()["id"])
    assert _entries() == 20
    with db.transaction(readonly=True) as s:
        assert [j.earn for j in s.scalars(select(ImportJob).order_by(ImportJob.id))] == [True, False]
    assert violations() == {}


@pytest.mark.parametrize("fields,reason", [({"kind": "members", "earn": "true"}, "only an orders import"),
                                           ({"kind": "orders", "earn": "maybe"}, "true or false")])
def test_a_bad_earn_field_is_a_problem_naming_it(client, rules, tmp_path, monkeypatch, fields, reason):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    admin = token_for(client, "admin")
    fields = dict(fields)
    kind = fields.pop("kind")
    r = upload(client, admin, kind, b"a,b\n1,2\n", **fields)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "earn" and reason in r.json()["errors"][0]["reason"]
