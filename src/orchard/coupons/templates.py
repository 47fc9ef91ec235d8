"""Managing coupon templates: validated terms, known store codes, audited changes, redemption rates.

Terms (kind, amounts, validity, scope, stacking) are fixed at creation: coupons already in wallets
are redeemed under their template's terms, so changing them would change promises already made. An
operator deactivates a template (no new issues; issued coupons stay usable until they expire or are
voided) and creates a new one. Name, description, status and limits may change; a limit cannot go
below what was already issued.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.coupons.kinds import KINDS, Terms
from orchard.coupons.models import Coupon, CouponTemplate
from orchard.coupons.rules import Scope
from orchard.coupons.schemas import StatsRead, TemplateIn, TemplatePatch, TemplateRead
from orchard.errors import InvalidInput, NotFound
from orchard.kit.clock import as_utc, utcnow
from orchard.org.models import OrgUnit, UnitKind


def terms_of(t: CouponTemplate | TemplateIn) -> Terms:
    benefit = t.benefit if isinstance(t.benefit, dict) else t.benefit.model_dump(exclude_none=True)
    return Terms(kind=t.kind, threshold_fen=t.threshold_fen, off_fen=t.off_fen, percent=t.percent,
                 max_off_fen=t.max_off_fen, benefit=benefit)


def scope_of(t: CouponTemplate) -> Scope:
    return Scope(stores=tuple(t.stores or ()), categories=tuple(t.categories or ()),
                 channels=tuple(t.channels or ()), stackable=t.stackable, exclusive_group=t.exclusive_group)


def label(t: CouponTemplate) -> str:
    return KINDS[t.kind].describe(terms_of(t))


def read(t: CouponTemplate) -> TemplateRead:
    return TemplateRead.model_validate({**{c.key: getattr(t, c.key) for c in CouponTemplate.__table__.columns},
                                        "label": label(t)})


def _check(session: Session, body: TemplateIn) -> tuple[dt.datetime | None, dt.datetime | None]:
    terms = terms_of(body)
    KINDS[body.kind].check(terms)
    valid_from = as_utc(body.valid_from) if body.valid_from else None
    valid_to = as_utc(body.valid_to) if body.valid_to else None
    if body.validity == "fixed":
        if valid_from is None or valid_to is None:
            raise InvalidInput.field("valid_from" if valid_from is None else "valid_to",
                                     "required for fixed validity")
        if valid_to <= valid_from:
            raise InvalidInput.field("valid_to", "must be after valid_from (it is the first instant not valid)")
        if body.valid_days is not None:
            raise InvalidInput.field("valid_days", "only for relative validity")
    else:
        if body.valid_days is None:
            raise InvalidInput.field("valid_days", "required for relative validity (days after issue)")
        if valid_from or valid_to:
            raise InvalidInput.field("valid_from" if valid_from else "valid_to", "only for fixed validity")
    if body.stores:
        units = dict(session.execute(select(OrgUnit.code, OrgUnit.kind).where(OrgUnit.code.in_(body.stores))).all())
        for i, code in enumerate(body.stores):
            if units.get(code) != UnitKind.store:
                raise InvalidInput.field(f"stores[{i}]", f"unknown store code {code!r}")
    if body.exclusive_group and not body.stackable:
        raise InvalidInput.field("exclusive_group", "only stackable coupons have an exclusive group "
                                                    "(a non-stackable one is alone on its order anyway)")
    return valid_from, valid_to


def create(session: Session, *, body: TemplateIn, actor: str) -> CouponTemplate:
    valid_from, valid_to = _check(session, body)
    now = utcnow()
    t = CouponTemplate(
        name=body.name, description=body.description, kind=body.kind, status=body.status, campaign=body.campaign,
        off_fen=body.off_fen, percent=body.percent, max_off_fen=body.max_off_fen, threshold_fen=body.threshold_fen,
        benefit=body.benefit.model_dump(exclude_none=True), validity=body.validity, valid_from=valid_from,
        valid_to=valid_to, valid_days=body.valid_days, starts_after_days=body.starts_after_days,
        stores=sorted(set(body.stores)), categories=sorted(set(body.categories)), channels=sorted(set(body.channels)),
        stackable=body.stackable, exclusive_group=body.exclusive_group, total_limit=body.total_limit,
        per_member_limit=body.per_member_limit, issued_count=0, created_by=actor, created_at=now, updated_at=now)
    session.add(t)
    session.flush()
    audit.record(session, actor=actor, action="coupon_template.created", entity="coupon_template", entity_id=t.id,
                 data={"template": _snapshot(t)})
    return t


def update(session: Session, *, template_id: int, patch: TemplatePatch, actor: str) -> CouponTemplate:
    t = get(session, template_id, lock=True)
    changes = patch.model_dump(exclude_unset=True)
    for key in ("name", "status"):
        if key in changes and changes[key] is None:
            raise InvalidInput.field(key, "cannot be null")
    if changes.get("total_limit") is not None and changes["total_limit"] < t.issued_count:
        raise InvalidInput.field("total_limit", f"{t.issued_count} coupons were already issued")
    before = _snapshot(t)
    for key, value in changes.items():
        setattr(t, key, value)
    t.updated_at = utcnow()
    session.flush()
    audit.record(session, actor=actor, action="coupon_template.updated", entity="coupon_template", entity_id=t.id,
                 data={"before": {k: before[k] for k in changes}, "after": changes})
    return t


def get(session: Session, template_id: int, *, lock: bool = False) -> CouponTemplate:
    stmt = select(CouponTemplate).where(CouponTemplate.id == template_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    t = session.scalar(stmt)
    if t is None:
        raise NotFound(f"券模板不存在 no coupon template {template_id}", code="coupon_template.not_found")
    return t


def listing(session: Session, *, status: str | None = None, campaign: str | None = None) -> list[CouponTemplate]:
    q = select(CouponTemplate)
    if status:
        q = q.where(CouponTemplate.status == status)
    if campaign:
        q = q.where(CouponTemplate.campaign == campaign)
    return list(session.scalars(q.order_by(CouponTemplate.id)))


def stats(session: Session, *, template_id: int | None = None, campaign: str | None = None,
          now: dt.datetime | None = None) -> list[StatsRead]:
    """Per template: issued, redeemed, expired (an issued coupon past its window counts, before the
    expiry pass has run), voided, outstanding, the redemption rate and the discount given. One
    grouped query."""
    now = now or utcnow()
    lapsed = (Coupon.status == "issued") & (Coupon.valid_to <= now)

    def n(cond) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    counts = (select(Coupon.template_id.label("tid"), func.count().label("issued"),
                     n(Coupon.status == "redeemed").label("redeemed"),
                     n((Coupon.status == "expired") | lapsed).label("expired"),
                     n(Coupon.status == "voided").label("voided"),
                     func.coalesce(func.sum(Coupon.discount_fen), 0).label("discount"))
              .group_by(Coupon.template_id).subquery())
    q = (select(CouponTemplate.id, CouponTemplate.name, CouponTemplate.campaign, counts)
         .outerjoin(counts, counts.c.tid == CouponTemplate.id).order_by(CouponTemplate.id))
    if template_id is not None:
        get(session, template_id)
        q = q.where(CouponTemplate.id == template_id)
    if campaign:
        q = q.where(CouponTemplate.campaign == campaign)
    out = []
    for row in session.execute(q):
        issued, redeemed = int(row.issued or 0), int(row.redeemed or 0)
        expired, voided = int(row.expired or 0), int(row.voided or 0)
        out.append(StatsRead(template_id=row.id, name=row.name, campaign=row.campaign, issued=issued,
                             redeemed=redeemed, expired=expired, voided=voided,
                             outstanding=issued - redeemed - expired - voided,
                             redemption_rate=round(redeemed / issued, 4) if issued else 0.0,
                             discount_fen=int(row.discount or 0)))
    return out


def _snapshot(t: CouponTemplate) -> dict[str, Any]:
    out = {}
    for c in CouponTemplate.__table__.columns:
        v = getattr(t, c.key)
        out[c.key] = v.isoformat() if isinstance(v, dt.datetime) else v
    return out
