"""PostgreSQL fast path for order imports: COPY and set-based SQL instead of one round trip per row.

For one batch (one transaction) of validated rows it must end in exactly the state the per-row
path (`events.ingest.ingest`) would reach, so it only takes the rows whose outcome is unambiguous
and hands the rest back to the per-row path:

1. rows repeating an order id already seen in the batch, and rows whose order has a pending
   refund waiting, go back (the per-row path applies refunds and replays);
2. rows are clustered by shared identity keys (union-find, in memory); a cluster whose keys
   belong to several existing members goes back (the per-row path records merge candidates);
3. orders already stored: same fingerprint → unchanged, other fingerprint → a conflict error;
4. clusters with no member get one new member each (ids drawn from the sequence in one query),
   joined at and enrolled in the store of their first row in file order, like the per-row path;
   unknown keys are linked with COPY;
5. orders and lines are written with COPY, ids drawn from their sequences; aggregates move in one
   `UPDATE … FROM (SELECT … GROUP BY member_id)`.
A unique-constraint race with a concurrent writer raises IntegrityError; the caller then redoes the
batch on the per-row path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.errors import Conflict, OrchardError
from orchard.events.ingest import body_fingerprint
from orchard.events.schemas import OrderIn
from orchard.kit.clock import utcnow


def order_model(clean: dict[str, Any], source: str) -> OrderIn:
    """The OrderIn an import row stands for: its fingerprint is what a replay is recognised by."""
    return OrderIn(source=source, external_id=clean["order_id"], member={"identities": dict(clean["keys"])},
                   store_code=clean["store_code"], channel=clean["channel"], paid_at=clean["paid_at"],
                   amount_fen=clean["amount_fen"], lines=[clean["line"]] if clean["line"] else [])


class _Clusters:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        self.parent[self.find(a)] = self.find(b)


def _copy(session: Session, table: str, columns: list[str], rows: list[tuple]) -> None:
    if not rows:
        return
    cur = session.connection().connection.driver_connection.cursor()
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def _ids(session: Session, sequence: str, n: int) -> list[int]:
    if n == 0:
        return []
    return list(session.execute(text(f"SELECT nextval('{sequence}') FROM generate_series(1, :n)"),
                                {"n": n}).scalars())


def write_orders(session: Session, items: list[tuple[int, dict[str, Any]]], source: str
                 ) -> tuple[dict[int, str | Conflict], list[int]]:
    """items: (index, clean row) in file order. Returns ({index: "created" | "unchanged" | Conflict},
    indexes to run on the per-row path, in file order)."""
    outcome: dict[int, str | Conflict] = {}
    slow: set[int] = set()
    seen: set[str] = set()
    hashes: dict[int, str] = {}
    for i, clean in items:
        if clean["order_id"] in seen:
            slow.add(i)
        seen.add(clean["order_id"])
        hashes[i] = body_fingerprint(order_model(clean, source))
    ids = sorted(seen)

    stored = {r.external_id: r.body_hash for r in session.execute(
        text("SELECT external_id, body_hash FROM orders WHERE source = :s AND external_id = ANY(:ids)"),
        {"s": source, "ids": ids})}
    waiting = set(session.execute(text(
        "SELECT DISTINCT order_external_id FROM refunds WHERE status = 'pending' AND order_source = :s "
        "AND order_external_id = ANY(:ids)"), {"s": source, "ids": ids}).scalars())
    todo = []
    for i, clean in items:
        if i in slow:
            continue
        oid = clean["order_id"]
        if oid in stored:
            outcome[i] = "unchanged" if stored[oid] == hashes[i] else Conflict(
                f"order {source}/{oid} was already received with a different body", code="ingest.id_reused")
        elif oid in waiting:
            slow.add(i)
        else:
            todo.append((i, clean))

    # Identity clusters and their existing owners.
    clusters = _Clusters()
    for i, clean in todo:
        for key in clean["keys"]:
            clusters.union(("row", i), key)
    all_keys = sorted({k for _, c in todo for k in c["keys"]})
    owners: dict[tuple[str, str], int] = {}
    if all_keys:
        rows = session.execute(text(
            "SELECT i.kind, i.value, i.member_id FROM identities i "
            "JOIN unnest(CAST(:kinds AS text[]), CAST(:vals AS text[])) AS k(kind, value) "
            "ON i.kind = k.kind AND i.value = k.value"),
            {"kinds": [k for k, _ in all_keys], "vals": [v for _, v in all_keys]})
        owners = {(r.kind, r.value): r.member_id for r in rows}
    cluster_members: dict[Any, set[int]] = {}
    for key in all_keys:
        cluster_members.setdefault(clusters.find(key), set())
        if key in owners:
            cluster_members[clusters.find(key)].add(owners[key])
    ready = []
    for i, clean in todo:
        members = cluster_members[clusters.find(("row", i))]
        if len(members) > 1:
            slow.add(i)
        else:
            ready.append((i, clean))

    # New members for clusters without one: the first row in file order decides join time and store.
    first_row: dict[Any, dict[str, Any]] = {}
    for i, clean in ready:
        root = clusters.find(("row", i))
        if not cluster_members[root]:
            first_row.setdefault(root, clean)
    new_ids = _ids(session, "members_id_seq", len(first_row))
    now = utcnow()
    member_of: dict[Any, int] = {}
    new_members = []
    for (root, clean), mid in zip(first_row.items(), new_ids, strict=True):
        member_of[root] = mid
        new_members.append((mid, "active", "unknown", clean["store_id"], clean["paid_at"], "{}", False, source,
                            now, now))
    _copy(session, "members", ["id", "status", "gender", "home_store_id", "joined_at", "attributes",
                               "reduce_disturbance", "source_channel", "created_at", "updated_at"], new_members)
    _copy(session, "member_aggregates", ["member_id", "order_count", "total_spend_fen", "refund_fen"],
          [(mid, 0, 0, 0) for mid in new_ids])
    for root, members in cluster_members.items():
        if len(members) == 1:
            member_of[root] = next(iter(members))
    links = []
    for key in all_keys:
        root = clusters.find(key)
        if key not in owners and root in member_of:
            links.append((member_of[root], key[0], key[1], source, now))
    _copy(session, "identities", ["member_id", "kind", "value", "source", "created_at"], links)

    order_ids = _ids(session, "orders_id_seq", len(ready))
    orders, lines = [], []
    for (i, clean), oid in zip(ready, order_ids, strict=True):
        mid = member_of[clusters.find(("row", i))]
        orders.append((oid, source, clean["order_id"], hashes[i], mid, clean["store_id"], clean["channel"], "paid",
                       "CNY", clean["amount_fen"], 0, clean["paid_at"], json.dumps({}), now))
        if clean["line"]:
            ln = clean["line"]
            lines.append((oid, 1, ln["sku"], ln["name"], ln["category"], ln["quantity"], ln["unit_price_fen"],
                          ln["amount_fen"], 0, 0))
        outcome[i] = "created"
    _copy(session, "orders", ["id", "source", "external_id", "body_hash", "member_id", "store_id", "channel",
                              "status", "currency", "amount_fen", "refunded_fen", "paid_at", "properties",
                              "created_at"], orders)
    _copy(session, "order_lines", ["order_id", "line_no", "sku", "name", "category", "quantity", "unit_price_fen",
                                   "amount_fen", "refunded_quantity", "refunded_fen"], lines)
    if order_ids:
        session.execute(text(
            "UPDATE member_aggregates a SET order_count = a.order_count + s.n, "
            "total_spend_fen = a.total_spend_fen + s.spend, "
            "first_order_at = LEAST(a.first_order_at, s.first_at), "
            "last_order_at = GREATEST(a.last_order_at, s.last_at), "
            "last_event_at = GREATEST(a.last_event_at, s.last_at) "
            "FROM (SELECT member_id, count(*) AS n, sum(amount_fen) AS spend, min(paid_at) AS first_at, "
            "max(paid_at) AS last_at FROM orders WHERE id = ANY(:ids) GROUP BY member_id) s "
            "WHERE a.member_id = s.member_id"), {"ids": order_ids})
    return outcome, [i for i, _ in items if i in slow]


def is_usable(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"



def run_batch(session: Session, items: list[tuple[int, dict[str, Any]]], source: str,
              slow: Callable[[Session, dict[str, Any], str], tuple[str, str | None]]
              ) -> dict[int, str | OrchardError]:
    """The fast path for what it can take, the per-row path (`slow`) for the rest, in one transaction.
    A unique-constraint race with a concurrent writer sends the whole batch down the per-row path."""
    try:
        with session.begin_nested():
            outcome, slow_rows = write_orders(session, items, source)
    except IntegrityError:
        outcome, slow_rows = {}, [i for i, _ in items]
    by_index = dict(items)
    for i in slow_rows:
        try:
            with session.begin_nested():
                outcome[i] = slow(session, by_index[i], source)[0]
        except OrchardError as exc:
            outcome[i] = exc
    return outcome
