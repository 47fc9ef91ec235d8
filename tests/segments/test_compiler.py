"""Each operator and combination of the segment language against hand-placed members, on SQLite and
PostgreSQL, with behaviour windows at their edges in Asia/Shanghai."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from orchard import db
from orchard.errors import InvalidInput
from orchard.members.models import Member
from orchard.segments import compiler as C
from orchard.segments import evaluate, preview
from tests.segments.helpers import ADMIN, NOW, consent, event, local, member, order_line, tag, two_stores


def matches(s, definition) -> set[str]:
    compiled = evaluate.compile_definition(s, definition, now=NOW)
    ids = set(s.scalars(C.members_query(compiled.condition, compiled.ctx)))
    return set(s.scalars(select(Member.name).where(Member.id.in_(ids)))) if ids else set()


@pytest.fixture
def people(clean_db):
    with db.transaction() as s:
        ids = {
            "amy": member(s, "amy", gender="female", region="上海", orders=[(local(2026, 11, 20), 50_000),
                                                                            (local(2026, 6, 1), 30_000)],
                          attributes={"vip_level": 3, "city": "上海市"}, birthday=dt.date(1990, 11, 26)),
            "bob": member(s, "bob", gender="male", region="北京", orders=[(local(2026, 8, 26, 23, 59), 9_900)],
                          attributes={"vip_level": 1}),
            "cat": member(s, "cat", gender="female", joined=local(2026, 11, 10)),
            "dan": member(s, "dan", gender="unknown", joined=local(2026, 11, 20), reduce_disturbance=True),
        }
        tag(s, ids["amy"], "VIP")
        consent(s, ids["amy"], "sms")
        consent(s, ids["bob"], "sms", granted=False)
        for day in (24, 20, 12):
            event(s, ids["cat"], "product_viewed", local(2026, 11, day, 9), category="运动鞋", price=399)
        event(s, ids["cat"], "product_viewed", local(2026, 10, 25, 23, 59), category="运动鞋")  # day 31: outside
        event(s, ids["bob"], "product_viewed", local(2026, 10, 26, 0, 0), category="运动鞋")  # day 30: inside
        event(s, ids["bob"], "product_viewed", local(2026, 11, 1), category="外套")
        order_line(s, ids["amy"], local(2026, 11, 2), "运动鞋")
    return ids


def test_profile_operators(people):
    with db.transaction(readonly=True) as s:
        assert matches(s, {"field": "gender", "op": "eq", "value": "female"}) == {"amy", "cat"}
        assert matches(s, {"field": "gender", "op": "in", "value": ["male", "unknown"]}) == {"bob", "dan"}
        assert matches(s, {"field": "region", "op": "contains", "value": "海"}) == {"amy"}
        assert matches(s, {"field": "region", "op": "not_exists"}) == {"cat", "dan"}
        assert matches(s, {"field": "reduce_disturbance", "op": "eq", "value": True}) == {"dan"}
        assert matches(s, {"field": "attributes.vip_level", "op": "gte", "value": 2}) == {"amy"}
        assert matches(s, {"field": "attributes.city", "op": "eq", "value": "上海市"}) == {"amy"}
        assert matches(s, {"field": "attributes.city", "op": "exists"}) == {"amy"}
        assert matches(s, {"field": "birthday", "op": "within_next_days", "value": 2}) == {"amy"}
        assert matches(s, {"field": "birthday", "op": "within_next_days", "value": 1}) == set()
        assert matches(s, {"field": "birthday_month", "op": "eq", "value": 11}) == {"amy"}


def test_aggregates_and_days_since_at_day_edges(people):
    with db.transaction(readonly=True) as s:
        assert matches(s, {"field": "order_count", "op": "gte", "value": 1}) == {"amy", "bob"}
        assert matches(s, {"field": "order_count", "op": "eq", "value": 0}) == {"cat", "dan"}
        assert matches(s, {"field": "total_spend_fen", "op": "between", "value": [10_000, 100_000]}) == {"amy"}
        assert matches(s, {"field": "avg_order_fen", "op": "gt", "value": 10_000}) == {"amy"}
        # bob ordered 2026-08-26 23:59 Shanghai: 90 days before 11-24 — "≥ 90" holds, "≥ 91" does not.
        assert matches(s, {"field": "days_since_last_order", "op": "gte", "value": 90}) == {"bob"}
        assert matches(s, {"field": "days_since_last_order", "op": "gte", "value": 91}) == set()
        assert matches(s, {"field": "days_since_last_order", "op": "eq", "value": 90}) == {"bob"}
        assert matches(s, {"field": "days_since_last_order", "op": "lte", "value": 4}) == {"amy"}
        assert matches(s, {"field": "days_since_last_order", "op": "lt", "value": 4}) == set()
        assert matches(s, {"field": "last_order_at", "op": "within_last_days", "value": 90}) == {"amy"}
        assert matches(s, {"field": "last_order_at", "op": "within_last_days", "value": 91}) == {"amy", "bob"}
        assert matches(s, {"field": "joined_at", "op": "after", "value": "2026-11-10"}) == {"dan"}
        assert matches(s, {"field": "joined_at", "op": "between", "value": ["2026-11-10", "2026-11-10"]}) == {"cat"}
        assert matches(s, {"field": "joined_at", "op": "before", "value": "2026-11-10T12:00:01+08:00"}) == \
            {"amy", "bob", "cat"}


def test_tags_consent_identity_and_groups(people):
    with db.transaction(readonly=True) as s:
        assert matches(s, {"tag": "VIP"}) == {"amy"}
        assert matches(s, {"tag": "VIP", "has": False}) == {"bob", "cat", "dan"}
        assert matches(s, {"consent": "sms"}) == {"amy"}
        assert matches(s, {"consent": "sms", "granted": False}) == {"bob", "cat", "dan"}
        assert matches(s, {"identity": "phone"}) == set()
        assert matches(s, {"any": [{"tag": "VIP"}, {"field": "gender", "op": "eq", "value": "male"}]}) == {"amy", "bob"}
        assert matches(s, {"all": [{"field": "gender", "op": "eq", "value": "female"},
                                   {"not": {"tag": "VIP"}}]}) == {"cat"}
        # A condition on a missing value is false, and its negation true: never-ordered members are
        # "not ordered within 30 days".
        assert matches(s, {"not": {"field": "last_order_at", "op": "within_last_days", "value": 30}}) == \
            {"bob", "cat", "dan"}


def test_behaviour_windows_thresholds_and_absence(people):
    viewed = {"event": "product_viewed", "where": [{"prop": "category", "op": "eq", "value": "运动鞋"}],
              "last_days": 30}
    with db.transaction(readonly=True) as s:
        assert matches(s, {**viewed, "op": "gte", "value": 3}) == {"cat"}
        assert matches(s, {**viewed, "op": "gte", "value": 4}) == set()  # the 31st day back is outside
        assert matches(s, {**viewed, "op": "gte", "value": 1}) == {"cat", "bob"}  # the 30th day is inside
        assert matches(s, {**viewed, "op": "eq", "value": 0}) == {"amy", "dan"}
        assert matches(s, {**viewed, "since_joined": True, "last_days": None, "op": "gte", "value": 3}) == {"cat"}
        assert matches(s, {"event": "product_viewed", "last_days": 30, "measure": "distinct", "prop": "category",
                           "op": "gte", "value": 2}) == {"bob"}
        assert matches(s, {"event": "product_viewed", "last_days": 30, "measure": "sum", "prop": "price",
                           "op": "gte", "value": 1000}) == {"cat"}
        assert matches(s, {"event": "product_viewed", "where": [{"prop": "price", "op": "gt", "value": 100}],
                           "last_days": 30}) == {"cat"}
        # The example: viewed sneakers ≥ 3 times in 30 days and no order with sneakers then.
        no_sneaker_order = {"event": "$order", "where": [{"prop": "category", "op": "eq", "value": "运动鞋"}],
                            "last_days": 30, "op": "eq", "value": 0}
        assert matches(s, {"all": [{**viewed, "op": "gte", "value": 3}, no_sneaker_order]}) == {"cat"}
        assert matches(s, {"event": "$order", "where": [{"prop": "category", "op": "eq", "value": "运动鞋"}],
                           "last_days": 30}) == {"amy"}
        assert matches(s, {"event": "$order", "last_days": 365, "measure": "sum", "prop": "amount_fen",
                           "op": "gte", "value": 80_000}) == {"amy"}
        # "no order since sign-up and signed up more than 7 days ago"
        assert matches(s, {"all": [{"field": "order_count", "op": "eq", "value": 0},
                                   {"field": "joined_at", "op": "older_than_days", "value": 7}]}) == {"cat"}


@pytest.mark.parametrize("definition, path, reason", [
    ({"field": "nope", "op": "eq", "value": 1}, "$.field", "unknown field"),
    ({"all": [{"tag": "VIP"}, {"field": "order_count", "op": "contains", "value": "x"}]}, "$.all[1].op",
     "does not apply"),
    ({"all": [{"field": "order_count", "op": "gte", "value": "3"}]}, "$.all[0].value", "whole number"),
    ({"any": [{"event": "product_viewed", "last_days": 5000}]}, "$.any[0].last_days", "too large"),
    ({"any": [{"event": "product_viewed"}]}, "$.any[0].last_days", "window"),
    ({"not": {"bogus": 1}}, "$.not", "needs one of the keys"),
    ({"all": [{"field": "gender", "op": "eq", "value": "x"}]}, "$.all[0].value", "not one of"),
    ({"all": [{"tag": "nope"}]}, "$.all[0].tag", "no tag"),
    ({"segment": "nope"}, "$.segment", "no segment"),
    ({"field": "order_count", "op": "gte", "value": 1, "extra": 1}, "$.extra", "unknown key"),
])
def test_invalid_definitions_name_the_path(people, definition, path, reason):
    with db.transaction(readonly=True) as s:
        with pytest.raises(InvalidInput) as exc:
            evaluate.compile_definition(s, definition, now=NOW)
    assert exc.value.errors[0]["field"] == path, exc.value.errors
    assert reason in exc.value.errors[0]["reason"]


def test_preview_counts_each_condition(people):
    definition = {"all": [{"field": "gender", "op": "eq", "value": "female"}, {"tag": "VIP"}]}
    with db.transaction(readonly=True) as s:
        out = preview.preview(s, principal=ADMIN, definition=definition, now=NOW)
    assert out["count"] == 1 and out["population"] == 4
    assert [(c["path"], c["count"]) for c in out["conditions"]] == [("$.all[0]", 2), ("$.all[1]", 1)]
    assert [m["name"] for m in out["sample"]] == ["amy"]


def test_loyalty_and_score_fields(people):
    from orchard.loyalty.models import GrowthAccount, MemberTier, PointsAccount, TierLevel
    from orchard.scoring.models import MemberLifecycle, MemberRfm

    with db.transaction() as s:
        base = TierLevel(code="BASE", name="普通", rank=0, threshold=0)
        gold = TierLevel(code="GOLD", name="金卡", rank=2, threshold=1000)
        s.add_all([base, gold])
        s.flush()
        s.add(MemberTier(member_id=people["amy"], level_id=gold.id, since=NOW))
        s.add(PointsAccount(member_id=people["amy"], balance=1500))
        s.add(GrowthAccount(member_id=people["bob"], balance=300))
        # cat is overridden to GOLD until tomorrow; dan's override ended yesterday
        s.add(MemberTier(member_id=people["cat"], level_id=base.id, since=NOW, override_level_id=gold.id,
                         override_until=NOW + dt.timedelta(days=1)))
        s.add(MemberTier(member_id=people["dan"], level_id=base.id, since=NOW, override_level_id=gold.id,
                         override_until=NOW - dt.timedelta(days=1)))
        s.add(MemberLifecycle(member_id=people["bob"], stage="dormant", since=NOW, computed_at=NOW))
        s.add(MemberRfm(member_id=people["amy"], recency_days=4, frequency=2, monetary_fen=80_000, r_score=5,
                        f_score=5, m_score=5, rfm_class="important_value", value_tier="high",
                        computed_on=NOW.date(), computed_at=NOW))
    with db.transaction(readonly=True) as s:
        assert matches(s, {"field": "tier", "op": "eq", "value": "GOLD"}) == {"amy", "cat"}
        assert matches(s, {"field": "tier", "op": "eq", "value": "BASE"}) == {"bob", "dan"}
        assert matches(s, {"field": "points_balance", "op": "gte", "value": 1000}) == {"amy"}
        assert matches(s, {"field": "points_balance", "op": "eq", "value": 0}) == {"bob", "cat", "dan"}
        assert matches(s, {"field": "growth_value", "op": "between", "value": [1, 500]}) == {"bob"}
        assert matches(s, {"field": "lifecycle_stage", "op": "in", "value": ["dormant", "lost"]}) == {"bob"}
        assert matches(s, {"field": "lifecycle_stage", "op": "not_exists"}) == {"amy", "cat", "dan"}
        # "became dormant this week"
        assert matches(s, {"all": [{"field": "lifecycle_stage", "op": "eq", "value": "dormant"},
                                   {"field": "lifecycle_since", "op": "within_last_days", "value": 7}]}) == {"bob"}
        assert matches(s, {"field": "rfm_class", "op": "eq", "value": "important_value"}) == {"amy"}
        assert matches(s, {"field": "r_score", "op": "gte", "value": 4}) == {"amy"}
        assert matches(s, {"field": "value_tier", "op": "ne", "value": "low"}) == {"amy"}
        assert matches(s, {"field": "order_count", "op": "not_in", "value": [0, 2]}) == {"bob"}
        assert matches(s, {"field": "days_since_last_order", "op": "between", "value": [0, 10]}) == {"amy"}
        assert matches(s, {"field": "days_since_last_order", "op": "ne", "value": 90}) == {"amy"}
        assert matches(s, {"field": "last_order_at", "op": "exists"}) == {"amy", "bob"}
        assert matches(s, {"field": "points_expiring", "within_days": 30, "op": "gte", "value": 1}) == set()
        with pytest.raises(InvalidInput):
            evaluate.compile_definition(s, {"field": "points_balance", "within_days": 30, "op": "gte", "value": 1})



@pytest.mark.parametrize("definition", [
    {"not": {"field": "last_order_at", "op": "within_last_days", "value": 30}},  # missing value: not → true
    {"any": [{"field": "region", "op": "eq", "value": "上海"},
             {"not": {"field": "region", "op": "eq", "value": "北京"}}]},
    {"all": [{"not": {"tag": "VIP"}}, {"any": [{"field": "order_count", "op": "eq", "value": 0},
                                             {"field": "avg_order_fen", "op": "lt", "value": 20_000}]}]},
    {"all": [{"event": "product_viewed", "where": [{"prop": "category", "op": "eq", "value": "运动鞋"}],
              "last_days": 30, "op": "lt", "value": 3},
             {"not": {"field": "attributes.vip_level", "op": "gte", "value": 2}}]},
    {"not": {"all": [{"consent": "sms"}, {"field": "birthday", "op": "within_next_days", "value": 3}]}},
])
def test_preview_agrees_with_the_member_query(people, definition):
    """The preview combines per-condition columns; its count and sample are the saved query's answer,
    NULLs (missing values) included."""
    with db.transaction(readonly=True) as s:
        expected = matches(s, definition)
        out = preview.preview(s, principal=ADMIN, definition=definition, now=NOW, sample_size=2)
        zero = preview.preview(s, principal=ADMIN, definition=definition, now=NOW, sample_size=0)
    names = sorted(expected, key=lambda n: people[n])
    assert out["count"] == zero["count"] == len(expected) and out["population"] == 4
    assert [m["name"] for m in out["sample"]] == names[:2] and zero["sample"] == []
    assert out["conditions"] == zero["conditions"]

def test_home_store_by_code_and_presence(clean_db):
    with db.transaction() as s:
        s1, s2 = two_stores(s)
        member(s, "amy", home_store_id=s1)
        member(s, "bob", home_store_id=s2)
        member(s, "cat")
    with db.transaction(readonly=True) as s:
        assert matches(s, {"field": "home_store", "op": "eq", "value": "S1"}) == {"amy"}
        assert matches(s, {"field": "home_store", "op": "in", "value": ["S1", "S2"]}) == {"amy", "bob"}
        assert matches(s, {"field": "home_store", "op": "ne", "value": "S1"}) == {"bob"}
        assert matches(s, {"field": "home_store", "op": "exists"}) == {"amy", "bob"}
        assert matches(s, {"field": "home_store", "op": "not_exists"}) == {"cat"}
        with pytest.raises(InvalidInput):
            matches(s, {"field": "home_store", "op": "eq", "value": "NOPE"})
