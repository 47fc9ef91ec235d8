"""The thin spend path on PostgreSQL (loyalty.spend_pg + the orchard_points_spend() function, migration 0015).

The service path (`loyalty.endpoints.spend` → `ledger.post`) is the reference: the same sequence of
requests — spends across several lots expiring on different dates, pending and expired lots, replays, an
id reused with another body, insufficient points, a member in debt, a merged member, every credential and
scope refusal, malformed requests the thin path hands on, an Idempotency-Key — goes through the service
path on one fresh database and through the thin path on another, and every response and every row the
spends wrote (entries, lots, allocations, accounts, audit, dirty marks) must be the same. Then:
revocation and deactivation take effect on the next request, and store scoping. The 200 concurrent
spends test in tests/loyalty/test_points_api.py runs through this path on PostgreSQL. PostgreSQL only:
SQLite has no thin path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from orchard import db, migrate
from orchard.auth import service as auth
from orchard.auth.models import AccessToken, Staff
from orchard.config import get_settings
from orchard.kit.clock import utcnow
from orchard.loyalty import ledger
from tests.conftest import _create_pg_database, _drop_pg_database
from tests.factories import api_key, headers, make_org, token_for
from tests.loyalty.helpers import member, violations


@pytest.fixture
def pg(clean_db):
    if not clean_db.startswith("postgresql"):
        pytest.skip("the thin spend path is PostgreSQL's")
    return clean_db


@contextlib.contextmanager
def fast_path(on: bool):
    os.environ["ORCHARD_POINTS_SPEND_FAST_PATH"] = "true" if on else "false"
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.pop("ORCHARD_POINTS_SPEND_FAST_PATH", None)
        get_settings.cache_clear()


@contextlib.contextmanager
def other_database():
    """A second fresh, migrated PostgreSQL database for the app while the block runs."""
    previous = os.environ["ORCHARD_DATABASE_URL"]
    url, name = _create_pg_database()
    try:
        os.environ["ORCHARD_DATABASE_URL"] = url
        db.reset_caches()
        migrate.upgrade(url)
        yield url
    finally:
        db.reset_caches()
        os.environ["ORCHARD_DATABASE_URL"] = previous
        db.reset_caches()
        _drop_pg_database(name)


def credit(member_id: int, amount: int, ext: str, *, now: dt.datetime, expires_at=None, pending_until=None,
           kind: str = "earn", on_short: str = "refuse") -> None:
    with db.transaction() as s:
        ledger.post(s, ledger.Command(member_id=member_id, amount=amount, kind=kind, reason="测试 setup",
                                      source="setup", external_id=ext, actor="test", expires_at=expires_at,
                                      pending_until=pending_until, on_short=on_short), now=now)


def scenario(now: dt.datetime) -> tuple[list[tuple], dict[str, list], int]:
    """Set up the same ledger, send the same requests; returns (responses, rows, spends served thin)."""
    from orchard.app import create_app
    from orchard.auth import throttle

    throttle.reset_all()
    app = create_app()
    with TestClient(app, raise_server_exceptions=False) as c:
        admin = token_for(c, "admin")
        clerk = token_for(c, "clerk", ["SH001"])
        east = token_for(c, "store_manager", ["EAST"])
        service = token_for(c, "service")
        gone = token_for(c, "clerk", ["SH001"], username="gone")
        expired = token_for(c, "hq_ops", username="expired")
        key = api_key("integrator")
        gz_key = api_key("integrator", name="gz pos", store="GZ001")
        revoked = api_key("integrator", name="old pos")
        with db.transaction() as s:
            s.execute(text("UPDATE api_keys SET revoked_at = now() WHERE name = 'old pos'"))
            s.execute(text("UPDATE staff SET is_active = false WHERE username = 'gone'"))
            s.execute(text("UPDATE access_tokens SET expires_at = now() - interval '1 minute' WHERE staff_id = "
                           "(SELECT id FROM staff WHERE username = 'expired')"))
        m1, m2, m3, m4, gz, hz = (member("SH001"), member("SH001"), member("SH001"), member("SH001"),
                                  member("GZ001"), member("HZ001"))
        before = now - dt.timedelta(hours=2)
        day = dt.timedelta(days=1)
        # m1: lots expiring on different dates, one never, one pending, one released, one past expiry.
        credit(m1, 100, "m1-20d", now=before, expires_at=now + 20 * day)
        credit(m1, 50, "m1-2d", now=before, expires_at=now + 2 * day)
        credit(m1, 30, "m1-never", now=before)
        credit(m1, 40, "m1-pending", now=before, expires_at=now + 30 * day, pending_until=now + day)
        credit(m1, 25, "m1-released", now=before, expires_at=now + 10 * day, pending_until=now - day)
        credit(m1, 60, "m1-expired", now=before - 400 * day, expires_at=now - dt.timedelta(hours=1))
        # m2: in debt (a reversal of points already spent), then repaid by later credits.
        credit(m2, 10, "m2-earn", now=before, expires_at=now + 5 * day)
        credit(m2, -10, "m2-spent", now=before, kind="spend")
        credit(m2, -20, "m2-reversal", now=before, kind="reverse", on_short="debt")
        # m3 merged into m4, which holds the points.
        credit(m4, 80, "m4-earn", now=before, expires_at=now + 7 * day)
        with db.transaction() as s:
            s.execute(text("UPDATE members SET status = 'merged', merged_into_id = :a WHERE id = :b"),
                      {"a": m4, "b": m3})
        for m, ext in ((gz, "gz-earn"), (hz, "hz-earn")):
            credit(m, 100, ext, now=before, expires_at=now + 9 * day)

        def spend(m, amount, ext, *, who=key, store=None, source=None, lang=None, **extra_headers):
            body = {"amount": amount, "reason": "积分兑换 保温杯", "external_id": ext}
            if store is not None:
                body["store_code"] = store
            if source is not None:
                body["source"] = source
            h = headers(who, **extra_headers)
            if lang:
                h["Accept-Language"] = lang
            return c.post(f"/api/v1/members/{m}/points/spend", json=body, headers=h)

        def raw(path, content, **h):
            return c.post(path, content=content, headers=h)

        sent = [
            spend(m1, 60, "A1", store="SH001"),  # two lots: 50 (2 days) + 10 (the released one)
            spend(m1, 60, "A1", store="SH001"),  # replay
            spend(m1, 61, "A1", store="SH001"),  # same id, another body
            spend(m1, 200, "A2"),  # 145 available (pending and past-expiry lots excluded)
            spend(m1, 200, "A2", lang="en-US,en;q=0.9"),
            spend(m1, 145, "A3", source="pos"),  # everything left, the never-expiring lot last
            spend(m1, 1, "A4"),  # nothing left
            spend(m2, 5, "B1"),  # in debt: nothing spendable
        ]
        credit(m2, 15, "m2-repay", now=now, expires_at=now + 3 * day)  # repays 15 of the 20 owed
        credit(m2, 30, "m2-more", now=now, expires_at=now + 4 * day)  # repays 5, leaves 25
        sent += [
            spend(m2, 10, "B2"),
            spend(m2, 10, "A1", store="SH001"),  # m1's id for another member: reused
            spend(m3, 30, "C1"),  # the merged id: spends the survivor's points
            spend(m3, 30, "C1"),
            spend(m4, 30, "C1"),  # the same command named by the survivor's id is the same command
            spend(m4, 30, "C2", who=admin),
            spend(gz, 1, "D1", who=clerk),  # another store's member
            spend(m4, 1, "D2", who=clerk, store="GZ001"),  # another store's code
            spend(m4, 1, "D3", who=clerk, store="EAST"),  # a region, not a store
            spend(m4, 1, "D4", who=clerk, store="NOPE"),
            spend(m4, 2, "D5", who=clerk, store="SH001"),
            spend(hz, 3, "D6", who=east, store="HZ001"),  # a region manager: the stores under it
            spend(gz, 3, "D7", who=east),
            spend(m4, 1, "D8", who=gz_key),  # a key bound to a store is scoped to it
            spend(gz, 4, "D9", who=gz_key, store="GZ001"),
            spend(m4, 1, "E1", who=service),  # may not spend
            spend(m4, 1, "E2", who=revoked),
            spend(m4, 1, "E3", who="ork_" + "x" * 43),
            spend(m4, 1, "E4", who="ort_" + "y" * 43),
            spend(m4, 1, "E5", who=gone),
            spend(m4, 1, "E6", who=expired),
            spend(999_999, 1, "E7"),
            spend(m4, 1, "E8", who=admin, lang="en"),  # fine, in English
            spend(m4, 1, "F1", store="SH\x00"),  # PostgreSQL cannot store it: handed on, a 422
            spend(m4, 0, "F2"),  # invalid bodies, credentials and ids: handed on to the route
            spend(m4, 1, "F3", who="Basic abc"),
            spend(m4, 1, "F4", who="tok_unknown"),
            c.post(f"/api/v1/members/{m4}/points/spend", json={"amount": 1, "reason": "x"},
                   headers=headers(key)),
            c.post(f"/api/v1/members/{m4}/points/spend", json={"amount": 1, "reason": "x", "external_id": "F5",
                                                               "extra": 1}, headers=headers(key)),
            c.post(f"/api/v1/members/{m4}/points/spend", json={"amount": 1, "reason": "x", "external_id": "F6"}),
            c.post(f"/api/v1/members/{m4}/points/spend", json=[1], headers=headers(key)),
            raw(f"/api/v1/members/{m4}/points/spend", b'{"amount": 1,', authorization=f"Bearer {key}",
                **{"content-type": "application/json"}),
            raw(f"/api/v1/members/{m4}/points/spend", b'{"amount": 1, "reason": "x", "external_id": "F7"}',
                authorization=f"Bearer {key}", **{"content-type": "text/plain"}),
            raw(f"/api/v1/members/{m4}/points/spend", b'{"amount": 1, "reason": "x", "external_id": "F8"}',
                authorization=f"Bearer {key}"),
            *(c.post(f"/api/v1/members/{p}/points/spend", json={"amount": 1, "reason": "x", "external_id": "F9"},
                     headers=headers(key)) for p in ("abc", "0", f"00{m4}", str(2**62 + 1), "-1")),
            spend(m4, 2, "G1", **{"Idempotency-Key": "k-1"}),
            spend(m4, 2, "G1", **{"Idempotency-Key": "k-1"}),
            spend(m4, 3, "G2", **{"Idempotency-Key": "k-1"}),
        ]
        stats = getattr(app.state, "points_spend_stats", None)
        served = stats.served if stats else 0
        responses = [(r.status_code, r.headers.get("content-type"), r.headers.get("www-authenticate"),
                      r.headers.get("allow"), _masked(r.text)) for r in sent]
    with db.transaction(readonly=True) as s:
        rows = {t: [tuple(r) for r in s.execute(text(q))] for t, q in {
            "entries": "SELECT id, member_id, kind, amount, balance_after, reason, source, external_id, body_hash, "
                       "actor, explanation, store_id, order_id FROM points_entries ORDER BY id",
            "lots": "SELECT * FROM points_lots ORDER BY id",
            "allocations": "SELECT * FROM points_allocations ORDER BY id",
            "accounts": "SELECT member_id, balance, debt FROM points_accounts ORDER BY member_id",
            "audit": "SELECT id, actor, action, entity, entity_id, data FROM audit_log ORDER BY id",
            "dirty": "SELECT member_id FROM segment_dirty_members ORDER BY member_id",
            "idempotency": "SELECT principal, key, fingerprint, state, status_code FROM idempotency_keys "
                           "ORDER BY key",
            "spend_times": "SELECT count(*) FROM points_entries WHERE kind = 'spend' AND source <> 'setup' AND "
                           "created_at NOT BETWEEN now() - interval '10 minutes' AND now()",
        }.items()}
    assert violations() == {}
    return responses, rows, served


_CREATED = re.compile(r'"created_at":"[^"]+"')


def _masked(body: str) -> str:
    """The response with its creation time masked: the two runs happen seconds apart."""
    return _CREATED.sub('"created_at":"…"', body)


def test_thin_path_answers_and_writes_exactly_what_the_service_path_does(pg):
    now = utcnow().replace(microsecond=0)
    with fast_path(False):
        reference, reference_rows, none = scenario(now)
    with other_database(), fast_path(True):
        thin, thin_rows, served = scenario(now)
    assert none == 0
    assert served == 32  # all but the requests handed on (malformed, the NUL) or replayed by Idempotency-Key
    for i, (want, got) in enumerate(zip(reference, thin, strict=True)):
        assert got == want, f"request {i}"
    for table, want in reference_rows.items():
        assert thin_rows[table] == want, table
    assert reference_rows["spend_times"] == [(0,)]
    assert [r for r in reference if r[0] == 200] and [r for r in reference if r[0] == 409]


def test_the_service_path_takes_every_spend_when_the_thin_path_is_off(pg):
    """The switch works (the equivalence test depends on it), and the thin path really serves on."""
    from orchard.app import create_app

    m = member()
    credit(m, 20, "s-1", now=utcnow(), expires_at=utcnow() + dt.timedelta(days=1))
    key = api_key("integrator")
    for on in (False, True):
        with fast_path(on), TestClient(create_app()) as c:
            r = c.post(f"/api/v1/members/{m}/points/spend", headers=headers(key),
                       json={"amount": 1, "reason": "x", "external_id": f"on-{on}"})
            assert r.status_code == 200, r.text
            assert hasattr(c.app.state, "points_spend_stats") is on
            assert not on or c.app.state.points_spend_stats.served == 1


def test_revoking_a_key_or_deactivating_staff_takes_effect_on_the_next_request(pg, live_server, app):
    """No cache: the function checks the credential on every call, in every worker."""
    make_org()
    m = member("SH001")
    credit(m, 100, "r-1", now=utcnow(), expires_at=utcnow() + dt.timedelta(days=1))
    key = api_key("integrator")
    with httpx.Client(base_url=live_server, timeout=30) as c:
        clerk = token_for(c, "clerk", ["SH001"])

        def spend(who, ext):
            return c.post(f"/api/v1/members/{m}/points/spend", headers=headers(who),
                          json={"amount": 1, "reason": "x", "external_id": ext})

        assert spend(key, "k1").status_code == 200
        assert spend(clerk, "c1").status_code == 200
        with db.transaction() as s:
            key_id = s.scalar(text("SELECT id FROM api_keys ORDER BY id DESC LIMIT 1"))
            auth.revoke_api_key(s, key_id=key_id, actor="test")
            staff = s.query(Staff).filter(Staff.username == "clerk_sh001").one()
            auth.update_staff(s, staff_id=staff.id, actor="test", store_codes=["GZ001"])  # ends its sessions
        r = spend(key, "k2")
        assert (r.status_code, r.json()["code"]) == (401, "auth.bad_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert spend(clerk, "c2").json()["code"] == "auth.bad_token"
        # A new session of the moved clerk is scoped to the new store: this member is gone from view.
        with db.transaction() as s:
            s.add(AccessToken(token_hash=auth.secret_hash("ort_again"), staff_id=staff.id,
                              expires_at=utcnow() + dt.timedelta(minutes=5)))
        assert spend("ort_again", "c3").status_code == 404
    assert app.state.points_spend_stats.served == 5


def test_store_staff_spend_only_for_members_of_their_stores(pg, client):
    make_org()
    here, there = member("SH001"), member("GZ001")
    for m in (here, there):
        credit(m, 50, f"s-{m}", now=utcnow(), expires_at=utcnow() + dt.timedelta(days=1))
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    pos = headers(api_key("clerk", name="sh pos", store="SH001"))
    for h in (clerk, pos):
        r = client.post(f"/api/v1/members/{there}/points/spend", headers=h,
                        json={"amount": 1, "reason": "x", "external_id": f"t-{len(h)}-{id(h)}"})
        assert (r.status_code, r.json()["code"]) == (404, "member.not_found")
    ok = client.post(f"/api/v1/members/{here}/points/spend", headers=pos,
                     json={"amount": 5, "reason": "x", "external_id": "h-1", "store_code": "SH001"})
    assert ok.status_code == 200 and ok.json()["balance_after"] == 45 and ok.json()["actor"].startswith("apikey:")
    assert client.app.state.points_spend_stats.served == 3
    with db.transaction(readonly=True) as s:
        assert s.scalar(text("SELECT count(*) FROM points_entries WHERE kind = 'spend'")) == 1
