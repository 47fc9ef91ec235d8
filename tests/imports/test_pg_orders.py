"""The set-based fast path ends in exactly the state of the per-row path, on each database (COPY-filled
work tables on PostgreSQL, executemany-filled ones on SQLite), on a batch mixing every case: new and
known members, keys linked across rows, keys of two members, replays, conflicts, repeated order ids
and orders with a refund waiting for them. Every table is compared (tests/imports/every_table.py)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from orchard import db
from orchard.events.models import Order, OrderLine, Refund
from orchard.identity.models import Identity
from orchard.imports import pg_bulk, pg_orders, rows
from orchard.imports import service as import_service
from orchard.members.models import Member, MemberAggregate, MergeCandidate
from orchard.org.models import OrgUnit
from tests.conftest import wipe_tables
from tests.factories import make_org
from tests.imports import every_table

RAW = [  # order_id, phone, card, paid_at, amount_fen, store, sku
    ("K1", "13800000001", "", "2026-10-01T10:00:00+08:00", "1000", "SH001", ""),
    ("K2", "13800000001", "C-1", "2026-09-01T10:00:00+08:00", "2000", "GZ001", "S1"),
    ("K3", "", "C-1", "2026-10-05T10:00:00+08:00", "3000", "", ""),
    ("K4", "13800000002", "", "2026-10-02T10:00:00+08:00", "4000", "HZ001", ""),
    ("K5", "13800000009", "C-9", "2026-10-03T10:00:00+08:00", "5000", "SH001", ""),  # two existing members
    ("K6", "13800000003", "", "2026-10-04T10:00:00+08:00", "6000", "SH001", ""),  # replay of a stored order
    ("K7", "13800000003", "", "2026-10-04T10:00:00+08:00", "7777", "SH001", ""),  # conflict with stored K7
    ("K1", "13800000001", "", "2026-10-01T10:00:00+08:00", "1000", "SH001", ""),  # repeated in the batch
    ("K8", "13800000004", "", "2026-10-06T10:00:00+08:00", "8000", "SH001", ""),  # a refund waits for it
]
SETUP = [("K6", "13800000003", "", "2026-10-04T10:00:00+08:00", "6000", "SH001", ""),
         ("K7", "13800000003", "", "2026-10-04T10:00:00+08:00", "7000", "SH001", ""),
         ("X1", "13800000009", "", "2026-01-01T10:00:00+08:00", "100", "", ""),
         ("X2", "", "C-9", "2026-01-01T10:00:00+08:00", "100", "", ""),
         ("X3", "13800000002", "", "2026-10-20T10:00:00+08:00", "100", "SH001", "")]  # K4 comes earlier


def _clean(raw, stores):
    """One order: a single row, or (an 8th element n > 0) n line rows with the order's columns repeated."""
    oid, phone, card, paid, amount, store, sku, *more = raw
    values = {"order_id": oid, "member_phone": phone, "member_card_no": card, "paid_at": paid, "amount_fen": amount,
              "store_code": store, "sku": sku}
    if not more or not more[0]:
        return rows.order_row(values.get, stores)
    return rows.order_group([(n, {**values, "sku": f"{sku}-{n}", "quantity": str(n), "unit_price": f"{n}.5",
                                  "line_no": str(10 - n) if amount == "100" else ""}.get)
                             for n in range(1, more[0] + 1)], stores)


def _run(fast: bool) -> dict:
    return _run_with(pg_orders.write_orders if fast else None)


def _run_with(fast_writer) -> dict:
    make_org()
    with db.transaction() as s:
        stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).tuples().all())
        for raw in SETUP:
            import_service._order(s, _clean(raw, stores), "import")
        from orchard.events import ingest
        from orchard.events.schemas import RefundIn
        from orchard.imports.service import SYSTEM

        ingest.ingest(s, principal=SYSTEM, kind="refund", data=RefundIn(
            source="import", external_id="R8", order_external_id="K8", refunded_at="2026-10-07T00:00:00Z",
            amount_fen=500))
    return {"outcome": _batch([(i, _clean(raw, stores)) for i, raw in enumerate(RAW)], fast_writer),
            "state": _dump(), "tables": every_table.dump()}


def _batch(items, fast_writer) -> dict:
    """Run one batch in one transaction, through `fast_writer` (with the per-row path for what it
    hands back) or, if None, row by row; each row's status, or its error's type."""
    with db.transaction() as s:
        if fast_writer is not None:
            outcome = pg_bulk.run_batch(s, items, "import", fast_writer, import_service._order)
        else:
            outcome = {}
            for i, clean in items:
                try:
                    with s.begin_nested():
                        outcome[i] = import_service._order(s, clean, "import")
                except Exception as exc:  # noqa: BLE001 - compared by type
                    outcome[i] = exc
    return {i: (v[0] if isinstance(v, tuple) else type(v).__name__) for i, v in outcome.items()}


def _dump() -> dict:
    with db.transaction(readonly=True) as s:
        keys = {}
        for ident in s.scalars(select(Identity)):
            keys.setdefault(ident.member_id, set()).add((ident.kind, ident.value, ident.source))
        who = {mid: tuple(sorted(v)) for mid, v in keys.items()}
        members = sorted((who.get(m.id), m.status, m.gender, m.home_store_id, m.joined_at, m.source_channel,
                          a.order_count, a.total_spend_fen, a.refund_fen, a.first_order_at, a.last_order_at,
                          a.last_event_at)
                         for m, a in s.execute(select(Member, MemberAggregate).join(
                             MemberAggregate, MemberAggregate.member_id == Member.id)))
        orders = sorted((o.external_id, who[o.member_id], o.body_hash, o.status, o.amount_fen, o.refunded_fen,
                         o.paid_at, o.store_id, o.channel) for o in s.scalars(select(Order)))
        lines = sorted((s.get(Order, ln.order_id).external_id, ln.line_no, ln.sku, ln.name, ln.category, ln.quantity,
                        ln.unit_price_fen, ln.amount_fen, ln.refunded_quantity, ln.refunded_fen)
                       for ln in s.scalars(select(OrderLine)))
        refunds = sorted((r.external_id, r.status, r.amount_fen) for r in s.scalars(select(Refund)))
        cands = sorted((who[c.member_a_id], who[c.member_b_id], c.reason) for c in s.scalars(select(MergeCandidate)))
    return {"members": members, "orders": orders, "lines": lines, "refunds": refunds, "candidates": cands}


_wipe = wipe_tables


def test_the_fast_path_ends_exactly_where_the_per_row_path_does(clean_db):
    slow = _run(fast=False)
    _wipe()
    fast = _run(fast=True)
    assert fast["outcome"] == slow["outcome"]
    assert fast["state"] == slow["state"]
    assert fast["tables"] == slow["tables"]
    assert {"members", "identities", "orders", "order_lines", "member_aggregates", "refunds", "merge_candidates",
            "segment_dirty_members"} <= set(slow["tables"])
    assert slow["outcome"][5] == "unchanged" and slow["outcome"][6] == "Conflict"
    assert len(slow["state"]["candidates"]) == 1
    assert ("R8", "applied", 500) in slow["state"]["refunds"]


@settings(max_examples=300, deadline=None)
@given(order_id=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "\x00" not in s),
       phone=st.sampled_from(["13800000001", "+86 139 0000 0002", ""]), card=st.sampled_from(["", "C-1", "卡 9"]),
       paid=st.sampled_from(["2026-10-01", "2026-10-01T10:00:00.123456+08:00", "2026/01/02 03:04:05"]),
       amount=st.sampled_from(["0", "1", "128.5", "1,288.00"]), store=st.sampled_from(["", "SH001"]),
       channel=st.sampled_from(["", "pos", "小程序"]), line=st.sampled_from([{}, {"sku": "S1"},
                                                                      {"product_name": "围巾", "quantity": "3"},
                                                                      {"category": "服饰", "sku": "S2"}]),
       more=st.lists(st.sampled_from([{"sku": "S3", "unit_price": "2.5", "quantity": "2"},
                                      {"line_amount_fen": "7", "line_no": "9"}, {"sku": "S4", "line_amount": "1"}]),
                     max_size=3, unique_by=lambda d: tuple(d)))
def test_fast_fingerprint_equals_the_ingestion_fingerprint(order_id, phone, card, paid, amount, store, channel, line,
                                                           more):
    from orchard.events.ingest import body_fingerprint

    values = {"order_id": order_id, "member_phone": phone, "member_card_no": card or ("C-0" if not phone else ""),
              "paid_at": paid, "amount": amount, "store_code": store, "channel": channel, **line}
    if more:  # an order of several rows: each row one line with its price
        first = {**values, "unit_price": "1"} if line else {**values, "sku": "S0", "unit_price": "1"}
        group = [first, *({**values, **extra} for extra in more)]
        clean = rows.order_group([(n, v.get) for n, v in enumerate(group, start=2)], {"SH001": 1})
    else:
        clean = rows.order_row(values.get, {"SH001": 1})
    assert pg_orders.order_fingerprint(clean, "pos") == body_fingerprint(pg_orders.order_model(clean, "pos"))


_row = st.tuples(st.sampled_from([f"P{i}" for i in range(12)]),  # order ids repeat within and across batches
                 st.sampled_from(["", "13800000001", "13800000002", "13800000003", "13800000009"]),
                 st.sampled_from(["", "C-1", "C-2", "C-9"]),
                 st.sampled_from(["2026-10-01T10:00:00+08:00", "2026-09-01", "2026-10-05T23:59:59Z"]),
                 st.sampled_from(["100", "2500"]), st.sampled_from(["", "SH001", "GZ001"]),
                 st.sampled_from(["", "S1"]),
                 st.sampled_from([0, 0, 1, 2, 3])).filter(lambda r: r[1] or r[2])  # lines per order (0: one row)


def test_random_batches_end_where_the_per_row_path_does(clean_db):
    """Whatever mix of known and new keys, bridges, replays and conflicts a batch holds."""
    _random_batches()


@settings(max_examples=20, deadline=None)
@given(setup=st.lists(_row, max_size=6), batch=st.lists(_row, min_size=1, max_size=25))
def _random_batches(setup, batch):
    results = []
    for fast in (False, True):
        wipe_tables()
        make_org()
        with db.transaction() as s:
            stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).all())
            for raw in setup:
                try:
                    with s.begin_nested():
                        import_service._order(s, _clean(raw, stores), "import")
                except Exception:  # noqa: BLE001 - a setup row may conflict with an earlier one
                    pass
        items = [(i, _clean(raw, stores)) for i, raw in enumerate(batch)]
        results.append((_batch(items, pg_orders.write_orders if fast else None), _dump(), every_table.dump()))
    assert results[1] == results[0], (setup, batch)


def test_a_unique_key_race_sends_the_whole_batch_down_the_per_row_path(clean_db):
    """A concurrent writer taking a key the fast path counted as free surfaces as IntegrityError: the
    fast path's work (on SQLite its work tables too) is rolled back to its savepoint and every row runs
    on the per-row path. (SQLite's writers queue on BEGIN IMMEDIATE, so there the race is simulated only.)"""
    from sqlalchemy.exc import IntegrityError

    slow = _run(fast=False)
    _wipe()

    def racing(session, items, source):
        pg_orders.write_orders(session, items, source)  # writes, then loses the race
        raise IntegrityError("INSERT …", {}, Exception("duplicate key value violates unique constraint"))

    assert _run_with(racing) == slow
