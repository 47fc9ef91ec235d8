"""API shapes of the points ledger."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

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
    created_at: dt.datetime


class EntryPage(BaseModel):
    items: list[EntryRead]
    next_cursor: str | None
