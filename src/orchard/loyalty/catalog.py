"""The points catalog (积分商城, SPEC L3): items bought with points (or points + cash), with stock
and a per-member limit, redeemed atomically — never more than the stock, never more than the member
holds, never more than their limit, even under concurrency.

A redemption, in one transaction: lock the member's points account (so one member's redemptions
serialise and the per-member count is exact), take the stock with a conditional UPDATE (`stock >=
quantity`; the item row stays locked until commit, so concurrent buyers of the last unit queue and
the loser sees 409 `catalog.out_of_stock`), spend the points through the ledger (409
`points.insufficient` rolls the stock back with everything else), and record the redemption; a
coupon item issues its template's coupons in the same transaction. It is idempotent on (source,
external_id). Cancelling voids those coupons (refused if one was used), restores the points to
their lots and the stock.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.coupons import issuing, redeeming
from orchard.coupons.models import Coupon, CouponTemplate
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.kit.hashing import fingerprint
from orchard.loyalty import ledger
from orchard.loyalty.models import CatalogItem, CatalogRedemption, PointsEntry


def get_item(session: Session, code: str) -> CatalogItem:
    item = session.scalar(select(CatalogItem).where(CatalogItem.code == code))
    if item is None:
        raise NotFound(f"no catalog item {code!r}")
    return item


def upsert_item(session: Session, body: Any, *, actor: str) -> CatalogItem:
    item = session.scalar(select(CatalogItem).where(CatalogItem.code == body.code).with_for_update())
    created = item is None
    if created:
        item = CatalogItem(code=body.code, created_at=utcnow())
        session.add(item)
    for key in ("name", "kind", "points_cost", "cash_fen", "stock", "per_member_limit", "active", "description"):
        setattr(item, key, getattr(body, key))
    item.starts_at = body.starts_at
    item.ends_at = body.ends_at
    item.coupon_template_id = body.coupon_template_id
    if body.coupon_template_id is not None and session.get(CouponTemplate, body.coupon_template_id) is None:
        raise InvalidInput.field("coupon_template_id", f"no coupon template {body.coupon_template_id}")
    session.flush()
    audit.record(session, actor=actor, action="catalog.item_created" if created else "catalog.item_updated",
                 entity="catalog_item", entity_id=item.id, data=body.model_dump(mode="json"))
    return item


def redeem(session: Session, *, member_id: int, code: str, quantity: int, source: str, external_id: str,
           store_id: int | None, actor: str, now: dt.datetime | None = None) -> tuple[CatalogRedemption, bool]:
    now = now or utcnow()
    body_hash = fingerprint({"member_id": member_id, "code": code, "quantity": quantity, "store_id": store_id})
    prior = _replay(session, source, external_id, body_hash)
    if prior is not None:
        return prior, False
    item = get_item(session, code)
    if not item.active or (item.starts_at and now < item.starts_at) or (item.ends_at and now >= item.ends_at):
        raise Conflict(f"{item.name} is not on offer now", code="catalog.unavailable")
    with session.begin_nested():
        ledger.lock_account(session, member_id)
        if (prior := _replay(session, source, external_id, body_hash)) is not None:
            return prior, False
        if item.per_member_limit is not None:
            had = session.scalar(select(func.coalesce(func.sum(CatalogRedemption.quantity), 0)).where(
                CatalogRedemption.member_id == member_id, CatalogRedemption.item_id == item.id,
                CatalogRedemption.status == "redeemed")) or 0
            if had + quantity > item.per_member_limit:
                raise Conflict(f"at most {item.per_member_limit} per member; {had} already redeemed",
                               code="catalog.limit", limit=item.per_member_limit, redeemed=int(had))
        took = session.execute(update(CatalogItem).where(
            CatalogItem.id == item.id, CatalogItem.stock.is_(None) | (CatalogItem.stock >= quantity))
            .values(stock=CatalogItem.stock - quantity, redeemed=CatalogItem.redeemed + quantity)).rowcount
        if took != 1:
            raise Conflict(f"{item.name} is out of stock", code="catalog.out_of_stock")
        points = item.points_cost * quantity
        entry, _ = ledger.post(session, ledger.Command(
            member_id=member_id, amount=-points, kind="spend", reason=f"积分兑换 {item.name} ×{quantity}"[:200],
            source="catalog", external_id=f"{source}:{external_id}"[:128], actor=actor, store_id=store_id,
            explanation={"catalog": {"code": item.code, "quantity": quantity, "cash_fen": item.cash_fen * quantity}},
            request={"code": code, "quantity": quantity}), now=now)
        row = CatalogRedemption(item_id=item.id, member_id=member_id, quantity=quantity, points=points,
                                cash_fen=item.cash_fen * quantity, points_entry_id=entry.id, status="redeemed",
                                source=source, external_id=external_id, body_hash=body_hash, store_id=store_id,
                                created_at=now)
        session.add(row)
        session.flush()
        if item.kind == "coupon":  # the coupon template's limits apply too: a refusal undoes it all
            for n in range(quantity):
                issuing.issue_one(session, template_id=item.coupon_template_id, member_id=member_id,
                                  source="catalog", external_id=_coupon_key(row, n), reason=f"积分兑换 {item.name}",
                                  actor=actor, now=now)
    audit.record(session, actor=actor, action="catalog.redeemed", entity="member", entity_id=member_id,
                 data={"item": item.code, "quantity": quantity, "points": points, "redemption_id": row.id})
    return row, True


def _coupon_key(row: CatalogRedemption, n: int) -> str:
    return f"redemption-{row.id}-{n + 1}"


def coupons_of(session: Session, row: CatalogRedemption) -> list[Coupon]:
    """The coupons a coupon item's redemption issued."""
    keys = [_coupon_key(row, n) for n in range(row.quantity)]
    return list(session.scalars(select(Coupon).where(Coupon.source == "catalog", Coupon.external_id.in_(keys))
                                .order_by(Coupon.id)))


def _replay(session: Session, source: str, external_id: str, body_hash: str) -> CatalogRedemption | None:
    row = session.scalar(select(CatalogRedemption).where(CatalogRedemption.source == source,
                                                         CatalogRedemption.external_id == external_id))
    if row is not None and row.body_hash != body_hash:
        raise Conflict(f"redemption {source}/{external_id} was already received with another body",
                       code="catalog.id_reused")
    return row


def cancel(session: Session, *, member_id: int, source: str, external_id: str, reason: str,
           actor: str) -> CatalogRedemption:
    """The gift was not handed over: points back to their lots, stock back; once."""
    row = session.scalar(select(CatalogRedemption).where(
        CatalogRedemption.source == source, CatalogRedemption.external_id == external_id,
        CatalogRedemption.member_id == member_id).with_for_update())
    if row is None:
        raise NotFound(f"no redemption {source}/{external_id} for member {member_id}")
    if row.status == "cancelled":
        return row
    if reason.strip() == "":
        raise InvalidInput.field("reason", "required")
    for coupon in coupons_of(session, row):  # a coupon already used cannot be given back (409)
        redeeming.void(session, coupon=coupon, reason=f"取消兑换 {reason}"[:200], actor=actor)
    spend = session.get(PointsEntry, row.points_entry_id)
    ledger.restore(session, spend=spend, reason=f"取消兑换 {reason}"[:200], actor=actor)
    session.execute(update(CatalogItem).where(CatalogItem.id == row.item_id).values(
        stock=CatalogItem.stock + row.quantity, redeemed=CatalogItem.redeemed - row.quantity))
    row.status, row.cancelled_at = "cancelled", utcnow()
    session.flush()
    audit.record(session, actor=actor, action="catalog.cancelled", entity="member", entity_id=member_id,
                 data={"redemption_id": row.id, "reason": reason})
    return row
