"""Fast path for order imports: set-based SQL over work tables instead of one round trip per row, on
PostgreSQL (work tables filled with COPY) and SQLite (filled with executemany); imports.pg_bulk.WorkTables
holds the little that differs.

For one batch (one transaction) of validated rows it must end in exactly the state the per-row
path (`events.ingest.ingest`) would reach, so it only takes the rows whose outcome is unambiguous
and hands the rest back to the per-row path:

1. rows repeating an order id already seen in the batch, and rows whose order has a pending
   refund waiting, go back (the per-row path applies refunds and replays);
2. orders already stored: same fingerprint → unchanged, other fingerprint → a conflict error;
3. rows are clustered by shared identity keys (union-find, in memory, seeded with the keys'
   existing owners) while replaying the per-row path in file order: a row whose keys fall in two
   groups is where the per-row path records a merge candidate, so its whole cluster goes back;
4. the rest moves in set-based SQL over the work tables: one new member for each
   cluster without one, joined at and enrolled in the store of its first row in file order (as on
   the per-row path); unknown keys linked; orders in file order and their lines (an order of several
   file rows arrives here as one item with all its lines, imports.service groups them); aggregates
   inserted for new members and moved in one `UPDATE … FROM` for known ones.
A unique-constraint race with a concurrent writer raises IntegrityError; the caller then redoes the
batch on the per-row path (tests/imports/test_pg_orders.py holds the paths equal).

With `earn` (`orchard import orders --earn`) the created orders also earn, through
`imports.pg_earn` (rules evaluated in SQL by `imports.earn_sql`) in the same transaction; a member
any of whose rows goes to the per-row path goes there whole, so each member's orders earn in file
order on one path (tests/imports/test_pg_earn.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchard.errors import Conflict
from orchard.events.schemas import OrderIn
from orchard.identity.resolve import owners_of
from orchard.imports.pg_bulk import DIRTY, Clusters, RowOutcome, WorkTables, received
from orchard.imports.pg_earn import BatchEarning
from orchard.kit.clock import utcnow
from orchard.kit.hashing import fingerprint


def order_model(clean: dict[str, Any], source: str) -> OrderIn:
    """The OrderIn an import row stands for: its fingerprint is what a replay is recognised by."""
    return OrderIn(source=source, external_id=clean["order_id"], member={"identities": dict(clean["keys"])},
                   store_code=clean["store_code"], channel=clean["channel"], paid_at=clean["paid_at"],
                   amount_fen=clean["amount_fen"], lines=clean["lines"])


def order_fingerprint(clean: dict[str, Any], source: str) -> str:
    """`body_fingerprint(order_model(clean, source))` without building the pydantic model, which
    cost more than everything else an imported row needs; tests hold the two equal."""
    body: dict[str, Any] = {
        "source": source, "external_id": clean["order_id"], "member": {"identities": dict(clean["keys"])},
        "paid_at": clean["paid_at"].isoformat().replace("+00:00", "Z"), "currency": "CNY",
        "amount_fen": clean["amount_fen"], "properties": {},
        "lines": [{k: v for k, v in line.items() if v is not None} for line in clean["lines"]]}
    if clean["store_code"] is not None:
        body["store_code"] = clean["store_code"]
    if clean["channel"] is not None:
        body["channel"] = clean["channel"]
    return fingerprint(body)


#: Per-batch work tables (imports.pg_bulk.WorkTables: dropped at the batch's end).
_TABLES = (
    "_imp_orders (idx int PRIMARY KEY, cluster int NOT NULL, external_id text NOT NULL, body_hash text NOT NULL, "
    "store_id bigint, channel text, amount_fen bigint NOT NULL, paid_at timestamptz NOT NULL)",
    # An order's lines in file order (pos); line_no as events.orders.insert_order numbers them.
    "_imp_lines (idx int NOT NULL, pos int NOT NULL, line_no int NOT NULL, sku text, name text, category text, "
    "quantity int NOT NULL, unit_price_fen bigint NOT NULL, amount_fen bigint NOT NULL, PRIMARY KEY (idx, pos))",
    "_imp_keys (cluster int NOT NULL, kind text NOT NULL, value text NOT NULL)",
    # store_id, joined_at: of the cluster's first row in file order, which makes a new member.
    "_imp_member (cluster int PRIMARY KEY, member_id bigint, is_new boolean NOT NULL, store_id bigint, "
    "joined_at timestamptz)",
)


def write_orders(session: Session, items: list[tuple[int, dict[str, Any]]], source: str, *, earn: bool = False
                 ) -> tuple[dict[int, RowOutcome | Conflict], list[int]]:
    """items: (index, clean row) in file order. Returns ({index: (status, None) | Conflict},
    indexes to run on the per-row path, in file order). `earn`: created orders earn points."""
    outcome: dict[int, RowOutcome | Conflict] = {}
    work = WorkTables(session)
    known = received(work, items, source, "orders", "order_id", order_fingerprint)
    slow, hashes, stored = known.repeats, known.hashes, known.stored
    waiting = set(work.execute(
        "SELECT DISTINCT order_external_id FROM refunds WHERE status = 'pending' AND order_source = :s "
        f"AND {work.any('order_external_id', 'ids')}", {"s": source, "ids": known.ids}).scalars())
    todo = []
    for i, clean in items:
        if i in slow:
            continue
        oid = clean["order_id"]
        if oid in stored:
            outcome[i] = ("unchanged", None) if stored[oid] == hashes[i] else Conflict(
                f"order {source}/{oid} was already received with a different body", code="ingest.id_reused")
        elif oid in waiting:
            slow.add(i)
        else:
            todo.append((i, clean))
    if not todo:
        return outcome, [i for i, _ in items if i in slow]

    # Existing owners of the rows' keys.
    owners = owners_of(session, {k for _, c in todo for k in c["keys"]})

    # Identity clusters, replaying the per-row path in file order: each existing member is a group
    # of its keys; a row joins the one group its known keys are in, or starts a new one. A row whose
    # keys are in two groups is where the per-row path records a merge candidate: its whole cluster
    # goes to the per-row path (and so keeps the per-row order within it).
    clusters = Clusters()
    for key, mid in owners.items():
        clusters.union(key, ("member", mid))
    bridged = []
    for _, clean in todo:
        first, *more = clean["keys"]
        if more:
            groups = {clusters.find(k) for k in clean["keys"] if k in clusters.parent}
            if len(groups) > 1:
                bridged.append(first)
            for key in more:
                clusters.union(key, first)
        else:
            clusters.find(first)
    conflicted = {clusters.find(k) for k in bridged}
    owner_of = {clusters.find(("member", mid)): mid for mid in set(owners.values())}
    earning = None
    if earn:
        conflicted |= _touched_by_slow_rows(session, clusters, [c for i, c in items if i in slow])
        roots = {clusters.find(c["keys"][0]) for _, c in todo} - conflicted
        earning = BatchEarning.start(session, {r: owner_of.get(r) for r in roots},
                                     [c["paid_at"] for _, c in todo], utcnow())
        conflicted |= earning.held
    number: dict[Any, int] = {}
    member_rows: list[tuple[int, int | None, bool, int | None, Any]] = []  # _imp_member
    cluster_of: dict[int, int] = {}
    fast = []
    for i, clean in todo:
        root = clusters.find(clean["keys"][0])
        if root in conflicted:
            slow.add(i)
            continue
        if root not in number:  # the cluster's first row in file order
            number[root] = len(number)
            mid = owner_of.get(root)
            member_rows.append((number[root], mid, mid is None, clean["store_id"], clean["paid_at"]))
        cluster_of[i] = number[root]
        fast.append((i, clean))
    if not fast:
        return outcome, [i for i, _ in items if i in slow]
    links = {(cluster_of[i], *key) for i, clean in fast for key in clean["keys"] if key not in owners}

    work.create(*_TABLES)
    work.fill("_imp_member", ["cluster", "member_id", "is_new", "store_id", "joined_at"], member_rows)
    work.fill("_imp_keys", ["cluster", "kind", "value"], sorted(links))
    work.fill("_imp_orders", ["idx", "cluster", "external_id", "body_hash", "store_id", "channel", "amount_fen",
                              "paid_at"],
              [(i, cluster_of[i], c["order_id"], hashes[i], c["store_id"], c["channel"], c["amount_fen"], c["paid_at"])
               for i, c in fast])
    work.fill("_imp_lines", ["idx", "pos", "line_no", "sku", "name", "category", "quantity", "unit_price_fen",
                             "amount_fen"],
              [(i, pos, ln["line_no"] or pos, ln["sku"], ln["name"], ln["category"], ln["quantity"],
                ln["unit_price_fen"], ln["amount_fen"])
               for i, c in fast for pos, ln in enumerate(c["lines"], start=1)])
    work.analyze()
    params = {"src": source, "now": earning.now if earning is not None else utcnow()}
    # New members for clusters without one: the first row in file order decided join time and store,
    # as on the per-row path; unknown keys are linked to the cluster's member.
    work.number_new_members("_imp_member", "cluster")
    work.execute(
        "INSERT INTO members (id, status, gender, home_store_id, joined_at, attributes, reduce_disturbance, "
        "source_channel, created_at, updated_at) "
        "SELECT member_id, 'active', 'unknown', store_id, joined_at, '{}', false, :src, :now, :now "
        "FROM _imp_member WHERE is_new ORDER BY member_id", params)
    work.execute(
        "INSERT INTO identities (member_id, kind, value, source, created_at) "
        "SELECT m.member_id, k.kind, k.value, :src, :now FROM _imp_keys k JOIN _imp_member m ON m.cluster = k.cluster",
        params)
    # Orders in file order (their ids too, as on the per-row path), then their lines and the aggregates.
    work.execute(
        "INSERT INTO orders (source, external_id, body_hash, member_id, store_id, channel, status, currency, "
        "amount_fen, refunded_fen, paid_at, properties, created_at) "
        "SELECT :src, o.external_id, o.body_hash, m.member_id, o.store_id, o.channel, 'paid', 'CNY', o.amount_fen, "
        "0, o.paid_at, '{}', :now FROM _imp_orders o JOIN _imp_member m ON m.cluster = o.cluster ORDER BY o.idx",
        params)
    work.execute(
        "INSERT INTO order_lines (order_id, line_no, sku, name, category, quantity, unit_price_fen, amount_fen, "
        "refunded_quantity, refunded_fen) "
        "SELECT d.id, l.line_no, l.sku, l.name, l.category, l.quantity, l.unit_price_fen, l.amount_fen, 0, 0 "
        "FROM _imp_lines l JOIN _imp_orders o ON o.idx = l.idx "
        "JOIN orders d ON d.source = :src AND d.external_id = o.external_id ORDER BY l.idx, l.pos", params)
    # Aggregates: new members get theirs in one insert, known members one update (no insert-then-update,
    # which would write every new member's row twice).
    work.create_as("_imp_sums", "SELECT m.member_id, m.is_new, count(*) AS n, sum(o.amount_fen) AS spend, "
                   "min(o.paid_at) AS first_at, max(o.paid_at) AS last_at "
                   "FROM _imp_orders o JOIN _imp_member m ON m.cluster = o.cluster GROUP BY m.member_id, m.is_new")
    work.execute(
        "INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen, first_order_at, "
        "last_order_at, last_event_at) SELECT member_id, n, spend, 0, first_at, last_at, last_at FROM _imp_sums "
        "WHERE is_new ORDER BY member_id")
    work.execute(
        "UPDATE member_aggregates AS a SET order_count = a.order_count + s.n, "
        "total_spend_fen = a.total_spend_fen + s.spend, "
        f"first_order_at = {work.earliest('a.first_order_at', 's.first_at')}, "
        f"last_order_at = {work.latest('a.last_order_at', 's.last_at')}, "
        f"last_event_at = {work.latest('a.last_event_at', 's.last_at')} "
        "FROM _imp_sums s WHERE NOT s.is_new AND a.member_id = s.member_id")
    # Their segments re-check in real time (segments.dirty), in member-id order like every marker.
    work.execute(DIRTY.format(table="_imp_sums"), params)
    if earning is not None:  # reads the work tables: before they are dropped
        earning.write(session, source, fast)
    work.close()
    for i, _ in fast:
        outcome[i] = ("created", None)
    return outcome, [i for i, _ in items if i in slow]


def _touched_by_slow_rows(session: Session, clusters: Clusters, slow_rows: list[dict[str, Any]]) -> set[Any]:
    """The identity clusters that share a member with a row going to the per-row path (a repeated
    order id, an order a refund waits for): with earning they go there whole, so a member's orders
    earn in file order (caps, tier upgrades) on one path."""
    if not slow_rows:
        return set()
    keys = {k for c in slow_rows for k in c["keys"]}
    owners = owners_of(session, keys)
    touched = set()
    for key in keys:
        for node in (key, ("member", owners.get(key))):
            if node in clusters.parent:
                touched.add(clusters.find(node))
    return touched
