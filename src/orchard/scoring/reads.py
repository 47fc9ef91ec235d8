"""What the scoring routes read, always through the members scope: a store's staff see the scores and
counts of their stores' members only."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.members import scope
from orchard.members.models import Member
from orchard.scoring import rfm
from orchard.scoring.models import VALUE_TIERS, LifecycleChange, MemberLifecycle, MemberRfm
from orchard.scoring.schemas import (
    ClassCount,
    LifecycleChangeRead,
    MemberScoresRead,
    RfmClassRead,
    RfmSummaryRead,
)


def member_scores(session: Session, principal: Principal, member_id: int, *, english: bool,
                  history: int = 50) -> MemberScoresRead:
    member = scope.get_visible(session, principal, member_id)
    lc = session.get(MemberLifecycle, member.id)
    r = session.get(MemberRfm, member.id)
    changes = session.scalars(select(LifecycleChange).where(LifecycleChange.member_id == member.id)
                              .order_by(LifecycleChange.id.desc()).limit(history)).all()
    klass = rfm.describe(r.rfm_class, english) if r is not None else None
    return MemberScoresRead(
        member_id=member.id, stage=lc.stage if lc else None, stage_since=lc.since if lc else None,
        stage_computed_at=lc.computed_at if lc else None,
        recency_days=r.recency_days if r else None, frequency=r.frequency if r else None,
        monetary_fen=r.monetary_fen if r else None, r_score=r.r_score if r else None,
        f_score=r.f_score if r else None, m_score=r.m_score if r else None,
        rfm_class=RfmClassRead(**klass) if klass else None, value_tier=r.value_tier if r else None,
        rfm_computed_on=r.computed_on if r else None,
        lifecycle_history=[LifecycleChangeRead.model_validate(c, from_attributes=True) for c in changes])


def lifecycle_changes(session: Session, principal: Principal, *, to_stage: str | None, from_stage: str | None,
                      since: dt.datetime | None, until: dt.datetime | None, after_id: int | None,
                      limit: int) -> list[LifecycleChange]:
    """Transitions in id order (= pass order), newest passes last; `since`/`until` bound `at`."""
    stmt = select(LifecycleChange).join(Member, Member.id == LifecycleChange.member_id).where(
        scope.visible(principal))
    if to_stage is not None:
        stmt = stmt.where(LifecycleChange.to_stage == to_stage)
    if from_stage is not None:
        stmt = stmt.where(LifecycleChange.from_stage == from_stage)
    if since is not None:
        stmt = stmt.where(LifecycleChange.at >= since)
    if until is not None:
        stmt = stmt.where(LifecycleChange.at < until)
    if after_id is not None:
        stmt = stmt.where(LifecycleChange.id > after_id)
    return list(session.scalars(stmt.order_by(LifecycleChange.id).limit(limit)))


def rfm_summary(session: Session, principal: Principal, *, english: bool) -> RfmSummaryRead:
    rows = session.execute(
        select(MemberRfm.rfm_class, MemberRfm.value_tier, func.count(), func.max(MemberRfm.computed_on))
        .join(Member, Member.id == MemberRfm.member_id).where(scope.visible(principal))
        .group_by(MemberRfm.rfm_class, MemberRfm.value_tier)).all()
    by_class = {c[0]: 0 for c in rfm.CLASSES}
    tiers = dict.fromkeys(VALUE_TIERS, 0)
    members, computed_on = 0, None
    for klass, tier, n, on in rows:
        members += n
        computed_on = max(computed_on, on) if computed_on and on else (on or computed_on)
        if klass is not None:
            by_class[klass] += n
        if tier is not None:
            tiers[tier] += n
    classes = [ClassCount(**rfm.describe(code, english), members=n) for code, n in by_class.items()]
    return RfmSummaryRead(computed_on=computed_on, members=members, scored=sum(by_class.values()), classes=classes,
                          value_tiers=tiers)
