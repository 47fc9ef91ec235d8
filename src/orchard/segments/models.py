"""Saved segments, their membership spells, size history, due re-checks and the dirty-member queue.

Membership is kept as spells rather than a flat set: a row per stay in the segment, open while
`exited_at` is null. The open rows are the current members (one per member, by a partial unique
index); the closed ones are the history journeys trigger on ("entered", "exited") and reports read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (
        CheckConstraint("status in ('active','archived')", name="status"),
        CheckConstraint("refresh_minutes IS NULL OR refresh_minutes >= 5", name="refresh_minutes_min"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Stable business code, referenced by other definitions (`{"segment": "vip_sleepers"}`) and journeys.
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    definition: Mapped[dict[str, Any]] = mapped_column(Json)
    #: Codes of the segments the definition names, for refresh order and cycle checks.
    depends_on: Mapped[list[str]] = mapped_column(Json, default=list)
    #: Owning org unit (HQ, a region or a store); store staff see and refresh only their own units'.
    owner_unit_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    #: Re-evaluate single members on their events and at their flip times (between full refreshes).
    realtime: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Full refresh period; null means on demand (and by `orchard refresh`) only.
    refresh_minutes: Mapped[int | None] = mapped_column(Integer, default=1440)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    refreshed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_refresh_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SegmentMembership(Base):
    """One stay of a member in a segment; open (current) while `exited_at` is null."""

    __tablename__ = "segment_memberships"
    __table_args__ = (
        Index("uq_segment_memberships_open", "segment_id", "member_id", unique=True,
              postgresql_where=text("exited_at IS NULL"), sqlite_where=text("exited_at IS NULL")),
        Index("ix_segment_memberships_member", "member_id", "segment_id"),
        Index("ix_segment_memberships_entered", "segment_id", "entered_at"),
        Index("ix_segment_memberships_exited", "segment_id", "exited_at"),
        CheckConstraint("exited_at IS NULL OR exited_at >= entered_at", name="spell_order"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    entered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: refresh | realtime (an event or a flip time) | archive: what found the change.
    entered_by: Mapped[str] = mapped_column(String(16))
    exited_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_by: Mapped[str | None] = mapped_column(String(16))


class SegmentFlip(Base):
    """The next moment a member's answer to a segment can change without any new data (e.g. the
    instant `last_order_at + 90 days` passes): the flip sweep re-checks exactly these members."""

    __tablename__ = "segment_flips"

    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    flip_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class MemberCategoryLast(Base):
    """Each member's latest counted order (paid or partially refunded) with a line in each category: what
    `orchard refresh` answers order windows on categories from ("bought 美妆 in the last 365 days", "bought
    from 3 categories in a year") instead of a year of orders and lines per definition. Kept by
    `segments.order_summary.update` at the start of each rule-tag and segment refresh."""

    __tablename__ = "member_category_last"
    #: A category's buyers in a window: an index-only range.
    __table_args__ = (Index("ix_member_category_last_category", "category", "last_paid_at", "member_id"),)

    #: No foreign key: the rows derive from orders, whose member is checked; a check per row made the
    #: first fill (4M rows) slower still.
    member_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    category: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_paid_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SegmentSize(Base):
    """Size history: one row per full refresh (and per real-time sweep that changed something)."""

    __tablename__ = "segment_sizes"
    __table_args__ = (Index("ix_segment_sizes_segment_at", "segment_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    size: Mapped[int] = mapped_column(BigInteger)
    entered: Mapped[int] = mapped_column(BigInteger, default=0)
    exited: Mapped[int] = mapped_column(BigInteger, default=0)
    #: refresh | realtime
    cause: Mapped[str] = mapped_column(String(16))
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class DirtyMember(Base):
    """Members whose data changed since their real-time segments were last checked. Ingestion adds a
    row in its own transaction (cheap, idempotent); the sweep re-checks them in sets within seconds."""

    __tablename__ = "segment_dirty_members"

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
