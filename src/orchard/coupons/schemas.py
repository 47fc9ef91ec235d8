"""API shapes of coupons. Money in integer fen; times in UTC on the way out (a naive time sent in is
read in the tenant's zone)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Fen = Annotated[int, Field(ge=0, le=10**13)]
PosFen = Annotated[int, Field(ge=1, le=10**13)]
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
ExternalId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
Source = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]
Channel = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]
MemberId = Annotated[int, Field(ge=1, le=2**62)]


class BenefitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Annotated[str, Field(max_length=64, pattern=r"^[^\x00]*$")] | None = None
    name: Annotated[str, Field(max_length=100, pattern=r"^[^\x00]*$")] | None = None
    description: Annotated[str, Field(max_length=500, pattern=r"^[^\x00]*$")] | None = None


class TemplateIn(BaseModel):
    """A coupon template. kind amount_off needs `off_fen` (threshold 0: no threshold); percent_off needs
    `percent` (the part taken off: 20 = 8折) and usually `max_off_fen`; gift needs `benefit.name`,
    service `benefit.description`. validity fixed needs `valid_from` < `valid_to` (exclusive end);
    relative needs `valid_days` (calendar days in the tenant zone, the issue day counting as the first)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
    description: Annotated[str, Field(max_length=500, pattern=r"^[^\x00]*$")] | None = None
    kind: Literal["amount_off", "percent_off", "gift", "service"]
    status: Literal["active", "inactive"] = "active"
    campaign: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")] | None = None
    off_fen: PosFen | None = None
    percent: Annotated[int, Field(ge=1, le=99)] | None = None
    max_off_fen: PosFen | None = None
    threshold_fen: Fen = 0
    benefit: BenefitIn = BenefitIn()
    validity: Literal["fixed", "relative"]
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None
    valid_days: Annotated[int, Field(ge=1, le=3660)] | None = None
    starts_after_days: Annotated[int, Field(ge=0, le=366)] = 0
    stores: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=1000)] = []
    categories: Annotated[list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]],
                          Field(max_length=1000)] = []
    channels: Annotated[list[Channel], Field(max_length=50)] = []
    stackable: bool = False
    exclusive_group: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")] | None = None
    total_limit: Annotated[int, Field(ge=1, le=10**12)] | None = None
    per_member_limit: Annotated[int, Field(ge=1, le=10**6)] | None = None


class TemplatePatch(BaseModel):
    """What may change once coupons exist: the terms may not (create a new template instead)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")] | None = None
    description: Annotated[str, Field(max_length=500, pattern=r"^[^\x00]*$")] | None = None
    status: Literal["active", "inactive"] | None = None
    total_limit: Annotated[int, Field(ge=1, le=10**12)] | None = None
    per_member_limit: Annotated[int, Field(ge=1, le=10**6)] | None = None


class TemplateRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str | None
    kind: str
    label: str
    status: str
    campaign: str | None
    off_fen: int | None
    percent: int | None
    max_off_fen: int | None
    threshold_fen: int
    benefit: dict
    validity: str
    valid_from: dt.datetime | None
    valid_to: dt.datetime | None
    valid_days: int | None
    starts_after_days: int
    stores: list[str]
    categories: list[str]
    channels: list[str]
    stackable: bool
    exclusive_group: str | None
    total_limit: int | None
    per_member_limit: int | None
    issued_count: int
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class IssueIn(BaseModel):
    """Issue one coupon to the member. A repeated (source, external_id) returns the first coupon."""

    model_config = ConfigDict(extra="forbid")
    template_id: MemberId
    external_id: ExternalId
    source: Source = "api"
    reason: Text | None = None


class BulkIssueIn(BaseModel):
    """Issue one coupon of the template to each listed member, in one pass. Unknown or merged-away ids
    and members at the per-member limit are skipped; past the total limit, the lowest ids win."""

    model_config = ConfigDict(extra="forbid")
    member_ids: Annotated[list[MemberId], Field(min_length=1, max_length=100_000)]
    external_id: ExternalId
    source: Source = "api"
    reason: Text


class BatchRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    template_id: int
    source: str
    external_id: str
    reason: str
    requested: int
    issued: int
    #: unknown (no such live member), member_limit, total_limit.
    skipped: dict[str, int]
    actor: str
    created_at: dt.datetime


class CouponRead(BaseModel):
    id: int
    code: str
    #: The code in groups of four, for printing.
    code_display: str
    member_id: int
    template_id: int
    template_name: str
    kind: str
    label: str
    threshold_fen: int
    benefit: dict
    #: issued | redeemed | expired | voided (issued past its window reads as expired).
    status: str
    usable_now: bool
    issued_at: dt.datetime
    valid_from: dt.datetime
    valid_to: dt.datetime
    redeemed_at: dt.datetime | None
    redeemed_store_code: str | None
    redeemed_order_source: str | None
    redeemed_order_id: str | None
    discount_fen: int | None
    voided_at: dt.datetime | None
    void_reason: str | None


class CouponPage(BaseModel):
    items: list[CouponRead]
    next_cursor: str | None


class LineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: Annotated[str, Field(max_length=64, pattern=r"^[^\x00]*$")] | None = None
    sku: Annotated[str, Field(max_length=64, pattern=r"^[^\x00]*$")] | None = None
    amount_fen: Fen


class RedeemIn(BaseModel):
    """Redeem at a POS or online. (order_source, order_external_id) is the idempotency key: a retry for
    the same order answers with the first redemption."""

    model_config = ConfigDict(extra="forbid")
    #: The member presenting the coupon; when given it must be the coupon's holder.
    member_id: MemberId | None = None
    order_external_id: ExternalId
    order_source: Source = "api"
    store_code: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    channel: Channel | None = None
    amount_fen: Fen
    #: Needed when the coupon is limited to categories: the eligible amount is the sum of its lines.
    lines: Annotated[list[LineIn], Field(max_length=1000)] | None = None


class RedemptionRead(BaseModel):
    id: int
    coupon_id: int
    code: str
    member_id: int
    order_source: str
    order_external_id: str
    store_code: str | None
    channel: str | None
    order_amount_fen: int
    eligible_fen: int
    discount_fen: int
    benefit: dict
    redeemed_at: dt.datetime
    cancelled_at: dt.datetime | None
    cancel_reason: str | None


class CancelRedemptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_external_id: ExternalId
    order_source: Source = "api"
    reason: Text


class VoidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text


class StatsRead(BaseModel):
    template_id: int
    name: str
    campaign: str | None
    issued: int
    redeemed: int
    expired: int
    voided: int
    #: Issued and still usable (not redeemed, expired or voided).
    outstanding: int
    #: 核销率: redeemed / issued (0 when nothing was issued), four decimals.
    redemption_rate: float
    discount_fen: int
