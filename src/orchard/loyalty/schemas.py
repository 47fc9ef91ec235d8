"""API shapes of the points ledger."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Points = Annotated[int, Field(ge=1, le=10**12)]
ExternalId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
Reason = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Source = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Expiring(BaseModel):
    amount: int
    expires_at: dt.datetime


class PointsRead(BaseModel):
    member_id: int
    #: Σ of all entries: what the member holds, pending points included.
    balance: int
    #: Spendable now: not pending, not past expiry.
    available: int
    #: Earned but not usable yet (T+N).
    pending: int
    #: What expires within `expiring_within_days` (default 90), soonest first.
    expiring: list[Expiring]
    #: Points a refund took back after they were spent (refund policy "debt"): the next earning
    #: repays it first. The balance is negative by this much when no points are left.
    debt: int = 0


class SpendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Points
    reason: Reason
    external_id: ExternalId
    source: Source = "api"
    store_code: Annotated[str, Field(max_length=64)] | None = None


class AdjustIn(BaseModel):
    """A manual correction: positive credits a lot (expiring by the configured policy unless
    `expires_at` is given), negative debits like a spend. The reason is required and audited."""

    model_config = ConfigDict(extra="forbid")
    amount: Annotated[int, Field(ge=-(10**12), le=10**12)]
    reason: Reason
    external_id: ExternalId
    source: Source = "api"
    store_code: Annotated[str, Field(max_length=64)] | None = None
    expires_at: dt.datetime | None = None
    pending_until: dt.datetime | None = None


class EntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    member_id: int
    kind: str
    amount: int
    balance_after: int
    reason: str
    source: str
    external_id: str
    actor: str
    explanation: dict[str, Any]
    store_id: int | None
    order_id: int | None = None
    created_at: dt.datetime


class EntryPage(BaseModel):
    items: list[EntryRead]
    next_cursor: str | None


class RuleIn(BaseModel):
    """An earning rule. `config` depends on `kind` (see loyalty.rules and the README):
    amount {points, per_fen, rounding, min_order_fen, caps, stores, channels, categories, exclude_*};
    event {event, points, stores, properties, caps}; multiplier {factor, when: {type: member_day |
    birthday_month | campaign, …}, stores, channels, categories, exclude_*}."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
    kind: Literal["amount", "event", "multiplier"]
    status: Literal["active", "inactive"] = "active"
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    stop_further: bool = False
    starts_at: dt.datetime | None = None
    ends_at: dt.datetime | None = None
    config: dict[str, Any]


class RuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    kind: str
    status: str
    priority: int
    stop_further: bool
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    config: dict[str, Any]
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class CartLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line_no: Annotated[int, Field(ge=1, le=100000)] | None = None
    sku: Annotated[str, Field(max_length=64)] | None = None
    category: Annotated[str, Field(max_length=64)] | None = None
    amount_fen: Annotated[int, Field(ge=0, le=10**13)]


class CartIn(BaseModel):
    """A cart or an order to explain: what would it earn, rule by rule? With `member_id`, the
    member's birthday and what the rules' caps have left for the member count too."""

    model_config = ConfigDict(extra="forbid")
    member_id: Annotated[int, Field(ge=1, le=2**62)] | None = None
    paid_at: dt.datetime | None = None
    amount_fen: Annotated[int, Field(ge=0, le=10**13)] | None = None
    store_code: Annotated[str, Field(max_length=64)] | None = None
    channel: Annotated[str, Field(max_length=32)] | None = None
    birthday: dt.date | None = None
    lines: Annotated[list[CartLineIn], Field(max_length=1000)] = []


class RuleOutcome(BaseModel):
    rule_id: int
    name: str
    kind: str
    points: int
    text: str
    lines: dict[str, int]
    inputs: dict[str, Any]


class DryRunRead(BaseModel):
    total: int
    paid_at: dt.datetime
    amount_fen: int
    expires_at: dt.datetime | None
    pending_until: dt.datetime | None
    rules: list[RuleOutcome]


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason
