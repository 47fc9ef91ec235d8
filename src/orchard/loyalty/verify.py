"""`orchard points verify`: every ledger invariant, checked over the whole ledger in SQL.

Each check counts the rows that break it; a trusted ledger has all zeros. Run it after an incident,
a migration or an import — and in CI, the hypothesis state machine runs it after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
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
    ("lot_remaining_in_range", "0 ≤ lot remaining ≤ lot amount",
     "SELECT count(*) FROM points_lots WHERE remaining < 0 OR remaining > amount"),
    ("lot_remaining_is_amount_less_allocations", "lot remaining = amount − Σ allocations from it",
     "SELECT count(*) FROM points_lots l LEFT JOIN (SELECT lot_id, sum(amount) AS s FROM points_allocations "
     "GROUP BY lot_id) x ON x.lot_id = l.id WHERE l.remaining <> l.amount - coalesce(x.s, 0)"),
    ("credits_have_their_lot", "every credit (but a restore) created one lot of its amount; a restore none",
     "SELECT count(*) FROM points_entries e LEFT JOIN points_lots l ON l.entry_id = e.id "
     "WHERE e.amount > 0 AND (CASE WHEN e.kind = 'restore' THEN l.id IS NOT NULL "
     "ELSE (l.id IS NULL OR l.amount <> e.amount OR l.member_id <> e.member_id) END)"),
    ("debits_fully_allocated", "every debit and restore is fully allocated to lots of its member (a reversal "
     "or a merge transfer may owe the part that is debt)",
     "SELECT count(*) FROM points_entries e LEFT JOIN (SELECT x.entry_id, sum(x.amount) AS s, "
     "max(CASE WHEN l.member_id <> m.member_id THEN 1 ELSE 0 END) AS foreign_lot FROM points_allocations x "
     "JOIN points_lots l ON l.id = x.lot_id JOIN points_entries m ON m.id = x.entry_id GROUP BY x.entry_id) a "
     "ON a.entry_id = e.id WHERE (e.amount < 0 OR e.kind = 'restore') AND (a.foreign_lot = 1 OR "
     "CASE WHEN e.kind IN ('reverse', 'transfer') THEN coalesce(a.s, 0) > -e.amount OR coalesce(a.s, 0) < 0 "
     "ELSE coalesce(a.s, 0) <> -e.amount END)"),
    # Σ debits − Σ what lots paid of them, per member, as one UNION ALL: no join that a stale
    # statistic can turn into a nested loop (right after a big expiry pass, the old form never ended).
    ("debt_is_unpaid_reversals", "account debt = Σ of debits no lot has paid yet",
     "SELECT count(*) FROM points_accounts a LEFT JOIN (SELECT member_id, sum(owed) AS owed FROM ("
     "SELECT member_id, -amount AS owed FROM points_entries WHERE amount < 0 UNION ALL "
     "SELECT e.member_id, -x.amount FROM points_allocations x JOIN points_entries e ON e.id = x.entry_id "
     "WHERE e.amount < 0) t GROUP BY member_id) o ON o.member_id = a.member_id WHERE a.debt <> coalesce(o.owed, 0)"),
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


def verify(session: Session) -> list[Check]:
    return [Check(name, rule, int(session.execute(text(sql)).scalar_one())) for name, rule, sql in CHECKS]
