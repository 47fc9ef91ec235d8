"""RFM on a small fixture whose R, F, M, scores, classes and tiers were worked out by hand (in the
comments), not by running the algorithm."""

from __future__ import annotations

import pytest

from orchard.scoring import policy, rfm
from orchard.scoring.models import MemberRfm
from orchard.scoring.policy import PolicyIn, RfmCuts, RfmPolicy
from tests.scoring.helpers import local, member, order

NOW = local(2026, 4, 1, 10)  # snapshot date 2026-04-01; 365-day window starts 2025-04-02


def _fixture(session) -> dict[str, int]:
    """R (days) / F / M (fen):
    A 1/3/60000  B 7/1/5000  C 151/4/200000  D 304/1/80000  E 2/3/9000  F 335/1/1000  I 4/1/100000
    J 182/3/3000; G never bought; H bought only before the window.
    Means over the 8 scored: R 986/8 = 123.25, F 17/8 = 2.125, M 458000/8 = 57250."""
    ids = {k: member(session) for k in "ABCDEFGHIJ"}
    order(session, ids["A"], local(2026, 3, 31, 23, 59), 10_000)
    order(session, ids["A"], local(2026, 3, 1), 25_000, refunded_fen=5_000, status="partially_refunded")
    order(session, ids["A"], local(2026, 2, 1), 30_000)
    order(session, ids["B"], local(2026, 3, 25), 5_000)
    order(session, ids["B"], local(2026, 3, 26), 99_999, refunded_fen=99_999, status="refunded")
    for month in (11, 10, 9, 8):
        order(session, ids["C"], local(2025, month, 1), 50_000)
    order(session, ids["D"], local(2025, 6, 1), 80_000)
    for day in (30, 20, 10):
        order(session, ids["E"], local(2026, 3, day), 3_000)
    order(session, ids["F"], local(2025, 5, 1), 1_000)
    order(session, ids["H"], local(2025, 4, 1, 23, 59), 70_000)  # 365 days ago: outside the window
    order(session, ids["I"], local(2026, 3, 28), 100_000)
    for month in (10, 9, 8):
        order(session, ids["J"], local(2025, month, 1), 1_000)
    return ids


def _rows(session, ids):
    return {k: session.get(MemberRfm, v) for k, v in ids.items()}


def test_classes_scores_and_tiers_match_the_hand_computation(session):
    # given
    ids = _fixture(session)
    # when
    result = rfm.refresh(session, now=NOW)
    # then
    rows = _rows(session, ids)
    rfm_values = {k: (r.recency_days, r.frequency, r.monetary_fen) for k, r in rows.items() if r.recency_days}
    assert rfm_values == {
        "A": (1, 3, 60_000), "B": (7, 1, 5_000), "C": (151, 4, 200_000), "D": (304, 1, 80_000),
        "E": (2, 3, 9_000), "F": (335, 1, 1_000), "I": (4, 1, 100_000), "J": (182, 3, 3_000)}
    assert {k: r.rfm_class for k, r in rows.items()} == {
        "A": "important_value", "I": "important_develop", "C": "important_keep", "D": "important_retain",
        "E": "general_value", "B": "general_develop", "J": "general_keep", "F": "general_retain",
        "G": None, "H": None}
    # quintiles of 8 rows are 2,2,2,1,1; ties in member-id order
    # F: B D F I | A E J | C → 1 1 2 2 3 3 4 5 ; M: F J B E A D I C ; R (oldest first): F D J C B I E A
    assert {k: (r.r_score, r.f_score, r.m_score) for k, r in rows.items()} == {
        "A": (5, 3, 3), "B": (3, 1, 2), "C": (2, 5, 5), "D": (1, 1, 3), "E": (4, 3, 2), "F": (1, 2, 1),
        "I": (3, 2, 4), "J": (2, 4, 1), "G": (None, None, None), "H": (None, None, None)}
    # by spend: C 200000 (above 0%), I (43.7%), D (65.5%) high; A (above 82.97%) medium; rest low
    assert {k: r.value_tier for k, r in rows.items()} == {
        "C": "high", "I": "high", "D": "high", "A": "medium", "E": "low", "B": "low", "J": "low", "F": "low",
        "G": None, "H": None}
    assert (rows["G"].frequency, rows["G"].monetary_fen, rows["H"].frequency) == (0, 0, 0)
    assert result["members"] == 10 and result["scored"] == 8
    assert result["by_tier"] == {"high": 3, "medium": 1, "low": 4}
    assert all(n == 1 for n in result["by_class"].values())
    assert rows["A"].computed_on.isoformat() == "2026-04-01"


def test_quintile_ties_fall_in_member_id_order(session):
    # given: six identical buyers
    ids = [member(session) for _ in range(6)]
    for m in ids:
        order(session, m, local(2026, 3, 1), 100)
    # when
    rfm.refresh(session, now=NOW)
    # then: ntile(5) of 6 = 2,1,1,1,1, lower ids first
    scores = [session.get(MemberRfm, m) for m in ids]
    assert [s.f_score for s in scores] == [1, 1, 2, 3, 4, 5]
    assert [s.m_score for s in scores] == [1, 1, 2, 3, 4, 5]
    assert [s.r_score for s in scores] == [1, 1, 2, 3, 4, 5]
    # nobody is strictly above or below the mean
    assert {s.rfm_class for s in scores} == {"general_retain"}


def test_cut_points(session):
    # given
    ids = _fixture(session)
    policy.set_policy(session, PolicyIn(rfm=RfmPolicy(scoring="cuts", cuts=RfmCuts(
        r=[7, 30, 90, 180], f=[2, 3, 5, 8], m=[10_000, 50_000, 100_000, 200_000]))), actor="test")
    # when
    rfm.refresh(session, now=NOW)
    # then
    rows = _rows(session, ids)
    assert (rows["A"].r_score, rows["A"].f_score, rows["A"].m_score) == (5, 3, 3)
    assert (rows["B"].r_score, rows["B"].f_score, rows["B"].m_score) == (5, 1, 1)
    assert (rows["C"].r_score, rows["C"].f_score, rows["C"].m_score) == (2, 3, 5)
    assert (rows["F"].r_score, rows["F"].f_score, rows["F"].m_score) == (1, 1, 1)
    assert (rows["J"].r_score, rows["J"].f_score, rows["J"].m_score) == (1, 3, 1)
    assert rows["A"].rfm_class == "important_value"  # classes do not depend on the scoring


def test_lifetime_window_reads_the_aggregates(session):
    # given
    ids = _fixture(session)
    policy.set_policy(session, PolicyIn(rfm=RfmPolicy(window_days=None)), actor="test")
    # when
    result = rfm.refresh(session, now=NOW)
    # then: H's order of 365 days ago now counts
    h = session.get(MemberRfm, ids["H"])
    assert (h.recency_days, h.frequency, h.monetary_fen) == (365, 1, 70_000)
    assert result["scored"] == 9


def test_value_tier_shares_are_configurable(session):
    # given: spends 50, 30, 15, 5 (of 100)
    ids = [member(session) for _ in range(4)]
    for m, fen in zip(ids, (5_000, 3_000, 1_500, 500), strict=True):
        order(session, m, local(2026, 3, 1), fen)
    policy.set_policy(session, PolicyIn(value={"high_pct": 50, "medium_pct": 30}), actor="test")
    # when
    rfm.refresh(session, now=NOW)
    # then: above-spend 0% → high; 50% → medium (< 80%); 80% and 95% → low
    assert [session.get(MemberRfm, m).value_tier for m in ids] == ["high", "medium", "low", "low"]


@pytest.mark.parametrize("code", [c[0] for c in rfm.CLASSES])
def test_every_class_has_names_and_an_action(code):
    zh = rfm.describe(code)
    en = rfm.describe(code, english=True)
    assert zh["name"].endswith("客户") and zh["action"] and en["name"] and en["action"].isascii()


def test_a_later_pass_updates_rows_in_place_drops_merged_members_and_adds_new_ones(session):
    """Rows are updated, not rebuilt: the next day's pass must leave exactly what a fresh pass would."""
    import datetime as dt

    from sqlalchemy import select, update

    from orchard.members.models import Member

    ids = _fixture(session)
    rfm.refresh(session, now=NOW)
    session.execute(update(Member).where(Member.id == ids["J"]).values(status="merged"))
    k = member(session)
    order(session, k, local(2026, 4, 2, 9), 7_000)
    later = NOW + dt.timedelta(days=1)
    result = rfm.refresh(session, now=later)

    def snapshot():
        return {r.member_id: (r.recency_days, r.frequency, r.monetary_fen, r.r_score, r.f_score, r.m_score,
                              r.rfm_class, r.value_tier, r.computed_on)
                for r in session.scalars(select(MemberRfm))}

    updated = snapshot()
    assert ids["J"] not in updated and k in updated and len(updated) == 10 == result["members"]
    assert updated[ids["A"]][0] == 2 and updated[k][0] == 0  # R moved on a day; K bought today
    assert {v[-1].isoformat() for v in updated.values()} == {"2026-04-02"}
    session.execute(MemberRfm.__table__.delete())
    rfm.refresh(session, now=later)
    assert snapshot() == updated
