"""Concurrent writers against a real server on loopback: no duplicates, no lost updates.
Runs on both backends (SQLite serialises writers; PostgreSQL runs them truly in parallel)."""

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.factories import api_key, headers, order

N = 24


def _post_all(base, key, path, bodies):
    with httpx.Client(base_url=base, headers=headers(key), timeout=60) as http, ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda b: http.post(path, json=b), bodies))


def test_many_first_events_of_one_new_phone_create_exactly_one_member(live_server):
    key = api_key()
    bodies = [{"source": "app", "external_id": f"e{i}", "name": "login", "occurred_at": "2026-10-01T00:00:00Z",
               "member": {"identities": {"phone": "13812341234"}}} for i in range(N)]
    responses = _post_all(live_server, key, "/api/v1/events", bodies)
    assert [r.status_code for r in responses] == [201] * N, [r.text for r in responses if r.status_code != 201]
    assert len({r.json()["member_id"] for r in responses}) == 1
    assert sum(r.json()["member_created"] for r in responses) == 1


def test_the_same_order_sent_concurrently_is_written_once(live_server):
    key = api_key()
    responses = _post_all(live_server, key, "/api/v1/orders", [order("O1")] * N)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * (N - 1) + [201], [r.text for r in responses]
    member = httpx.get(f"{live_server}/api/v1/members/{responses[0].json()['member_id']}", headers=headers(key)).json()
    assert member["aggregates"]["order_count"] == 1


def test_concurrent_orders_of_one_member_lose_no_update(live_server):
    key = api_key()
    first = httpx.post(f"{live_server}/api/v1/orders", json=order("O0", amount_fen=100), headers=headers(key)).json()
    bodies = [order(f"O{i}", amount_fen=100) for i in range(1, N + 1)]
    responses = _post_all(live_server, key, "/api/v1/orders", bodies)
    assert all(r.status_code == 201 for r in responses)
    agg = httpx.get(f"{live_server}/api/v1/members/{first['member_id']}", headers=headers(key)).json()["aggregates"]
    assert (agg["order_count"], agg["total_spend_fen"]) == (N + 1, (N + 1) * 100)
