"""Read schemas of the scoring routes. Times are UTC instants (clients show them in the tenant's
zone); money is integer fen; names and actions are zh-CN unless the request prefers English."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel


class RfmClassRead(BaseModel):
    code: str
    name: str
    name_zh: str
    name_en: str
    action: str


class LifecycleChangeRead(BaseModel):
    id: int
    member_id: int
    from_stage: str | None
    to_stage: str
    at: dt.datetime


class LifecycleChangePage(BaseModel):
    items: list[LifecycleChangeRead]
    next_cursor: str | None


class MemberScoresRead(BaseModel):
    member_id: int
    stage: str | None
    stage_since: dt.datetime | None
    stage_computed_at: dt.datetime | None
    recency_days: int | None
    frequency: int | None
    monetary_fen: int | None
    r_score: int | None
    f_score: int | None
    m_score: int | None
    rfm_class: RfmClassRead | None
    value_tier: str | None
    rfm_computed_on: dt.date | None
    lifecycle_history: list[LifecycleChangeRead]


class ClassCount(RfmClassRead):
    members: int


class RfmSummaryRead(BaseModel):
    computed_on: dt.date | None
    members: int
    scored: int
    classes: list[ClassCount]
    value_tiers: dict[str, int]
