"""Earning on import (`orchard import orders --earn`): the PostgreSQL fast path (imports.pg_earn inside
imports.pg_orders) ends in exactly the ledger the per-row path with earning on ends in — points
entries with balance_after, lots (expiry, pending, held), awards per rule and line, growth rows and
accounts, tiers and tier changes, audit — on random files cut into batches, with caps, member days
and tier upgrades crossing batch boundaries, known members with history, an override, an open flag,
debt, replays, conflicts, repeated ids and a refund waiting for its order; `points verify` clean."""

from __future__ import annotations

import datetime as dt
import random
from functools import partial

import pytest
from sqlalchemy import select

from orchard import db
from orchard.audit.models import AuditEntry
from orchard.config import get_settings
from orchard.events import ingest
from orchard.events.models import Order
from orchard.events.schemas import RefundIn
from orchard.identity.models import Identity
from orchard.imports import pg_bulk, pg_orders, rows
from orchard.imports import service as import_service
from orchard.kit.hashing import fingerprint
from orchard.loyalty import ledger, tiers
from orchard.loyalty.models import (
    EarningRule,
    GrowthAccount,
    GrowthEntry,
    LoyaltyFlag,
    MemberTier,
    PointsAccount,
    PointsAward,
    PointsEntry,
    PointsLot,
    TierChange,
    TierLevel,
)
from orchard.loyalty.schemas import TierProgramIn
from orchard.members.models import Member
from orchard.org.models import OrgUnit
from tests.conftest import wipe_tables
from tests.factories import make_org
from tests.loyalty.helpers import violations

NOW = dt.datetime.now(dt.UTC)
CST = dt.timezone(dt.timedelta(hours=8))
PHONES = [f"138000000{i:02d}" for i in range(1, 16)]

RULES = [  # name, kind, target, priority, stop_further, config
    ("每元1分 日上限", "amount", "points", 0, False, {"points": 1, "per_fen": 100, "caps": {"day": 40, "week": 90}}),
    ("服饰每元2分", "amount", "points", 5, False, {"points": 2, "per_fen": 100, "categories": ["服饰"],
                                               "rounding": "round", "caps": {"month": 120}}),
    ("广州店不积分", "amount", "points", 9, True, {"points": 1, "per_fen": 1000, "stores": ["GZ001"],
                                              "min_order_fen": 2000}),
    ("周三会员日", "multiplier", "points", 0, False, {"factor": "2", "when": {"type": "member_day", "weekdays": [3]}}),
    ("金卡1.5倍", "multiplier", "points", 0, False, {"factor": "1.5", "when": {"type": "tier", "levels": ["gold"]}}),
    ("生日月", "multiplier", "points", 0, False, {"factor": "1.2", "when": {"type": "birthday_month"}}),
    ("成长值", "amount", "growth", 0, False, {"points": 1, "per_fen": 100, "caps": {"month": 70, "lifetime": 400}}),
]
PROGRAM = {"metric": "score", "period": "rolling_12m", "weights": {"growth": 1, "spend_yuan": 1, "orders": 1},
           "hold_days": 30, "levels": [{"code": "base", "name": "普通", "rank": 0, "threshold": 0},
                                       {"code": "silver", "name": "银卡", "rank": 1, "threshold": 40},
                                       {"code": "gold", "name": "金卡", "rank": 2, "threshold": 120},
                                       {"code": "black", "name": "黑卡", "rank": 3, "threshold": 400}]}


@pytest.fixture
def earning_settings(monkeypatch):
    """Points expire 365 days after earning (history older than that earns nothing) and wait 3 days."""
    for k, v in {"points_expiry": "days:365", "points_order_pending_days": "3", "points_refund_policy": "debt"}.items():
        monkeypatch.setenv(f"ORCHARD_{k.upper()}", v)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _paid(rng: random.Random) -> str:
    """Recent days (member days among them), a few days ago (still pending), and history beyond expiry."""
    days = rng.choice([0.2, 1, 2, 5, 6, 7, 8, 9, 12, 13, 14, 20, 35, 40, 100, 200, 400])
    at = (NOW - dt.timedelta(days=days, minutes=rng.randrange(600))).astimezone(CST)
    return at.replace(microsecond=0).isoformat()


def _order_rows(rng: random.Random, n: int, prefix: str) -> list[dict]:
    """n orders as raw row dicts (an order of several lines: several dicts with the same order id)."""
    out: list[dict] = []
    for i in range(n):
        oid = f"{prefix}{i}" if rng.random() > 0.08 or not out else out[rng.randrange(len(out))]["order_id"]
        if any(r["order_id"] == oid for r in out) and rng.random() < 0.5:  # a replay, or a conflict
            out.append(dict(next(r for r in out if r["order_id"] == oid)))
            continue
        k = rng.randrange(len(PHONES))  # a member's phone and card, mostly apart, now and then another's card
        phone, card = rng.choice([(PHONES[k], ""), (PHONES[k], ""), ("", f"C-{k}"), (PHONES[k], f"C-{k}"),
                                  (PHONES[k], f"C-{(k + 1) % 4}") if rng.random() < 0.2 else (PHONES[k], "")])
        base = {"order_id": oid, "member_phone": phone, "member_card_no": card, "paid_at": _paid(rng),
                "store_code": rng.choice(["", "SH001", "GZ001", "HZ001"]), "channel": rng.choice(["", "pos"])}
        lines = rng.choice([0, 0, 1, 2, 3])
        if not lines:
            out.append({**base, "amount_fen": str(rng.choice([0, 99, 800, 1500, 2500, 4000])),
                        "category": rng.choice(["", "服饰", "食品"])})
        for n_ in range(1, lines + 1):
            out.append({**base, "sku": f"S{n_}", "category": rng.choice(["服饰", "食品", ""]),
                        "quantity": str(rng.randint(1, 3)), "unit_price": f"{rng.choice([3, 9.9, 15, 28])}"})
    return out


def _items(raw: list[dict], stores: dict[str, int]) -> list[tuple[int, dict]]:
    """Consecutive rows of one order id are one order (as imports.service groups them)."""
    items, i = [], 0
    while i < len(raw):
        j = i + 1
        while j < len(raw) and raw[j]["order_id"] == raw[i]["order_id"] and "sku" in raw[i] and "sku" in raw[j]:
            j += 1
        group = [(n, raw[n].get) for n in range(i, j)]
        try:
            items.append((i, rows.order_group(group, stores)))
        except rows.GroupError:
            pass
        i = j
    return items


def _setup(rng: random.Random) -> dict[str, int]:
    make_org()
    with db.transaction() as s:
        for name, kind, target, priority, stop, config in RULES:
            s.add(EarningRule(name=name, kind=kind, target=target, priority=priority, stop_further=stop,
                              config=config, created_by="test"))
        tiers.set_program(s, TierProgramIn.model_validate(PROGRAM), actor="test")
        stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).tuples().all())
    with db.transaction() as s:  # history of known members, earned on the per-row path
        for _, clean in _items(_order_rows(rng, 25, "H"), stores):
            try:
                with s.begin_nested():
                    import_service._order(s, clean, "import", earn=True)
            except Exception:  # noqa: BLE001 - a conflicting history row
                pass
        owner = {i.value: i.member_id for i in s.scalars(select(Identity).where(Identity.kind == "phone"))}
        local = NOW.astimezone(CST)
        if (m := owner.get("+8613800000001")) is not None:
            s.get(Member, m).birthday = dt.date(1990, local.month, 1)
        if (m := owner.get("+8613800000002")) is not None:
            tiers.override(s, member_id=m, level_code="gold", until=NOW + dt.timedelta(days=30), reason="测试",
                           actor="test")
        if (m := owner.get("+8613800000003")) is not None:
            s.add(LoyaltyFlag(kind="order_burst", subject=f"member:{m}", member_id=m, day=local.date(), value=10,
                              baseline=10, details={}, status="open"))
        if (m := owner.get("+8613800000004")) is not None:
            ledger.post(s, ledger.Command(member_id=m, amount=-5000, kind="reverse", reason="欠分", source="test",
                                          external_id="debt", actor="test", on_short="debt"))
        ingest.ingest(s, principal=import_service.SYSTEM, kind="refund", data=RefundIn(
            source="import", external_id="R1", order_external_id="Q3", refunded_at=NOW.isoformat(), amount_fen=50))
    return stores


def _run(seed: int, fast: bool, batch: int) -> tuple[dict, dict, int]:
    wipe_tables()
    rng = random.Random(seed)
    stores = _setup(rng)
    items = _items(_order_rows(rng, 40, "Q"), stores)
    outcome, taken = {}, 0
    for k in range(0, len(items), batch):
        chunk = items[k:k + batch]
        with db.transaction() as s:
            if fast:
                def writer(session, its, source):
                    nonlocal taken
                    out, slow = pg_orders.write_orders(session, its, source, earn=True)
                    taken += sum(1 for v in out.values() if v == ("created", None))
                    return out, slow
                got = pg_bulk.run_batch(s, chunk, "import", writer, partial(import_service._order, earn=True))
            else:
                got = {}
                for i, clean in chunk:
                    try:
                        with s.begin_nested():
                            got[i] = import_service._order(s, clean, "import", earn=True)
                    except Exception as exc:  # noqa: BLE001 - compared by type
                        got[i] = exc
        outcome.update({i: v[0] if isinstance(v, tuple) else type(v).__name__ for i, v in got.items()})
    return outcome, _dump(), taken


def _dump() -> dict:
    """The loyalty state, by member identity and order external id (ids differ between the paths:
    the per-row path numbers rows in file order, the fast path its batch first)."""
    with db.transaction(readonly=True) as s:
        who: dict[int, tuple] = {}
        for ident in s.scalars(select(Identity)):
            who[ident.member_id] = tuple(sorted({*who.get(ident.member_id, ()), (ident.kind, ident.value)}))
        ext = {o.id: o.external_id for o in s.scalars(select(Order))}
        levels = {lv.id: lv.code for lv in s.scalars(select(TierLevel))}
        entries, entry_key = {}, {}
        for e in s.scalars(select(PointsEntry).order_by(PointsEntry.id)):
            assert e.body_hash == (fingerprint({"member_id": e.member_id, "kind": "earn", "order_id": e.order_id})
                                   if e.source == "order" else e.body_hash)
            expl = dict(e.explanation)
            if "order" in expl:
                expl["order"] = {**expl["order"], "id": ext[expl["order"]["id"]]}
            key = (e.source, ext[int(e.external_id)] if e.source == "order" else e.external_id)
            entry_key[e.id] = key
            entries.setdefault(who[e.member_id], []).append(
                (e.kind, e.amount, e.balance_after, e.reason, *key, e.actor, expl, e.store_id,
                 ext.get(e.order_id)))
        lots = sorted((entry_key[lot.entry_id], who[lot.member_id], lot.amount, lot.remaining, lot.earned_at,
                       lot.expires_at, lot.pending_until, lot.store_id, lot.pending_event, lot.held_flag_id)
                      for lot in s.scalars(select(PointsLot)))
        awards = sorted((entry_key.get(a.entry_id), who[a.member_id], a.rule_id, ext.get(a.order_id), a.refund_id,
                         a.line_no or 0, a.points, a.awarded_at) for a in s.scalars(select(PointsAward)))
        growth = sorted((who[g.member_id], g.kind, g.amount, g.rule_id or 0, ext.get(g.order_id) or "",
                         g.line_no or 0, g.source, g.reason, str(g.explanation), g.occurred_at)
                        for g in s.scalars(select(GrowthEntry)))
        accounts = sorted((who[a.member_id], a.balance, a.debt) for a in s.scalars(select(PointsAccount)))
        growth_accounts = sorted((who[a.member_id], a.balance) for a in s.scalars(select(GrowthAccount)))
        member_tiers = sorted((who[t.member_id], levels[t.level_id], t.keep_until - t.since, t.metric_value,
                               levels.get(t.override_level_id)) for t in s.scalars(select(MemberTier)))
        changes = sorted((who[c.member_id], levels.get(c.from_level_id) or "", levels.get(c.to_level_id) or "",
                          c.reason, c.metric_value or 0, c.actor) for c in s.scalars(select(TierChange)))
        audit = []
        for a in s.scalars(select(AuditEntry).where(AuditEntry.action.in_(
                ["points.earn", "growth.post", "tier.upgrade", "points.reverse"]))):
            data = dict(a.data)
            if "entry_id" in data:
                data["entry_id"] = entry_key[data["entry_id"]]
            if data.get("source") == "order" and "external_id" in data:
                data["external_id"] = ext[int(data["external_id"])]
            if "order_id" in data:
                data["order_id"] = ext[data["order_id"]]
            audit.append((a.actor, a.action, a.entity, who[int(a.entity_id)], sorted(data.items(), key=str)))
        audit.sort(key=str)
    return {"entries": entries, "lots": lots, "awards": awards, "growth": growth, "accounts": accounts,
            "growth_accounts": growth_accounts, "member_tiers": member_tiers, "tier_changes": changes,
            "audit": audit, "violations": violations()}


@pytest.mark.parametrize("seed,batch", [(1, 7), (2, 50), (3, 4), (4, 13), (5, 1), (6, 9)])
def test_earning_on_the_fast_path_ends_where_the_per_row_path_does(clean_db, earning_settings, seed, batch):
    if not clean_db.startswith("postgresql"):
        pytest.skip("the COPY fast path is PostgreSQL's")
    slow_outcome, slow, _ = _run(seed, fast=False, batch=batch)
    fast_outcome, fast, taken = _run(seed, fast=True, batch=batch)
    assert fast_outcome == slow_outcome
    for part in slow:
        assert fast[part] == slow[part], part
    # The comparison means something: the fast path took orders, and they earned, capped, upgraded.
    assert taken > 5, taken
    assert slow["violations"] == {}
    assert sum(len(v) for v in slow["entries"].values()) > 10
    assert slow["tier_changes"] and slow["growth"]
    assert any("cap per" in str(e[7]) for v in slow["entries"].values() for e in v)
