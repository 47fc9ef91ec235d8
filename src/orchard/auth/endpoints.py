from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from orchard.auth import service, throttle
from orchard.auth.models import ApiKey, Staff
from orchard.auth.roles import Perm, Role
from orchard.deps import Actor, SessionDep
from orchard.errors import TooManyRequests, Unauthorized

router = APIRouter(tags=["auth"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: dt.datetime


class MeOut(BaseModel):
    kind: str
    id: int
    name: str
    role: str
    store_ids: list[int] | None
    masked: bool


class StaffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@\-]+$")
    password: str = Field(min_length=8, max_length=256)
    role: Role
    display_name: str | None = Field(default=None, max_length=100)
    #: Store or region codes; required for store_manager and clerk.
    stores: list[str] = Field(default_factory=list, max_length=100)


class StaffOut(BaseModel):
    id: int
    username: str
    display_name: str | None
    role: str
    is_active: bool
    created_at: dt.datetime


class StaffUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    stores: list[str] | None = Field(default=None, max_length=100)
    is_active: bool | None = None
    display_name: str | None = Field(default=None, max_length=100)
    password: str | None = Field(default=None, min_length=8, max_length=256)


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    role: Role = Role.integrator
    store_code: str | None = Field(default=None, max_length=64)


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    role: str
    store_id: int | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class ApiKeyCreated(ApiKeyOut):
    #: The key itself: shown once, never stored.
    key: str


@router.post("/auth/token", response_model=TokenOut, operation_id="createToken", openapi_extra={"security": []},
             responses={401: {"description": "wrong username or password"},
                        429: {"description": "too many failed logins"}})
def create_token(body: TokenIn, request: Request, session: SessionDep) -> TokenOut:
    """Exchange a username and password for a short-lived access token. Repeated failures for one
    account or from one address are refused with 429 and Retry-After."""
    keys = (f"user:{body.username.lower()}", f"ip:{request.client.host if request.client else '-'}")
    wait = throttle.retry_after(*keys)
    if wait is not None:
        raise TooManyRequests("too many failed logins; try again later", code="auth.throttled", retry_after=wait)
    try:
        token, expires = service.login(session, username=body.username, password=body.password)
    except Unauthorized:
        throttle.record_failure(*keys)
        raise
    throttle.clear(keys[0])
    return TokenOut(access_token=token, expires_at=expires)


@router.get("/auth/me", response_model=MeOut, operation_id="whoAmI")
def who_am_i(principal: Actor(Perm.org_read)) -> MeOut:
    return MeOut(kind=principal.kind, id=principal.id, name=principal.name, role=principal.role,
                 store_ids=sorted(principal.store_ids) if principal.store_ids is not None else None,
                 masked=principal.masked)


@router.post("/staff", response_model=StaffOut, status_code=201, operation_id="createStaff")
def create_staff(body: StaffIn, session: SessionDep, principal: Actor(Perm.staff_manage)) -> StaffOut:
    staff = service.create_staff(session, username=body.username, password=body.password, role=body.role,
                                 store_codes=body.stores, display_name=body.display_name, actor=principal.actor)
    return StaffOut.model_validate(staff, from_attributes=True)


@router.get("/staff", response_model=list[StaffOut], operation_id="listStaff")
def list_staff(session: SessionDep, principal: Actor(Perm.staff_manage)) -> list[StaffOut]:
    return [StaffOut.model_validate(s, from_attributes=True) for s in session.scalars(select(Staff).order_by(Staff.id))]


@router.patch("/staff/{staff_id}", response_model=StaffOut, operation_id="updateStaff")
def update_staff(staff_id: Annotated[int, Path(ge=1, le=2**62)], body: StaffUpdate, session: SessionDep,
                 principal: Actor(Perm.staff_manage)) -> StaffOut:
    """Change role, stores, activity or password; the account's open sessions end."""
    staff = service.update_staff(session, staff_id=staff_id, actor=principal.actor, role=body.role,
                                 store_codes=body.stores, is_active=body.is_active, password=body.password,
                                 display_name=body.display_name)
    return StaffOut.model_validate(staff, from_attributes=True)


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, operation_id="createApiKey")
def create_api_key(body: ApiKeyIn, session: SessionDep, principal: Actor(Perm.staff_manage)) -> ApiKeyCreated:
    key, secret = service.create_api_key(session, name=body.name, role=body.role, store_code=body.store_code,
                                         actor=principal.actor)
    return ApiKeyCreated(key=secret, **ApiKeyOut.model_validate(key, from_attributes=True).model_dump())


@router.get("/api-keys", response_model=list[ApiKeyOut], operation_id="listApiKeys")
def list_api_keys(session: SessionDep, principal: Actor(Perm.staff_manage)) -> list[ApiKeyOut]:
    keys = session.scalars(select(ApiKey).order_by(ApiKey.id))
    return [ApiKeyOut.model_validate(k, from_attributes=True) for k in keys]


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut, operation_id="revokeApiKey")
def revoke_api_key(key_id: Annotated[int, Path(ge=1, le=2**62)], session: SessionDep,
                   principal: Actor(Perm.staff_manage)) -> ApiKeyOut:
    return ApiKeyOut.model_validate(service.revoke_api_key(session, key_id=key_id, actor=principal.actor),
                                    from_attributes=True)
