"""The set-based fast path of event imports ends in exactly the state of the per-row path, on each
database, on batches mixing every case: known members by one or two keys, new keys, keys of two
members, replays, conflicts, repeated event ids and the event pending points wait for. Every table is
compared (tests/imports/every_table.py)."""

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from orchard import db
from orchard.config import get_settings
from orchard.events import ingest
from orchard.events.ingest import body_fingerprint
from orchard.events.schemas import EventIn, OrderIn
from orchard.imports import pg_bulk, pg_events, rows
from orchard.imports import service as import_service
from orchard.loyalty import rulebook
from orchard.loyalty.schemas import RuleIn
from orchard.org.models import OrgUnit
from tests.conftest import wipe_tables
from tests.factories import make_org
from tests.imports import every_table

RAW = [  # event_id, phone, card, occurred_at, name, store, properties
    ("E1", "13800000001", "", "2026-10-01T10:00:00+08:00", "到店", "SH001", ""),
    ("E2", "13800000001", "C-1", "2026-10-02T10:00:00+08:00", "login", "", ""),  # both keys of one member
    ("E3", "", "C-1", "2026-09-01T10:00:00+08:00", "wine_tasting", "GZ001", '{"seats": 2, "w": 1.5}'),
    ("E4", "13800000002", "", "2026-10-03T10:00:00+08:00", "浏览商品", "", '{"sku": "S1"}'),  # a new member
    ("E5", "13800000009", "C-9", "2026-10-03T10:00:00+08:00", "login", "", ""),  # keys of two members
    ("E6", "13800000003", "", "2026-10-04T10:00:00+08:00", "login", "", ""),  # replay of a stored event
    ("E7", "13800000003", "", "2026-10-05T10:00:00+08:00", "login", "", ""),  # conflict with stored E7
    ("E1", "13800000001", "", "2026-10-01T10:00:00+08:00", "到店", "SH001", ""),  # repeated in the batch
    ("E8", "13800000001", "C-5", "2026-10-06T10:00:00+08:00", "到店", "", ""),  # a key to link
    ("E9", "13800000002", "", "2026-10-07T10:00:00+08:00", "store_visit", "HZ001", ""),  # E4's new member
    ("E10", "13800000003", "", "2026-10-08T10:00:00+08:00", "order_delivered", "", '{"order_id": "O1"}'),
    ("E11", "13800000003", "", "2026-09-30T10:00:00+08:00", "到店", "", ""),  # older than the stored visit
]
SETUP = [("E6", "13800000003", "", "2026-10-04T10:00:00+08:00", "login", "", ""),
         ("E7", "13800000003", "", "2026-10-04T10:00:00+08:00", "login", "", ""),
         ("X0", "13800000003", "", "2026-10-04T10:00:00+08:00", "store_visit", "", ""),
         ("X1", "13800000001", "C-1", "2026-01-01T10:00:00+08:00", "login", "", ""),
         ("X2", "13800000009", "", "2026-01-01T10:00:00+08:00", "login", "", ""),
         ("X3", "", "C-9", "2026-01-01T10:00:00+08:00", "login", "", "")]


@pytest.fixture
def delivery_releases_points(monkeypatch):
    """Points of an order wait for its `order_delivered` event, which the per-row path releases."""
    monkeypatch.setenv("ORCHARD_POINTS_ORDER_PENDING_EVENT", "order_delivered")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _clean(raw, stores):
    eid, phone, card, at, name, store, props = raw
    return rows.event_row({"event_id": eid, "member_phone": phone, "member_card_no": card, "occurred_at": at,
                           "name": name, "store_code": store, "properties": props}.get, stores)


def _stores():
    with db.transaction(readonly=True) as s:
        return dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).tuples().all())


def _setup(raws):
    """Stored before the batch, through the per-row path (which creates the members of new keys); and
    order O1 of 13800000003, whose points wait for its `order_delivered` event when that is configured."""
    make_org()
    stores = _stores()
    with db.transaction() as s:
        rulebook.create(s, RuleIn.model_validate(
            {"name": "每元1分", "kind": "amount", "config": {"points": 1, "per_fen": 100}}), actor="test")
        ingest.ingest(s, principal=pg_bulk.SYSTEM, kind="order", data=OrderIn(
            source="import", external_id="O1", member={"identities": {"phone": "13800000003"}},
            paid_at=dt.datetime(2026, 9, 1, tzinfo=dt.UTC), amount_fen=12800))
        for raw in raws:
            try:
                with s.begin_nested():
                    import_service._event(s, _clean(raw, stores), "import")
            except Exception:  # noqa: BLE001 - a random setup row may conflict with an earlier one
                pass
    return stores


def _batch(items, fast: bool) -> dict:
    """One batch in one transaction, through the fast path (with the per-row path for what it hands
    back) or row by row; each row's status, or its error's type and text."""
    with db.transaction() as s:
        if fast:
            outcome = pg_bulk.run_batch(s, items, "import", pg_events.write_events, import_service._event)
        else:
            outcome = {}
            for i, clean in items:
                try:
                    with s.begin_nested():
                        outcome[i] = import_service._event(s, clean, "import")
                except Exception as exc:  # noqa: BLE001 - compared by type
                    outcome[i] = exc
    return _statuses(outcome)


def _statuses(outcome: dict) -> dict:
    return {i: (v[0] if isinstance(v, tuple) else (type(v).__name__, str(v))) for i, v in outcome.items()}


def _run(raws, setup, fast: bool, writer=None) -> tuple:
    wipe_tables()
    stores = _setup(setup)
    items = [(i, _clean(raw, stores)) for i, raw in enumerate(raws)]
    if writer is not None:
        with db.transaction() as s:
            outcome = pg_bulk.run_batch(s, items, "import", writer, import_service._event)
        out = _statuses(outcome)
    else:
        out = _batch(items, fast)
    return out, every_table.dump()


def _visits_of(phone_or_card: str) -> tuple:
    from orchard.identity.models import Identity
    from orchard.members.models import MemberAggregate

    with db.transaction(readonly=True) as s:
        a = s.scalar(select(MemberAggregate).join(Identity, Identity.member_id == MemberAggregate.member_id)
                     .where(Identity.value == phone_or_card))
        return a.last_visit_at, a.last_login_at, a.last_event_at


def test_the_fast_path_ends_exactly_where_the_per_row_path_does(clean_db, delivery_releases_points):
    slow = _run(RAW, SETUP, fast=False)
    slow_visits = _visits_of("+8613800000003")
    fast = _run(RAW, SETUP, fast=True)
    # then
    assert fast == slow
    outcome, tables = slow
    assert [outcome[i] for i in (5, 6, 7)] == [
        "unchanged", ("RowError", "event_id: event import/E7 was already received with a different body"), "unchanged"]
    assert {"members", "identities", "events", "member_aggregates", "merge_candidates",
            "segment_dirty_members"} <= set(tables)
    assert len(tables["merge_candidates"]) == 1  # E5's keys of two members
    lots = [dict(row) for row in tables["points_lots"]]
    assert [(lot["pending_event"], lot["remaining"]) for lot in lots] == [(None, 128)]  # E10 released them
    assert _visits_of("+8613800000003") == slow_visits == (
        dt.datetime(2026, 10, 4, 2, tzinfo=dt.UTC), dt.datetime(2026, 10, 4, 2, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 8, 2, tzinfo=dt.UTC))  # E11's older visit moved nothing


def test_the_fast_path_takes_the_rows_it_can_decide_and_hands_back_the_rest(clean_db, delivery_releases_points):
    stores = _setup(SETUP)
    items = [(i, _clean(raw, stores)) for i, raw in enumerate(RAW)]
    with db.transaction() as s:
        outcome, slow = pg_events.write_events(s, items, "import")
    assert sorted(i for i, v in outcome.items() if v == ("created", None)) == [0, 1, 2, 11]
    assert slow == [3, 4, 7, 8, 9, 10]


@settings(max_examples=300, deadline=None)
@given(event_id=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "\x00" not in s),
       phone=st.sampled_from(["13800000001", "+86 139 0000 0002", ""]), card=st.sampled_from(["", "C-1", "卡 9"]),
       at=st.sampled_from(["2026-10-01", "2026-10-01T10:00:00.123456+08:00", "2026/01/02 03:04:05",
                           "2026-10-05T23:59:59Z"]),
       name=st.sampled_from(["到店", "LOGIN", "wine_tasting", "浏览商品"]), store=st.sampled_from(["", "SH001"]),
       props=st.sampled_from(["", '{"a": 1}', '{"w": 1.5, "n": null, "l": [1, "二"], "o": {"x": true}}',
                              '{"e": 1e-7}']),
       extra=st.sampled_from([{}, {"sku": "S1"}, {"category": "鞋", "product_name": "跑鞋"}]))
def test_fast_fingerprint_equals_the_ingestion_fingerprint(event_id, phone, card, at, name, store, props, extra):
    values = {"event_id": event_id, "member_phone": phone, "member_card_no": card or ("C-0" if not phone else ""),
              "occurred_at": at, "name": name, "store_code": store, "properties": props, **extra}
    clean = rows.event_row(values.get, {"SH001": 1})
    fields = pg_events.event_fields(clean, "pos")
    model = EventIn.model_validate({k: v for k, v in fields.items() if v is not None})
    assert pg_events.event_fingerprint(clean, "pos") == body_fingerprint(model)


_row = st.tuples(st.sampled_from([f"P{i}" for i in range(10)]),  # event ids repeat within and across batches
                 st.sampled_from(["", "13800000001", "13800000002", "13800000003"]),
                 st.sampled_from(["", "C-1", "C-2"]),
                 st.sampled_from(["2026-10-01T10:00:00+08:00", "2026-09-01", "2026-10-05T23:59:59Z"]),
                 st.sampled_from(["到店", "login", "product_viewed", "order_delivered"]),
                 st.sampled_from(["", "SH001"]),
                 st.sampled_from(["", '{"order_id": "O1"}'])).filter(lambda r: r[1] or r[2])


def test_random_batches_end_where_the_per_row_path_does(clean_db, delivery_releases_points):
    """Whatever mix of known and new keys, bridges, replays and conflicts a batch holds."""
    _random_batches()


@settings(max_examples=20, deadline=None)
@given(setup=st.lists(_row, max_size=6), batch=st.lists(_row, min_size=1, max_size=25))
def _random_batches(setup, batch):
    assert _run(batch, setup, fast=True) == _run(batch, setup, fast=False), (setup, batch)


def test_a_unique_key_race_sends_the_whole_batch_down_the_per_row_path(clean_db):
    """A concurrent writer taking an event id the fast path counted as new surfaces as IntegrityError: the
    fast path's work is rolled back to its savepoint and every row runs on the per-row path."""
    from sqlalchemy.exc import IntegrityError

    def racing(session, items, source):
        pg_events.write_events(session, items, source)  # writes, then loses the race
        raise IntegrityError("INSERT …", {}, Exception("duplicate key value violates unique constraint"))

    assert _run(RAW, SETUP, fast=False, writer=racing) == _run(RAW, SETUP, fast=False)
