"""Points liability and cross-store settlement (SPEC L4): what the points economy owes, by month and
store, and who pays whom when points issued at one store are spent at another.

Everything is aggregated in SQL. Months are the tenant zone's calendar months: their UTC bounds are
computed here and joined as a small VALUES table, so the bucketing is the same on SQLite and
PostgreSQL (and right across DST in zones that have it). A debit is attributed to the store that
issued the points it drew (the lot's store, through its allocations); a restore (a cancelled spend)
is a negative spend. Transfers (merges) move points between members, not stores, and are left out.
An expiry is attributed the same way, whether it was written as allocations (before migration 0017,
or a lot's second expiry) or on the lots it emptied (`expired`, `expire_entry_id`): `PAID` reads both.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.kit.clock import tenant_zone, utcnow

MAX_MONTHS = 120
#: Every (entry, lot, points) payment of a debit: the allocation rows, and the lots' own record of the
#: expire entry that emptied them.
PAID = ("(SELECT entry_id, lot_id, amount FROM points_allocations UNION ALL "
        "SELECT expire_entry_id, id, expired FROM points_lots WHERE expire_entry_id IS NOT NULL)")


def months(first: str, last: str) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """('2026-03', start UTC, end UTC) for each month from `first` to `last` (YYYY-MM, inclusive)."""
    y, m = (int(p) for p in first.split("-"))
    ly, lm = (int(p) for p in last.split("-"))
    if (y, m) > (ly, lm):
        raise ValueError("the first month is after the last")
    zone = tenant_zone()
    out = []
    while (y, m) <= (ly, lm):
        ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
        out.append((f"{y:04d}-{m:02d}", dt.datetime(y, m, 1, tzinfo=zone).astimezone(dt.UTC),
                    dt.datetime(ny, nm, 1, tzinfo=zone).astimezone(dt.UTC)))
        y, m = ny, nm
        if len(out) > MAX_MONTHS:
            raise ValueError(f"at most {MAX_MONTHS} months at a time")
    return out


def _months_cte(spans: list[tuple[str, dt.datetime, dt.datetime]]) -> tuple[str, dict]:
    parts, params = [], {}
    for i, (label, start, end) in enumerate(spans):
        parts.append(f"SELECT :m{i} AS month, :s{i} AS starts, :e{i} AS ends")
        params.update({f"m{i}": label, f"s{i}": start, f"e{i}": end})
    return " UNION ALL ".join(parts), params


def _run(session: Session, sql: str, params: dict):
    used = {k: v for k, v in params.items() if f":{k}" in sql}
    stmt = text(sql).bindparams(*[bindparam(k, type_=UTCDateTime) for k in used
                                  if k[0] in "se" and k[1:].isdigit() or k in ("before", "now")])
    return session.execute(stmt, used).all()


@dataclass
class LiabilityRow:
    month: str
    store_id: int | None
    issued: int
    spent: int
    expired: int
    reversed: int
    adjusted_out: int
    outstanding: int


_DEBIT_KINDS = {"spend": "spent", "restore": "spent", "expire": "expired", "reverse": "reversed",
                "adjust": "adjusted_out"}


def liability(session: Session, first: str, last: str, *, store_ids: set[int] | None = None) -> list[LiabilityRow]:
    """Issued, spent, expired, reversed and adjusted out per month and issuing store, and what is
    outstanding at each month's end (everything before the first month included)."""
    spans = months(first, last)
    cte, params = _months_cte(spans)
    params["before"] = spans[0][1]
    issued = _run(session, (
        f"WITH mo AS ({cte}) SELECT mo.month, e.store_id, sum(e.amount) FROM points_entries e "
        "JOIN mo ON e.created_at >= mo.starts AND e.created_at < mo.ends "
        "WHERE e.kind IN ('earn', 'adjust') AND e.amount > 0 GROUP BY mo.month, e.store_id"), params)
    debits = _run(session, (
        f"WITH mo AS ({cte}) SELECT mo.month, l.store_id, e.kind, sum(x.amount) FROM {PAID} x "
        "JOIN points_entries e ON e.id = x.entry_id JOIN points_lots l ON l.id = x.lot_id "
        "JOIN mo ON e.created_at >= mo.starts AND e.created_at < mo.ends "
        "WHERE e.kind IN ('spend', 'restore', 'expire', 'reverse', 'adjust') GROUP BY mo.month, l.store_id, e.kind"),
        params)
    opening_rows = _run(session, (
        "SELECT l.store_id, sum(l.amount) - coalesce(sum(d.s), 0) FROM points_lots l JOIN points_entries c "
        f"ON c.id = l.entry_id LEFT JOIN (SELECT x.lot_id, sum(x.amount) AS s FROM {PAID} x "
        "JOIN points_entries e ON e.id = x.entry_id WHERE e.created_at < :before AND e.kind <> 'transfer' "
        "GROUP BY x.lot_id) d ON d.lot_id = l.id WHERE c.created_at < :before AND c.kind <> 'transfer' "
        "GROUP BY l.store_id"), {"before": params["before"]})
    cells: dict[tuple[str, int | None], dict[str, int]] = {}
    for month, store, n in issued:
        cells.setdefault((month, store), {})["issued"] = int(n)
    for month, store, kind, n in debits:
        cell = cells.setdefault((month, store), {})
        cell[_DEBIT_KINDS[kind]] = cell.get(_DEBIT_KINDS[kind], 0) + int(n)
    running = {store: int(n or 0) for store, n in opening_rows}
    stores = set(running) | {store for _, store in cells}
    if store_ids is not None:
        stores &= store_ids
    out = []
    for month, _, _ in spans:
        for store in sorted(stores, key=lambda s: (s is None, s or 0)):
            c = cells.get((month, store), {})
            moved = c.get("spent", 0) + c.get("expired", 0) + c.get("reversed", 0) + c.get("adjusted_out", 0)
            running[store] = running.get(store, 0) + c.get("issued", 0) - moved
            if c or running[store]:
                out.append(LiabilityRow(month, store, c.get("issued", 0), c.get("spent", 0), c.get("expired", 0),
                                        c.get("reversed", 0), c.get("adjusted_out", 0), running[store]))
    return out


def pending_now(session: Session, *, now: dt.datetime | None = None) -> dict[int | None, int]:
    """Points not usable yet (pending), per issuing store, as of now."""
    rows = _run(session, "SELECT store_id, sum(remaining) FROM points_lots WHERE remaining > 0 AND "
                         "pending_until > :now AND (expires_at IS NULL OR expires_at > :now) GROUP BY store_id",
                {"now": now or utcnow()})
    return {store: int(n) for store, n in rows}


@dataclass
class SettlementRow:
    issuing_store_id: int | None
    redeeming_store_id: int | None
    points: int


def settlement(session: Session, first: str, last: str, *, store_ids: set[int] | None = None) -> list[SettlementRow]:
    """Points spent (net of cancelled spends) in the months, by the store that issued them and the
    store where they were spent: the basis for settling between stores (or franchisees)."""
    spans = months(first, last)
    params = {"s0": spans[0][1], "e0": spans[-1][2]}
    rows = _run(session, (
        "SELECT l.store_id, e.store_id, sum(x.amount) FROM points_allocations x "
        "JOIN points_entries e ON e.id = x.entry_id JOIN points_lots l ON l.id = x.lot_id "
        "WHERE e.kind IN ('spend', 'restore') AND e.created_at >= :s0 AND e.created_at < :e0 "
        "GROUP BY l.store_id, e.store_id"), params)
    out = [SettlementRow(a, b, int(n)) for a, b, n in rows if n]
    if store_ids is not None:
        out = [r for r in out if r.issuing_store_id in store_ids or r.redeeming_store_id in store_ids]
    return sorted(out, key=lambda r: (r.issuing_store_id or 0, r.redeeming_store_id or 0))
