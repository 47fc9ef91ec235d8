"""Points catalog routes (SPEC L3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.kit.clock import as_utc
from orchard.loyalty import catalog
from orchard.loyalty.endpoints import store_for
from orchard.loyalty.models import CatalogItem
from orchard.loyalty.schemas import (
    CancelIn,
    CatalogItemIn,
    CatalogItemRead,
    CatalogRedeemIn,
    CatalogRedemptionRead,
)
from orchard.members import scope

router = APIRouter(tags=["points catalog"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]
ItemCode = Annotated[str, Path(min_length=1, max_length=32)]


@router.get("/catalog", response_model=list[CatalogItemRead], operation_id="listCatalog")
def list_items(session: SessionDep, principal: Actor(Perm.members_read),
               active_only: Annotated[bool, Query()] = True) -> list[CatalogItemRead]:
    q = select(CatalogItem).order_by(CatalogItem.points_cost, CatalogItem.id)
    if active_only:
        q = q.where(CatalogItem.active.is_(True))
    return [CatalogItemRead.model_validate(i) for i in session.scalars(q)]


@router.put("/catalog/{item_code}", response_model=CatalogItemRead, operation_id="putCatalogItem")
def put_item(item_code: ItemCode, body: CatalogItemIn, session: SessionDep,
             principal: Actor(Perm.points_rules)) -> CatalogItemRead:
    """Create or replace an item (audited). Stock set here is what is left to redeem."""
    if body.code != item_code:
        raise InvalidInput.field("code", "must match the path")
    if (body.kind == "coupon") != (body.coupon_template_id is not None):
        raise InvalidInput.field("coupon_template_id", "a coupon item names its coupon template; others do not")
    if body.starts_at and body.ends_at and as_utc(body.starts_at) >= as_utc(body.ends_at):
        raise InvalidInput.field("ends_at", "must be after starts_at")
    body = body.model_copy(update={"starts_at": as_utc(body.starts_at) if body.starts_at else None,
                                   "ends_at": as_utc(body.ends_at) if body.ends_at else None})
    return CatalogItemRead.model_validate(catalog.upsert_item(session, body, actor=principal.actor))


@router.post("/members/{member_id}/catalog/{item_code}/redeem", response_model=CatalogRedemptionRead,
             operation_id="redeemCatalogItem",
             responses={409: {"description": "catalog.out_of_stock, catalog.limit, catalog.unavailable, "
                                             "points.insufficient or catalog.id_reused"}})
def redeem(member_id: MemberId, item_code: ItemCode, body: CatalogRedeemIn, session: SessionDep,
           principal: Actor(Perm.points_spend)) -> CatalogRedemptionRead:
    """Redeem an item for points: stock, the member's limit and balance are checked atomically; a
    repeated `external_id` returns the first redemption."""
    member = scope.get_visible(session, principal, member_id)
    store_id = store_for(session, principal, body.store_code)
    row, _ = catalog.redeem(session, member_id=member.id, code=item_code, quantity=body.quantity,
                            source=body.source, external_id=body.external_id, store_id=store_id, actor=principal.actor)
    return _read(session, row)


def _read(session, row) -> CatalogRedemptionRead:
    return CatalogRedemptionRead.model_validate(row).model_copy(
        update={"coupon_codes": [c.code for c in catalog.coupons_of(session, row)]})


@router.post("/members/{member_id}/catalog/redemptions/{external_id}/cancel", response_model=CatalogRedemptionRead,
             operation_id="cancelCatalogRedemption")
def cancel(member_id: MemberId, external_id: Annotated[str, Path(min_length=1, max_length=128)], body: CancelIn,
           session: SessionDep, principal: Actor(Perm.points_spend),
           source: Annotated[str, Query(min_length=1, max_length=64)] = "api") -> CatalogRedemptionRead:
    """Cancel a redemption (not handed over): points back to their lots, stock back; once."""
    member = scope.get_visible(session, principal, member_id)
    return _read(session, catalog.cancel(session, member_id=member.id, source=source, external_id=external_id,
                                         reason=body.reason, actor=principal.actor))
