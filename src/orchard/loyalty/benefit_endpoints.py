"""Benefit library routes (SPEC B3, B4)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.loyalty import benefits
from orchard.loyalty.models import Benefit, TierLevel
from orchard.loyalty.schemas import BenefitIn, BenefitPolicyIn, BenefitRead, MemberBenefitsRead
from orchard.members import scope
from orchard.org.models import OrgUnit
from orchard.org.service import store_id_for_code

router = APIRouter(tags=["benefits"])
BenefitId = Annotated[int, Path(ge=1, le=2**62)]
MemberId = Annotated[int, Path(ge=1, le=2**62)]


def _read(session, b: Benefit) -> BenefitRead:
    code = session.scalar(select(OrgUnit.code).where(OrgUnit.id == b.owner_store_id)) if b.owner_store_id else None
    return BenefitRead(id=b.id, code=b.code, name=b.name, kind=b.kind, monetary=b.monetary,
                       description=b.description, tier_codes=b.tier_codes, store_code=code, active=b.active)


@router.get("/benefits", response_model=list[BenefitRead], operation_id="listBenefits")
def list_benefits(session: SessionDep, principal: Actor(Perm.members_read)) -> list[BenefitRead]:
    """HQ's benefits and, for store staff, their stores' own (everyone's for HQ roles)."""
    return [_read(session, b) for b in benefits.listing(session, store_ids=principal.store_ids)]


@router.post("/benefits", response_model=BenefitRead, status_code=201, operation_id="createBenefit",
             responses={409: {"description": "benefit.store_share (above HQ's share) or benefit.code_taken"}})
def create_benefit(body: BenefitIn, session: SessionDep, principal: Actor(Perm.benefits_manage)) -> BenefitRead:
    store_id = store_id_for_code(session, body.store_code, field="store_code") if body.store_code else None
    if principal.store_ids is not None and (store_id is None or store_id not in principal.store_ids):
        raise InvalidInput.field("store_code", "store staff add benefits for one of their stores")
    return _read(session, benefits.create(session, body, store_id=store_id, actor=principal.actor))


@router.post("/benefits/{benefit_id}/deactivate", response_model=BenefitRead, operation_id="deactivateBenefit")
def deactivate(benefit_id: BenefitId, session: SessionDep, principal: Actor(Perm.benefits_manage)) -> BenefitRead:
    return _read(session, benefits.set_active(session, benefit_id, False, store_ids=principal.store_ids,
                                              actor=principal.actor))


@router.post("/benefits/{benefit_id}/activate", response_model=BenefitRead, operation_id="activateBenefit")
def activate(benefit_id: BenefitId, session: SessionDep, principal: Actor(Perm.benefits_manage)) -> BenefitRead:
    return _read(session, benefits.set_active(session, benefit_id, True, store_ids=principal.store_ids,
                                              actor=principal.actor))


@router.put("/benefits/policy", response_model=BenefitPolicyIn, operation_id="setBenefitPolicy")
def set_policy(body: BenefitPolicyIn, session: SessionDep, principal: Actor(Perm.points_rules)) -> BenefitPolicyIn:
    """The largest share (%) of what a member sees that a store's own benefits may take."""
    return BenefitPolicyIn(store_share_max_pct=benefits.set_share(session, body.store_share_max_pct,
                                                                  actor=principal.actor))


@router.get("/members/{member_id}/benefits", response_model=MemberBenefitsRead, operation_id="getMemberBenefits")
def member_benefits(member_id: MemberId, session: SessionDep,
                    principal: Actor(Perm.members_read)) -> MemberBenefitsRead:
    """What the member is entitled to now: their tier's benefit data, and the library's benefits for
    their tier from HQ and their home store."""
    member = scope.get_visible(session, principal, member_id)
    tier, rows = benefits.for_member(session, member)
    level = session.scalar(select(TierLevel).where(TierLevel.code == tier)) if tier else None
    return MemberBenefitsRead(member_id=member.id, tier=tier, tier_benefits=level.benefits if level else {},
                              benefits=[_read(session, b) for b in rows])
