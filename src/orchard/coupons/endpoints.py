"""Coupon routes on members and codes, scoped like every member route: a coupon whose holder the
caller may not see does not exist (404, the same answer as an unknown code)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from sqlalchemy.orm import Session

from orchard.auth.roles import Perm
from orchard.auth.service import Principal
from orchard.coupons import issuing, reads, redeeming, rules
from orchard.coupons.models import Coupon
from orchard.coupons.schemas import (
    CancelRedemptionIn,
    CouponPage,
    CouponRead,
    IssueIn,
    RedeemIn,
    RedemptionRead,
    VoidIn,
)
from orchard.deps import Actor, SessionDep
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.members import scope
from orchard.org.service import store_id_for_code

router = APIRouter(tags=["coupons"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]
CodePath = Annotated[str, Path(min_length=1, max_length=64, description="the coupon code, dashes and case ignored")]


def _visible(session: Session, principal: Principal, code: str) -> Coupon:
    coupon = redeeming.by_code(session, code)
    try:
        scope.get_visible(session, principal, coupon.member_id)
    except NotFound:
        raise NotFound("券不存在 coupon not found", code="coupon.not_found") from None
    return coupon


@router.get("/members/{member_id}/coupons", response_model=CouponPage, operation_id="listMemberCoupons")
def wallet(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read),
           status: Literal["issued", "redeemed", "expired", "voided"] | None = None,
           usable: Annotated[bool, Query(description="only coupons usable now")] = False,
           limit: Annotated[int, Query(ge=1, le=200)] = 50,
           cursor: Annotated[str | None, Query(max_length=200)] = None) -> CouponPage:
    """The member's wallet (卡包), newest first."""
    member = scope.get_visible(session, principal, member_id)
    items, last = reads.wallet(session, member_id=member.id, status=status, usable=usable,
                               after_id=decode_cursor(cursor), limit=limit)
    return CouponPage(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/members/{member_id}/coupons", response_model=CouponRead, status_code=201,
             operation_id="issueMemberCoupon",
             responses={409: {"description": "coupon.limit_reached | coupon.member_limit_reached | "
                                             "coupon_template.inactive | coupon_template.ended | coupon.id_reused"}})
def issue(member_id: MemberId, body: IssueIn, session: SessionDep, principal: Actor(Perm.coupons_issue)) -> CouponRead:
    """Issue one coupon (a clerk's quick issue with a reason, a journey step, a mini-program claim).
    A repeated (source, external_id) returns the first coupon."""
    member = scope.get_visible(session, principal, member_id)
    coupon, _ = issuing.issue_one(session, template_id=body.template_id, member_id=member.id, source=body.source,
                                  external_id=body.external_id, reason=body.reason, actor=principal.actor)
    return reads.one(session, coupon)


@router.get("/coupons/{code}", response_model=CouponRead, operation_id="getCoupon")
def get_coupon(code: CodePath, session: SessionDep, principal: Actor(Perm.members_read)) -> CouponRead:
    """A coupon by its code (a POS checking what a member shows)."""
    return reads.one(session, _visible(session, principal, code))


def _store(session: Session, principal: Principal, code: str | None) -> int | None:
    store_id = store_id_for_code(session, code)
    if principal.store_ids is not None:
        if store_id is None:
            raise InvalidInput.field("store_code", "required: store staff redeem at one of their stores")
        if store_id not in principal.store_ids:
            raise InvalidInput.field("store_code", f"store {code!r} is outside your stores")
    return store_id


@router.post("/coupons/{code}/redeem", response_model=RedemptionRead, operation_id="redeemCoupon",
             responses={409: {"description": "coupon.already_redeemed | coupon.expired | coupon.not_yet_valid | "
                                             "coupon.voided | coupon.store_not_allowed | coupon.channel_not_allowed "
                                             "| coupon.category_not_allowed | coupon.below_threshold | "
                                             "coupon.not_stackable | coupon.other_member | coupon.id_reused | "
                                             "coupon.redemption_cancelled"}})
def redeem(code: CodePath, body: RedeemIn, session: SessionDep,
           principal: Actor(Perm.coupons_redeem)) -> RedemptionRead:
    """Redeem exactly once. A retry for the same order answers with the first redemption; another
    order gets 409 coupon.already_redeemed."""
    coupon = _visible(session, principal, code)
    if body.member_id is not None and scope.get_visible(session, principal, body.member_id).id != coupon.member_id:
        raise Conflict("该券属于其他会员 the coupon belongs to another member", code="coupon.other_member")
    lines = None if body.lines is None else tuple(rules.Line(ln.category, ln.amount_fen) for ln in body.lines)
    if lines and sum(ln.amount_fen for ln in lines) > body.amount_fen:
        raise InvalidInput.field("lines", "the lines add up to more than amount_fen")
    order = redeeming.Order(source=body.order_source, external_id=body.order_external_id, amount_fen=body.amount_fen,
                            store_id=_store(session, principal, body.store_code), store_code=body.store_code,
                            channel=body.channel, lines=lines)
    redemption, _ = redeeming.redeem(session, coupon=coupon, order=order, actor=principal.actor)
    return reads.redemption_read(session, redemption, coupon)


@router.post("/coupons/{code}/redemption/cancel", response_model=RedemptionRead,
             operation_id="cancelCouponRedemption",
             responses={404: {"description": "coupon.redemption_not_found: not redeemed by that order"}})
def cancel_redemption(code: CodePath, body: CancelRedemptionIn, session: SessionDep,
                      principal: Actor(Perm.coupons_redeem)) -> RedemptionRead:
    """Undo a redemption (the order was cancelled): the coupon is usable again until its window ends.
    Once per redemption; a repeat returns the undone redemption."""
    coupon = _visible(session, principal, code)
    redemption, _ = redeeming.cancel(session, coupon=coupon, order_source=body.order_source,
                                     order_id=body.order_external_id, reason=body.reason, actor=principal.actor)
    return reads.redemption_read(session, redemption, coupon)


@router.post("/coupons/{code}/void", response_model=CouponRead, operation_id="voidCoupon",
             responses={409: {"description": "coupon.not_voidable (redeemed or expired)"}})
def void(code: CodePath, body: VoidIn, session: SessionDep, principal: Actor(Perm.coupons_manage)) -> CouponRead:
    """Void an unused coupon with a reason (audited)."""
    coupon = _visible(session, principal, code)
    return reads.one(session, redeeming.void(session, coupon=coupon, reason=body.reason, actor=principal.actor))
