"""The oracle for the PostgreSQL set-based path of batch events (`events.pg_batch`): random batches —
new, repeated, conflicting, anonymous, invalid and earning events, for known, unknown, merged and
conflicting members, with orders mixed in — go through the batch with the fast path on one fresh
database and with it switched off (the per-item path) on another, both seeded alike. Every per-item
result and every table it touches must come out the same. Event ids differ (the fast path draws
them first), so events are compared by (source, external_id); member ids are equal on both sides
(members are only created on the per-item path, in batch order, from the same sequence).

And concurrent batches sharing members on the fast path neither deadlock nor lose events."""

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from orchard import migrate
from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.db import Base
from orchard.events import aggregates, ingest, pg_batch
from orchard.identity.models import Identity
from orchard.loyalty.models import EarningRule, LoyaltyTask
from orchard.members.models import Member, MemberAggregate
from orchard.org import service as org
from orchard.org.models import OrgUnit
from tests import conftest

pytestmark = pytest.mark.skipif(not conftest.PG_URL, reason="the fast path is PostgreSQL's")

UNSCOPED = Principal("apikey", 1, "loader", Role.admin, None, False)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
#: Seeded members 1–4: phone P1 + card C1 + anonymous id A1 (1), phone P2 (2), phone P3 + card C3 (3),
#: 4 merged into 2. Phone P9, card C9 and anonymous ids A2, A3 are unknown.
PHONES = {"P1": "13800000001", "P2": "13800000002", "P3": "13800000003", "P9": "13800000009"}


def _refs():
    phone = st.sampled_from(list(PHONES.values()) + ["12"])  # "12" is not a phone
    card = st.sampled_from(["C1", "C3", "C9"])
    anon = st.sampled_from(["A1", "A2", "A3"])
    return st.one_of(
        st.builds(lambda p: {"identities": {"phone": p}}, phone),
        st.builds(lambda p, c: {"identities": {"phone": p, "card_no": c}}, phone, card),
        st.builds(lambda a: {"anonymous_id": a}, anon),
        st.builds(lambda p, a: {"identities": {"phone": p}, "anonymous_id": a}, phone, anon),
        st.builds(lambda i: {"id": i}, st.sampled_from([1, 2, 3, 4, 99])),
        st.builds(lambda i, p: {"id": i, "identities": {"phone": p}}, st.sampled_from([1, 2, 4]), phone),
        st.builds(lambda c: {"identities": {"card_no": c}, "profile": {"home_store_code": "S2"}}, card),
    )


def _event(ext, name, ref, store, days, props):
    return {"type": "event", "source": "app", "external_id": ext, "name": name, "member": ref,
            "occurred_at": (NOW + dt.timedelta(days=days)).isoformat(), "store_code": store, "properties": props}


def _order(ext, ref, amount):
    return {"type": "order", "source": "pos", "external_id": ext, "paid_at": (NOW - dt.timedelta(days=1)).isoformat(),
            "member": ref, "amount_fen": amount}


events = st.builds(
    _event,
    st.one_of(st.builds("E{}".format, st.integers(0, 80)), st.sampled_from(["E1", "E2", "SEEN", "SEEN-OTHER"])),
    st.sampled_from(["product_viewed", "product_viewed", "store_visit", "login", "shared", "checked_in"]),
    _refs(),
    st.sampled_from([None, None, "S1", "S2", "HQ", "NOPE"]),
    st.sampled_from([-30, -2, -1, 0, 3]),  # 3 days ahead is refused
    st.sampled_from([{}, {}, {"sku": "T1", "price_fen": 100}, {"x": "nul\x00"}, {"deep": {"a": [1, "二"]}}]),
)
#: Events the fast path should take (known members, nothing to earn), unless another item interferes.
plain = st.builds(
    _event, st.builds("F{}".format, st.integers(0, 200)), st.sampled_from(["product_viewed", "login", "store_visit"]),
    st.sampled_from([{"identities": {"phone": PHONES["P1"]}}, {"identities": {"phone": PHONES["P3"], "card_no": "C3"}},
                     {"identities": {"card_no": "C1"}, "anonymous_id": "A1"}, {"id": 2}, {"id": 4},
                     {"id": 3, "identities": {"card_no": "C3"}}, {"anonymous_id": "A2"}, {"anonymous_id": "A3"},
                     {"anonymous_id": "A2"}, {"identities": {"phone": PHONES["P2"]}, "anonymous_id": "A2"}]),
    st.sampled_from([None, "S1", "S2"]), st.sampled_from([-40, -1, 0]), st.sampled_from([{}, {"sku": "T1"}]))
item = st.one_of(
    plain, plain, plain, events, events, events,
    st.builds(_order, st.sampled_from(["O1", "O2"]), _refs(), st.integers(0, 5000)),
    st.sampled_from([{"type": "event"}, {"type": "nope"}, "not an object",
                     {"type": "event", "external_id": "E0", "name": "9bad", "member": {"id": 1},
                      "occurred_at": NOW.isoformat()}]),
)

_TABLES = {
    "events": "SELECT source, external_id, body_hash, member_id, anonymous_id, name, store_id, occurred_at, "
              "properties FROM events",
    "member_aggregates": "SELECT * FROM member_aggregates",
    "segment_dirty_members": "SELECT member_id FROM segment_dirty_members",
    "identities": "SELECT member_id, kind, value, source FROM identities",
    "members": "SELECT id, status, home_store_id, joined_at, source_channel, merged_into_id FROM members",
    "orders": "SELECT source, external_id, member_id, amount_fen FROM orders",
    "points": "SELECT member_id, amount, kind, source FROM points_entries",
    "tasks": "SELECT member_id, task_id FROM task_completions",
}


@pytest.fixture(scope="module")
def two_databases(database):
    """(fast, per-item) engines on two fresh, migrated PostgreSQL databases (the first is the fixture
    database: the tests take `clean_db` so that it is left empty)."""
    if not database.startswith("postgresql"):
        pytest.skip("the fast path is PostgreSQL's")
    url, name = conftest._create_pg_database()
    migrate.upgrade(url)
    engines = (create_engine(database), create_engine(url))
    yield engines
    for e in engines:
        e.dispose()
    conftest._drop_pg_database(name)


def _reset(engine) -> None:
    """Empty every table and restart every sequence (DELETE: TRUNCATE of ~80 tables costs seconds)."""
    with engine.begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{t.name}"'))
        conn.execute(text("SELECT setval(c.oid, 1, false) FROM pg_class c WHERE c.relkind = 'S'"))
    with Session(engine) as s, s.begin():
        org.create_unit(s, kind="hq", code="HQ", name="总部")
        org.create_unit(s, kind="store", code="S1", name="一店", parent_code="HQ")
        org.create_unit(s, kind="store", code="S2", name="二店", parent_code="HQ")
        s1 = s.scalar(select(OrgUnit.id).where(OrgUnit.code == "S1"))
        for i, home in ((1, s1), (2, s1), (3, None), (4, s1)):
            s.add(Member(id=i, joined_at=NOW - dt.timedelta(days=90), home_store_id=home, source_channel="seed"))
            s.add(MemberAggregate(member_id=i))
        s.flush()
        s.execute(text("SELECT setval('members_id_seq', 4)"))
        s.execute(text("UPDATE members SET status = 'merged', merged_into_id = 2 WHERE id = 4"))
        for mid, kind, value in ((1, "phone", "+86" + PHONES["P1"]), (1, "card_no", "C1"), (1, "anonymous_id", "A1"),
                                 (2, "phone", "+86" + PHONES["P2"]), (3, "phone", "+86" + PHONES["P3"]),
                                 (3, "card_no", "C3")):
            s.add(Identity(member_id=mid, kind=kind, value=value, source="seed"))
        s.add(EarningRule(name="分享有礼", kind="event", config={"event": "shared", "points": 5}, created_by="test"))
        s.add(LoyaltyTask(code="first_checkin", name="首次签到", kind="event", event="checked_in", points=3))
        s.flush()
        ingest.ingest_batch(s, principal=UNSCOPED, items=[
            _event("SEEN", "login", {"identities": {"phone": PHONES["P1"]}}, None, -3, {}),
            _event("SEEN-OTHER", "login", {"id": 3}, None, -3, {})])


def _run(engine, batch, principal, *, fast: bool, monkeypatch) -> list:
    monkeypatch.setattr(pg_batch, "applies", lambda session: fast)
    with Session(engine) as s, s.begin():
        out = ingest.ingest_batch(s, principal=principal, items=batch)
        ids = dict(s.execute(text("SELECT id, source || '/' || external_id FROM events")).all())
    return [(r.index, r.ok, r.error,
             r.outcome and (r.outcome.type, r.outcome.status, r.outcome.member_id, r.outcome.member_created,
                            ids.get(r.outcome.id) if r.outcome.type == "event" else r.outcome.id))
            for r in out.results]


def _tables(engine) -> dict:
    with engine.connect() as conn:
        return {name: sorted(map(tuple, conn.execute(text(sql))), key=repr) for name, sql in _TABLES.items()}


def _principal(engine, scoped: bool) -> Principal:
    if not scoped:
        return UNSCOPED
    with engine.connect() as conn:
        s1 = conn.execute(text("SELECT id FROM org_units WHERE code = 'S1'")).scalar_one()
    return Principal("apikey", 2, "store S1", Role.clerk, frozenset({s1}), True)


_LINKED_LATER = [_event("F1", "login", {"anonymous_id": "A2"}, None, -1, {}),
                 _event("F2", "login", {"identities": {"phone": PHONES["P2"]}, "anonymous_id": "A2"}, None, -1, {}),
                 _event("F3", "login", {"anonymous_id": "A2"}, None, -1, {}),
                 _order("O1", {"anonymous_id": "A3"}, 100), _event("F4", "login", {"anonymous_id": "A3"}, None, -1, {})]


@example(batch=_LINKED_LATER, scoped=False)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(item, min_size=1, max_size=25), scoped=st.sampled_from([False, False, True]))
def test_the_fast_path_answers_and_writes_what_the_per_item_path_does(two_databases, clean_db, monkeypatch, batch,
                                                                     scoped):
    fast_db, slow_db = two_databases
    for e in two_databases:
        _reset(e)
    got = _run(fast_db, batch, _principal(fast_db, scoped), fast=True, monkeypatch=monkeypatch)
    want = _run(slow_db, batch, _principal(slow_db, scoped), fast=False, monkeypatch=monkeypatch)
    assert got == want
    assert _tables(fast_db) == _tables(slow_db)


def test_the_fast_path_takes_the_plain_events_of_known_members(two_databases, clean_db, monkeypatch):
    """Not a vacuous oracle: plain events of known members are written by the fast path (its
    insert, no per-item savepoint), the rest by the per-item path."""
    fast_db, _ = two_databases
    _reset(fast_db)
    taken = []
    real = pg_batch.write_events

    def spy(session, **kw):
        out = real(session, **kw)
        taken.extend(sorted(out))
        return out

    monkeypatch.setattr(pg_batch, "write_events", spy)
    with fast_db.begin() as conn:  # the seed's marks
        conn.execute(text("DELETE FROM segment_dirty_members"))
    batch = [_event("K1", "product_viewed", {"identities": {"phone": PHONES["P1"]}}, "S1", -1, {"sku": "T"}),
             _event("K2", "login", {"id": 4}, None, -1, {}),  # merged into 2
             _event("K3", "login", {"anonymous_id": "A3"}, None, -1, {}),  # anonymous
             _event("K4", "shared", {"identities": {"phone": PHONES["P2"]}}, None, -1, {}),  # earns: per item
             _event("K5", "login", {"identities": {"phone": PHONES["P9"]}}, None, -1, {}),  # new member: per item
             _event("SEEN", "login", {"identities": {"phone": PHONES["P1"]}}, None, -3, {})]  # a replay
    with Session(fast_db) as s, s.begin():
        out = ingest.ingest_batch(s, principal=UNSCOPED, items=batch)
    assert taken == [0, 1, 2]
    assert [(r.outcome.status, r.outcome.member_id, r.outcome.member_created) for r in out.results] == [
        ("created", 1, False), ("created", 2, False), ("created", None, False), ("created", 2, False),
        ("created", 5, True), ("duplicate", 1, False)]
    with fast_db.connect() as conn:
        agg = conn.execute(text("SELECT last_login_at FROM member_aggregates WHERE member_id = 2")).scalar_one()
        dirty = set(conn.execute(text("SELECT member_id FROM segment_dirty_members")).scalars())
    assert agg == NOW - dt.timedelta(days=1)
    assert dirty == {1, 2, 5}


def test_concurrent_fast_batches_sharing_members_neither_deadlock_nor_lose_events(two_databases, clean_db):
    """Four batches at once, each 300 events over the same 30 known members in a different order,
    some ids sent by two batches: every event stored once, each batch's answer consistent, every
    member's aggregates equal a recomputation."""
    engine, _ = two_databases
    _reset(engine)
    phones = [f"1390000{i:04d}" for i in range(30)]
    with Session(engine) as s, s.begin():  # known members
        ingest.ingest_batch(s, principal=UNSCOPED, items=[
            _event(f"seed-{p}", "sign_up", {"identities": {"phone": p}}, None, -10, {}) for p in phones])

    def batch(n: int) -> list[dict]:
        order = phones if n % 2 else phones[::-1]
        return [_event(f"c{n % 2}-{k}-{p}", ("login", "store_visit", "product_viewed")[k % 3],
                       {"identities": {"phone": p}}, "S1", -(k + 1), {}) for k in range(10) for p in order]

    def send(n: int):
        with Session(engine) as s, s.begin():
            return ingest.ingest_batch(s, principal=UNSCOPED, items=batch(n), start_over=True)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, range(4)))
    assert all(r.rejected == 0 for r in results)
    created = sum(r.outcome.status == "created" for res in results for r in res.results)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM events WHERE external_id LIKE 'c%'")).scalar_one()
        aggs = set(conn.execute(text("SELECT member_id, last_login_at, last_visit_at, last_event_at "
                                     "FROM member_aggregates")).tuples())
    assert stored == created == 600  # two distinct id sets of 300, each sent twice
    with Session(engine) as s:
        for mid in {m for m, *_ in aggs}:
            aggregates.recompute(s, member_id=mid)
        s.flush()
        assert set(s.execute(text("SELECT member_id, last_login_at, last_visit_at, last_event_at "
                                  "FROM member_aggregates")).tuples()) == aggs
        s.rollback()

