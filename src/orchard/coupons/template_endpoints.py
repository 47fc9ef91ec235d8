"""Coupon template routes: list, create, read, change status/limits, redemption rates, bulk issue."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from orchard.auth.roles import Perm
from orchard.coupons import issuing, templates
from orchard.coupons.schemas import BatchRead, BulkIssueIn, StatsRead, TemplateIn, TemplatePatch, TemplateRead
from orchard.deps import Actor, SessionDep

router = APIRouter(tags=["coupon templates"])
TemplateId = Annotated[int, Path(ge=1, le=2**62)]
Campaign = Annotated[str | None, Query(min_length=1, max_length=64)]


@router.get("/coupon-templates", response_model=list[TemplateRead], operation_id="listCouponTemplates")
def list_templates(session: SessionDep, principal: Actor(Perm.members_read),
                   status: Literal["active", "inactive"] | None = None,
                   campaign: Campaign = None) -> list[TemplateRead]:
    return [templates.read(t) for t in templates.listing(session, status=status, campaign=campaign)]


@router.post("/coupon-templates", response_model=TemplateRead, status_code=201, operation_id="createCouponTemplate")
def create_template(body: TemplateIn, session: SessionDep, principal: Actor(Perm.coupons_manage)) -> TemplateRead:
    return templates.read(templates.create(session, body=body, actor=principal.actor))


@router.get("/coupon-templates/stats", response_model=list[StatsRead], operation_id="listCouponStats")
def list_stats(session: SessionDep, principal: Actor(Perm.members_read), campaign: Campaign = None) -> list[StatsRead]:
    """Redemption rate (核销率) of every template, or of one campaign's templates."""
    return templates.stats(session, campaign=campaign)


@router.get("/coupon-templates/{template_id}", response_model=TemplateRead, operation_id="getCouponTemplate")
def get_template(template_id: TemplateId, session: SessionDep, principal: Actor(Perm.members_read)) -> TemplateRead:
    return templates.read(templates.get(session, template_id))


@router.patch("/coupon-templates/{template_id}", response_model=TemplateRead, operation_id="updateCouponTemplate")
def update_template(template_id: TemplateId, body: TemplatePatch, session: SessionDep,
                    principal: Actor(Perm.coupons_manage)) -> TemplateRead:
    """Rename, (de)activate or change the limits. Terms cannot change: create a new template."""
    return templates.read(templates.update(session, template_id=template_id, patch=body, actor=principal.actor))


@router.get("/coupon-templates/{template_id}/stats", response_model=StatsRead, operation_id="getCouponTemplateStats")
def get_stats(template_id: TemplateId, session: SessionDep, principal: Actor(Perm.members_read)) -> StatsRead:
    """Issued, redeemed, expired, voided, outstanding and the redemption rate of one template."""
    return templates.stats(session, template_id=template_id)[0]


@router.post("/coupon-templates/{template_id}/issue", response_model=BatchRead, status_code=201,
             operation_id="bulkIssueCoupons",
             responses={409: {"description": "coupon_template.inactive | coupon_template.ended | coupon.id_reused"}})
def bulk_issue(template_id: TemplateId, body: BulkIssueIn, session: SessionDep,
               principal: Actor(Perm.coupons_manage)) -> BatchRead:
    """One coupon to each listed member in one pass (up to 100,000 ids per call; the CLI takes files of
    any size). A repeated (source, external_id) returns the first batch."""
    batch, _ = issuing.issue_bulk(session, template_id=template_id, member_ids=body.member_ids, source=body.source,
                                  external_id=body.external_id, reason=body.reason, actor=principal.actor)
    return BatchRead.model_validate(batch)
