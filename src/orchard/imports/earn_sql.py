"""Earning for an import batch evaluated set-based in PostgreSQL (`orchard import orders --earn`).

`loyalty.rules.evaluate_order` is the reference; per order in Python it cost ~340 µs (exact
fractions, explanation text, JSON), which bounded earning imports at ~2,000 orders/s. Here the same
rules run for the whole batch as SQL over the batch's work tables (`_imp_orders`, `_imp_lines`,
`_imp_member` of `imports.pg_orders`), with exact integer arithmetic (numeric) instead of fractions:

* the multipliers of a target are compiled into SQL expressions (the rules are few): per order which
  hold (live, stores/channels, member day in the tenant zone, birthday month, tier, campaign), in the
  stacking order, cut after a holding `stop_further` one; per line a bit mask of those whose line
  filters pass and the product of their factors scaled to an integer (factors have ≤ 3 decimals);
* amount rules are a work table joined to orders and lines: filters, minimum, eligible lines, the
  exact total as a numerator over a common denominator, rounding, priority and `stop_further` (a
  window over the rules in evaluation order);
* caps read what each capped rule gave per period bucket (tenant-zone day, ISO week, month,
  lifetime) once per bucket, and run through the batch in file order as a window: for a rule capped
  in one period, what the member got so far in a bucket is least(room before the batch, Σ of the
  uncapped points before), which is exactly the sequential cut;
* explanation texts and JSON are built by the same formulas as `rules.evaluate_order` (`_yuan`
  rounds half to even; a fraction is printed as `Decimal` prints it: 28 significant digits, half
  to even, no trailing zeros — `DECIMAL_TEXT`).

What the SQL cannot decide exactly is not guessed: a member is handed back (`fallback`) to the
in-memory exact evaluation of `imports.pg_earn.BatchEarning`, whole and in file order, when a rule
capped in several periods gives them points on more than one order of the batch (the reference cuts by the
first binding period only, a recurrence no window expresses), or when their tier goes up at an
order that is not their last in the batch (the next orders' tier multiplier would change). Members
are independent (state is per member), so the two paths split a batch by member and each keeps its
members' orders in file order; entry ids are reserved in file order on each.
`tests/imports/test_pg_earn.py` compares this path, the fallback and the per-row path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard.config import get_settings
from orchard.imports.pg_bulk import Redo
from orchard.loyalty import anomalies, ledger, policy
from orchard.loyalty.rules import (
    _PERIOD_ZH,
    MULTIPLIER_ORDER,
    BirthdayMonth,
    MemberDay,
    Rule,
    TierWhen,
    _factor_text,
    _yuan,
)

if TYPE_CHECKING:
    from orchard.imports.pg_earn import BatchEarning

#: More multipliers than fit a bigint mask: the whole batch takes the fallback.
MAX_MULTIPLIERS = 60

#: `rules._factor_text(n / d)` for integers n ≥ 0, d > 0: `Decimal(n) / Decimal(d)` rounds to 28
#: significant digits, half to even, and prints without trailing zeros. s = 28 − (digits before the
#: point; for n < d, minus the zeros after it); m = n·10^s; the text is round_half_even(m / d)·10^−s.
#: Session-temporary (pg_temp), so it is no schema change; an SQL function the planner inlines.
DECIMAL_TEXT = """
CREATE OR REPLACE FUNCTION pg_temp.earn_decimal(n numeric, d numeric) RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT CASE WHEN n = 0 THEN '0' ELSE trim_scale((div(m, d) + CASE WHEN 2 * mod(m, d) > d
    OR (2 * mod(m, d) = d AND mod(div(m, d), 2) = 1) THEN 1 ELSE 0 END) * ('1e' || -s)::numeric)::text END
FROM (SELECT s, n * ('1e' || s)::numeric AS m FROM (SELECT 28 - CASE WHEN n >= d THEN length(div(n, d)::text)
    ELSE 1 - (length(d::text) - length(n::text) + CASE WHEN n * ('1e' || (length(d::text) - length(n::text)))::numeric
    >= d THEN 0 ELSE 1 END) END AS s) a) b
$$"""


def _ft(num: str, den: str) -> str:
    """SQL for `rules._factor_text(num / den)` (num, den: integer-valued numeric expressions): inline
    when the fraction ends within 6 places (the usual case: fen over a per_fen of 100 or 1000), else
    `earn_decimal`, which is not inlined (its subquery) and costs a function call."""
    return (f"CASE WHEN mod(({num}) * 1000000, {den}) = 0 THEN trim_scale(div(({num}) * 1000000, {den}) "
            f"* 0.000001)::text ELSE pg_temp.earn_decimal({num}, {den}) END")


def _yuan_sql(num: str, den: str) -> str:
    """SQL for `rules._yuan(num / den)`: Python's round() of a Fraction rounds half to even."""
    q, r = f"div({num}, {den})", f"mod({num}, {den})"
    fen = (f"(({q}) + CASE WHEN 2 * ({r}) > ({den}) THEN 1 WHEN 2 * ({r}) = ({den}) THEN mod({q}, 2) "
           "ELSE 0 END)::bigint")
    return f"('¥' || ({fen} / 100)::text || '.' || lpad(({fen} % 100)::text, 2, '0'))"


def _in(col: str, include: list[str], exclude: list[str], name: str, params: dict[str, Any]) -> list[str]:
    """`rules._in` as SQL conditions over bound arrays."""
    out = []
    if include:
        params[f"{name}_in"] = list(include)
        out.append(f"coalesce({col} = ANY(CAST(:{name}_in AS text[])), false)")
    if exclude:
        params[f"{name}_ex"] = list(exclude)
        out.append(f"({col} IS NULL OR NOT coalesce({col} = ANY(CAST(:{name}_ex AS text[])), false))")
    return out


def _line_in(cfg: Any, name: str, params: dict[str, Any]) -> str:
    """`rules._line_in` as SQL over a line `l` (line_no NULL: the order without lines)."""
    conds = _in("l.category", cfg.categories, cfg.exclude_categories, f"{name}_cat", params)
    if cfg.exclude_skus:
        params[f"{name}_sku"] = list(cfg.exclude_skus)
        conds.append(f"(l.sku IS NULL OR NOT coalesce(l.sku = ANY(CAST(:{name}_sku AS text[])), false))")
    lined = " AND ".join(conds) or "true"
    return f"(CASE WHEN l.line_no IS NULL THEN {'false' if cfg.categories else 'true'} ELSE {lined} END)"


def _live(rule: Rule, name: str, params: dict[str, Any]) -> list[str]:
    out = []
    if rule.starts_at is not None:
        params[f"{name}_from"] = rule.starts_at
        out.append(f"o.paid_at >= :{name}_from")
    if rule.ends_at is not None:
        params[f"{name}_to"] = rule.ends_at
        out.append(f"o.paid_at < :{name}_to")
    return out


def _holds(rule: Rule, name: str, params: dict[str, Any]) -> str:
    """The multiplier applies to the order `o` (`rules._multipliers` before the stop cut)."""
    cfg, when = rule.config, rule.config.when
    conds = _live(rule, name, params)
    conds += _in("o.store_code", cfg.stores, cfg.exclude_stores, f"{name}_st", params)
    conds += _in("o.channel", cfg.channels, cfg.exclude_channels, f"{name}_ch", params)
    if isinstance(when, MemberDay):
        params[f"{name}_wd"], params[f"{name}_md"] = list(when.weekdays), list(when.month_days)
        conds.append(f"(extract(isodow FROM o.loc)::int = ANY(CAST(:{name}_wd AS int[])) "
                     f"OR extract(day FROM o.loc)::int = ANY(CAST(:{name}_md AS int[])))")
        if when.from_time is not None:
            params[f"{name}_t0"], params[f"{name}_t1"] = when.from_time, when.to_time
            conds.append(f"CAST(o.loc AS time) >= :{name}_t0 AND CAST(o.loc AS time) < :{name}_t1")
    elif isinstance(when, BirthdayMonth):
        conds.append("coalesce(extract(month FROM o.birthday) = extract(month FROM o.loc), false)")
    elif isinstance(when, TierWhen):
        params[f"{name}_lv"] = list(when.levels)
        conds.append(f"coalesce(o.tier = ANY(CAST(:{name}_lv AS text[])), false)")
    return "(" + (" AND ".join(conds) or "true") + ")"


@dataclass
class _Target:
    """One target's rules compiled: amount rules as rows, multipliers as SQL."""

    name: str  # points | growth
    amount: list[Rule]
    mults: list[Rule]

    @property
    def scale(self) -> int:
        return 1000 ** len(self.mults)


def _rule_rows(t: _Target) -> list[dict[str, Any]]:
    rows = []
    for rk, r in enumerate(t.amount):
        c = r.config
        rows.append({
            "target": t.name, "rule_id": r.id, "rk": rk, "name": r.name, "points": c.points, "per_fen": c.per_fen,
            "rounding": c.rounding, "min_fen": c.min_order_fen, "stop": r.stop_further, "starts_at": r.starts_at,
            "ends_at": r.ends_at, "stores": c.stores, "xstores": c.exclude_stores, "channels": c.channels,
            "xchannels": c.exclude_channels, "cats": c.categories, "xcats": c.exclude_categories,
            "xskus": c.exclude_skus, "cap_day": c.caps.day, "cap_week": c.caps.week, "cap_month": c.caps.month,
            "cap_life": c.caps.lifetime,
            "ncaps": sum(v is not None for v in (c.caps.day, c.caps.week, c.caps.month, c.caps.lifetime)),
            "head": f" × {c.points}/{_yuan(c.per_fen)}",
            "min_text": f"订单金额低于 {_yuan(c.min_order_fen)} below the minimum order"})
    return rows


_RULES_TABLE = (
    "CREATE TEMP TABLE _ear (target text, rule_id bigint, rk int, name text, points numeric, per_fen numeric, "
    "rounding text, min_fen bigint, stop boolean, starts_at timestamptz, ends_at timestamptz, stores text[], "
    "xstores text[], channels text[], xchannels text[], cats text[], xcats text[], xskus text[], cap_day bigint, "
    "cap_week bigint, cap_month bigint, cap_life bigint, ncaps int, head text, min_text text, "
    "PRIMARY KEY (target, rule_id)) ON COMMIT DROP")
_MULTS_TABLE = ("CREATE TEMP TABLE _emu (target text, i int, bit bigint, rule_id bigint, name text, factor text, "
                "wtype text, frag text) ON COMMIT DROP")


class BatchSql:
    """The set-based evaluation of one batch: `evaluate` (work tables only, nothing written), then
    `fallback` (members to hand to the exact in-memory path), then `write` for everyone else."""

    def __init__(self, batch: BatchEarning, session: Session, source: str) -> None:
        self.batch, self.session, self.source = batch, session, source
        self.tz = batch.zone.key
        self.targets = [t for t in (_Target("points", *_split(batch.points_rules)),
                                    _Target("growth", *_split(batch.growth_rules))) if t.amount]
        self.whole_batch_fallback = any(len(t.mults) > MAX_MULTIPLIERS for t in self.targets)

    def sql(self, statement: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> Any:
        if isinstance(params, list):  # executemany (the rules)
            return self.session.execute(text(statement), params)
        return self.session.execute(text(statement), {"tz": self.tz, "now": self.batch.now, **(params or {})})

    # ---- evaluation -------------------------------------------------------------------------------

    def orders(self) -> None:
        """`_eo`: the batch's created orders with what the rules read of them and their members at the
        batch's start (the accounts were locked by `BatchEarning.start`), `_el` their lines (an order
        without lines: one line of the whole amount, line_no NULL), `_ems` the members."""
        b = self.batch
        prog = b.program
        self.sql("DROP TABLE IF EXISTS _eo, _el, _ems, _ear, _emu, _eot, _eup, _erun, _een, _eout_points, _eout_growth")
        # Members: balance (locked), birthday, status, open flag, tier at the batch's start, the tier
        # metric before the batch (its orders are already in `orders`: left out).
        metric = ("0::bigint AS growth0, 0::bigint AS spend0, 0::bigint AS orders0" if prog is None else
                  "coalesce(g.v, 0) AS growth0, coalesce(v.spend, 0) AS spend0, coalesce(v.n, 0) AS orders0")
        since = "AND {col} >= :since" if prog is not None and prog.since is not None else ""
        sums = "" if prog is None else (
            "LEFT JOIN LATERAL (SELECT sum(g.amount) AS v FROM growth_entries g WHERE g.member_id = x.member_id "
            f"{since.format(col='g.occurred_at')}) g ON true "
            "LEFT JOIN LATERAL (SELECT sum(d.amount_fen - d.refunded_fen) AS spend, count(*) AS n FROM orders d "
            "WHERE d.member_id = x.member_id AND d.status IN ('paid', 'partially_refunded') "
            f"{since.format(col='d.paid_at')} AND NOT (d.source = :src AND EXISTS (SELECT 1 FROM _imp_orders i "
            "WHERE i.external_id = d.external_id))) v ON true ")
        self.sql(
            "CREATE TEMP TABLE _ems ON COMMIT DROP AS "
            "SELECT x.member_id, coalesce(a.balance, 0) AS bal0, a.member_id IS NOT NULL AS had_account, "
            "mb.birthday, mb.status = 'active' AS active, "
            "(SELECT min(f.id) FROM loyalty_flags f WHERE f.member_id = x.member_id AND f.status = 'open') AS flag, "
            "t.level_id, (SELECT code FROM tier_levels WHERE id = CASE WHEN t.override_level_id IS NOT NULL "
            "AND t.override_until > :now THEN t.override_level_id ELSE t.level_id END) AS tier, "
            f"{metric}, false AS fallback "
            "FROM (SELECT DISTINCT member_id FROM _imp_member) x JOIN members mb ON mb.id = x.member_id "
            "LEFT JOIN points_accounts a ON a.member_id = x.member_id "
            f"LEFT JOIN member_tiers t ON t.member_id = x.member_id {sums}",
            {"src": self.source, "since": prog.since if prog else None})
        self.sql("ALTER TABLE _ems ADD PRIMARY KEY (member_id)")
        self.sql(
            "CREATE TEMP TABLE _el ON COMMIT DROP AS "
            "SELECT l.idx, l.pos, l.line_no, l.category, l.sku, l.amount_fen AS a FROM _imp_lines l "
            "UNION ALL SELECT o.idx, 1, NULL, NULL, NULL, o.amount_fen FROM _imp_orders o "
            "WHERE NOT EXISTS (SELECT 1 FROM _imp_lines l WHERE l.idx = o.idx)")
        self.sql(
            "CREATE TEMP TABLE _eo ON COMMIT DROP AS SELECT q.*, "
            f"{_expires_sql(policy.describe(), 'q.loc')} AS expires_at FROM ("
            "SELECT o.idx, d.id AS order_id, m.member_id, o.external_id AS ext, o.paid_at, o.amount_fen AS amount, "
            "o.store_id, u.code AS store_code, o.channel, (o.paid_at AT TIME ZONE :tz) AS loc, s.birthday, "
            "coalesce(s.tier, CAST(:base AS text)) AS tier, lt.lt "
            "FROM _imp_orders o JOIN _imp_member m ON m.cluster = o.cluster "
            "JOIN orders d ON d.source = :src AND d.external_id = o.external_id "
            "JOIN _ems s ON s.member_id = m.member_id LEFT JOIN org_units u ON u.id = o.store_id "
            "JOIN (SELECT idx, sum(a) AS lt FROM _el GROUP BY idx) lt ON lt.idx = o.idx) q",
            {"src": self.source, "base": b.base_code})
        self.sql("ALTER TABLE _eo ADD PRIMARY KEY (idx)")
        settings = get_settings()
        self.pending = (settings.points_order_pending_days, settings.points_order_pending_event or None)
        self.sql("ANALYZE _eo, _el, _ems")

    def evaluate(self) -> None:
        self.orders()
        if self.whole_batch_fallback:  # every member to the exact path; nothing evaluated here
            self.sql("UPDATE _ems SET fallback = true")
            return
        self.sql(DECIMAL_TEXT)
        self.sql(_RULES_TABLE)
        self.sql(_MULTS_TABLE)
        rows = [r for t in self.targets for r in _rule_rows(t)]
        if rows:
            self.sql("INSERT INTO _ear VALUES (:target, :rule_id, :rk, :name, :points, :per_fen, :rounding, :min_fen, "
                     ":stop, :starts_at, :ends_at, :stores, :xstores, :channels, :xchannels, :cats, :xcats, :xskus, "
                     ":cap_day, :cap_week, :cap_month, :cap_life, :ncaps, :head, :min_text)", rows)
        mults = [{"target": t.name, "i": i, "bit": 1 << i, "rule_id": m.id, "name": m.name,
                  "factor": str(m.config.factor), "wtype": m.config.when.type,
                  "frag": f" × {_factor_text(Fraction(str(m.config.factor)))} {m.name}"}
                 for t in self.targets for i, m in enumerate(t.mults)]
        if mults:
            self.sql("INSERT INTO _emu VALUES (:target, :i, :bit, :rule_id, :name, :factor, :wtype, :frag)", mults)
        for t in self.targets:
            self._target(t)
        self._totals()
        self._upgrades()

    def _target(self, t: _Target) -> None:
        """Outcomes of target `t`'s amount rules for every order: `_ex_<t>` (order × rule) and
        `_exl_<t>` (order × rule × eligible line, with the points each line gets)."""
        n, params = t.name, {"t": t.name, "scale": t.scale}
        # Multipliers: which hold per order (stacking order, cut after a holding stop_further one),
        # then per line the mask of those whose line filters pass and the product of their factors.
        holds = [_holds(m, f"{n}{i}", params) for i, m in enumerate(t.mults)]
        mask, fn = ["0::bigint"], ["1::numeric"]
        for i, m in enumerate(t.mults):
            stopped = [holds[j] for j in range(i) if t.mults[j].stop_further]
            chosen = holds[i] + (f" AND NOT ({' OR '.join(stopped)})" if stopped else "")
            applies = f"({chosen} AND {_line_in(m.config, f'{n}m{i}', params)})"
            mask.append(f"CASE WHEN {applies} THEN {1 << i} ELSE 0 END")
            fn.append(f"CASE WHEN {applies} THEN {int(m.config.factor * 1000)} ELSE 1000 END")
        expired = "AND (o.expires_at IS NULL OR o.expires_at > :now)" if n == "points" else ""
        self.sql(f"DROP TABLE IF EXISTS _elm_{n}, _ex_{n}, _exl_{n}, _ecap_{n}")
        self.sql(f"CREATE TEMP TABLE _elm_{n} ON COMMIT DROP AS SELECT l.idx, l.pos, {' + '.join(mask)} AS mask, "
                 f"{' * '.join(fn)} AS fn FROM _el l JOIN _eo o ON o.idx = l.idx", params)
        rules = ("JOIN _ear r ON r.target = :t AND (r.starts_at IS NULL OR r.starts_at <= o.paid_at) "
                 "AND (r.ends_at IS NULL OR o.paid_at < r.ends_at)")
        live = f"{rules} WHERE true {expired}"
        # Eligible lines (`rules._line_in` over the rule's filters) with their mask and factor product.
        line_in = ("CASE WHEN l.line_no IS NULL THEN cardinality(r.cats) = 0 ELSE "
                   "(cardinality(r.cats) = 0 OR coalesce(l.category = ANY(r.cats), false)) AND "
                   "(l.category IS NULL OR NOT coalesce(l.category = ANY(r.xcats), false)) AND "
                   "(l.sku IS NULL OR NOT coalesce(l.sku = ANY(r.xskus), false)) END")
        self.sql(
            f"CREATE TEMP TABLE _exl_{n} ON COMMIT DROP AS SELECT o.idx, r.rule_id, l.pos, l.line_no, "
            "l.a::numeric AS a, m.mask, m.fn, 0::bigint AS pts "
            f"FROM _eo o JOIN _el l ON l.idx = o.idx JOIN _elm_{n} m ON m.idx = l.idx AND m.pos = l.pos {live} "
            f"AND {line_in}", params)
        # Order × live amount rule: the order-level tests; sums over the eligible lines — base =
        # amount × Σa / lt, exact = amount × points × Σ(a × fn) / D with D = lt × per_fen × scale (a
        # line's paid share is a × amount / lt); priority and stop_further (evaluated unless a matching
        # stop rule ranks before); the rounded points.
        order_in = ("(cardinality(r.{inc}) = 0 OR coalesce(o.{col} = ANY(r.{inc}), false)) AND "
                    "(o.{col} IS NULL OR NOT coalesce(o.{col} = ANY(r.{exc}), false))")
        num, den = "amount * points * sn", "lt * per_fen * :scale"
        raw = (f"CASE WHEN NOT (matched AND evaluated) THEN 0 WHEN rounding = 'floor' THEN div({num}, {den}) "
               f"WHEN rounding = 'ceil' THEN div({num} + {den} - 1, {den}) ELSE div(2 * {num} + {den}, 2 * ({den})) "
               "END")
        self.sql(
            f"CREATE TEMP TABLE _ex_{n} ON COMMIT DROP AS SELECT idx, member_id, paid_at, loc, amount, lt, rule_id, "
            f"rk, omatch, minok, n_elig, sa, sn, matched, evaluated, {raw}::bigint AS raw, {raw}::bigint AS awarded, "
            "CAST(NULL AS text) AS cap_period, CAST(NULL AS bigint) AS cap FROM (SELECT p.*, coalesce(sum(CASE WHEN "
            "matched AND stop THEN 1 ELSE 0 END) OVER (PARTITION BY idx ORDER BY rk ROWS BETWEEN UNBOUNDED "
            "PRECEDING AND 1 PRECEDING), 0) = 0 AS evaluated FROM (SELECT q.*, omatch AND minok AND lt > 0 "
            "AND amount * sa > 0 AS matched FROM (SELECT o.idx, o.member_id, o.paid_at, o.loc, "
            "o.amount::numeric AS amount, o.lt::numeric AS lt, r.rule_id, r.rk, r.stop, r.points, r.per_fen, "
            f"r.rounding, {order_in.format(col='store_code', inc='stores', exc='xstores')} AND "
            f"{order_in.format(col='channel', inc='channels', exc='xchannels')} AS omatch, "
            "o.amount >= r.min_fen AS minok, coalesce(s.n, 0) AS n_elig, coalesce(s.sa, 0) AS sa, "
            f"coalesce(s.sn, 0) AS sn FROM _eo o {rules} LEFT JOIN (SELECT idx, rule_id, count(*) AS n, "
            f"sum(a) AS sa, sum(a * fn) AS sn FROM _exl_{n} GROUP BY idx, rule_id) s ON s.idx = o.idx "
            f"AND s.rule_id = r.rule_id WHERE true {expired}) q) p) z", params)
        self.sql(f"ALTER TABLE _ex_{n} ADD PRIMARY KEY (idx, rule_id)")
        self.sql(f"ANALYZE _ex_{n}, _exl_{n}")
        self._caps(t)
        self._distribute(t)

    def _caps(self, t: _Target) -> None:
        """`rules._capped` with `earning.caps_used`: per period bucket, the rule's awards before the
        batch (net of reversals), and, for a rule capped in one period, the cut running through the
        batch's orders in file order."""
        n = t.name
        table, amount, at = {"points": ("points_awards", "points", "awarded_at"),
                             "growth": ("growth_entries", "amount", "occurred_at")}[n]
        self.sql(
            f"CREATE TEMP TABLE _ecap_{n} ON COMMIT DROP AS SELECT x.idx, x.member_id, x.rule_id, x.raw, r.ncaps, "
            "p.period, p.ord, p.cap, "
            "CASE p.period WHEN 'lifetime' THEN '-infinity'::timestamptz "
            "ELSE date_trunc(p.unit, x.loc) AT TIME ZONE :tz END AS lo, "
            "CASE p.period WHEN 'lifetime' THEN 'infinity'::timestamptz "
            "ELSE (date_trunc(p.unit, x.loc) + p.span) AT TIME ZONE :tz END AS hi, 0::numeric AS used "
            f"FROM _ex_{n} x JOIN _ear r ON r.target = :t AND r.rule_id = x.rule_id "
            "CROSS JOIN LATERAL (VALUES ('day', 1, r.cap_day, 'day', interval '1 day'), "
            "('week', 2, r.cap_week, 'week', interval '7 days'), ('month', 3, r.cap_month, 'month', "
            "interval '1 month'), ('lifetime', 4, r.cap_life, 'day', interval '0')) p(period, ord, cap, unit, span) "
            "WHERE x.raw > 0 AND p.cap IS NOT NULL", {"t": n})
        if not self.sql(f"SELECT EXISTS (SELECT 1 FROM _ecap_{n})").scalar():
            return
        self.sql(
            f"UPDATE _ecap_{n} c SET used = b.used FROM (SELECT k.member_id, k.rule_id, k.lo, k.hi, "
            f"(SELECT coalesce(sum(w.{amount}), 0) FROM {table} w WHERE w.member_id = k.member_id "
            f"AND w.rule_id = k.rule_id AND w.{at} >= k.lo AND w.{at} < k.hi) AS used "
            f"FROM (SELECT DISTINCT member_id, rule_id, lo, hi FROM _ecap_{n}) k) b "
            "WHERE b.member_id = c.member_id AND b.rule_id = c.rule_id AND b.lo = c.lo AND b.hi = c.hi")
        # Rule capped in several periods with points on several orders of a member: the exact path.
        self.sql(
            f"UPDATE _ems s SET fallback = true FROM (SELECT DISTINCT member_id FROM (SELECT member_id, ncaps, "
            f"count(*) OVER (PARTITION BY member_id, rule_id, period) AS k FROM _ecap_{n}) c "
            "WHERE ncaps > 1 AND k > 1) c WHERE c.member_id = s.member_id")
        # room before the bucket's earlier orders; what they got = least(room, Σ uncapped before);
        # the order gets the least room over its periods (ties: day → week → month → lifetime).
        self.sql(
            f"UPDATE _ex_{n} x SET awarded = c.left_, cap_period = c.period, cap = c.cap FROM ("
            "SELECT DISTINCT ON (idx, rule_id) idx, rule_id, period, cap, left_ FROM (SELECT idx, rule_id, raw, "
            "period, ord, cap, greatest(0, cap - used - CASE WHEN ncaps = 1 THEN least(greatest(0, cap - used), "
            "coalesce(sum(raw) OVER (PARTITION BY member_id, rule_id, period, lo ORDER BY idx ROWS BETWEEN "
            f"UNBOUNDED PRECEDING AND 1 PRECEDING), 0)) ELSE 0 END) AS left_ FROM _ecap_{n}) c "
            "WHERE left_ < raw ORDER BY idx, rule_id, left_, ord) c WHERE c.idx = x.idx AND c.rule_id = x.rule_id")

    def _distribute(self, t: _Target) -> None:
        """`rules.distribute`: each line's floor of awarded × its share, the rest one by one to the
        largest remainders (ties by str(line_no))."""
        n = t.name
        self.sql(
            f"UPDATE _exl_{n} l SET pts = d.pts FROM (SELECT idx, rule_id, pos, fl + CASE WHEN row_number() OVER "
            "(PARTITION BY idx, rule_id ORDER BY rem DESC, coalesce(line_no::text, 'None') COLLATE \"C\") "
            "<= awarded - sum(fl) OVER (PARTITION BY idx, rule_id) THEN 1 ELSE 0 END AS pts FROM (SELECT l.idx, "
            "l.rule_id, l.pos, l.line_no, x.awarded, div(x.awarded * l.a * l.fn, x.sn) AS fl, "
            f"mod(x.awarded * l.a * l.fn, x.sn) AS rem FROM _exl_{n} l JOIN _ex_{n} x ON x.idx = l.idx "
            "AND x.rule_id = l.rule_id WHERE x.awarded > 0) s) d "
            "WHERE d.idx = l.idx AND d.rule_id = l.rule_id AND d.pos = l.pos")

    def _outcomes(self, t: _Target) -> str:
        """SQL (a SELECT) of every evaluated (order, rule) with its outcome JSON and text, in the
        shape of `rules.Outcome.as_json`."""
        n = t.name
        base_n, lt = "x.amount * x.sa", "x.lt"
        num, den = "x.amount * r.points * x.sn", f"(x.lt * r.per_fen * {t.scale})"
        exact = (f"CASE WHEN {num} <> x.raw * {den} THEN ' (' || {_ft(num, den)} || ', ' || r.rounding || ')' "
                 "ELSE '' END")
        capped = ("CASE WHEN x.cap_period IS NOT NULL THEN '; 每' || CASE x.cap_period "
                  + " ".join(f"WHEN '{p}' THEN '{zh}'" for p, zh in _PERIOD_ZH.items())
                  + " END || '上限 ' || x.cap || ' cap per ' || x.cap_period || ' → ' || x.awarded ELSE '' END")
        body = (f"{_yuan_sql(base_n, lt)} || r.head || coalesce(mu.frag, '') || ' = ' || x.raw || {exact} "
                f"|| {capped}")
        txt = ("CASE WHEN NOT x.omatch THEN '门店或渠道不适用 store or channel excluded' "
               "WHEN NOT x.minok THEN r.min_text WHEN NOT x.matched THEN '没有适用的商品 no eligible lines' "
               f"ELSE {body} END")
        inputs = (f"jsonb_build_object('eligible_fen', {_ft(base_n, lt)}, 'points', r.points, 'per_fen', r.per_fen, "
                  f"'rounding', r.rounding, 'multipliers', coalesce(mu.js, '[]'::jsonb), 'exact', {_ft(num, den)}) "
                  "|| CASE WHEN x.cap_period IS NOT NULL THEN jsonb_build_object('capped_to', x.awarded) "
                  "ELSE '{}'::jsonb END")
        # Growth rows keep only the text; points entries the whole outcome.
        js = ("jsonb_build_object('rule_id', x.rule_id, 'name', r.name, 'kind', 'amount', 'points', x.awarded, "
              f"'text', tx.text, 'inputs', CASE WHEN x.matched THEN {inputs} ELSE '{{}}'::jsonb END, "
              "'lines', CASE WHEN x.matched THEN coalesce(li.js, '{}'::jsonb) ELSE '{}'::jsonb END)"
              if n == "points" else "NULL::jsonb")
        lines = ("LEFT JOIN (SELECT idx, rule_id, jsonb_object_agg(coalesce(line_no::text, 'order'), pts) AS js "
                 f"FROM _exl_{n} GROUP BY idx, rule_id) li ON li.idx = x.idx AND li.rule_id = x.rule_id "
                 if n == "points" else "")
        return (
            f"SELECT x.idx, x.rule_id, x.rk, x.awarded, tx.text, {js} AS js "
            f"FROM _ex_{n} x JOIN _ear r ON r.target = '{n}' AND r.rule_id = x.rule_id {lines}"
            # The multipliers used on the rule's eligible lines, in the order `evaluate_order` meets them.
            "LEFT JOIN (SELECT idx, rule_id, jsonb_agg(jsonb_build_object('rule_id', m_rule, 'name', name, "
            "'factor', factor, 'when', wtype, 'lines', lines) ORDER BY first, i) AS js, "
            "string_agg(frag || CASE WHEN k = n_elig THEN '' ELSE ' (部分商品 some lines)' END, '' "
            "ORDER BY first, i) AS frag FROM (SELECT l.idx, l.rule_id, m.i, m.rule_id AS m_rule, m.name, m.factor, "
            "m.wtype, m.frag, jsonb_agg(l.line_no ORDER BY l.pos) AS lines, min(l.pos) AS first, count(*) AS k, "
            f"min(x2.n_elig) AS n_elig FROM _exl_{n} l JOIN _ex_{n} x2 ON x2.idx = l.idx "
            f"AND x2.rule_id = l.rule_id JOIN _emu m ON m.target = '{n}' AND l.mask & m.bit <> 0 "
            "GROUP BY l.idx, l.rule_id, m.i, m.rule_id, m.name, m.factor, m.wtype, m.frag) u "
            "GROUP BY idx, rule_id) mu ON mu.idx = x.idx AND mu.rule_id = x.rule_id "
            f"CROSS JOIN LATERAL (SELECT {txt} AS text) tx WHERE x.evaluated")

    def _totals(self) -> None:
        """`_eot`: per order the points total with its rules' JSON, and the growth total."""
        names = {t.name for t in self.targets}
        for t in self.targets:
            self.sql(f"CREATE TEMP TABLE _eout_{t.name} ON COMMIT DROP AS {self._outcomes(t)}")
        points = ("LEFT JOIN (SELECT idx, sum(awarded) AS total, jsonb_agg(js ORDER BY rk) AS js FROM _eout_points "
                  "GROUP BY idx) p ON p.idx = o.idx " if "points" in names else "")
        growth = ("LEFT JOIN (SELECT idx, sum(pts) AS total FROM _exl_growth GROUP BY idx) g ON g.idx = o.idx "
                  if "growth" in names else "")
        self.sql(
            "CREATE TEMP TABLE _eot ON COMMIT DROP AS SELECT o.idx, o.member_id, "
            + ("coalesce(p.total, 0)" if points else "0") + "::bigint AS points, "
            + ("coalesce(p.js, '[]'::jsonb)" if points else "'[]'::jsonb") + " AS rules, "
            + ("coalesce(g.total, 0)" if growth else "0") + f"::bigint AS growth FROM _eo o {points}{growth}")
        if points and self.sql(
                "SELECT EXISTS (SELECT 1 FROM _eot e JOIN _eo o ON o.idx = e.idx WHERE e.points > "
                f"{ledger.MAX_POINTS} AND (o.expires_at IS NULL OR o.expires_at > :now))").scalar():
            raise Redo("an order earns more than a points entry may hold: the per-row path refuses it")

    def _upgrades(self) -> None:
        """`tiers.on_activity` after each order as a running metric: `_eup` holds a member's one
        upgrade at their last order of the batch; an upgrade before a later order of theirs in the
        batch (whose tier multiplier it would change) sends the member to the exact path."""
        prog = self.batch.program
        self.sql("DROP TABLE IF EXISTS _eup")
        self.sql("CREATE TEMP TABLE _eup (member_id bigint PRIMARY KEY, from_id bigint, to_id bigint, "
                 "value numeric) ON COMMIT DROP")
        if prog is None:
            return
        inside = "true" if prog.since is None else "o.paid_at >= :since"
        w = prog.weights
        value = {"growth": "g", "spend": "sp", "orders": "k",
                 "score": f"{int(w.get('growth', 1))} * g + {int(w.get('spend_yuan', 1))} * (sp / 100) + "
                          f"{int(w.get('orders', 0))} * k"}[prog.metric]
        base = prog.ladder[0]
        self.sql(
            "CREATE TEMP TABLE _erun ON COMMIT DROP AS SELECT member_id, idx, last, cur_rank, cur_id, value, "
            "(SELECT l.id FROM tier_levels l WHERE l.active AND l.threshold <= value ORDER BY l.rank DESC LIMIT 1) "
            f"AS to_id FROM (SELECT member_id, idx, last, cur_rank, cur_id, {value} AS value FROM (SELECT o.member_id, "
            "o.idx, o.idx = max(o.idx) OVER (PARTITION BY o.member_id) AS last, coalesce(cl.rank, :base_rank) "
            "AS cur_rank, coalesce(s.level_id, :base_id) AS cur_id, "
            f"s.growth0 + sum(CASE WHEN {inside} THEN t.growth ELSE 0 END) OVER w AS g, "
            f"(s.spend0 + sum(CASE WHEN {inside} THEN o.amount ELSE 0 END) OVER w)::numeric AS sp, "
            f"s.orders0 + sum(CASE WHEN {inside} THEN 1 ELSE 0 END) OVER w AS k "
            "FROM _eo o JOIN _eot t ON t.idx = o.idx JOIN _ems s ON s.member_id = o.member_id "
            "LEFT JOIN tier_levels cl ON cl.id = s.level_id WHERE s.active "
            "WINDOW w AS (PARTITION BY o.member_id ORDER BY o.idx)) v) q",
            {"since": prog.since, "base_rank": base.rank, "base_id": base.id})
        self.sql("DELETE FROM _erun r USING tier_levels l WHERE l.id = r.to_id AND l.rank <= r.cur_rank")
        self.sql("DELETE FROM _erun WHERE to_id IS NULL")
        self.sql("UPDATE _ems s SET fallback = true FROM _erun r WHERE r.member_id = s.member_id AND NOT r.last")
        self.sql("INSERT INTO _eup SELECT member_id, cur_id, to_id, value FROM _erun WHERE last")

    # ---- writing ------------------------------------------------------------------------------------

    def fallback(self) -> set[int]:
        return set(self.sql("SELECT member_id FROM _ems WHERE fallback").scalars())

    def write(self) -> int:
        """Entries, lots, awards, growth rows, tier changes, audit rows and the accounts of every
        member not handed to the exact path, with INSERT … SELECT. Returns the entries written."""
        if self.whole_batch_fallback:
            return 0
        b = self.batch
        pending_days, pending_event = self.pending
        from orchard.imports.pg_earn import EARN_ACTOR, TIER_ACTOR

        p = {"actor": EARN_ACTOR, "tactor": TIER_ACTOR, "src": self.source, "expiry": policy.describe(),
             "held": anomalies.HELD_UNTIL, "event_until": ledger.PENDING_EVENT_UNTIL, "event": pending_event,
             "days": pending_days}
        has_points = any(t.name == "points" for t in self.targets)
        written = 0
        if has_points:
            # Entries in file order; ids reserved from the sequence, handed out in the same order.
            self.sql(
                "CREATE TEMP TABLE _een ON COMMIT DROP AS SELECT row_number() OVER (ORDER BY e.idx) AS n, e.idx, "
                "o.member_id, o.order_id, o.ext, o.paid_at, o.amount, o.store_id, o.expires_at, e.points, e.rules, "
                "s.bal0 + sum(e.points) OVER (PARTITION BY o.member_id ORDER BY e.idx) AS after, s.flag, "
                "0::bigint AS id FROM _eot e JOIN _eo o ON o.idx = e.idx JOIN _ems s ON s.member_id = o.member_id "
                "WHERE e.points > 0 AND (o.expires_at IS NULL OR o.expires_at > :now) AND NOT s.fallback")
            written = self.sql("SELECT count(*) FROM _een").scalar()
        if written:
            self.sql("UPDATE _een e SET id = r.id FROM (SELECT row_number() OVER (ORDER BY id) AS n, id FROM "
                     "(SELECT nextval('points_entries_id_seq') AS id FROM generate_series(1, :n)) q) r "
                     "WHERE r.n = e.n", {"n": written})
            self.sql(
                "INSERT INTO points_entries (id, member_id, kind, amount, balance_after, reason, source, external_id, "
                "body_hash, actor, explanation, store_id, order_id, created_at) "
                "SELECT id, member_id, 'earn', points, after, left('消费积分 订单 ' || ext, 200), 'order', "
                "order_id::text, encode(sha256(convert_to('{\"kind\":\"earn\",\"member_id\":' || member_id || "
                "',\"order_id\":' || order_id || '}', 'UTF8')), 'hex'), :actor, jsonb_build_object('order', "
                "jsonb_build_object('id', order_id, 'source', CAST(:src AS text), 'external_id', ext, "
                "'amount_fen', amount), "
                "'rules', rules, 'expiry', CAST(:expiry AS text)), store_id, order_id, :now FROM _een ORDER BY id", p)
            wait = "paid_at + make_interval(days => :days)"
            pending = ("CASE WHEN flag IS NOT NULL THEN :held " +
                       ("WHEN true THEN :event_until " if pending_event else "") +
                       (f"WHEN {wait} > :now THEN {wait} " if pending_days else "") + "END")
            self.sql(
                "INSERT INTO points_lots (member_id, entry_id, amount, remaining, earned_at, expires_at, "
                "pending_until, store_id, pending_event, held_flag_id) SELECT member_id, id, points, points, paid_at, "
                f"expires_at, {pending}, store_id, CAST(:event AS text), flag FROM _een ORDER BY id", p)
            self.sql(
                "INSERT INTO points_awards (entry_id, member_id, rule_id, order_id, refund_id, line_no, points, "
                "awarded_at) SELECT e.id, e.member_id, l.rule_id, e.order_id, NULL, l.line_no, l.pts, e.paid_at "
                "FROM _exl_points l JOIN _een e ON e.idx = l.idx JOIN _ex_points x ON x.idx = l.idx "
                "AND x.rule_id = l.rule_id WHERE l.pts <> 0 AND x.evaluated ORDER BY e.id, x.rk, l.pos")
            self.sql(
                "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) SELECT :now, :actor, "
                "'points.earn', 'member', member_id::text, jsonb_build_object('entry_id', id, 'amount', points, "
                "'reason', left('消费积分 订单 ' || ext, 200), 'source', 'order', 'external_id', order_id::text) "
                "FROM _een ORDER BY id", p)
            self.sql(
                "UPDATE points_accounts a SET balance = s.bal0 + e.total, updated_at = :now FROM _ems s JOIN "
                "(SELECT member_id, sum(points) AS total FROM _een GROUP BY member_id) e ON e.member_id = s.member_id "
                "WHERE s.had_account AND a.member_id = s.member_id")
            self.sql(
                "INSERT INTO points_accounts (member_id, balance, debt, updated_at) SELECT s.member_id, e.total, 0, "
                ":now FROM _ems s JOIN (SELECT member_id, sum(points) AS total FROM _een GROUP BY member_id) e "
                "ON e.member_id = s.member_id WHERE NOT s.had_account ORDER BY s.member_id")
        if any(t.name == "growth" for t in self.targets):
            self.sql(
                "INSERT INTO growth_entries (member_id, kind, amount, rule_id, order_id, line_no, refund_id, source, "
                "external_id, reason, actor, explanation, occurred_at, created_at) SELECT o.member_id, 'earn', l.pts, "
                "l.rule_id, o.order_id, l.line_no, NULL, 'order', NULL, left('成长值 订单 ' || o.ext, 200), :actor, "
                "jsonb_build_object('text', u.text), o.paid_at, :now FROM _exl_growth l JOIN _eo o ON o.idx = l.idx "
                "JOIN _ems s ON s.member_id = o.member_id AND NOT s.fallback JOIN _eout_growth u ON u.idx = l.idx "
                "AND u.rule_id = l.rule_id WHERE l.pts <> 0 ORDER BY l.idx, u.rk, l.pos", p)
            self.sql(
                "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) SELECT :now, :actor, "
                "'growth.post', 'member', o.member_id::text, jsonb_build_object('amount', t.growth, 'source', "
                "'order', 'order_id', o.order_id) FROM _eot t JOIN _eo o ON o.idx = t.idx JOIN _ems s "
                "ON s.member_id = o.member_id AND NOT s.fallback WHERE t.growth <> 0 ORDER BY t.idx", p)
            self.sql(
                "INSERT INTO growth_accounts (member_id, balance, updated_at) SELECT t.member_id, sum(t.growth), :now "
                "FROM _eot t JOIN _ems s ON s.member_id = t.member_id AND NOT s.fallback WHERE t.growth <> 0 "
                "GROUP BY t.member_id ORDER BY t.member_id ON CONFLICT (member_id) DO UPDATE "
                "SET balance = growth_accounts.balance + excluded.balance, updated_at = excluded.updated_at")
        if b.program is not None:
            p["hold"] = b.program.hold_until
            self.sql(
                "INSERT INTO tier_changes (member_id, from_level_id, to_level_id, reason, metric_value, actor, "
                "details, at) SELECT u.member_id, u.from_id, u.to_id, 'upgrade', round(u.value), :tactor, '{}', :now "
                "FROM _eup u JOIN _ems s ON s.member_id = u.member_id AND NOT s.fallback ORDER BY u.member_id", p)
            self.sql(
                "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) SELECT :now, :tactor, "
                "'tier.upgrade', 'member', u.member_id::text, '{}' FROM _eup u JOIN _ems s "
                "ON s.member_id = u.member_id AND NOT s.fallback ORDER BY u.member_id", p)
            self.sql(
                "INSERT INTO member_tiers (member_id, level_id, since, keep_until, metric_value, evaluated_at) "
                "SELECT u.member_id, u.to_id, :now, :hold, round(u.value), :now FROM _eup u JOIN _ems s "
                "ON s.member_id = u.member_id AND NOT s.fallback ORDER BY u.member_id "
                "ON CONFLICT (member_id) DO UPDATE SET level_id = excluded.level_id, since = excluded.since, "
                "keep_until = excluded.keep_until, metric_value = excluded.metric_value, "
                "evaluated_at = excluded.evaluated_at", p)
        return int(written)


def _split(rules: list[Rule]) -> tuple[list[Rule], list[Rule]]:
    """Amount rules in evaluation order (priority, then id); multipliers in stacking order."""
    amount = sorted((r for r in rules if r.kind == "amount"), key=lambda r: (-r.priority, r.id))
    mults = sorted((r for r in rules if r.kind == "multiplier"),
                   key=lambda r: (MULTIPLIER_ORDER.index(r.config.when.type), -r.priority, r.id))
    return amount, mults


def _expires_sql(rule: str, loc: str) -> str:
    """`policy.expires_at` of an order as SQL over `loc`, its paid_at in the tenant zone's local time."""
    if rule == "never":
        return "CAST(NULL AS timestamptz)"
    if rule.startswith("days:"):
        return f"(({loc} + interval '{int(rule[5:])} days') AT TIME ZONE :tz)"
    if rule == "month_end":
        return f"((date_trunc('month', {loc}) + interval '1 month') AT TIME ZONE :tz)"
    years = int(rule.split(":")[1]) + 1
    return f"(make_timestamp(extract(year FROM {loc})::int + {years}, 1, 1, 0, 0, 0) AT TIME ZONE :tz)"


_ = dt  # dates come in as bound parameters
