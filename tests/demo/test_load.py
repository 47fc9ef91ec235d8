"""`orchard demo` end to end on the real databases: the same seed loads the same data, dirty rows
reach the error reports and the duplicate candidates, a re-run adds nothing, the staff can log in."""

import csv
import os
import subprocess
import sys

from sqlalchemy import func, select

from orchard import db
from orchard.auth import service as auth
from orchard.demo.load import load_demo
from orchard.events.models import Event, Order, OrderLine, Refund
from orchard.identity.models import Identity
from orchard.imports import columns
from orchard.members.models import Consent, Member, MergeCandidate
from orchard.org.models import OrgUnit
from tests.conftest import wipe_tables

_wipe = wipe_tables


def _dump() -> dict:
    """Everything that identifies the data, without database ids."""
    with db.transaction(readonly=True) as s:
        phone = (select(Identity.value).where(Identity.member_id == Member.id, Identity.kind == "phone")
                 .order_by(Identity.value).limit(1).scalar_subquery())
        return {
            "members": sorted(s.execute(select(Member.name, phone, Member.birthday, OrgUnit.code, Member.joined_at)
                                        .outerjoin(OrgUnit, OrgUnit.id == Member.home_store_id)).tuples(),
                              key=repr),
            "orders": sorted(s.execute(select(Order.external_id, Order.amount_fen, Order.refunded_fen,
                                              Order.paid_at)).tuples()),
            "lines": sorted(s.execute(select(Order.external_id, OrderLine.sku, OrderLine.quantity,
                                             OrderLine.amount_fen).join(Order, Order.id == OrderLine.order_id)
                                      ).tuples()),
            "refunds": sorted(s.execute(select(Refund.external_id, Refund.status, Refund.amount_fen)).tuples(),
                              key=repr),
            "events": sorted(s.execute(select(Event.external_id, Event.name, Event.occurred_at)).tuples()),
            "consents": sorted(s.execute(select(phone, Consent.channel, Consent.granted).join(
                Member, Member.id == Consent.member_id)).tuples()),
        }


def _counts() -> tuple:
    with db.transaction(readonly=True) as s:
        return tuple(s.scalar(select(func.count()).select_from(m))
                     for m in (Member, Identity, Order, Refund, Event, MergeCandidate, OrgUnit))


def test_the_same_seed_loads_the_same_data_and_another_seed_other_data(clean_db, tmp_path):
    # given
    load_demo(members=60, seed=3, directory=tmp_path / "one")
    first = _dump()
    _wipe()
    # when
    load_demo(members=60, seed=3, directory=tmp_path / "two")
    same = _dump()
    _wipe()
    load_demo(members=60, seed=4, directory=tmp_path / "three")
    other = _dump()
    # then
    assert same == first
    assert len(first["members"]) > 55 and len(first["orders"]) > 20
    assert all(amount > 0 for _, amount, _, _ in first["orders"])
    # baskets arrive whole: orders of several lines, what was paid never above the lines' sum
    per_order: dict[str, int] = {}
    for order_id, _, _, line_amount in first["lines"]:
        per_order[order_id] = per_order.get(order_id, 0) + line_amount
    assert len(first["lines"]) > len(first["orders"]) and len(per_order) == len(first["orders"])
    assert all(amount <= per_order[order_id] for order_id, amount, _, _ in first["orders"])
    if "refunds" in columns.KINDS:
        assert first["refunds"] and all(status == "applied" for _, status, _ in first["refunds"])
    assert not {m[1] for m in first["members"]} & {m[1] for m in other["members"]}
    assert other["orders"] != first["orders"]
    sms = [granted for _, channel, granted in first["consents"] if channel == "sms"]
    assert 0.35 < sum(sms) / len(first["members"]) < 0.75 and not all(sms)  # most said yes, a few said no
    assert any(name == "sign_up" for _, name, _ in first["events"])


def test_dirty_rows_reach_the_error_reports_and_duplicates_become_candidates(clean_db, tmp_path):
    # when
    result = load_demo(members=60, seed=3, directory=tmp_path)
    # then
    members, orders = result.imports["members"], result.imports["orders"]
    assert members.report_path == tmp_path / "members.errors.csv"
    with members.report_path.open(encoding="utf-8-sig") as fh:
        report = list(csv.reader(fh))[1:]
    assert {row[1] for row in report} >= {"phone", "birthday", "store_code"}
    assert result.report_rows["members"] == len(report) == members.errors
    with orders.report_path.open(encoding="utf-8-sig") as fh:
        assert {row[1] for row in list(csv.reader(fh))[1:]} >= {"member_phone", "store_code"}
    assert result.new_candidates >= 1
    with db.transaction(readonly=True) as s:
        pairs = s.execute(select(MergeCandidate.member_a_id, MergeCandidate.member_b_id)
                          .where(MergeCandidate.reason == "same_name_birthday")).tuples().all()
        for a, b in pairs:
            ma, mb = s.get_one(Member, a), s.get_one(Member, b)
            assert (ma.name, ma.birthday) == (mb.name, mb.birthday)
    assert not any(p.suffix == ".csv" and not p.name.endswith(".errors.csv") for p in tmp_path.iterdir())
    text_ = "\n".join(result.lines())
    assert str(members.report_path) in text_ and f"({members.errors} 行 rows)" in text_


def test_re_running_the_demo_adds_nothing(clean_db, tmp_path):
    # given
    load_demo(members=40, seed=9, directory=tmp_path / "one")
    before = _counts()
    # when
    again = load_demo(members=40, seed=9, directory=tmp_path / "two")
    # then
    assert _counts() == before
    assert all(r.created == 0 for r in again.imports.values())
    assert again.new_candidates == 0


def test_the_demo_staff_log_in_and_their_stores_exist(clean_db, tmp_path):
    load_demo(members=5, seed=1, directory=tmp_path)
    with db.transaction() as s:
        codes = set(s.scalars(select(OrgUnit.code)))
        for username in ("admin", "ops", "manager_sh", "clerk_sh", "clerk_gz", "service"):
            token, _ = auth.login(s, username=username, password="orchard-demo")
            assert token
    assert {"HQ", "EAST", "NORTH", "SOUTH", "SOUTHWEST", "CENTRAL", "SH001", "GZ001", "BJ001", "CD001"} <= codes


def test_refunds_and_events_are_skipped_with_a_note_when_the_import_lacks_them(clean_db, tmp_path, monkeypatch):
    monkeypatch.setattr(columns, "KINDS", {k: v for k, v in columns.KINDS.items() if k in ("members", "orders")})
    result = load_demo(members=20, seed=4, directory=tmp_path)
    assert set(result.imports) == {"members", "orders"}
    assert set(result.skipped) == {"refunds", "events"}
    assert any("skipped" in line for line in result.lines())


def test_the_cli_loads_a_small_demo(clean_db, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "orchard.cli", "demo", "--members", "50", "--seed", "3", "--dir",
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "members.errors.csv" in p.stdout and "orchard-demo" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "orchard.cli", "demo", "--industry", "bank"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "bank" in bad.stderr


def test_the_demo_starts_with_earning_rules_and_a_new_order_earns(client, tmp_path):
    load_demo(members=5, seed=1, directory=tmp_path)
    load_demo(members=5, seed=1, directory=tmp_path / "again")
    token = client.post("/api/v1/auth/token", json={"username": "admin", "password": "orchard-demo"}).json()
    auth_header = {"Authorization": f"Bearer {token['access_token']}"}
    rules = client.get("/api/v1/points/rules", headers=auth_header).json()
    assert len(rules) == 5 and {r["kind"] for r in rules} == {"amount", "multiplier", "event"}
    r = client.post("/api/v1/points/rules/dry-run", headers=auth_header,
                    json={"paid_at": "2026-11-26T12:00:00+08:00", "amount_fen": 12800})  # a Thursday
    assert r.json()["total"] == 128
    tiers = client.get("/api/v1/tiers", headers=auth_header).json()
    assert [lv["code"] for lv in tiers["levels"]] == ["NORMAL", "SILVER", "GOLD", "PLATINUM"]
    assert len(client.get("/api/v1/tasks", headers=auth_header).json()) == 4
    assert client.get("/api/v1/checkin", headers=auth_header).json()["makeup_per_month"] == 2


def test_the_demo_places_its_history_in_tiers(clean_db, tmp_path):
    from sqlalchemy import func

    from orchard.loyalty.models import MemberTier

    load_demo(members=200, seed=3, directory=tmp_path)
    with db.transaction(readonly=True) as s:
        placed = s.scalar(select(func.count()).select_from(MemberTier))
    assert placed > 0
