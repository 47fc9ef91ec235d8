"""The Idempotency-Key header (IETF httpapi draft semantics)."""

import threading

from tests.factories import headers, token_for


def test_same_key_and_body_returns_the_stored_response_without_doing_it_again(client):
    ops = token_for(client, "hq_ops")
    h = headers(ops, **{"Idempotency-Key": "k-1"})
    first = client.post("/api/v1/members", json={"name": "甲"}, headers=h)
    again = client.post("/api/v1/members", json={"name": "甲"}, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(client.get("/api/v1/members", headers=headers(ops)).json()["items"]) == 1


def test_same_key_with_another_body_is_a_422(client):
    ops = token_for(client, "hq_ops")
    h = headers(ops, **{"Idempotency-Key": "k-1"})
    client.post("/api/v1/members", json={"name": "甲"}, headers=h)
    r = client.post("/api/v1/members", json={"name": "乙"}, headers=h)
    assert r.status_code == 422
    assert r.json()["code"] == "idempotency.key_reused"
    assert r.headers["content-type"].startswith("application/problem+json")


def test_keys_are_scoped_per_caller(client):
    a = token_for(client, "hq_ops", username="ops_a")
    b = token_for(client, "hq_ops", username="ops_b")
    client.post("/api/v1/members", json={"name": "甲"}, headers=headers(a, **{"Idempotency-Key": "same"}))
    r = client.post("/api/v1/members", json={"name": "乙"}, headers=headers(b, **{"Idempotency-Key": "same"}))
    assert r.status_code == 201


def test_a_retry_while_the_first_request_runs_never_runs_twice(app, client, monkeypatch, database):
    """PostgreSQL: the retry gets 409 at once. SQLite serialises writers, so the retry waits for the
    first request and then gets its stored response. Either way the work is done once."""
    ops = token_for(client, "hq_ops")
    gate, entered = threading.Event(), threading.Event()
    from orchard.members import service

    real_create = service.create

    def slow_create(*args, **kwargs):
        entered.set()
        gate.wait(10)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(service, "create", slow_create)
    h = headers(ops, **{"Idempotency-Key": "slow"})
    results = {}

    def call(name):
        results[name] = client.post("/api/v1/members", json={}, headers=h)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    if database.startswith("postgresql"):
        second.join(10)
        gate.set()
    else:
        second.join(0.5)
        gate.set()
        second.join(10)
    first.join(10)
    assert results["first"].status_code == 201
    if database.startswith("postgresql"):
        assert results["second"].status_code == 409
        assert results["second"].json()["code"] == "idempotency.in_progress"
    else:
        assert results["second"].status_code == 201
        assert results["second"].json() == results["first"].json()
    assert len(client.get("/api/v1/members", headers=headers(ops)).json()["items"]) == 1


def test_an_error_response_is_stored_too_but_not_a_server_error(client):
    ops = token_for(client, "hq_ops")
    h = headers(ops, **{"Idempotency-Key": "bad"})
    r1 = client.post("/api/v1/members", json={"home_store_code": "NOPE"}, headers=h)
    r2 = client.post("/api/v1/members", json={"home_store_code": "NOPE"}, headers=h)
    assert r1.status_code == r2.status_code == 422
    assert r1.json() == r2.json()


def test_an_overlong_key_is_a_400(client):
    ops = token_for(client, "hq_ops")
    r = client.post("/api/v1/members", json={}, headers=headers(ops, **{"Idempotency-Key": "x" * 300}))
    assert r.status_code == 400
