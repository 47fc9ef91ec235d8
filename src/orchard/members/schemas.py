"""Request and response shapes for members. Write schemas forbid unknown fields, so nobody can
mass-assign aggregates, status or merge pointers; read schemas carry masking."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from orchard.members.attributes import validate_attributes

Attributes = Annotated[dict[str, Any], AfterValidator(validate_attributes)]
Gender = Literal["male", "female", "unknown"]
Channel = Literal["sms", "wechat", "app_push", "email", "wecom"]
#: A message channel a member may prefer (see `members.models.PREFERRED_CHANNELS`).
PreferredChannel = Literal["sms", "wechat_subscribe", "wechat_template", "app_push", "email"]
Purpose = Literal["marketing", "service"]
Text100 = Annotated[str, Field(min_length=1, max_length=100)]


class IdentityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=2, max_length=32, examples=["phone"])
    value: str = Field(min_length=1, max_length=255, examples=["13812341234"])


class IdentityRead(BaseModel):
    id: int
    kind: str
    value: str
    source: str | None
    created_at: dt.datetime


class MemberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text100 | None = None
    gender: Gender = "unknown"
    birthday: dt.date | None = None
    region: Text100 | None = None
    source_channel: Annotated[str, Field(max_length=64)] | None = None
    home_store_code: Annotated[str, Field(max_length=64)] | None = None
    joined_at: dt.datetime | None = None
    attributes: Attributes = Field(default_factory=dict)
    reduce_disturbance: bool = False
    identities: list[IdentityIn] = Field(default_factory=list, max_length=20)


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text100 | None = None
    gender: Gender | None = None
    birthday: dt.date | None = None
    region: Text100 | None = None
    source_channel: Annotated[str, Field(max_length=64)] | None = None
    home_store_code: Annotated[str, Field(max_length=64)] | None = None
    attributes: Attributes | None = None
    reduce_disturbance: bool | None = None
    #: The member's own preferred message channel; null clears it.
    preferred_channel: PreferredChannel | None = None


class PushRegistrationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The app's JPush registration id on the member's device.
    registration_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_\-]+$")


class PushRegistrationRead(BaseModel):
    member_id: int
    registration_id: str
    #: Whether the id was held by another member (the device changed hands) and was moved here.
    moved: bool
    #: How many older registration ids of this member it replaced.
    replaced: int


class Aggregates(BaseModel):
    order_count: int = 0
    total_spend_fen: int = 0
    refund_fen: int = 0
    first_order_at: dt.datetime | None = None
    last_order_at: dt.datetime | None = None
    last_visit_at: dt.datetime | None = None
    last_login_at: dt.datetime | None = None
    last_event_at: dt.datetime | None = None


class StoreRef(BaseModel):
    id: int
    code: str
    name: str


class MemberRead(BaseModel):
    id: int
    status: str
    name: str | None
    gender: str
    birthday: dt.date | None
    region: str | None
    source_channel: str | None
    home_store: StoreRef | None
    joined_at: dt.datetime
    attributes: dict[str, Any]
    reduce_disturbance: bool
    preferred_channel: str | None = None
    #: The member's phone (E.164), masked (`138****1234`) for store staff and customer service.
    phone: str | None
    identities: list[IdentityRead]
    tags: list[str]
    aggregates: Aggregates
    #: Set when the id asked for was merged into this member.
    resolved_from: int | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class MemberPage(BaseModel):
    items: list[MemberRead]
    next_cursor: str | None


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    granted: bool
    source: Annotated[str, Field(min_length=1, max_length=64)] = "api"


class ConsentRead(BaseModel):
    channel: str
    purpose: str
    granted: bool
    granted_at: dt.datetime | None
    withdrawn_at: dt.datetime | None
    source: str | None
    updated_at: dt.datetime | None


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str = Field(min_length=1, max_length=4000)


class NoteRead(BaseModel):
    id: int
    author: str
    body: str
    created_at: dt.datetime


class TagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\s/][^/]*$")


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The member to fold into the one in the path; it keeps its id, which resolves to the survivor.
    merge_id: int = Field(ge=1, le=2**62)
    reason: str = Field(min_length=1, max_length=500)


class MergeRead(BaseModel):
    id: int
    survivor_id: int
    merged_id: int
    actor: str
    reason: str
    moved: dict[str, Any]
    merged_at: dt.datetime


class CandidateRead(BaseModel):
    id: int
    member_a_id: int
    member_b_id: int
    reason: str
    evidence: dict[str, Any] | None
    status: str
    created_at: dt.datetime


class CandidatePage(BaseModel):
    items: list[CandidateRead]
    next_cursor: str | None
