"""Built-in preference tags: who gets them, manual assignments left alone, history written."""

from __future__ import annotations

from sqlalchemy import select

from orchard.members.models import MemberTag, Tag, TagChange
from orchard.scoring import preferences
from tests.scoring.helpers import local, member, order

NOW = local(2026, 4, 1, 10)


def _tags(session, member_id) -> dict[str, str]:
    rows = session.execute(select(Tag.name, MemberTag.source).join(MemberTag, MemberTag.tag_id == Tag.id)
                           .where(MemberTag.member_id == member_id)).all()
    return dict(rows)


def _history(session, member_id) -> list[tuple[str, str, str]]:
    rows = session.execute(select(Tag.name, TagChange.change, TagChange.actor).join(Tag, Tag.id == TagChange.tag_id)
                           .where(TagChange.member_id == member_id).order_by(TagChange.id)).all()
    return [tuple(r) for r in rows]


def test_price_category_and_channel_preferences(session):
    # given
    bargain = member(session)  # both orders paid below list price
    order(session, bargain, local(2026, 3, 1), 8_000, channel="miniapp", lines=[("S1", "运动鞋", 10_000, 10_000)])
    order(session, bargain, local(2026, 3, 2), 4_000, channel="miniapp", lines=[("T1", "茶叶", 5_000, 5_000)])
    order(session, bargain, local(2026, 3, 3), 3_000, channel="pos", lines=[("T1", "茶叶", 3_000, 3_000)])
    full_price = member(session)
    order(session, full_price, local(2026, 3, 1), 5_000, channel="pos", lines=[("T1", "茶叶", 5_000, 5_000)])
    order(session, full_price, local(2026, 3, 5), 5_000, channel="pos", lines=[("T1", "茶叶", 5_000, 5_000)])
    once = member(session)  # one order is not a preference
    order(session, once, local(2026, 3, 1), 1_000, channel="pos", lines=[("T1", "茶叶", 5_000, 5_000)])
    # when
    result = preferences.refresh(session, now=NOW)
    # then: bargain: 2 of 3 orders discounted (≥ 50 %); 运动鞋 10000 > 茶叶 8000; miniapp 2 > pos 1
    assert _tags(session, bargain) == {"价格敏感": "rule", "偏好:运动鞋": "rule", "渠道偏好:miniapp": "rule"}
    assert _tags(session, full_price) == {"偏好:茶叶": "rule", "渠道偏好:pos": "rule"}
    assert _tags(session, once) == {}
    assert result["added"] == 5 and result["removed"] == 0
    assert ("价格敏感", "added", "rule:价格敏感") in _history(session, bargain)
    tag = session.scalar(select(Tag).where(Tag.name == "偏好:运动鞋"))
    assert (tag.kind, tag.source, tag.definition) == ("preference", "rule", {"builtin": "category", "value": "运动鞋"})


def test_a_manual_assignment_of_the_same_tag_is_never_touched(session):
    # given: the tag exists; staff put it on two members by hand
    a = member(session)
    for day in (1, 2):
        order(session, a, local(2026, 3, day), 8_000, lines=[("S1", "运动鞋", 10_000, 10_000)])
    preferences.refresh(session, now=NOW)
    tag_id = session.scalar(select(Tag.id).where(Tag.name == "价格敏感"))
    matches_rule = member(session)  # in the window of the next refresh
    for day in (1, 2):
        order(session, matches_rule, local(2027, 3, day), 8_000, lines=[("S1", "运动鞋", 10_000, 10_000)])
    does_not_match = member(session)
    for m in (matches_rule, does_not_match):
        session.add(MemberTag(member_id=m, tag_id=tag_id, source="manual", added_by="staff:7"))
    session.flush()
    # when: a's orders move out of the window, the others are evaluated
    result = preferences.refresh(session, now=local(2027, 3, 5, 10))
    # then
    assert _tags(session, matches_rule) == {"价格敏感": "manual", "偏好:运动鞋": "rule"}
    assert _tags(session, does_not_match) == {"价格敏感": "manual"}
    assert _history(session, matches_rule) == [("偏好:运动鞋", "added", "rule:偏好:运动鞋")]
    assert _history(session, does_not_match) == []
    assert _tags(session, a) == {}
    assert [h for h in _history(session, a) if h[0] == "价格敏感"] == [
        ("价格敏感", "added", "rule:价格敏感"), ("价格敏感", "removed", "rule:价格敏感")]
    assert result["removed"] == 2  # a's 价格敏感 and 偏好:运动鞋


def test_refresh_twice_changes_nothing(session):
    # given
    m = member(session)
    for day in (1, 2):
        order(session, m, local(2026, 3, day), 8_000, channel="pos", lines=[("S1", "运动鞋", 10_000, 10_000)])
    preferences.refresh(session, now=NOW)
    # when
    again = preferences.refresh(session, now=NOW)
    # then
    assert (again["added"], again["removed"]) == (0, 0)
    assert len(_history(session, m)) == 3


def test_early_adopter_buys_new_skus_within_14_days_of_their_first_sale(session):
    # given: the data starts in 2025; two SKUs launch in March 2026
    old = member(session)
    order(session, old, local(2025, 1, 1), 1_000, lines=[("OLD", "茶叶", 1_000, 1_000)])
    launcher = member(session)
    order(session, launcher, local(2026, 3, 1), 1_000, lines=[("NEW1", "茶叶", 1_000, 1_000)])
    order(session, launcher, local(2026, 3, 5), 1_000, lines=[("NEW2", "茶叶", 1_000, 1_000)])
    early = member(session)  # NEW1 on day 13 after its first sale (local dates), NEW2 on day 0
    order(session, early, local(2026, 3, 14, 23, 59), 1_000, lines=[("NEW1", "茶叶", 1_000, 1_000)])
    order(session, early, local(2026, 3, 5, 8), 1_000, lines=[("NEW2", "茶叶", 1_000, 1_000)])
    late = member(session)  # NEW1 on day 14
    order(session, late, local(2026, 3, 15, 0, 0), 1_000, lines=[("NEW1", "茶叶", 1_000, 1_000)])
    order(session, late, local(2026, 3, 6), 1_000, lines=[("NEW2", "茶叶", 1_000, 1_000)])
    # when
    preferences.refresh(session, now=NOW)
    # then
    assert "尝鲜者" in _tags(session, launcher)
    assert "尝鲜者" in _tags(session, early)
    assert "尝鲜者" not in _tags(session, late)
    assert "尝鲜者" not in _tags(session, old)


def test_a_name_owned_by_a_manual_tag_is_skipped(session):
    # given
    session.add(Tag(name="偏好:茶叶", kind="attribute", source="manual"))
    m = member(session)
    for day in (1, 2):
        order(session, m, local(2026, 3, day), 5_000, lines=[("T1", "茶叶", 5_000, 5_000)])
    # when
    result = preferences.refresh(session, now=NOW)
    # then
    assert result["skipped"] == ["偏好:茶叶"]
    assert _tags(session, m) == {}
