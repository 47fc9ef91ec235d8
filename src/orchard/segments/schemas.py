"""Request and response bodies of the segment routes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")]


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    definition: Any = Field(description="a segment definition (see GET /segments/schema)")
    sample_size: Annotated[int, Field(ge=0, le=100)] = 10


class ConditionCount(BaseModel):
    path: str
    condition: dict[str, Any]
    count: int


class PreviewOut(BaseModel):
    count: int
    population: int = Field(description="live members the caller can see")
    conditions: list[ConditionCount]
    sample: list[dict[str, Any]]
    definition: dict[str, Any]
    elapsed_ms: float


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Code
    name: Annotated[str, Field(min_length=1, max_length=100)]
    description: Annotated[str, Field(max_length=2000)] | None = None
    definition: Any
    owner_unit_code: Annotated[str, Field(max_length=64)] | None = None
    realtime: bool = True
    refresh_minutes: Annotated[int, Field(ge=5, le=60 * 24 * 31)] | None = 1440


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    definition: Any = None
    realtime: bool | None = None
    refresh_minutes: Annotated[int, Field(ge=5, le=60 * 24 * 31)] | None = None


class SegmentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    name: str
    description: str | None
    definition: dict[str, Any]
    depends_on: list[str]
    owner_unit_id: int | None
    status: str
    realtime: bool
    refresh_minutes: int | None
    size: int
    version: int
    refreshed_at: dt.datetime | None
    next_refresh_at: dt.datetime | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class RefreshOut(BaseModel):
    segment: str
    size: int
    entered: int
    exited: int
    ms: int


class SizeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: dt.datetime
    size: int
    entered: int
    exited: int
    cause: str
    duration_ms: int


class SpellRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    member_id: int
    entered_at: dt.datetime
    entered_by: str
    exited_at: dt.datetime | None
    exited_by: str | None


class SpellPage(BaseModel):
    items: list[SpellRead]
    next_cursor: str | None
