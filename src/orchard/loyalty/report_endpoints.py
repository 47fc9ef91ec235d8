"""Points reports: liability by month and store, and the cross-store settlement view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.kit.clock import tenant_zone, utcnow
from orchard.loyalty import reports
from orchard.org.models import OrgUnit

router = APIRouter(tags=["points reports"])
Month = Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, tenant zone")]


class LiabilityRowRead(BaseModel):
    month: str
    store_code: str | None
    issued: int
    spent: int
    expired: int
    reversed: int
    adjusted_out: int
    #: Points issued by the store and not yet spent, expired, reversed or adjusted away at month end.
    outstanding: int


class LiabilityRead(BaseModel):
    first_month: str
    last_month: str
    rows: list[LiabilityRowRead]
    #: Points not usable yet, per issuing store, as of now.
    pending_now: dict[str, int]


class SettlementRowRead(BaseModel):
    issuing_store_code: str | None
    redeeming_store_code: str | None
    points: int
    cross_store: bool


class SettlementRead(BaseModel):
    first_month: str
    last_month: str
    rows: list[SettlementRowRead]


def _range(first: str | None, last: str | None) -> tuple[str, str]:
    this = utcnow().astimezone(tenant_zone()).strftime("%Y-%m")
    last = last or this
    first = first or f"{int(last[:4]) - 1}-{last[5:]}"
    try:
        reports.months(first, last)
    except ValueError as exc:
        raise InvalidInput.field("from", str(exc)) from None
    return first, last


def _codes(session) -> dict[int | None, str | None]:
    return {None: None, **dict(session.execute(select(OrgUnit.id, OrgUnit.code)).all())}


@router.get("/points/liability", response_model=LiabilityRead, operation_id="getPointsLiability")
def liability(session: SessionDep, principal: Actor(Perm.points_reports), first: Annotated[Month, Query(alias="from")]
              = None, last: Annotated[Month, Query(alias="to")] = None) -> LiabilityRead:
    """Issued, spent, expired, reversed, adjusted out and outstanding, by month and issuing store
    (default: the last 12 months). Store managers see their stores' rows."""
    first, last = _range(first, last)
    codes = _codes(session)
    rows = reports.liability(session, first, last, store_ids=principal.store_ids)
    pending = reports.pending_now(session)
    if principal.store_ids is not None:
        pending = {k: v for k, v in pending.items() if k in principal.store_ids}
    return LiabilityRead(first_month=first, last_month=last, rows=[
        LiabilityRowRead(month=r.month, store_code=codes.get(r.store_id), issued=r.issued, spent=r.spent,
                         expired=r.expired, reversed=r.reversed, adjusted_out=r.adjusted_out,
                         outstanding=r.outstanding) for r in rows],
        pending_now={codes.get(k) or "-": v for k, v in pending.items()})


@router.get("/points/settlement", response_model=SettlementRead, operation_id="getPointsSettlement")
def settlement(session: SessionDep, principal: Actor(Perm.points_reports),
               first: Annotated[Month, Query(alias="from")] = None,
               last: Annotated[Month, Query(alias="to")] = None) -> SettlementRead:
    """Points spent in the months, by issuing and redeeming store (cancelled spends netted)."""
    first, last = _range(first, last)
    codes = _codes(session)
    return SettlementRead(first_month=first, last_month=last, rows=[
        SettlementRowRead(issuing_store_code=codes.get(r.issuing_store_id),
                          redeeming_store_code=codes.get(r.redeeming_store_id), points=r.points,
                          cross_store=r.issuing_store_id != r.redeeming_store_id)
        for r in reports.settlement(session, first, last, store_ids=principal.store_ids)])
