"""A batch ends in the same outcomes, rows and member aggregates as the same items sent one by one,
whatever the mix: orders, refunds before or after their orders, over-refunds, re-sent and conflicting
ids, anonymous events later linked to a phone (a recompute in the middle of a batch). The batch path
looks ids up in one query and applies aggregate changes at its end; this proves that changes nothing.
And concurrent batches over the same members in opposite orders neither deadlock nor lose updates."""

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from orchard import db
from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.db import Base
from orchard.errors import OrchardError
from orchard.events import aggregates, ingest
from orchard.events.models import Event, Order, Refund
from orchard.identity.models import Identity
from orchard.members.models import Member, MemberAggregate
from tests.factories import api_key, headers

SYSTEM = Principal("system", 0, "test", Role.admin, None, False)
PHONES = ["13800000001", "13800000002", "13800000003"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _at(day: int) -> str:
    return (T0 + dt.timedelta(days=day, hours=day % 7)).isoformat()


def _order(n, phone, amount, day):
    return {"type": "order", "source": "pos", "external_id": f"O{n}", "paid_at": _at(day),
            "member": {"identities": {"phone": phone}}, "lines": [{"quantity": 2, "unit_price_fen": amount}]}


def _refund(n, amount, day):
    body = {"type": "refund", "source": "pos", "external_id": f"R{n}-{amount}-{day}", "order_external_id": f"O{n}",
            "refunded_at": _at(day)}
    if amount is not None:
        body["amount_fen"] = amount
    return body


def _event(phone, anon, name, day):
    member = {"identities": {"phone": phone}} if phone else {}
    if anon:
        member["anonymous_id"] = anon
    return {"type": "event", "source": "app", "external_id": f"E{phone}{anon}{name}{day}", "name": name,
            "occurred_at": _at(day), "member": member}


items = st.lists(st.one_of(
    st.builds(_order, st.integers(0, 5), st.sampled_from(PHONES), st.integers(0, 50000), st.integers(0, 300)),
    st.builds(_refund, st.integers(0, 5), st.sampled_from([None, 1, 500, 100000]), st.integers(0, 300)),
    st.builds(_event, st.sampled_from([*PHONES, None]), st.sampled_from([None, "A1", "A2"]),
              st.sampled_from(["login", "store_visit", "shared"]), st.integers(0, 300))
    .filter(lambda e: e["member"]),
), min_size=1, max_size=30)


def _wipe() -> None:
    with db.get_engine().begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{t.name}"'))


def _one_by_one(batch: list[dict]) -> list:
    out = []
    for raw in batch:
        with db.transaction() as s:
            kind = raw["type"]
            data = ingest._SCHEMAS[kind].model_validate({k: v for k, v in raw.items() if k != "type"})
            try:
                o = ingest.ingest(s, principal=SYSTEM, kind=kind, data=data)
                out.append((o.type, o.status, o.member_created))
            except OrchardError as exc:
                out.append(exc.to_problem()["code"])
    return out


def _batched(batch: list[dict], split: int) -> list:
    out = []
    for part in (batch[:split], batch[split:]):
        if part:
            with db.transaction() as s:
                res = ingest.ingest_batch(s, principal=SYSTEM, items=part)
            out += [(r.outcome.type, r.outcome.status, r.outcome.member_created) if r.ok else r.error["code"]
                    for r in res.results]
    return out


def _state() -> dict:
    """Everything, keyed by identities instead of generated ids."""
    with db.transaction(readonly=True) as s:
        keys: dict[int, tuple] = {}
        for kind, value, mid in s.execute(select(Identity.kind, Identity.value, Identity.member_id)):
            keys[mid] = tuple(sorted((*keys.get(mid, ()), (kind, value))))
        aggs = {keys.get(a.member_id): (a.order_count, a.total_spend_fen, a.refund_fen, a.first_order_at,
                                        a.last_order_at, a.last_visit_at, a.last_login_at, a.last_event_at)
                for a in s.scalars(select(MemberAggregate))}
        orders = sorted((o.external_id, keys.get(o.member_id), o.status, o.amount_fen, o.refunded_fen)
                        for o in s.scalars(select(Order)))
        refunds = sorted((r.external_id, r.status, r.amount_fen) for r in s.scalars(select(Refund)))
        events = sorted((e.external_id, keys.get(e.member_id), e.anonymous_id) for e in s.scalars(select(Event)))
        members = s.scalar(select(func.count()).select_from(Member))
        # and the aggregates kept equal a recomputation
        snapshot = dict(aggs)
        for mid in list(keys):
            aggregates.recompute(s, member_id=mid)
        s.expire_all()
        recomputed = {keys.get(a.member_id): (a.order_count, a.total_spend_fen, a.refund_fen, a.first_order_at,
                                              a.last_order_at, a.last_visit_at, a.last_login_at, a.last_event_at)
                      for a in s.scalars(select(MemberAggregate))}
        assert snapshot == recomputed
        s.rollback()
    return {"aggregates": aggs, "orders": orders, "refunds": refunds, "events": events, "members": members}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=items, split=st.integers(0, 30))
def test_a_batch_ends_where_the_same_items_sent_one_by_one_end(clean_db, batch, split):
    _wipe()
    single = _one_by_one(batch)
    expected = _state()
    _wipe()
    assert _batched(batch, split) == single
    assert _state() == expected


def test_a_batch_repeating_an_item_or_reusing_its_id_answers_like_single_calls(clean_db):
    first = _order(1, PHONES[0], 100, 1)
    other = _order(1, PHONES[0], 999, 1)
    batch = [first, first, other, _event(PHONES[0], None, "login", 2), _order(2, PHONES[1], 5, 3)]
    assert _batched(batch, 5) == [("order", "created", True), ("order", "duplicate", False), "ingest.id_reused",
                                  ("event", "created", False), ("order", "created", True)]
    # sent again: everything is a replay, the reused id still a conflict, nothing changes
    before = _state()
    assert _batched(batch, 2) == [("order", "duplicate", False)] * 2 + ["ingest.id_reused",
                                                                        ("event", "duplicate", False),
                                                                        ("order", "duplicate", False)]
    assert _state() == before


def test_concurrent_batches_over_the_same_members_in_opposite_orders_neither_deadlock_nor_lose_updates(live_server):
    key = api_key()
    phones = [f"1390000{i:04d}" for i in range(60)]
    rounds = 3

    def batch(tag: str, order: list[str]) -> list[dict]:
        return [{"type": "order", "source": "pos", "external_id": f"{tag}-{p}", "paid_at": "2026-10-01T10:00:00Z",
                 "member": {"identities": {"phone": p}}, "amount_fen": 100} for p in order]

    bodies = [{"items": batch(f"{r}{side}", phones if side == "a" else phones[::-1])}
              for r in range(rounds) for side in "ab"]
    with httpx.Client(base_url=live_server, headers=headers(key), timeout=120) as http, ThreadPoolExecutor(2) as pool:
        # warm up: every member exists, so the batches only take row locks on known members
        assert http.post("/api/v1/ingest", json={"items": batch("w", phones)}).status_code == 200
        responses = list(pool.map(lambda b: http.post("/api/v1/ingest", json=b), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text[:300] for r in responses]
    assert all(r.json()["rejected"] == 0 for r in responses)
    with db.transaction(readonly=True) as s:
        counts = s.execute(select(MemberAggregate.order_count, MemberAggregate.total_spend_fen)).all()
    assert sorted(set(counts)) == [(1 + 2 * rounds, 100 * (1 + 2 * rounds))]
    assert len(counts) == len(phones)


def test_concurrent_batches_linking_the_same_new_keys_in_opposite_orders_all_land(live_server):
    """Such batches can deadlock on the identity keys' unique index: the loser starts over, no 500."""
    key = api_key()
    phones = [f"1370000{i:04d}" for i in range(60)]

    def batch(tag: str, order: list[str]) -> list[dict]:
        return [{"type": "event", "source": "app", "external_id": f"{tag}-{p}", "name": "login",
                 "occurred_at": "2026-10-01T10:00:00Z",
                 "member": {"identities": {"phone": p, "card_no": f"K{p}"}}} for p in order]

    with httpx.Client(base_url=live_server, headers=headers(key), timeout=120) as http, ThreadPoolExecutor(2) as pool:
        seed = [{"type": "event", "source": "crm", "external_id": f"s-{p}", "name": "sign_up",
                 "occurred_at": "2026-09-01T10:00:00Z", "member": {"identities": {"phone": p}}} for p in phones]
        assert http.post("/api/v1/ingest", json={"items": seed}).status_code == 200
        responses = list(pool.map(lambda b: http.post("/api/v1/ingest", json={"items": b}),
                                  [batch("a", phones), batch("b", phones[::-1])]))
    assert [r.status_code for r in responses] == [200, 200], [r.text[:300] for r in responses]
    assert all(r.json()["rejected"] == 0 for r in responses)
    with db.transaction(readonly=True) as s:
        owners = dict(s.execute(select(Identity.value, Identity.member_id).where(Identity.kind == "card_no")).all())
        phone_owner = dict(s.execute(select(Identity.value, Identity.member_id).where(Identity.kind == "phone")).all())
        assert s.scalar(select(func.count()).select_from(Member)) == len(phones)
    assert owners == {f"K{p}": phone_owner[f"+86{p}"] for p in phones}


def test_store_codes_in_a_batch_resolve_per_item_and_bad_ones_fail_only_their_item(client):
    key = api_key()  # HQ, regions EAST/SOUTH, stores SH001/HZ001/GZ001
    codes = ["SH001", "NOPE", "EAST", "SH001", "GZ001", "NOPE"]
    items = [{"type": "event", "source": "app", "external_id": f"E{i}", "name": "store_visit", "store_code": code,
              "occurred_at": "2026-10-01T00:00:00Z", "member": {"identities": {"phone": "13812341234"}}}
             for i, code in enumerate(codes)]
    body = client.post("/api/v1/ingest", json={"items": items}, headers=headers(key)).json()
    assert [r["ok"] for r in body["results"]] == [True, False, False, True, True, False]
    reasons = [r["error"]["errors"][0]["reason"] for r in body["results"] if not r["ok"]]
    unknown = "unknown org unit code 'NOPE'"
    assert reasons == [unknown, "'EAST' is a region, not a store", unknown]
    with db.transaction(readonly=True) as s:
        stores = dict(s.execute(text("SELECT e.external_id, u.code FROM events e "
                                     "JOIN org_units u ON u.id = e.store_id")).tuples().all())
    assert stores == {"E0": "SH001", "E3": "SH001", "E4": "GZ001"}
