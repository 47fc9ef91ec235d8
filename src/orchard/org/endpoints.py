from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.org import service

router = APIRouter(tags=["org"])


class UnitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hq", "region", "store"]
    code: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = Field(min_length=1, max_length=200)
    parent_code: str | None = Field(default=None, max_length=64)
    city: str | None = Field(default=None, max_length=100)


class UnitOut(BaseModel):
    id: int
    kind: str
    code: str
    name: str
    parent_id: int | None
    city: str | None
    created_at: dt.datetime


@router.get("/org/units", response_model=list[UnitOut], operation_id="listOrgUnits")
def list_units(session: SessionDep, principal: Actor(Perm.org_read)) -> list[UnitOut]:
    return [UnitOut.model_validate(u, from_attributes=True) for u in service.list_units(session)]


@router.post("/org/units", response_model=UnitOut, status_code=201, operation_id="createOrgUnit")
def create_unit(body: UnitIn, session: SessionDep, principal: Actor(Perm.org_write)) -> UnitOut:
    unit = service.create_unit(session, kind=body.kind, code=body.code, name=body.name,
                               parent_code=body.parent_code, city=body.city)
    return UnitOut.model_validate(unit, from_attributes=True)
