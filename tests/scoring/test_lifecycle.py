"""Lifecycle stages at exact Asia/Shanghai day boundaries, transitions recorded once, merged members
skipped. Expected stages are written by hand from the calendar."""

from __future__ import annotations

from sqlalchemy import func, select

from orchard.members.models import Member
from orchard.scoring import lifecycle
from orchard.scoring.models import LifecycleChange, MemberLifecycle
from tests.scoring.helpers import local, member, order

NOW = local(2026, 4, 1, 10)  # today = 2026-04-01 in Shanghai


def _stage(session, member_id):
    return session.get(MemberLifecycle, member_id)


def test_stages_at_the_day_boundaries(session):
    # given
    registered = member(session, joined_at=local(2026, 2, 1, 9))
    new_edge = member(session)  # first order 29 days ago, at the first instant of that day
    order(session, new_edge, local(2026, 3, 3, 0, 0, 0))
    not_new = member(session)  # first order 30 days ago, at its last instant
    order(session, not_new, local(2026, 3, 2, 23, 59, 59))
    active_edge = member(session)  # 89 days ago
    order(session, active_edge, local(2025, 12, 1))
    order(session, active_edge, local(2026, 1, 2, 0, 0, 0))
    dormant_edge = member(session)  # 90 days ago
    order(session, dormant_edge, local(2025, 12, 1))
    order(session, dormant_edge, local(2026, 1, 1, 23, 59, 59))
    still_dormant = member(session)  # 179 days ago
    order(session, still_dormant, local(2025, 10, 4, 0, 0, 0))
    lost = member(session)  # 180 days ago
    order(session, lost, local(2025, 10, 3, 23, 59, 59))
    # when
    result = lifecycle.refresh(session, now=NOW)
    # then
    assert _stage(session, registered).stage == "registered"
    assert _stage(session, registered).since == local(2026, 2, 1, 9)
    assert _stage(session, new_edge).stage == "new"
    assert _stage(session, new_edge).since == local(2026, 3, 3, 0, 0, 0)
    assert _stage(session, not_new).stage == "active"
    assert _stage(session, active_edge).stage == "active"
    assert _stage(session, dormant_edge).stage == "dormant"
    assert _stage(session, dormant_edge).since == local(2026, 4, 1, 0, 0, 0)  # 1 Jan + 90 days, midnight
    assert _stage(session, still_dormant).stage == "dormant"
    assert _stage(session, still_dormant).since == local(2026, 1, 2, 0, 0, 0)
    assert _stage(session, lost).stage == "lost"
    assert _stage(session, lost).since == local(2026, 4, 1, 0, 0, 0)  # 3 Oct + 180 days
    assert result["members"] == 7 and result["changed"] == 7
    assert result["by_stage"] == {"registered": 1, "new": 1, "active": 2, "declining": 0, "dormant": 2, "lost": 1}


def test_declining_when_the_last_90_days_have_fewer_than_half_the_orders_of_the_90_before(session):
    # given: previous window = 2025-10-04 … 2026-01-01, last window = 2026-01-02 … 2026-04-01
    declining = member(session)
    for day in (5, 6, 7, 8):
        order(session, declining, local(2025, 11, day))
    order(session, declining, local(2026, 3, 1))  # 1 < 0.5 × 4
    at_ratio = member(session)
    order(session, at_ratio, local(2025, 11, 5))
    order(session, at_ratio, local(2025, 11, 6))
    order(session, at_ratio, local(2026, 3, 1))  # 1 is not < 0.5 × 2
    refunded_does_not_count = member(session)
    for day in (5, 6, 7, 8):
        order(session, refunded_does_not_count, local(2025, 11, day), refunded_fen=10_000, status="refunded")
    order(session, refunded_does_not_count, local(2025, 11, 9))
    order(session, refunded_does_not_count, local(2026, 3, 1))
    # when
    lifecycle.refresh(session, now=NOW)
    # then
    assert _stage(session, declining).stage == "declining"
    assert _stage(session, at_ratio).stage == "active"
    assert _stage(session, refunded_does_not_count).stage == "active"


def test_a_change_is_recorded_once_and_only_when_the_stage_changes(session):
    # given
    m = member(session)
    order(session, m, local(2026, 1, 2, 0, 0, 0))
    buyer = member(session)
    order(session, buyer, local(2026, 3, 5))
    lifecycle.refresh(session, now=NOW)
    # when: the same day again, then the next day
    again = lifecycle.refresh(session, now=local(2026, 4, 1, 22))
    next_day = lifecycle.refresh(session, now=local(2026, 4, 2, 0, 0, 1))
    # then
    assert again["changed"] == 0
    assert next_day["changed"] == 1 and next_day["changes"] == {"active→dormant": 1}
    changes = session.scalars(select(LifecycleChange).where(LifecycleChange.member_id == m)
                              .order_by(LifecycleChange.id)).all()
    assert [(c.from_stage, c.to_stage) for c in changes] == [(None, "active"), ("active", "dormant")]
    assert changes[1].at == local(2026, 4, 2, 0, 0, 1)
    assert _stage(session, m).since == local(2026, 4, 2, 0, 0, 0)
    assert _stage(session, buyer).stage == "new"


def test_new_becomes_active_the_day_after_new_days_with_that_midnight_as_since(session):
    # given
    m = member(session)
    order(session, m, local(2026, 3, 5, 18))
    lifecycle.refresh(session, now=NOW)
    # when
    lifecycle.refresh(session, now=local(2026, 4, 5, 9))
    # then
    row = _stage(session, m)
    assert (row.stage, row.since) == ("active", local(2026, 4, 4, 0, 0, 0))


def test_merged_members_are_skipped_and_lose_their_row(session):
    # given
    survivor = member(session)
    gone = member(session)
    lifecycle.refresh(session, now=NOW)
    session.get(Member, gone).status = "merged"
    session.flush()
    # when
    result = lifecycle.refresh(session, now=NOW)
    # then
    assert result["members"] == 1
    assert _stage(session, gone) is None and _stage(session, survivor) is not None
    assert session.scalar(select(func.count()).select_from(LifecycleChange)
                          .where(LifecycleChange.member_id == gone)) == 1
