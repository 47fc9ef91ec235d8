"""`orchard points verify`: every ledger invariant, checked over the whole ledger in SQL.

Each check counts the rows that break it; a trusted ledger has all zeros. Run it after an incident,
a migration or an import — and in CI, the hypothesis state machine runs it after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

CHECKS: tuple[tuple[str, str, str], ...] = (
    ("balance_is_sum_of_entries", "account balance = Σ entries",
     "SELECT count(*) FROM points_accounts a LEFT JOIN (SELECT member_id, sum(amount) AS s FROM points_entries "
     "GROUP BY member_id) e ON e.member_id = a.member_id WHERE a.balance <> coalesce(e.s, 0)"),
    ("entries_have_an_account", "every member with entries has an account",
     "SELECT count(DISTINCT e.member_id) FROM points_entries e LEFT JOIN points_accounts a "
     "ON a.member_id = e.member_id WHERE a.member_id IS NULL"),
    ("balance_after_is_running_sum", "each entry's balance_after = running Σ in entry order",
     "SELECT count(*) FROM (SELECT balance_after, sum(amount) OVER (PARTITION BY member_id ORDER BY id) AS run "
     "FROM points_entries) x WHERE balance_after <> run"),
    ("balance_is_lots_less_debt", "account balance = Σ lot remaining − debt",
     "SELECT count(*) FROM points_accounts a LEFT JOIN (SELECT member_id, sum(remaining) AS s FROM points_lots "
     "GROUP BY member_id) l ON l.member_id = a.member_id WHERE a.balance <> coalesce(l.s, 0) - a.debt"),
    ("lot_remaining_in_range", "0 ≤ lot remaining, 0 ≤ expired, remaining + expired ≤ lot amount",
     "SELECT count(*) FROM points_lots WHERE remaining < 0 OR expired < 0 OR remaining + expired > amount"),
    # The expiry pass records a lot's (first) expiry on the lot: `expired` points, taken by the expire
    # entry `expire_entry_id` (not a foreign key, so that update stays HOT: this check is the key).
    ("lot_expiry_names_its_entry", "a lot has expired points exactly when it names an expire entry of its member",
     "SELECT count(*) FROM points_lots l LEFT JOIN points_entries e ON e.id = l.expire_entry_id "
     "WHERE (l.expired <> 0 OR l.expire_entry_id IS NOT NULL) AND (l.expired <= 0 OR e.id IS NULL "
     "OR e.kind <> 'expire' OR e.member_id <> l.member_id)"),
    ("lot_remaining_is_amount_less_allocations", "lot remaining = amount − Σ allocations from it − expired",
     "SELECT count(*) FROM points_lots l LEFT JOIN (SELECT lot_id, sum(amount) AS s FROM points_allocations "
     "GROUP BY lot_id) x ON x.lot_id = l.id WHERE l.remaining <> l.amount - coalesce(x.s, 0) - l.expired"),
    ("credits_have_their_lot", "every credit (but a restore) created one lot of its amount; a restore none",
     "SELECT count(*) FROM points_entries e LEFT JOIN points_lots l ON l.entry_id = e.id "
     "WHERE e.amount > 0 AND (CASE WHEN e.kind = 'restore' THEN l.id IS NOT NULL "
     "ELSE (l.id IS NULL OR l.amount <> e.amount OR l.member_id <> e.member_id) END)"),
    # What paid a debit: its allocations, and for an expire entry the lots that name it (their
    # `expired`); both forms, since expiries before migration 0017 are allocation rows. The lots'
    # owners are compared with the entry's member outside the aggregate (min = max = member).
    ("debits_fully_allocated", "every debit and restore is fully paid by lots of its member — allocations, and "
     "for an expiry the lots that name it (a reversal or a merge transfer may owe the part that is debt)",
     "SELECT count(*) FROM points_entries e LEFT JOIN (SELECT entry_id, sum(amount) AS s, min(owner) AS lo, "
     "max(owner) AS hi FROM (SELECT x.entry_id, l.member_id AS owner, x.amount FROM points_allocations x "
     "JOIN points_lots l ON l.id = x.lot_id UNION ALL SELECT expire_entry_id, member_id, expired FROM points_lots "
     "WHERE expire_entry_id IS NOT NULL) u GROUP BY entry_id) a ON a.entry_id = e.id "
     "WHERE (e.amount < 0 OR e.kind = 'restore') AND (a.lo <> e.member_id OR a.hi <> e.member_id OR "
     "CASE WHEN e.kind IN ('reverse', 'transfer') THEN coalesce(a.s, 0) > -e.amount OR coalesce(a.s, 0) < 0 "
     "ELSE coalesce(a.s, 0) <> -e.amount END)"),
    # Σ debits − Σ what lots paid of them, per member, as one UNION ALL: no join that a stale
    # statistic can turn into a nested loop (right after a big expiry pass, the old form never ended).
    # Expire entries are left out on both sides: an expiry takes only what lots hold, so it never
    # owes (debits_fully_allocated holds each one to exactly what its lots and allocations paid).
    ("debt_is_unpaid_reversals", "account debt = Σ of debits no lot has paid yet",
     "SELECT count(*) FROM points_accounts a LEFT JOIN (SELECT member_id, sum(owed) AS owed FROM ("
     "SELECT member_id, -amount AS owed FROM points_entries WHERE amount < 0 AND kind <> 'expire' UNION ALL "
     "SELECT e.member_id, -x.amount FROM points_allocations x JOIN points_entries e ON e.id = x.entry_id "
     "WHERE e.amount < 0 AND e.kind <> 'expire') t GROUP BY member_id) o ON o.member_id = a.member_id "
     "WHERE a.debt <> coalesce(o.owed, 0)"),
    ("allocation_signs", "allocations draw (> 0) for debits and give back (< 0) only for restores",
     "SELECT count(*) FROM points_allocations x JOIN points_entries e ON e.id = x.entry_id "
     "WHERE (e.amount < 0 AND x.amount < 0) OR (e.amount > 0 AND (e.kind <> 'restore' OR x.amount > 0))"),
    ("earnings_match_awards", "an earn entry = Σ of its rule awards; a reversal moved no more than its awards",
     "SELECT count(*) FROM points_entries e JOIN (SELECT entry_id, sum(points) AS s FROM points_awards "
     "GROUP BY entry_id) w ON w.entry_id = e.id "
     "WHERE (e.kind = 'earn' AND w.s <> e.amount) OR (e.kind = 'reverse' AND w.s > e.amount)"),
    ("growth_balance_is_sum_of_entries", "growth balance = Σ growth entries (and nobody with entries lacks one)",
     "SELECT count(*) FROM (SELECT member_id FROM (SELECT member_id, balance AS x FROM growth_accounts UNION ALL "
     "SELECT member_id, -amount FROM growth_entries) u GROUP BY member_id HAVING sum(x) <> 0) z"),
    ("growth_never_over_reversed", "no order line has more growth reversed than it earned, per rule",
     "SELECT count(*) FROM (SELECT order_id, rule_id, line_no, sum(amount) AS s FROM growth_entries "
     "WHERE order_id IS NOT NULL GROUP BY order_id, rule_id, line_no) w WHERE w.s < 0"),
    ("awards_never_over_reversed", "no order line has more reversed than it earned, per rule",
     "SELECT count(*) FROM (SELECT order_id, rule_id, line_no, sum(points) AS s FROM points_awards "
     "WHERE order_id IS NOT NULL GROUP BY order_id, rule_id, line_no) w WHERE w.s < 0"),
)


@dataclass
class Check:
    name: str
    rule: str
    violations: int


#: Tables whose statistics verify refreshes when they are stale (PostgreSQL).
LEDGER_TABLES = ("points_entries", "points_lots", "points_allocations", "points_accounts")
#: Share of a table's rows changed since its last ANALYZE past which verify analyzes it first.
#: Autovacuum waits for 10 %; a year-end pass adds ~9 % to the entries (one per member) and
#: rewrites most lots, and a check planned on the seed's statistics can take a nested loop over
#: 1M × 1M rows.
STALE_SHARE = 0.02


def refresh_statistics(session: Session) -> list[str]:
    """ANALYZE the ledger tables whose statistics are stale (PostgreSQL; SQLite plans need none).
    Returns the tables analyzed. ANALYZE samples a fixed number of rows: seconds, even at 10M."""
    if session.get_bind().dialect.name != "postgresql":
        return []
    stale = [name for (name,) in session.execute(text(
        "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
        "WHERE s.relname IN :tables AND s.schemaname = current_schema() "
        "AND s.n_mod_since_analyze > :share * greatest(c.reltuples, 0) + 1000"
    ).bindparams(bindparam("tables", expanding=True)), {"tables": list(LEDGER_TABLES), "share": STALE_SHARE})]
    for name in stale:
        session.execute(text(f"ANALYZE {name}"))
    return stale


def verify(session: Session, *, analyze: bool = True) -> list[Check]:
    if analyze:
        refresh_statistics(session)
    return [Check(name, rule, int(session.execute(text(sql)).scalar_one())) for name, rule, sql in CHECKS]
