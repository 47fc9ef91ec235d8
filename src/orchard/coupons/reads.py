"""What wallets and POS screens read: coupons with their template's label, in the status a member
would see (an issued coupon past its window reads as expired even before the expiry pass)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from orchard.coupons import codes
from orchard.coupons.models import Coupon, CouponRedemption, CouponTemplate
from orchard.coupons.schemas import CouponRead, RedemptionRead
from orchard.coupons.templates import label
from orchard.kit.clock import utcnow
from orchard.org.models import OrgUnit


def effective_status(c: Coupon, now: dt.datetime) -> str:
    return "expired" if c.status == "issued" and c.valid_to <= now else c.status


def coupon_read(c: Coupon, t: CouponTemplate, store_code: str | None, now: dt.datetime | None = None) -> CouponRead:
    now = now or utcnow()
    status = effective_status(c, now)
    return CouponRead(
        id=c.id, code=c.code, code_display=codes.display(c.code), member_id=c.member_id, template_id=t.id,
        template_name=t.name, kind=t.kind, label=label(t), threshold_fen=t.threshold_fen, benefit=t.benefit or {},
        status=status, usable_now=status == "issued" and c.valid_from <= now, issued_at=c.issued_at,
        valid_from=c.valid_from, valid_to=c.valid_to, redeemed_at=c.redeemed_at, redeemed_store_code=store_code,
        redeemed_order_source=c.redeemed_order_source, redeemed_order_id=c.redeemed_order_id,
        discount_fen=c.discount_fen, voided_at=c.voided_at, void_reason=c.void_reason)


def one(session: Session, coupon: Coupon) -> CouponRead:
    t = session.get(CouponTemplate, coupon.template_id)
    store = session.get(OrgUnit, coupon.redeemed_store_id) if coupon.redeemed_store_id else None
    return coupon_read(coupon, t, store.code if store else None)


def wallet(session: Session, *, member_id: int, status: str | None = None, usable: bool = False,
           after_id: int | None = None, limit: int = 50,
           now: dt.datetime | None = None) -> tuple[list[CouponRead], int | None]:
    """The member's coupons, newest first. Returns (page, last id when there is a next page)."""
    now = now or utcnow()
    q = (select(Coupon, CouponTemplate, OrgUnit.code).join(CouponTemplate, CouponTemplate.id == Coupon.template_id)
         .outerjoin(OrgUnit, OrgUnit.id == Coupon.redeemed_store_id).where(Coupon.member_id == member_id))
    if status == "issued":
        q = q.where(Coupon.status == "issued", Coupon.valid_to > now)
    elif status == "expired":
        q = q.where(or_(Coupon.status == "expired", and_(Coupon.status == "issued", Coupon.valid_to <= now)))
    elif status is not None:
        q = q.where(Coupon.status == status)
    if usable:
        q = q.where(Coupon.status == "issued", Coupon.valid_from <= now, Coupon.valid_to > now)
    if after_id is not None:
        q = q.where(Coupon.id < after_id)
    rows = session.execute(q.order_by(Coupon.id.desc()).limit(limit + 1)).all()
    items = [coupon_read(c, t, code, now) for c, t, code in rows[:limit]]
    return items, (rows[limit - 1][0].id if len(rows) > limit else None)


def redemption_read(session: Session, r: CouponRedemption, coupon: Coupon) -> RedemptionRead:
    store = session.get(OrgUnit, r.store_id) if r.store_id else None
    t = session.get(CouponTemplate, coupon.template_id)
    return RedemptionRead(id=r.id, coupon_id=coupon.id, code=coupon.code, member_id=coupon.member_id,
                          order_source=r.order_source, order_external_id=r.order_id,
                          store_code=store.code if store else None, channel=r.channel,
                          order_amount_fen=r.order_amount_fen, eligible_fen=r.eligible_fen,
                          discount_fen=r.discount_fen, benefit=t.benefit or {}, redeemed_at=r.redeemed_at,
                          cancelled_at=r.cancelled_at, cancel_reason=r.cancel_reason)
