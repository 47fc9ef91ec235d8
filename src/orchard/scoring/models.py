"""Per-member lifecycle stage and RFM, their history, and the one-row scoring policy."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Integer, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

STAGES = ("registered", "new", "active", "declining", "dormant", "lost")
VALUE_TIERS = ("high", "medium", "low")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} in ({','.join(repr(v) for v in values)})"


class ScoringPolicy(Base):
    """Thresholds for lifecycle, RFM and value tiers (one row, id 1; absent means the defaults of
    the industry preset). The JSON shapes are validated by the scoring package's schemas."""

    __tablename__ = "scoring_policy"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    preset: Mapped[str] = mapped_column(String(16), default="retail")
    lifecycle: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    rfm: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    value: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MemberLifecycle(Base):
    __tablename__ = "member_lifecycle"
    __table_args__ = (
        CheckConstraint(_in("stage", STAGES), name="stage"),
        Index("ix_member_lifecycle_stage", "stage", "since"),
    )

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    #: When the member entered this stage (the moment computed from its data, not the pass time).
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class LifecycleChange(Base):
    """Every stage transition, so "members who became dormant this week" is a query."""

    __tablename__ = "lifecycle_changes"
    __table_args__ = (
        CheckConstraint(_in("to_stage", STAGES), name="to_stage"),
        Index("ix_lifecycle_changes_to_at", "to_stage", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class MemberRfm(Base):
    """RFM at the last scoring pass. Members with no order in the window have a row with null
    recency, null scores and no class (they are not "一般挽留": they never bought)."""

    __tablename__ = "member_rfm"
    __table_args__ = (
        CheckConstraint("value_tier IS NULL OR " + _in("value_tier", VALUE_TIERS), name="value_tier"),
        CheckConstraint("r_score IS NULL OR (r_score BETWEEN 1 AND 5)", name="r_score"),
        CheckConstraint("f_score IS NULL OR (f_score BETWEEN 1 AND 5)", name="f_score"),
        CheckConstraint("m_score IS NULL OR (m_score BETWEEN 1 AND 5)", name="m_score"),
        Index("ix_member_rfm_class", "rfm_class"),
        Index("ix_member_rfm_value_tier", "value_tier"),
    )

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    recency_days: Mapped[int | None] = mapped_column(Integer)
    frequency: Mapped[int] = mapped_column(Integer, default=0)
    monetary_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    r_score: Mapped[int | None] = mapped_column(SmallInteger)
    f_score: Mapped[int | None] = mapped_column(SmallInteger)
    m_score: Mapped[int | None] = mapped_column(SmallInteger)
    #: important_value | important_develop | important_keep | important_retain | general_value | …
    rfm_class: Mapped[str | None] = mapped_column(String(32))
    value_tier: Mapped[str | None] = mapped_column(String(8))
    #: The snapshot date (tenant zone) the scores describe.
    computed_on: Mapped[dt.date] = mapped_column(Date)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SkuFirstSale(Base):
    """The first counted sale (paid or partially refunded order) of each SKU, over all orders: what the
    early-adopter tag measures "new" against. Kept by `scoring.first_sales.update` in each preference
    refresh — folding in orders above an id mark and re-checking each row's order — instead of
    taking every SKU's minimum over every order and line on each refresh. `order_id` names the order
    that sale came from (no foreign key: a key check per row, and a deleted order is found by the
    re-check anyway)."""

    __tablename__ = "sku_first_sales"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    order_id: Mapped[int] = mapped_column(BigInteger)


class RefreshMark(Base):
    """How far an incremental refresh has read a table by id. `last_id` is the highest id seen by the
    last pass, `prev_id` the one before: a pass re-reads from `prev_id`, so a row whose transaction took
    its id before a pass but committed after it is still read by the next one."""

    __tablename__ = "refresh_marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    prev_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
