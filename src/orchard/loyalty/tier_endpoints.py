"""Tier and growth routes: the program, evaluation, a member's standing, history, overrides, and
growth value."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import NotFound
from orchard.kit.clock import as_utc
from orchard.loyalty import growth, tiers
from orchard.loyalty.schemas import (
    EvaluationRead,
    GrowthAdjustIn,
    GrowthRead,
    TierChangeRead,
    TierLevelRead,
    TierOverrideIn,
    TierProgramIn,
    TierProgramRead,
    TierStandingRead,
)
from orchard.members import scope

router = APIRouter(tags=["tiers"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]


def _program_read(session) -> TierProgramRead:
    prog = tiers.program(session)
    if prog is None:
        raise NotFound("no tier program is set up", code="tiers.none")
    return TierProgramRead(metric=prog.metric, period=prog.period, downgrade=prog.downgrade,
                           hold_days=prog.hold_days, weights=prog.weights,
                           levels=[TierLevelRead.model_validate(lv) for lv in tiers.levels(session)])


@router.get("/tiers", response_model=TierProgramRead, operation_id="getTierProgram")
def get_program(session: SessionDep, principal: Actor(Perm.members_read)) -> TierProgramRead:
    return _program_read(session)


@router.put("/tiers", response_model=TierProgramRead, operation_id="setTierProgram")
def set_program(body: TierProgramIn, session: SessionDep, principal: Actor(Perm.points_rules)) -> TierProgramRead:
    """Replace the tier program and its levels (audited). Run `POST /tiers/evaluate` (or the
    scheduled `orchard tiers evaluate`) to apply it to everyone at once."""
    tiers.set_program(session, body, actor=principal.actor)
    return _program_read(session)


@router.post("/tiers/evaluate", response_model=EvaluationRead, operation_id="evaluateTiers")
def evaluate(session: SessionDep, principal: Actor(Perm.points_rules)) -> EvaluationRead:
    """Re-evaluate every member in one set-based pass: upgrades, renewed holds, downgrades after the
    hold, ended overrides."""
    r = tiers.evaluate(session, actor=principal.actor)
    return EvaluationRead(members=r.members, upgraded=r.upgraded, downgraded=r.downgraded,
                          overrides_ended=r.overrides_ended)


@router.get("/members/{member_id}/tier", response_model=TierStandingRead, operation_id="getMemberTier")
def get_member_tier(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> TierStandingRead:
    """The member's tier, the metric now, and what reaching the next tier / keeping this one needs."""
    member = scope.get_visible(session, principal, member_id)
    s = tiers.standing(session, member.id)
    return TierStandingRead(
        member_id=member.id, level=TierLevelRead.model_validate(s.level),
        effective_level=TierLevelRead.model_validate(s.effective), since=s.since, keep_until=s.keep_until,
        override_until=s.override_until, metric=s.metric, period=s.period, value=s.value,
        next_level=TierLevelRead.model_validate(s.next_level) if s.next_level else None, next_needs=s.next_needs,
        keep_needs=s.keep_needs, period_ends=s.period_ends)


@router.get("/members/{member_id}/tier/history", response_model=list[TierChangeRead],
            operation_id="listMemberTierChanges")
def member_tier_history(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read),
                        limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[TierChangeRead]:
    member = scope.get_visible(session, principal, member_id)
    return [TierChangeRead(at=c.at, from_level=f, to_level=t, reason=c.reason, metric_value=c.metric_value,
                           actor=c.actor, details=c.details) for c, f, t in tiers.history(session, member.id, limit)]


@router.post("/members/{member_id}/tier/override", response_model=TierStandingRead,
             operation_id="overrideMemberTier")
def override_member_tier(member_id: MemberId, body: TierOverrideIn, session: SessionDep,
                         principal: Actor(Perm.points_adjust)) -> TierStandingRead:
    """Set the member's tier by hand until a date (reason required, audited, recorded)."""
    member = scope.get_visible(session, principal, member_id)
    tiers.override(session, member_id=member.id, level_code=body.level, until=as_utc(body.until), reason=body.reason,
                   actor=principal.actor)
    return get_member_tier(member.id, session, principal)


@router.get("/members/{member_id}/growth", response_model=GrowthRead, operation_id="getMemberGrowth")
def get_growth(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> GrowthRead:
    member = scope.get_visible(session, principal, member_id)
    return GrowthRead(member_id=member.id, balance=growth.balance(session, member.id))


@router.post("/members/{member_id}/growth/adjust", response_model=GrowthRead, operation_id="adjustMemberGrowth",
             responses={409: {"description": "growth.insufficient or growth.id_reused"}})
def adjust_growth(member_id: MemberId, body: GrowthAdjustIn, session: SessionDep,
                  principal: Actor(Perm.points_adjust)) -> GrowthRead:
    """A manual growth correction (reason required, audited); idempotent on external_id. An upgrade
    it causes happens at once."""
    member = scope.get_visible(session, principal, member_id)
    _, created = growth.adjust(session, member_id=member.id, amount=body.amount, reason=body.reason,
                               source=body.source, external_id=body.external_id, actor=principal.actor)
    if created and body.amount > 0:
        tiers.on_activity(session, member.id)
    return GrowthRead(member_id=member.id, balance=growth.balance(session, member.id))
