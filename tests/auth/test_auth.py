"""Login, tokens, API keys, password hashing."""

import datetime as dt

from argon2 import PasswordHasher
from sqlalchemy import select, update

from orchard import db
from orchard.auth.models import AccessToken, ApiKey, Staff
from tests.factories import PASSWORD, api_key, headers, make_org, token_for


def test_login_returns_a_short_lived_token_that_works_until_it_expires(client):
    token = token_for(client, "admin", username="boss")
    assert client.get("/api/v1/auth/me", headers=headers(token)).json()["role"] == "admin"
    with db.transaction() as s:
        s.execute(update(AccessToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = client.get("/api/v1/auth/me", headers=headers(token))
    assert r.status_code == 401 and r.json()["code"] == "auth.bad_token"


def test_wrong_password_and_unknown_user_look_the_same(client):
    token_for(client, "admin", username="boss")
    a = client.post("/api/v1/auth/token", json={"username": "boss", "password": "nope"})
    b = client.post("/api/v1/auth/token", json={"username": "ghost", "password": PASSWORD})
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()


def test_passwords_are_stored_as_argon2id(client, session):
    token_for(client, "admin", username="boss")
    stored = session.scalar(select(Staff.password_hash).where(Staff.username == "boss"))
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, PASSWORD)


def test_an_api_key_is_shown_once_stored_hashed_and_can_be_revoked(client, session):
    admin = token_for(client, "admin", username="boss")
    r = client.post("/api/v1/api-keys", json={"name": "POS 上海"}, headers=headers(admin))
    assert r.status_code == 201
    key = r.json()["key"]
    assert key.startswith("ork_")
    assert key not in str(session.execute(select(ApiKey.__table__)).all())
    assert "key" not in client.get("/api/v1/api-keys", headers=headers(admin)).json()[0]
    assert client.get("/api/v1/members", headers=headers(key)).status_code == 200
    client.delete(f"/api/v1/api-keys/{r.json()['id']}", headers=headers(admin))
    assert client.get("/api/v1/members", headers=headers(key)).status_code == 401


def test_admin_creates_staff_with_store_scope(client):
    admin = token_for(client, "admin", username="boss")
    r = client.post("/api/v1/staff", json={"username": "clerk1", "password": "long-enough", "role": "clerk",
                                           "stores": ["SH001"]}, headers=headers(admin))
    assert r.status_code == 201
    needs_store = client.post("/api/v1/staff", json={"username": "clerk2", "password": "long-enough",
                                                     "role": "clerk"}, headers=headers(admin))
    assert needs_store.status_code == 422
    taken = client.post("/api/v1/staff", json={"username": "clerk1", "password": "long-enough", "role": "admin"},
                        headers=headers(admin))
    assert taken.status_code == 409


def test_a_store_bound_api_key_is_scoped_like_its_store(client):
    make_org()
    ops = token_for(client, "hq_ops")
    gz = client.post("/api/v1/members", json={"home_store_code": "GZ001"}, headers=headers(ops)).json()
    sh_key = api_key(role="clerk", name="pad", store="SH001")
    assert client.get(f"/api/v1/members/{gz['id']}", headers=headers(sh_key)).status_code == 404


def test_garbage_credentials_are_401_problems(client):
    for value in ("Bearer nonsense", "Bearer ", "Basic abc", "Bearer ork_forged", "Bearer ort_forged"):
        r = client.get("/api/v1/members", headers={"Authorization": value})
        assert r.status_code == 401, value
        assert r.headers["content-type"].startswith("application/problem+json")


def test_repeated_failed_logins_are_throttled_with_retry_after(client):
    from orchard.auth.throttle import MAX_FAILURES

    token_for(client, "admin", username="boss")
    for _ in range(MAX_FAILURES):
        assert client.post("/api/v1/auth/token", json={"username": "boss", "password": "guess"}).status_code == 401
    r = client.post("/api/v1/auth/token", json={"username": "boss", "password": PASSWORD})
    assert r.status_code == 429
    assert r.json()["code"] == "auth.throttled" and int(r.headers["retry-after"]) > 0


def test_deactivating_or_rescoping_staff_ends_their_sessions_and_is_audited(client, session):
    from orchard.audit.models import AuditEntry

    admin = token_for(client, "admin", username="boss")
    clerk = token_for(client, "clerk", ["SH001"], username="li")
    clerk_id = client.get("/api/v1/auth/me", headers=headers(clerk)).json()["id"]
    r = client.patch(f"/api/v1/staff/{clerk_id}", json={"stores": ["GZ001"]}, headers=headers(admin))
    assert r.status_code == 200
    assert client.get("/api/v1/auth/me", headers=headers(clerk)).status_code == 401
    again = client.post("/api/v1/auth/token", json={"username": "li", "password": PASSWORD}).json()["access_token"]
    assert client.get("/api/v1/auth/me", headers=headers(again)).json()["store_ids"] != []
    client.patch(f"/api/v1/staff/{clerk_id}", json={"is_active": False}, headers=headers(admin))
    assert client.get("/api/v1/auth/me", headers=headers(again)).status_code == 401
    assert client.post("/api/v1/auth/token", json={"username": "li", "password": PASSWORD}).status_code == 401
    audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "staff.updated")
                              .order_by(AuditEntry.id)).all()
    assert [a.data["after"]["scopes"] for a in audited] == [["GZ001"], ["GZ001"]]
    assert audited[1].data["after"]["is_active"] is False
    # a clerk without scope is refused, and clerks cannot manage staff
    assert client.patch(f"/api/v1/staff/{clerk_id}", json={"stores": []}, headers=headers(admin)).status_code == 422
    assert client.patch(f"/api/v1/staff/{clerk_id}", json={"role": "admin"}, headers=headers(again)).status_code == 401
