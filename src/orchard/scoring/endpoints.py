"""Scoring routes: the policy, a member's scores and lifecycle history, lifecycle transitions and the
RFM summary. Reads go through the members scope (store staff: their stores' members only)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.kit import i18n
from orchard.kit.clock import PlausibleDateTime, as_utc
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.scoring import policy, reads
from orchard.scoring.schemas import LifecycleChangePage, LifecycleChangeRead, MemberScoresRead, RfmSummaryRead

router = APIRouter(tags=["scoring"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]
Stage = Literal["registered", "new", "active", "declining", "dormant", "lost"]


def _english(request: Request) -> bool:
    return i18n.wants_english(request.headers.get("accept-language"))


@router.get("/scoring/policy", response_model=policy.Policy, operation_id="getScoringPolicy")
def get_policy(session: SessionDep, principal: Actor(Perm.members_read)) -> policy.Policy:
    """The thresholds in force (the retail preset's until one is set)."""
    return policy.get_policy(session)


@router.put("/scoring/policy", response_model=policy.Policy, operation_id="setScoringPolicy")
def set_policy(body: policy.PolicyIn, session: SessionDep, principal: Actor(Perm.scoring_policy)) -> policy.Policy:
    """Replace the policy (audited). Sections left out take the preset's defaults. Applies at the next
    scoring pass (`orchard scoring run`)."""
    return policy.set_policy(session, body, actor=principal.actor)


@router.get("/members/{member_id}/scores", response_model=MemberScoresRead, operation_id="getMemberScores")
def member_scores(member_id: MemberId, request: Request, session: SessionDep,
                  principal: Actor(Perm.members_read)) -> MemberScoresRead:
    """Lifecycle stage and since when, RFM scores and class (name and recommended action), value tier,
    and the member's latest lifecycle transitions (newest first)."""
    return reads.member_scores(session, principal, member_id, english=_english(request))


@router.get("/scoring/lifecycle/changes", response_model=LifecycleChangePage, operation_id="listLifecycleChanges")
def lifecycle_changes(session: SessionDep, principal: Actor(Perm.members_read),
                      to_stage: Stage | None = None, from_stage: Stage | None = None,
                      since: PlausibleDateTime | None = None, until: PlausibleDateTime | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      cursor: Annotated[str | None, Query(max_length=200)] = None) -> LifecycleChangePage:
    """Stage transitions, e.g. `?to_stage=dormant&since=2026-11-01` (a date without a zone is the
    tenant's midnight). `at` is when the scoring pass saw the transition."""
    since_utc = as_utc(since) if since is not None else None
    until_utc = as_utc(until) if until is not None else None
    if since_utc and until_utc and until_utc <= since_utc:
        raise InvalidInput.field("until", "must be after since")
    rows = reads.lifecycle_changes(session, principal, to_stage=to_stage, from_stage=from_stage, since=since_utc,
                                   until=until_utc, after_id=decode_cursor(cursor), limit=limit + 1)
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return LifecycleChangePage(items=[LifecycleChangeRead.model_validate(r, from_attributes=True)
                                      for r in rows[:limit]], next_cursor=nxt)


@router.get("/scoring/rfm/summary", response_model=RfmSummaryRead, operation_id="getRfmSummary")
def rfm_summary(request: Request, session: SessionDep, principal: Actor(Perm.members_read)) -> RfmSummaryRead:
    """Members per RFM class (with name and recommended action) and per value tier, at the last pass."""
    return reads.rfm_summary(session, principal, english=_english(request))
