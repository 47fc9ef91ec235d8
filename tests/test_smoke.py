from tests.factories import api_key, headers, order


def test_order_ingested_and_member_created(client):
    key = api_key()
    r = client.post("/api/v1/orders", json=order("O1"), headers=headers(key))
    assert r.status_code == 201, r.text
    member_id = r.json()["member_id"]
    m = client.get(f"/api/v1/members/{member_id}", headers=headers(key)).json()
    assert m["aggregates"]["order_count"] == 1
    assert m["aggregates"]["total_spend_fen"] == 13000
