"""Anomaly flags for review (SPEC L8): scan a day, list, clear or confirm."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.kit.clock import PlausibleDate, tenant_zone, utcnow
from orchard.loyalty import anomalies
from orchard.loyalty.models import LoyaltyFlag

router = APIRouter(tags=["points anomalies"])


class FlagRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    member_id: int | None
    store_id: int | None
    day: dt.date
    value: int
    baseline: int
    status: str
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    resolved_by: str | None
    note: str | None


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The tenant-zone date to scan; default yesterday.
    day: PlausibleDate | None = None
    factor: Annotated[int, Field(ge=2, le=1000)] = 10
    min_points: Annotated[int, Field(ge=1, le=10**9)] = 1000
    burst_orders: Annotated[int, Field(ge=2, le=10**4)] = 10


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


@router.post("/points/flags/scan", response_model=dict[str, Any], operation_id="scanPointsAnomalies")
def scan(body: ScanIn, session: SessionDep, principal: Actor(Perm.points_rules)) -> dict[str, Any]:
    """Flag the day's anomalies (set-based; running it again adds nothing)."""
    day = body.day or (utcnow().astimezone(tenant_zone()).date() - dt.timedelta(days=1))
    r = anomalies.scan(session, day, factor=body.factor, min_points=body.min_points, burst_orders=body.burst_orders)
    return {"day": r.day.isoformat(), "member_spikes": r.member_spikes, "store_spikes": r.store_spikes,
            "order_bursts": r.order_bursts}


@router.get("/points/flags", response_model=list[FlagRead], operation_id="listPointsFlags")
def list_flags(session: SessionDep, principal: Actor(Perm.points_rules),
               status: Literal["open", "cleared", "confirmed"] | None = "open",
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[FlagRead]:
    q = select(LoyaltyFlag).order_by(LoyaltyFlag.day.desc(), LoyaltyFlag.id.desc()).limit(limit)
    if status:
        q = q.where(LoyaltyFlag.status == status)
    return [FlagRead.model_validate(f) for f in session.scalars(q)]


@router.post("/points/flags/{flag_id}/clear", response_model=FlagRead, operation_id="clearPointsFlag",
             responses={409: {"description": "flag.resolved"}})
def clear(flag_id: Annotated[int, Path(ge=1, le=2**62)], body: ResolveIn, session: SessionDep,
          principal: Actor(Perm.points_rules)) -> FlagRead:
    """Not abuse: the held points become usable."""
    return FlagRead.model_validate(anomalies.resolve(session, flag_id, confirm=False, note=body.note,
                                                     actor=principal.actor))


@router.post("/points/flags/{flag_id}/confirm", response_model=FlagRead, operation_id="confirmPointsFlag",
             responses={409: {"description": "flag.resolved"}})
def confirm(flag_id: Annotated[int, Path(ge=1, le=2**62)], body: ResolveIn, session: SessionDep,
            principal: Actor(Perm.points_rules)) -> FlagRead:
    """Abuse: the held points are forfeited (an audited adjustment)."""
    return FlagRead.model_validate(anomalies.resolve(session, flag_id, confirm=True, note=body.note,
                                                     actor=principal.actor))
