"""The preview's one statement (`orchard.segments.preview`) against the compiled member query: the count,
every condition's own count and the sample must be exactly what evaluating each alone gives, for members
spread over several 32-id blocks, for an unscoped caller and for store staff (scope and masking)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update

from orchard import db
from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.identity.models import Identity
from orchard.members.models import Member, MemberAggregate
from orchard.segments import compiler as C
from orchard.segments import evaluate
from orchard.segments import language as lang
from orchard.segments import preview as P
from tests.segments.helpers import ADMIN, NOW, consent, event, local, member, tag, two_stores

VIEWED = {"event": "product_viewed", "where": [{"prop": "category", "op": "eq", "value": "运动鞋"}],
          "last_days": 30, "op": "gte", "value": 2}

DEFINITIONS = [
    {"all": [{"field": "gender", "op": "eq", "value": "female"}, {"field": "order_count", "op": "gte", "value": 1},
             VIEWED, {"consent": "sms"}]},
    {"any": [{"tag": "VIP"}, {"not": {"field": "days_since_last_order", "op": "lte", "value": 60}},
             {"field": "region", "op": "in", "value": ["上海", "杭州"]}]},
    {"all": [{"not": {"all": [{"consent": "sms"}, {"field": "region", "op": "eq", "value": "北京"}]}},
             {"event": "product_viewed", "last_days": 30, "op": "lt", "value": 2}]},
    {"field": "name", "op": "contains", "value": "m7"},
    {"field": "name", "op": "eq", "value": "nobody"},
]


@pytest.fixture
def crowd(clean_db):
    """95 members (ids over at least three 32-id blocks) in two stores and none, one of them merged; some
    without an aggregates row (missing values)."""
    with db.transaction() as s:
        s1, s2 = two_stores(s)
        ids: list[int] = []
        for i in range(95):
            orders = [(local(2026, 11, 1 + i % 20), 10_000 + i)] if i % 5 in (0, 1) else \
                [(local(2026, 7, 1), 5_000)] if i % 5 == 2 else []
            mid = member(s, f"m{i}", gender=("female", "male", "unknown")[i % 3],
                         region={0: "上海", 1: "北京", 2: "杭州"}.get(i % 4),
                         home_store_id=s1 if i % 2 else (s2 if i % 3 else None), orders=orders)
            ids.append(mid)
            for k in range(i % 4):
                event(s, mid, "product_viewed", local(2026, 11, 20 - k), category="运动鞋" if i % 6 else "外套")
            if i % 3 != 1:
                consent(s, mid, "sms")
            if i % 7 == 0:
                tag(s, mid, "VIP")
            s.add(Identity(member_id=mid, kind="phone", value=f"+86138{i:08d}", source="t"))
        s.execute(delete(MemberAggregate).where(MemberAggregate.member_id.in_(ids[::11])))
        s.execute(update(Member).where(Member.id == ids[4]).values(status="merged", merged_into_id=ids[0]))
    return {"ids": ids, "s1": s1}


def matching(s, definition, store: int | None = None) -> list[int]:
    """Ids of live members of the compiled definition (in a store, when given), in id order."""
    compiled = evaluate.compile_definition(s, definition, now=NOW)
    extra = [C.m.c.home_store_id == store] if store is not None else []
    return sorted(s.scalars(C.members_query(compiled.condition, compiled.ctx, *extra)))


def names(s, ids: list[int]) -> list[str]:
    found = dict(s.execute(select(Member.id, Member.name).where(Member.id.in_(ids))).all()) if ids else {}
    return [found[i] for i in ids]


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_counts_and_sample_equal_each_condition_evaluated_alone(crowd, definition):
    with db.transaction(readonly=True) as s:
        expected = matching(s, definition)
        out = P.preview(s, principal=ADMIN, definition=definition, now=NOW, sample_size=100)
        few = P.preview(s, principal=ADMIN, definition=definition, now=NOW, sample_size=3)
        none = P.preview(s, principal=ADMIN, definition=definition, now=NOW, sample_size=0)
        tree = lang.parse(definition)
        alone = [len(matching(s, leaf)) for leaf, _ in lang.leaves(tree)]
        want_names = names(s, expected)
    assert out["population"] == few["population"] == none["population"] == 94  # the merged member is out
    assert out["count"] == few["count"] == none["count"] == len(expected)
    assert [c["count"] for c in out["conditions"]] == alone
    assert out["conditions"] == few["conditions"] == none["conditions"]
    # The sample is the first members by id, over block boundaries.
    assert [m["name"] for m in out["sample"]] == want_names
    assert [m["name"] for m in few["sample"]] == want_names[:3]
    assert none["sample"] == []


def test_the_sample_crosses_blocks(crowd):
    """Guard for the test above: the sample really crosses 32-id blocks."""
    with db.transaction(readonly=True) as s:
        ids = matching(s, DEFINITIONS[1])
    assert len({i >> P.BLOCK_BITS for i in ids}) >= 3


def test_store_staff_count_and_sample_only_their_stores_members_masked(crowd):
    staff = Principal("staff", 2, "店长", Role.store_manager, frozenset({crowd["s1"]}), True)
    definition = DEFINITIONS[1]
    with db.transaction(readonly=True) as s:
        expected = matching(s, definition, crowd["s1"])
        out = P.preview(s, principal=staff, definition=definition, now=NOW, sample_size=50)
        alone = [len(matching(s, leaf, crowd["s1"])) for leaf, _ in lang.leaves(lang.parse(definition))]
        population = s.scalar(select(func.count()).select_from(Member).where(
            Member.home_store_id == crowd["s1"], Member.status == "active"))
        want_names = names(s, expected)
    assert out["population"] == population
    assert out["count"] == len(expected) and 0 < len(expected) < 94
    assert [c["count"] for c in out["conditions"]] == alone
    assert [m["name"] for m in out["sample"]] == want_names
    assert all(m["home_store"]["code"] == "S1" for m in out["sample"])
    phones = [m["phone"] for m in out["sample"]] + [i["value"] for m in out["sample"] for i in m["identities"]]
    assert phones and all("****" in p for p in phones)


def test_sample_ids_decode_blocks_in_order():
    blocks = [(0, 0b1010), (3, (1 << 31) | 1), (7, 1 << 4)]
    assert P.sample_ids(blocks, 10) == [1, 3, 96, 127, 228]
    assert P.sample_ids(blocks, 3) == [1, 3, 96]
    assert P.sample_ids([], 3) == []
