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
    ("balance_is_sum_of_lots", "account balance = Σ lot remaining",
     "SELECT count(*) FROM points_accounts a LEFT JOIN (SELECT member_id, sum(remaining) AS s FROM points_lots "
     "GROUP BY member_id) l ON l.member_id = a.member_id WHERE a.balance <> coalesce(l.s, 0)"),
    ("lot_remaining_in_range", "0 ≤ lot remaining ≤ lot amount",
     "SELECT count(*) FROM points_lots WHERE remaining < 0 OR remaining > amount"),
    ("lot_remaining_is_amount_less_allocations", "lot remaining = amount − Σ allocations from it",
     "SELECT count(*) FROM points_lots l LEFT JOIN (SELECT lot_id, sum(amount) AS s FROM points_allocations "
     "GROUP BY lot_id) x ON x.lot_id = l.id WHERE l.remaining <> l.amount - coalesce(x.s, 0)"),
    ("credits_have_their_lot", "every credit entry created one lot of its amount",
     "SELECT count(*) FROM points_entries e LEFT JOIN points_lots l ON l.entry_id = e.id "
     "WHERE e.amount > 0 AND (l.id IS NULL OR l.amount <> e.amount OR l.member_id <> e.member_id)"),
    ("debits_fully_allocated", "every debit entry is fully allocated to lots of its member",
     "SELECT count(*) FROM points_entries e LEFT JOIN (SELECT x.entry_id, sum(x.amount) AS s, "
     "max(CASE WHEN l.member_id <> m.member_id THEN 1 ELSE 0 END) AS foreign_lot FROM points_allocations x "
     "JOIN points_lots l ON l.id = x.lot_id JOIN points_entries m ON m.id = x.entry_id GROUP BY x.entry_id) a "
     "ON a.entry_id = e.id WHERE e.amount < 0 AND (coalesce(a.s, 0) <> -e.amount OR a.foreign_lot = 1)"),
    ("allocations_only_for_debits", "allocations belong to debit entries",
     "SELECT count(*) FROM points_allocations x JOIN points_entries e ON e.id = x.entry_id WHERE e.amount > 0"),
)


@dataclass
class Check:
    name: str
    rule: str
    violations: int


def verify(session: Session) -> list[Check]:
    return [Check(name, rule, int(session.execute(text(sql)).scalar_one())) for name, rule, sql in CHECKS]
