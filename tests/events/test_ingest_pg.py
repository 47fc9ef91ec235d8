"""The thin ingestion path on PostgreSQL (events.ingest_pg + the orchard_ingest_events() function,
migration 0019).

The FastAPI route (`events.endpoints.post_event` / `post_batch` → `events.ingest`) is the reference: the
same requests — single events and batches of known members by phone, card, member id (merged too) and
anonymous id, unknown people and anonymous ids, replays, ids reused with another body, store codes
(unknown, a region), earning events, malformed bodies and items, orders in a batch, ids repeated in a
batch, revoked, expired, unknown and forbidden credentials, a store-bound key with members inside and
outside its store, an Idempotency-Key — go through the route on one fresh database (thin path off) and
through the thin path on another, and every response (status, headers, body) and every row of events,
member aggregates, dirty members, identities, members, merge candidates, orders, points and tasks must
be the same. Event ids are compared as (source, external_id): a batch's thin path draws them in that
order. A deterministic scenario, then hypothesis sequences of random requests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from orchard import db, migrate
from orchard.config import get_settings
from orchard.db import Base
from orchard.identity.models import Identity
from orchard.loyalty.models import EarningRule, LoyaltyTask
from orchard.members.models import Member, MemberAggregate
from orchard.org.models import OrgUnit
from tests import conftest
from tests.events.test_pg_event_batches import _TABLES
from tests.factories import api_key, headers, make_org, token_for

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
PHONES = {"P1": "13800000001", "P2": "13800000002", "P3": "13800000003", "P5": "13800000005",
          "P9": "13800000009"}
TABLES = {**_TABLES,
          "events": "SELECT source, external_id, body_hash, member_id, anonymous_id, name, store_id, occurred_at, "
                    "properties FROM events",
          "candidates": "SELECT member_a_id, member_b_id, reason, evidence FROM merge_candidates",
          "idempotency": "SELECT key, fingerprint, state, status_code FROM idempotency_keys"}


@pytest.fixture(scope="module")
def second_database(database):
    """A second fresh, migrated PostgreSQL database, for the thin path's run (once per module: migrating
    costs seconds)."""
    if not database.startswith("postgresql"):
        pytest.skip("the thin ingest path is PostgreSQL's")
    url, name = conftest._create_pg_database()
    migrate.upgrade(url)
    yield url
    conftest._drop_pg_database(name)


@pytest.fixture
def pg(clean_db, second_database):
    """(the route's database, the thin path's database)."""
    return clean_db, second_database


@contextlib.contextmanager
def using(url: str):
    """The app and `orchard.db` on this database while the block runs."""
    previous = os.environ["ORCHARD_DATABASE_URL"]
    os.environ["ORCHARD_DATABASE_URL"] = url
    db.reset_caches()
    try:
        yield
    finally:
        os.environ["ORCHARD_DATABASE_URL"] = previous
        db.reset_caches()


@contextlib.contextmanager
def fast_path(on: bool):
    os.environ["ORCHARD_INGEST_FAST_PATH"] = "true" if on else "false"
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.pop("ORCHARD_INGEST_FAST_PATH", None)
        get_settings.cache_clear()


def _reset() -> None:
    """Empty the app's database and restart its sequences (DELETE: TRUNCATE of ~80 tables costs seconds)."""
    with db.get_engine().begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{t.name}"'))
        conn.execute(text("SELECT setval(c.oid, 1, false) FROM pg_class c WHERE c.relkind = 'S'"))


def seed() -> dict[str, str]:
    """Members 1–5 and the credentials every request names (API keys: no logins, which are slow)."""
    make_org()
    with db.transaction() as s:
        code = dict(s.execute(select(OrgUnit.code, OrgUnit.id)).all())
        for i, home in ((1, "SH001"), (2, "SH001"), (3, None), (4, "SH001"), (5, "GZ001")):
            s.add(Member(id=i, joined_at=NOW - dt.timedelta(days=90), home_store_id=code.get(home),
                         source_channel="seed"))
            s.add(MemberAggregate(member_id=i))
        s.flush()
        s.execute(text("SELECT setval('members_id_seq', 5)"))
        s.execute(text("UPDATE members SET status = 'merged', merged_into_id = 2 WHERE id = 4"))
        for mid, kind, value in ((1, "phone", "+86" + PHONES["P1"]), (1, "card_no", "C1"), (1, "anonymous_id", "A1"),
                                 (2, "phone", "+86" + PHONES["P2"]), (3, "phone", "+86" + PHONES["P3"]),
                                 (3, "card_no", "C3"), (5, "phone", "+86" + PHONES["P5"])):
            s.add(Identity(member_id=mid, kind=kind, value=value, source="seed"))
        s.add(EarningRule(name="分享有礼", kind="event", config={"event": "shared", "points": 5}, created_by="test"))
        s.add(LoyaltyTask(code="first_checkin", name="首次签到", kind="event", event="checked_in", points=3))
    creds = {"key": api_key("integrator"), "sh_key": api_key("integrator", name="sh pos", store="SH001"),
             "revoked": api_key("integrator", name="old pos"), "clerk_key": api_key("clerk", name="c", store="SH001")}
    with db.transaction() as s:
        s.execute(text("UPDATE api_keys SET revoked_at = now() WHERE name = 'old pos'"))
    return creds


def event(ext, name="product_viewed", member=None, *, store=None, days=-1, props=None, source="app", **extra):
    body = {"source": source, "external_id": ext, "name": name,
            "member": member or {"identities": {"phone": PHONES["P1"]}},
            "occurred_at": (NOW + dt.timedelta(days=days)).isoformat()}
    if store is not None:
        body["store_code"] = store
    if props is not None:
        body["properties"] = props
    return {**body, **extra}


def order(ext, member):
    return {"type": "order", "source": "pos", "external_id": ext, "paid_at": (NOW - dt.timedelta(days=1)).isoformat(),
            "member": member, "amount_fen": 1200}


def batch(*items):
    return {"items": [{"type": "event", **i} if isinstance(i, dict) and "name" in i and "type" not in i else i
                      for i in items]}


def run(requests: list[tuple], *, fast: bool, tokens: bool = False) -> tuple[list, dict, int]:
    """Seed, send the requests (who, path, body or raw bytes, extra headers) and return the responses with
    event ids as (source, external_id), every compared table, and how many requests the thin path served."""
    from orchard.app import create_app
    from orchard.auth import throttle

    throttle.reset_all()
    _reset()
    creds = seed()
    with fast_path(fast), TestClient(create_app(), raise_server_exceptions=False) as c:
        if tokens:
            creds["admin"] = token_for(c, "admin")
            creds["service"] = token_for(c, "service")
            creds["expired"] = token_for(c, "hq_ops", username="expired")
            with db.transaction() as s:
                s.execute(text("UPDATE access_tokens SET expires_at = now() - interval '1 minute' WHERE staff_id = "
                               "(SELECT id FROM staff WHERE username = 'expired')"))
        sent = []
        for who, path, body, extra in requests:
            h = {**headers(creds.get(who, who)), **extra} if who else dict(extra)
            if isinstance(body, bytes):
                sent.append(c.post(path, content=body, headers={"content-type": "application/json", **h}))
            else:
                sent.append(c.post(path, json=body, headers=h))
        stats = getattr(c.app.state, "ingest_stats", None)
        served = stats.served if stats else 0
    with db.transaction(readonly=True) as s:
        names = dict(s.execute(text("SELECT id, source || '/' || external_id FROM events")).all())
        tables = {name: sorted(map(tuple, s.execute(text(sql))), key=repr) for name, sql in TABLES.items()}
    return [_response(r, names) for r in sent], tables, served


def _response(r, names: dict[int, str]) -> tuple:
    body = r.content
    if r.headers.get("content-type") == "application/json":
        doc = json.loads(body)
        outcomes = [doc] if "type" in doc else [x["outcome"] for x in doc.get("results", []) if x["outcome"]]
        for o in outcomes:
            if o["type"] == "event":
                o["id"] = names[o["id"]]
        body = json.dumps(doc, ensure_ascii=False)
    return (r.status_code, r.headers.get("content-type"), r.headers.get("www-authenticate"),
            r.headers.get("idempotent-replayed"), body)


def compare(databases, requests, *, tokens: bool = False) -> tuple[int, list]:
    """Both paths on two emptied databases; returns how many requests the thin path served, and the
    responses."""
    with using(databases[0]):
        want, want_rows, none = run(requests, fast=False, tokens=tokens)
    with using(databases[1]):
        got, got_rows, served = run(requests, fast=True, tokens=tokens)
        _reset()
    assert none == 0
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g == w, f"request {i}: {requests[i]}"
    for table, rows in want_rows.items():
        assert got_rows[table] == rows, table
    return served, want


E, B = "/api/v1/events", "/api/v1/ingest"
P1, P2, P3, P5, P9 = (PHONES[k] for k in ("P1", "P2", "P3", "P5", "P9"))


def scenario() -> list[tuple]:
    def one(ext, who="key", extra=None, **kw):
        return (who, E, event(ext, **kw), extra or {})

    return [
        one("S1"),  # a known member by phone
        one("S1"),  # replay
        one("S1", name="login"),  # the same id, another body: 409
        one("S2", member={"identities": {"phone": "138 0000 0003", "card_no": "C3"}}, name="store_visit",
            store="SH001", props={"sku": "T1", "价格": 100}),
        one("S3", member={"id": 4}, name="login"),  # merged into 2
        one("S4", member={"id": 1, "identities": {"card_no": "C1"}}),
        one("S5", member={"id": 1, "identities": {"card_no": "C3"}}),  # another member's key: a merge candidate
        one("S6", member={"id": 99}),  # no such member
        one("S7", member={"anonymous_id": "A9"}),  # nobody's anonymous id
        one("S8", member={"anonymous_id": "A1"}),  # member 1's
        one("S9", member={"identities": {"phone": P9}}),  # a new member (the route's)
        one("S10", member={"identities": {"phone": P2}, "anonymous_id": "A9"}),  # links A9 (route), back-fills S7
        one("S11", store="NOPE"),
        one("S12", store="EAST"),  # a region
        one("S13", name="shared"),  # earns: the route's
        one("S14", name="checked_in", member={"id": 2}),  # a task: the route's
        one("S15", days=3),  # too far ahead: the route's 422
        one("S16", member={"identities": {"phone": "12"}}),  # not a phone: the route's 422
        one("S17", props={"x": "nul\x00"}),  # unstorable
        one("S18", member={"identities": {"card_no": "C1"}, "profile": {"home_store_code": "NOPE"}}),
        one("S19", who="sh_key"),  # member 1 is SH001's
        one("S20", who="sh_key", member={"identities": {"phone": P5}}),  # a GZ001 member by key: the route's 422
        one("S21", who="sh_key", member={"id": 5}),  # by id: not found
        one("S22", who="sh_key", member={"id": 3}),  # no home store: not found
        one("S23", who="revoked"),
        one("S24", who="clerk_key"),  # may not ingest
        one("S25", who="admin", member={"id": 3}, name="login"),
        one("S26", who="service"),
        one("S27", who="expired"),
        one("S28", who="ork_" + "x" * 43),
        one("S29", who="ort_" + "y" * 43),
        one("S30", who="Basic abc"),
        one("S31", who="tok_unknown"),
        one("S32", who=None),
        ("key", E, {"external_id": "S33", "name": "9bad", "member": {"id": 1}, "occurred_at": NOW.isoformat()}, {}),
        ("key", E, {**event("S34"), "extra": 1}, {}),
        ("key", E, [1], {}),
        ("key", E, b'{"external_id": "S35",', {}),
        ("key", E, json.dumps(event("S36")).encode(), {"content-type": "text/plain"}),
        ("key", E, event("S37", store="SH\x00"), {}),
        one("S38", source="pos", member={"id": 2}, name="store_visit", store="HZ001"),
        one("S39", extra={"Idempotency-Key": "k-1"}),
        one("S39", extra={"Idempotency-Key": "k-1"}),  # replayed by the middleware
        one("S40", extra={"Idempotency-Key": "k-1"}),  # another body under the key: 422
        # Batches: all events decided by the function; with errors; with route items (the route takes all).
        ("key", B, batch(event("B1"), event("B2", member={"id": 4}, name="login"), event("S1"), event("S2"),
                         event("B3", store="NOPE"), event("B4", member={"id": 99}), event("B5", member={"anonymous_id":
                                                                                                         "A8"}),
                         {"type": "event"}, {"type": "nope"}, "not an object",
                         event("B6", store="EAST", name="store_visit"), event("B7", member={"id": 3})), {}),
        ("key", B, batch(event("B1"), event("B8")), {}),  # a replay and a new one
        ("key", B, batch(event("B9"), order("O1", {"identities": {"phone": P2}})), {}),  # an order: the route's
        ("key", B, batch(event("B10"), event("B10")), {}),  # an id twice: the route's
        ("key", B, batch(event("B11"), event("B12", member={"identities": {"phone": "13800000077"}})), {}),
        ("key", B, batch(event("B13", name="shared")), {}),
        ("sh_key", B, batch(event("B14"), event("B15", member={"id": 5}), event("B16", member={"id": 2})), {}),
        ("revoked", B, batch(event("B17")), {}),
        ("clerk_key", B, batch(event("B18")), {}),
        ("key", B, {"items": []}, {}),
        ("key", B, {"items": [event("B19")], "x": 1}, {}),
        ("key", B, b'{"items": [', {}),
        ("key", B, json.dumps(batch(event("B20"), event("B21", props={"n": float("nan")}))).encode(), {}),
        ("key", B, json.dumps(batch(event("B24"), event("B25", props={"n": float("inf")}))).encode(), {}),
        ("key", B, batch(event("B22")), {"Idempotency-Key": "k-2"}),
        ("key", B, batch(event("B22")), {"Idempotency-Key": "k-2"}),
        ("admin", B, batch(event("B23", member={"id": 1, "identities": {"phone": P1}}, name="login")), {}),
        # What fast_event and orjson take, and what they leave to pydantic and the stdlib (read again):
        # times with Z, other offsets, fractions; floats (stored as the stdlib writes them); ints beyond
        # 64 bits (orjson reads them as floats); a naive time and a profile (pydantic's) beside plain items;
        # non-ASCII and escapes; a lone surrogate (the stdlib's, then the route's).
        one("F1", occurred_at=_at(Z=True), props={"价格": 12.5, "r": 1e-7, "e": 1e15, "t": "制表\t\"引号\"\\"}),
        one("F2", occurred_at=_at(minutes=345, fraction=True), props={"big": 2**70}),
        one("F3", occurred_at=_at(minutes=-330), props={"big": 2**63 - 1, "n": None, "l": [1, "二", {"a": True}]}),
        ("key", B, batch(event("F4", occurred_at=_at(Z=True)), event("F5", props={"x": 0.1, "y": -0.0}),
                         event("F6", occurred_at=(NOW - dt.timedelta(hours=2)).replace(tzinfo=None).isoformat()),
                         event("F7", member={"id": 1, "profile": {"name": "x"}}),
                         event("F8", occurred_at=_at(minutes=480, fraction=True), props={"名": "值"})), {}),
        ("key", B, batch(event("F9"), event("F10", props={"big": 123456789012345678901234})), {}),
        ("key", B, batch(event("F11", occurred_at=_at(minutes=-59)), event("F12", name="login", member={"id": 2})), {}),
        ("key", B, batch(event("F9"), event("F13", source="pos")), {}),  # a replay among new items
        ("key", E, b'{"external_id": "F14", "name": "login", "member": {"id": 1}, "occurred_at": "'
                   + _at(Z=True).encode() + b'", "properties": {"s": "\\ud800"}}', {}),
        ("key", B, b'{"items": [{"type": "event", "external_id": "F15", "name": "login", "member": {"id": 1}, '
                   b'"occurred_at": "' + _at(Z=True).encode() + b'", "properties": {"s": "\\ud83d\\ude00"}}]}', {}),
    ]


def _at(*, minutes: int = 0, Z: bool = False, fraction: bool = False) -> str:  # noqa: N803
    """An hour ago, written with another offset, as Z, or with a fraction of a second."""
    when = (NOW - dt.timedelta(hours=1, microseconds=123456 if fraction else 0))
    if Z:
        return when.strftime("%Y-%m-%dT%H:%M:%S") + ("." + f"{when.microsecond:06d}" if fraction else "") + "Z"
    return when.astimezone(dt.timezone(dt.timedelta(minutes=minutes))).isoformat()


def test_thin_path_answers_and_writes_exactly_what_the_route_does(pg):
    served, responses = compare(pg, scenario(), tokens=True)
    assert served == 39  # the rest are the route's (see the comments), or replayed by Idempotency-Key
    codes = {r[0] for r in responses}
    assert {200, 201, 401, 403, 404, 409, 422} <= codes


_PHONE = st.sampled_from([P1, P2, P3, P5, P9, "139 0000 0001", "12"])
_REF = st.one_of(
    st.builds(lambda p: {"identities": {"phone": p}}, _PHONE),
    st.builds(lambda p, c: {"identities": {"phone": p, "card_no": c}}, _PHONE, st.sampled_from(["C1", "C3", "C9"])),
    st.builds(lambda a: {"anonymous_id": a}, st.sampled_from(["A1", "A2", "A3"])),
    st.builds(lambda p, a: {"identities": {"phone": p}, "anonymous_id": a}, _PHONE, st.sampled_from(["A1", "A2"])),
    st.builds(lambda i: {"id": i}, st.sampled_from([1, 2, 3, 4, 5, 99])),
    st.builds(lambda i, c: {"id": i, "identities": {"card_no": c}}, st.sampled_from([1, 3, 4]),
              st.sampled_from(["C1", "C3"])),
)
_EVENT = st.builds(
    lambda ext, name, ref, store, days, props: event(ext, name, ref, store=store, days=days, props=props),
    st.builds("R{}".format, st.integers(0, 30)),
    st.sampled_from(["product_viewed", "product_viewed", "store_visit", "login", "shared"]),
    _REF, st.sampled_from([None, None, "SH001", "GZ001", "EAST", "NOPE"]), st.sampled_from([-30, -1, 0, -1]),
    st.sampled_from([None, {}, {"sku": "T1"}, {"deep": {"a": [1, "二"]}}]))
_WHO = st.sampled_from(["key", "key", "key", "sh_key", "revoked"])
_REQUEST = st.one_of(
    st.builds(lambda who, e: (who, E, e, {}), _WHO, _EVENT),
    st.builds(lambda who, items: (who, B, batch(*items), {}), _WHO,
              st.lists(st.one_of(_EVENT, _EVENT, _EVENT, st.just({"type": "event"})), min_size=1, max_size=8)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(_REQUEST, min_size=1, max_size=10))
def test_random_requests_answer_and_write_alike_on_both_paths(pg, requests):
    compare(pg, requests)


def test_concurrent_thin_requests_sharing_members_and_ids_store_each_event_once(clean_db, live_server, app):
    """Four clients at once through a real server: batches of 300 events over the same 30 members in
    opposite orders, half of their ids also sent by another client, and single events re-sending ids of the
    batches. No deadlock, no 500: every answer is created or a duplicate (a lost insert race is read back
    as a replay), each event is stored once, and every member's aggregates equal a recomputation."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from orchard.events import aggregates

    if not clean_db.startswith("postgresql"):
        pytest.skip("the thin ingest path is PostgreSQL's")
    make_org()
    phones = [f"1390000{i:04d}" for i in range(30)]
    key = api_key("integrator")
    with httpx.Client(base_url=live_server, timeout=60) as c:
        r = c.post(B, headers=headers(key), json=batch(*[event(f"seed-{p}", "sign_up", {"identities": {"phone": p}},
                                                               days=-10) for p in phones]))
        assert r.status_code == 200 and r.json()["accepted"] == 30

    def items(n: int) -> list[dict]:
        order = phones if n % 2 else phones[::-1]
        return [event(f"c{n % 2}-{k}-{p}", ("login", "store_visit", "product_viewed")[k % 3],
                      {"identities": {"phone": p}}, store="SH001", days=-(k + 1)) for k in range(10) for p in order]

    def send(n: int) -> list[tuple[int, str]]:
        with httpx.Client(base_url=live_server, timeout=120) as c:
            if n < 4:
                r = c.post(B, headers=headers(key), json=batch(*items(n)))
                assert r.status_code == 200, r.text
                return [(200, x["outcome"]["status"]) for x in r.json()["results"]]
            out = []
            for body in items(n)[::7]:
                r = c.post(E, headers=headers(key), json=body)
                out.append((r.status_code, r.json()["status"]))
            return out

    with ThreadPoolExecutor(6) as pool:
        answers = [a for res in pool.map(send, range(6)) for a in res]
    assert set(answers) <= {(200, "created"), (200, "duplicate"), (201, "created")}
    created = sum(s == "created" for _, s in answers)
    with db.get_engine().connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM events WHERE external_id LIKE 'c%'")).scalar_one()
        aggs = set(conn.execute(text("SELECT member_id, last_login_at, last_visit_at, last_event_at "
                                     "FROM member_aggregates")).tuples())
    assert stored == created == 600
    assert app.state.ingest_stats.served >= 4
    with db.transaction() as s:
        for mid in {m for m, *_ in aggs}:
            aggregates.recompute(s, member_id=mid)
        s.flush()
        assert set(s.execute(text("SELECT member_id, last_login_at, last_visit_at, last_event_at "
                                  "FROM member_aggregates")).tuples()) == aggs
        s.rollback()


def test_a_database_without_the_function_is_served_by_the_route(clean_db, client):
    """Before `orchard db upgrade` reaches migration 0019 the route answers (no 500)."""
    if not clean_db.startswith("postgresql"):
        pytest.skip("the thin ingest path is PostgreSQL's")
    signature = "orchard_ingest_events(text, text, text[], text[], text, boolean, jsonb)"
    key = api_key("integrator")
    with db.transaction() as s:
        s.execute(text(f"ALTER FUNCTION {signature} RENAME TO orchard_ingest_events_away"))
    try:
        r = client.post(E, headers=headers(key), json=event("M1", member={"anonymous_id": "A7"}))
    finally:
        with db.transaction() as s:
            s.execute(text(f"ALTER FUNCTION {signature.replace('orchard_ingest_events', 'orchard_ingest_events_away')} "
                           "RENAME TO orchard_ingest_events"))
    assert r.status_code == 201, r.text
    assert (client.app.state.ingest_stats.served, client.app.state.ingest_stats.handed_on) == (0, 1)
