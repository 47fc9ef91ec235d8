"""Ingestion payloads. Amounts are integer fen (分); times are ISO 8601 (a time without offset is
read in the tenant's zone). `source` + `external_id` identify an item for idempotency."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchard.members.schemas import Attributes, Gender

Source = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
ExternalId = Annotated[str, Field(min_length=1, max_length=128)]
Fen = Annotated[int, Field(ge=0, le=10**13)]
EVENT_NAME = r"^[A-Za-z\u4e00-\u9fff][A-Za-z0-9_.:\-\u4e00-\u9fff ]{0,63}$"

STANDARD_EVENTS = ("sign_up", "login", "store_visit", "product_viewed", "added_to_cart", "shared", "reviewed",
                   "checked_in", "campaign_joined", "live_attended", "coupon_used", "service_contacted")


class ProfileIn(BaseModel):
    """Profile used only when the reference creates a new member."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    gender: Gender | None = None
    birthday: dt.date | None = None
    region: Annotated[str, Field(max_length=100)] | None = None
    home_store_code: Annotated[str, Field(max_length=64)] | None = None
    attributes: Attributes | None = None


class MemberRef(BaseModel):
    """Who did it: a member id, and/or identity keys (kind → value), and/or an anonymous id."""

    model_config = ConfigDict(extra="forbid")
    id: int | None = Field(default=None, ge=1, le=2**62)
    identities: dict[str, Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=dict, max_length=10, examples=[{"phone": "13812341234"}])
    anonymous_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    profile: ProfileIn | None = None

    @model_validator(mode="after")
    def _something(self) -> MemberRef:
        if self.id is None and not self.identities and self.anonymous_id is None:
            raise ValueError("give a member id, at least one identity, or an anonymous_id")
        return self


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Source = "api"
    external_id: ExternalId


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line_no: int | None = Field(default=None, ge=1, le=10000)
    sku: Annotated[str, Field(max_length=128)] | None = None
    name: Annotated[str, Field(max_length=200)] | None = None
    category: Annotated[str, Field(max_length=100)] | None = None
    quantity: int = Field(default=1, ge=1, le=1_000_000)
    unit_price_fen: Fen
    #: Defaults to quantity × unit price.
    amount_fen: Fen | None = None


class OrderIn(_Item):
    member: MemberRef
    store_code: Annotated[str, Field(max_length=64)] | None = None
    channel: Annotated[str, Field(max_length=32)] | None = None
    paid_at: dt.datetime
    currency: Literal["CNY"] = "CNY"
    #: What the member paid; defaults to the sum of the lines.
    amount_fen: Fen | None = None
    lines: list[OrderLineIn] = Field(default_factory=list, max_length=500)
    properties: Attributes = Field(default_factory=dict)

    @model_validator(mode="after")
    def _amount(self) -> OrderIn:
        if self.amount_fen is None and not self.lines:
            raise ValueError("an order needs lines or amount_fen")
        nos = [ln.line_no for ln in self.lines if ln.line_no is not None]
        if len(nos) != len(set(nos)):
            raise ValueError("line_no values must be unique")
        return self


class RefundLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line_no: int | None = Field(default=None, ge=1)
    sku: Annotated[str, Field(max_length=128)] | None = None
    #: Defaults to every unit not yet refunded.
    quantity: int | None = Field(default=None, ge=1)
    #: Defaults to the line's amount for that quantity.
    amount_fen: Fen | None = None

    @model_validator(mode="after")
    def _ref(self) -> RefundLineIn:
        if (self.line_no is None) == (self.sku is None):
            raise ValueError("name the order line by exactly one of line_no or sku")
        return self


class RefundIn(_Item):
    """Full refund: neither `lines` nor `amount_fen`. Partial: by `lines`, or by `amount_fen` alone."""

    order_external_id: ExternalId
    #: The order's source; defaults to this refund's source.
    order_source: Source | None = None
    refunded_at: dt.datetime
    amount_fen: Annotated[int, Field(ge=1, le=10**13)] | None = None
    lines: list[RefundLineIn] | None = Field(default=None, min_length=1, max_length=500)
    reason: Annotated[str, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> RefundIn:
        if self.amount_fen is not None and self.lines is not None:
            raise ValueError("give lines or amount_fen, not both")
        return self


class EventIn(_Item):
    name: str = Field(pattern=EVENT_NAME, examples=list(STANDARD_EVENTS))
    member: MemberRef
    occurred_at: dt.datetime
    store_code: Annotated[str, Field(max_length=64)] | None = None
    properties: Attributes = Field(default_factory=dict)


class Outcome(BaseModel):
    type: Literal["order", "refund", "event"]
    #: created: written now; duplicate: already received with the same body (nothing changed);
    #: pending: a refund kept until its order arrives.
    status: Literal["created", "duplicate", "pending"]
    id: int
    member_id: int | None = None
    member_created: bool = False


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Each item is an order, refund or event object with `"type": "order" | "refund" | "event"`.
    items: list[Any] = Field(min_length=1, max_length=1000)


class ItemResult(BaseModel):
    index: int
    ok: bool
    outcome: Outcome | None = None
    error: dict[str, Any] | None = None


class BatchOut(BaseModel):
    accepted: int
    rejected: int
    results: list[ItemResult]
