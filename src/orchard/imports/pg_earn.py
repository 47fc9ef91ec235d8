"""Earning for imported orders on PostgreSQL (`orchard import orders --earn`), inside the COPY +
set-based fast path of `imports.pg_orders`.

A nightly POS file or a migration's last months of history must earn exactly what the same orders
sent one by one through `events.ingest.ingest(..., earn=True)` (→ `loyalty.earning.on_order`) would
have earned — points by the amount and multiplier rules, growth value by the growth rules, caps,
pending days, the expiry policy, awards per rule and line, balance_after, tier upgrades, audit — but
at bulk speed. So per batch (one transaction):

1. `start` (before the batch's orders are written): the points accounts of the batch's known members
   are locked in member-id order (`FOR UPDATE`: a concurrent spend waits for the batch, and sees its
   ledger whole). Members whose outcome neither evaluation below reproduces are handed back to the
   per-row path, whole (every order of theirs in the batch, so their orders keep file order on one
   path): a member with points debt (a credit repays it first), and — while any `first_order` task
   is active — every member that has not completed them (the task posts its own entry between the
   order's and the tier check).
2. `write` (after the orders are inserted): `imports.earn_sql` evaluates the rules for the whole
   batch in SQL and writes every member it decides exactly. The members it hands back (a rule capped
   in several periods paying on two of their orders, a tier upgrade before another of their orders)
   are evaluated here, exactly: `rules.evaluate_order` per order, in file order, against in-memory
   per-member state — caps used, the effective tier, the tier metric, the balance — read for those
   members only and updated after each order as the per-row path's database would be. Their entries
   (ids reserved from the sequence in file order, so balance_after is the running sum by id), lots,
   awards, growth rows, tier changes and audit rows are written with COPY; points accounts, growth
   accounts and member tiers with one set-based statement each.

A concurrent writer creating a points account the batch counted as absent surfaces as an
IntegrityError (the account's primary key): the batch is then redone on the per-row path. Orders
that are replays (already stored) never earn, so importing a file again, or re-running a killed
import, earns nothing twice. `tests/imports/test_pg_earn.py` holds the paths equal.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard.config import get_settings
from orchard.imports.earn_sql import BatchSql
from orchard.imports.pg_bulk import Redo, copy_rows
from orchard.kit.clock import as_utc, tenant_zone
from orchard.kit.hashing import fingerprint
from orchard.loyalty import anomalies, earning, ledger, policy, tiers
from orchard.loyalty.rules import Cart, Line, Rule, evaluate_order, period_end, period_start

EARN_ACTOR = earning.ACTOR
TIER_ACTOR = tiers.ACTOR


@dataclass
class _Level:
    id: int
    code: str
    rank: int
    threshold: int
    active: bool


@dataclass
class _Program:
    """The tier program as an at-once upgrade (`tiers.evaluate(upgrade_only=True)`) reads it."""

    metric: str
    weights: dict[str, Any]
    since: dt.datetime | None
    hold_until: dt.datetime
    levels: dict[int, _Level]
    ladder: list[_Level]  # active levels, lowest rank first

    def value(self, growth: int, spend: int, orders: int) -> Fraction:
        """The metric as `tiers._metric_sql` computes it on PostgreSQL (numeric: spend / 100 is exact)."""
        if self.metric == "growth":
            return Fraction(growth)
        if self.metric == "spend":
            return Fraction(spend)
        if self.metric == "orders":
            return Fraction(orders)
        w = self.weights
        return (int(w.get("growth", 1)) * growth + int(w.get("spend_yuan", 1)) * Fraction(spend, 100)
                + int(w.get("orders", 0)) * orders)

    def target(self, value: Fraction) -> _Level:
        reached = [lv for lv in self.ladder if lv.threshold <= value]
        return reached[-1] if reached else self.ladder[0]


def _stored(value: Fraction) -> int:
    """A numeric metric stored in a bigint column: PostgreSQL rounds half away from zero."""
    n, d = value.numerator, value.denominator
    q = (2 * abs(n) + d) // (2 * d)
    return q if n >= 0 else -q


@dataclass
class _Member:
    """One member's state through the batch: what the per-row path would read from the database
    before each of its orders."""

    balance: int = 0
    had_account: bool = False  # before the batch
    birthday: dt.date | None = None
    active: bool = True
    flag: int | None = None
    level_id: int | None = None  # member_tiers.level_id; None: no row (the base level)
    override: tuple[int, dt.datetime] | None = None
    growth: int = 0  # tier metric parts, inside the program's period
    spend: int = 0
    orders: int = 0
    #: (target, rule) → {local day: net amount} and → lifetime net amount, for capped rules.
    days: dict[tuple[str, int], dict[dt.date, int]] = field(default_factory=dict)
    life: dict[tuple[str, int], int] = field(default_factory=dict)
    earned: bool = False  # a points entry was written in this batch
    growth_added: int = 0
    upgraded: tuple[int, Fraction] | None = None


class BatchEarning:
    """The earning of one import batch: `start` before its orders are written, `write` after."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.held: set[Hashable] = set()
        self.members: dict[int, _Member] = {}
        self.points_rules: list[Rule] = []
        self.growth_rules: list[Rule] = []
        self.capped: dict[str, set[int]] = {"points": set(), "growth": set()}
        self.program: _Program | None = None
        self.levels: dict[int, _Level] = {}
        self.base_code: str | None = None
        self.zone = tenant_zone()
        self.bounds: dict[tuple[str, dt.date], tuple[dt.date, dt.date]] = {}

    # ---- before the orders are written --------------------------------------------------------------

    @classmethod
    def start(cls, session: Session, owners: dict[Hashable, int | None], paid: list[dt.datetime],
              now: dt.datetime) -> BatchEarning:
        """owners: each identity cluster of the batch → its existing member (None: new). paid: the
        batch's paid_at times (the caps' periods to read). Sets `held`: the clusters to hand back to
        the per-row path."""
        self = cls(now)
        rules = earning.load_rules(session)
        amount = any(r.kind == "amount" for r in rules)
        self.points_rules = [r for r in rules if r.target == "points"] if amount else []
        self.growth_rules = [r for r in rules if r.target == "growth"] if amount else []
        if not any(r.kind == "amount" for r in self.points_rules):
            self.points_rules = []
        if not any(r.kind == "amount" for r in self.growth_rules):
            self.growth_rules = []
        for target, rs in (("points", self.points_rules), ("growth", self.growth_rules)):
            self.capped[target] = {r.id for r in rs if r.kind == "amount" and r.config.caps.model_dump(
                exclude_none=True)}
        self._load_program(session)

        known = sorted({m for m in owners.values() if m is not None})
        # Lock the accounts first, in member-id order: balances and debt are then what the batch builds on.
        accounts = {r.member_id: (int(r.balance), int(r.debt)) for r in session.execute(text(
            "SELECT member_id, balance, debt FROM points_accounts WHERE member_id = ANY(:ids) "
            "ORDER BY member_id FOR UPDATE"), {"ids": known})}
        slow = {m for m, (_, debt) in accounts.items() if debt > 0}
        tasks = session.execute(text(
            "SELECT id FROM loyalty_tasks WHERE active AND kind = 'first_order'")).scalars().all()
        if tasks:
            done = set(session.execute(text(
                "SELECT member_id FROM task_completions WHERE member_id = ANY(:ids) AND task_id = ANY(:t) "
                "GROUP BY member_id HAVING count(DISTINCT task_id) = :n"),
                {"ids": known, "t": list(tasks), "n": len(tasks)}).scalars())
            slow |= set(known) - done
        self.held = {root for root, m in owners.items() if m in slow or (m is None and tasks)}
        self.accounts = {m: balance for m, (balance, _) in accounts.items()}
        self.known = {m for m in known if m not in slow}
        self.paid = paid
        return self

    def _prepare(self, session: Session, members: set[int]) -> None:
        """The in-memory state of the members the set-based evaluation hands back (`earn_sql`), read
        before anything of the batch's earning is written."""
        for m in sorted(members):
            self.members[m] = _Member(balance=self.accounts.get(m, 0), had_account=m in self.accounts)
        known = sorted(members & self.known)
        if known:
            self._read_members(session, known, self.paid)

    def _load_program(self, session: Session) -> None:
        rows = session.execute(text("SELECT id, code, rank, threshold, active FROM tier_levels"))
        self.levels = levels = {r.id: _Level(r.id, r.code, r.rank, int(r.threshold), r.active) for r in rows}
        ladder = sorted((lv for lv in levels.values() if lv.active), key=lambda lv: lv.rank)
        self.base_code = ladder[0].code if ladder else None  # tiers.effective_code without a row
        prog = session.execute(text("SELECT metric, period, hold_days, weights FROM tier_program WHERE id = 1")).first()
        if prog is None or not ladder:
            return
        stub = tiers.TierProgram(metric=prog.metric, period=prog.period)
        self.program = _Program(prog.metric, dict(prog.weights or {}), tiers.period_start(stub, self.now),
                                self.now + dt.timedelta(days=prog.hold_days), levels, ladder)

    def _read_members(self, session: Session, ids: list[int], paid: list[dt.datetime]) -> None:
        p: dict[str, Any] = {"ids": ids}
        for r in session.execute(text("SELECT id, birthday, status FROM members WHERE id = ANY(:ids)"), p):
            self.members[r.id].birthday, self.members[r.id].active = r.birthday, r.status == "active"
        for r in session.execute(text(
                "SELECT DISTINCT ON (member_id) member_id, id FROM loyalty_flags WHERE member_id = ANY(:ids) "
                "AND status = 'open' ORDER BY member_id, id"), p):
            self.members[r.member_id].flag = r.id
        for r in session.execute(text(
                "SELECT member_id, level_id, override_level_id, override_until FROM member_tiers "
                "WHERE member_id = ANY(:ids)"), p):
            st = self.members[r.member_id]
            st.level_id = r.level_id
            if r.override_level_id is not None and r.override_until is not None:
                st.override = (r.override_level_id, r.override_until)
        if self.program is not None:
            since = "AND {col} >= :since" if self.program.since is not None else ""
            q = {**p, "since": self.program.since}
            for r in session.execute(text(
                    "SELECT member_id, sum(amount) AS v FROM growth_entries WHERE member_id = ANY(:ids) "
                    f"{since.format(col='occurred_at')} GROUP BY member_id"), q):
                self.members[r.member_id].growth = int(r.v)
            for r in session.execute(text(
                    "SELECT member_id, sum(amount_fen - refunded_fen) AS spend, count(*) AS n FROM orders d "
                    f"WHERE member_id = ANY(:ids) AND status IN ('paid', 'partially_refunded') "
                    f"{since.format(col='paid_at')} AND NOT EXISTS (SELECT 1 FROM _eo x WHERE x.order_id = d.id) "
                    "GROUP BY member_id"), q):
                self.members[r.member_id].spend, self.members[r.member_id].orders = int(r.spend), int(r.n)
        if paid and (self.capped["points"] or self.capped["growth"]):
            self._read_caps(session, ids, paid)

    def _read_caps(self, session: Session, ids: list[int], paid: list[dt.datetime]) -> None:
        """What each capped rule already gave each member, net of reversals, per tenant-zone day over
        the periods the batch's orders fall in (and lifetime): the same rows `earning.caps_used` sums."""
        lo = min(period_start(p, min(paid)) for p in ("day", "week", "month"))
        hi = max(period_end(p, period_start(p, max(paid))) for p in ("day", "week", "month"))
        tables = {"points": ("points_awards", "points", "awarded_at"),
                  "growth": ("growth_entries", "amount", "occurred_at")}
        for target, (table, amount, at) in tables.items():
            rules = sorted(self.capped[target])
            if not rules:
                continue
            q = {"ids": ids, "rules": rules, "lo": lo, "hi": hi, "tz": self.zone.key}
            for r in session.execute(text(
                    f"SELECT member_id, rule_id, CAST(({at} AT TIME ZONE :tz) AS date) AS d, sum({amount}) AS s "
                    f"FROM {table} WHERE member_id = ANY(:ids) AND rule_id = ANY(:rules) AND {at} >= :lo "
                    f"AND {at} < :hi GROUP BY 1, 2, 3"), q):
                self.members[r.member_id].days.setdefault((target, r.rule_id), {})[r.d] = int(r.s)
            for r in session.execute(text(
                    f"SELECT member_id, rule_id, sum({amount}) AS s FROM {table} WHERE member_id = ANY(:ids) "
                    "AND rule_id = ANY(:rules) GROUP BY 1, 2"), q):
                self.members[r.member_id].life[(target, r.rule_id)] = int(r.s)

    # ---- after the orders are written ---------------------------------------------------------------

    def write(self, session: Session, source: str, orders: list[tuple[int, dict[str, Any]]]) -> int:
        """orders: (idx, clean row) of the batch's created orders, in file order, as in `_imp_orders`.
        Returns the number of points entries written."""
        if not (self.points_rules or self.growth_rules or self.program):
            return 0
        batch = BatchSql(self, session, source)
        batch.evaluate()
        exact = batch.fallback()
        self._prepare(session, exact)
        written = batch.write()
        if not exact:
            return written
        ids = {r.idx: (r.order_id, r.member_id) for r in session.execute(text(
            "SELECT idx, order_id, member_id FROM _eo WHERE member_id = ANY(:m)"), {"m": sorted(exact)})}
        orders = [(idx, clean) for idx, clean in orders if idx in ids]
        out = _Rows(source=source)
        settings = get_settings()
        pending_days, pending_event = settings.points_order_pending_days, settings.points_order_pending_event or None
        expiry = policy.describe()
        for idx, clean in orders:
            order_id, member_id = ids[idx]
            st = self.members.setdefault(member_id, _Member())
            paid_at = as_utc(clean["paid_at"])
            cart = Cart(paid_at=paid_at, amount_fen=clean["amount_fen"], store=clean["store_code"],
                        channel=clean["channel"], birthday=st.birthday, tier=self._tier_code(st),
                        lines=[Line(ln["line_no"] or pos, ln["amount_fen"], ln["category"], ln["sku"])
                               for pos, ln in enumerate(clean["lines"], start=1)])
            order = (order_id, member_id, clean, paid_at)
            if self.points_rules:
                self._points(st, order, cart, out, pending_days, pending_event, expiry)
            if self.growth_rules:
                self._growth(st, order, cart, out)
            if self.program is not None and st.active:
                self._upgrade(st, member_id, paid_at, clean["amount_fen"], out)
        out.flush(session, self)
        return written + len(out.entries)

    def _tier_code(self, st: _Member) -> str | None:
        """`tiers.effective_code`: an active override wins; no row is the base level."""
        if st.override is not None and st.override[1] > self.now:
            return self.levels[st.override[0]].code
        if st.level_id is not None:
            return self.levels[st.level_id].code
        return self.base_code

    def _used(self, st: _Member, target: str):
        """`earning.caps_used` over the member's in-memory day sums."""
        def used(rule_id: int, period: str, at: dt.datetime) -> int:
            key = (target, rule_id)
            if period == "lifetime":
                return st.life.get(key, 0)
            lo, hi = self._bounds(period, at)
            return sum(v for d, v in st.days.get(key, {}).items() if lo <= d < hi)
        return used

    def _bounds(self, period: str, at: dt.datetime) -> tuple[dt.date, dt.date]:
        """The tenant-zone days [lo, hi) of the period holding `at` (remembered: most orders of a
        batch share their days, and the zone arithmetic cost more than the rules)."""
        day = at.astimezone(self.zone).date()
        key = (period, day)
        if (found := self.bounds.get(key)) is None:
            start = period_start(period, at)
            found = self.bounds[key] = (start.astimezone(self.zone).date(),
                                        period_end(period, start).astimezone(self.zone).date())
        return found

    def _count(self, st: _Member, target: str, rule_id: int, at: dt.datetime, amount: int) -> None:
        key = (target, rule_id)
        if rule_id in self.capped[target] and amount:
            day = at.astimezone(self.zone).date()
            days = st.days.setdefault(key, {})
            days[day] = days.get(day, 0) + amount
            st.life[key] = st.life.get(key, 0) + amount

    def _points(self, st: _Member, order: tuple, cart: Cart, out: _Rows, pending_days: int,
                pending_event: str | None, expiry: str) -> None:
        """`earning._order_points` → `ledger.post` (a credit: entry, lot, audit) → awards → hold."""
        order_id, member_id, clean, paid_at = order
        outcomes = evaluate_order(cart, self.points_rules, self._used(st, "points"))
        total = sum(o.points for o in outcomes)
        expires = policy.expires_at(paid_at)
        if total <= 0 or (expires is not None and expires <= self.now):
            return
        if total > ledger.MAX_POINTS:
            raise Redo("an order earns more than a points entry may hold: the per-row path refuses it")
        pending = paid_at + dt.timedelta(days=pending_days) if pending_days else None
        pending_until = pending if pending and pending > self.now else None
        if pending_event:
            pending_until = ledger.PENDING_EVENT_UNTIL
        if st.flag is not None:
            pending_until = anomalies.HELD_UNTIL
        reason = f"消费积分 订单 {clean['order_id']}"[:200]
        st.balance += total
        st.earned = True
        explanation = {"order": {"id": order_id, "source": out.source, "external_id": clean["order_id"],
                                 "amount_fen": clean["amount_fen"]},
                       "rules": [o.as_json() for o in outcomes], "expiry": expiry}
        n = len(out.entries)
        out.entries.append((member_id, total, st.balance, reason, str(order_id),
                            fingerprint({"member_id": member_id, "kind": "earn", "order_id": order_id}),
                            _json(explanation), clean["store_id"], order_id))
        out.lots.append((n, member_id, total, paid_at, expires, pending_until, clean["store_id"], pending_event,
                         st.flag))
        for o in outcomes:
            for line_no, pts in o.lines.items():
                if pts:
                    out.awards.append((n, member_id, o.rule_id, order_id, line_no, pts, paid_at))
            self._count(st, "points", o.rule_id, paid_at, o.points)
        out.audit.append((EARN_ACTOR, "points.earn", str(member_id), n,
                          {"amount": total, "reason": reason, "source": "order", "external_id": str(order_id)}))

    def _growth(self, st: _Member, order: tuple, cart: Cart, out: _Rows) -> None:
        """`earning.on_order`'s growth part → `growth.post`."""
        order_id, member_id, clean, paid_at = order
        outcomes = evaluate_order(cart, self.growth_rules, self._used(st, "growth"))
        reason = f"成长值 订单 {clean['order_id']}"[:200]
        total = 0
        for o in outcomes:
            for line_no, amount in o.lines.items():
                if amount:
                    out.growth.append((member_id, amount, o.rule_id, order_id, line_no, reason,
                                       _json({"text": o.text}), paid_at))
                    total += amount
            self._count(st, "growth", o.rule_id, paid_at, o.points)
        if total:
            st.growth_added += total
            if self.program is not None and (self.program.since is None or paid_at >= self.program.since):
                st.growth += total
            out.audit.append((EARN_ACTOR, "growth.post", str(member_id), None,
                              {"amount": total, "source": "order", "order_id": order_id}))

    def _upgrade(self, st: _Member, member_id: int, paid_at: dt.datetime, amount_fen: int, out: _Rows) -> None:
        """`tiers.on_activity` → `tiers.evaluate(member_ids=[m], upgrade_only=True)` after the order."""
        prog = self.program
        assert prog is not None
        if prog.since is None or paid_at >= prog.since:
            st.spend += amount_fen
            st.orders += 1
        value = prog.value(st.growth, st.spend, st.orders)
        target = prog.target(value)
        current = prog.levels[st.level_id] if st.level_id is not None else prog.ladder[0]
        if target.rank <= current.rank:
            return
        out.tier_changes.append((member_id, current.id, target.id, _stored(value)))
        out.audit.append((TIER_ACTOR, "tier.upgrade", str(member_id), None, {}))
        st.level_id = target.id
        st.upgraded = (target.id, value)



def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Rows:
    """What one batch's earning writes, in file order; entries are referred to by their position
    until their ids are reserved."""

    entries: list[tuple] = field(default_factory=list)
    lots: list[tuple] = field(default_factory=list)
    awards: list[tuple] = field(default_factory=list)
    growth: list[tuple] = field(default_factory=list)
    tier_changes: list[tuple] = field(default_factory=list)
    audit: list[tuple] = field(default_factory=list)  # (actor, action, member, entry position | None, data)
    source: str = ""

    def flush(self, session: Session, batch: BatchEarning) -> None:
        now = batch.now
        entry_ids: list[int] = []
        if self.entries:
            entry_ids = sorted(session.execute(text(
                "SELECT nextval('points_entries_id_seq') FROM generate_series(1, :n)"),
                {"n": len(self.entries)}).scalars())
            copy_rows(session, "points_entries", [
                "id", "member_id", "kind", "amount", "balance_after", "reason", "source", "external_id", "body_hash",
                "actor", "explanation", "store_id", "order_id", "created_at"],
                [(entry_ids[n], m, "earn", amount, after, reason, "order", ext, body_hash, EARN_ACTOR, expl, store,
                  order_id, now)
                 for n, (m, amount, after, reason, ext, body_hash, expl, store, order_id) in enumerate(self.entries)])
            copy_rows(session, "points_lots", [
                "member_id", "entry_id", "amount", "remaining", "earned_at", "expires_at", "pending_until",
                "store_id", "pending_event", "held_flag_id"],
                [(m, entry_ids[n], amount, amount, earned, expires, pending, store, event, flag)
                 for n, m, amount, earned, expires, pending, store, event, flag in self.lots])
            copy_rows(session, "points_awards", [
                "entry_id", "member_id", "rule_id", "order_id", "refund_id", "line_no", "points", "awarded_at"],
                [(entry_ids[n], m, rule, order_id, None, line_no, pts, at)
                 for n, m, rule, order_id, line_no, pts, at in self.awards])
        if self.growth:
            copy_rows(session, "growth_entries", [
                "member_id", "kind", "amount", "rule_id", "order_id", "line_no", "refund_id", "source", "external_id",
                "reason", "actor", "explanation", "occurred_at", "created_at"],
                [(m, "earn", amount, rule, order_id, line_no, None, "order", None, reason, EARN_ACTOR, expl, at, now)
                 for m, amount, rule, order_id, line_no, reason, expl, at in self.growth])
        if self.tier_changes:
            copy_rows(session, "tier_changes", [
                "member_id", "from_level_id", "to_level_id", "reason", "metric_value", "actor", "details", "at"],
                [(m, frm, to, "upgrade", value, TIER_ACTOR, "{}", now) for m, frm, to, value in self.tier_changes])
        if self.audit:
            rows = []
            for actor, action, member, n, data in self.audit:
                if n is not None:
                    data = {"entry_id": entry_ids[n], **data}
                rows.append((now, actor, action, "member", member, _json(data)))
            copy_rows(session, "audit_log", ["at", "actor", "action", "entity", "entity_id", "data"], rows)
        _accounts(session, batch)


def _accounts(session: Session, batch: BatchEarning) -> None:
    """Points accounts (balance as built in memory from the locked one; new ones inserted, which a
    concurrent creator turns into an IntegrityError), growth accounts, member tiers: one statement
    each, in member-id order."""
    now = batch.now
    members = sorted(batch.members.items())
    points = [(m, st.balance, st.had_account) for m, st in members if st.earned]
    growth = [(m, st.growth_added) for m, st in members if st.growth_added]
    upgraded = [(m, st.upgraded[0], _stored(st.upgraded[1])) for m, st in members if st.upgraded]
    if not (points or growth or upgraded):
        return
    session.execute(text("DROP TABLE IF EXISTS _earn_acc, _earn_growth, _earn_tiers"))
    if points:
        session.execute(text("CREATE TEMP TABLE _earn_acc (member_id bigint PRIMARY KEY, balance bigint NOT NULL, "
                             "known boolean NOT NULL) ON COMMIT DROP"))
        copy_rows(session, "_earn_acc", ["member_id", "balance", "known"], points)
        session.execute(text(
            "UPDATE points_accounts a SET balance = e.balance, updated_at = :now FROM _earn_acc e "
            "WHERE e.known AND a.member_id = e.member_id"), {"now": now})
        session.execute(text(
            "INSERT INTO points_accounts (member_id, balance, debt, updated_at) SELECT member_id, balance, 0, :now "
            "FROM _earn_acc WHERE NOT known ORDER BY member_id"), {"now": now})
    if growth:
        session.execute(text("CREATE TEMP TABLE _earn_growth (member_id bigint PRIMARY KEY, amount bigint NOT NULL) "
                             "ON COMMIT DROP"))
        copy_rows(session, "_earn_growth", ["member_id", "amount"], growth)
        session.execute(text(
            "INSERT INTO growth_accounts (member_id, balance, updated_at) SELECT member_id, amount, :now "
            "FROM _earn_growth ORDER BY member_id ON CONFLICT (member_id) DO UPDATE "
            "SET balance = growth_accounts.balance + excluded.balance, updated_at = excluded.updated_at"),
            {"now": now})
    if upgraded:
        session.execute(text("CREATE TEMP TABLE _earn_tiers (member_id bigint PRIMARY KEY, level_id bigint NOT NULL, "
                             "value bigint NOT NULL) ON COMMIT DROP"))
        copy_rows(session, "_earn_tiers", ["member_id", "level_id", "value"], upgraded)
        assert batch.program is not None
        session.execute(text(
            "INSERT INTO member_tiers (member_id, level_id, since, keep_until, metric_value, evaluated_at) "
            "SELECT member_id, level_id, :now, :hold, value, :now FROM _earn_tiers ORDER BY member_id "
            "ON CONFLICT (member_id) DO UPDATE SET level_id = excluded.level_id, since = excluded.since, "
            "keep_until = excluded.keep_until, metric_value = excluded.metric_value, "
            "evaluated_at = excluded.evaluated_at"), {"now": now, "hold": batch.program.hold_until})
