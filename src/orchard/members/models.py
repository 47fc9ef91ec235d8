"""Member profile, its aggregates, consent, notes, tags and the merge records.

A merged member keeps its row (status 'merged', `merged_into_id` set) so that its id still resolves
to the survivor; `merged_into_id` always points at a live member (chains are compressed on merge).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

CHANNELS = ("sms", "wechat", "app_push", "email", "wecom")
#: Message channels a member may prefer (journey send steps with `prefer_member_channel` try it first).
PREFERRED_CHANNELS = ("sms", "wechat_subscribe", "wechat_template", "app_push", "email")
PURPOSES = ("marketing", "service")
GENDERS = ("male", "female", "unknown")


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (
        CheckConstraint("gender in ('male','female','unknown')", name="gender"),
        CheckConstraint("status in ('active','merged')", name="status"),
        CheckConstraint("preferred_channel in ('sms','wechat_subscribe','wechat_template','app_push','email')",
                        name="preferred_channel"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    name: Mapped[str | None] = mapped_column(String(100))
    gender: Mapped[str] = mapped_column(String(16), default="unknown")
    birthday: Mapped[dt.date | None] = mapped_column(Date)
    region: Mapped[str | None] = mapped_column(String(100))
    source_channel: Mapped[str | None] = mapped_column(String(64))
    home_store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"), index=True)
    joined_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    #: 减少打扰: the member asked to be contacted less; journeys honour it.
    reduce_disturbance: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The member's own preferred message channel (null: no preference).
    preferred_channel: Mapped[str | None] = mapped_column(String(24))
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class MemberAggregate(Base):
    """Kept in the same transaction as every event that changes it (never recomputed at read time).

    Orders count when paid and stop counting when fully refunded; spend is net of refunds.
    """

    __tablename__ = "member_aggregates"
    __table_args__ = (
        CheckConstraint("order_count >= 0", name="order_count_nonneg"),
    )

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    order_count: Mapped[int] = mapped_column(Integer, default=0)
    total_spend_fen: Mapped[int] = mapped_column(BigId, default=0)
    refund_fen: Mapped[int] = mapped_column(BigId, default=0)
    first_order_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_order_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    last_visit_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_event_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Consent(Base):
    """Current consent per (member, channel, purpose). No row means not granted: nothing is granted
    by default. Every change also appends to `consent_changes` and the audit log."""

    __tablename__ = "consents"
    __table_args__ = (
        CheckConstraint("channel in ('sms','wechat','app_push','email','wecom')", name="channel"),
        CheckConstraint("purpose in ('marketing','service')", name="purpose"),
    )

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    granted: Mapped[bool] = mapped_column(Boolean, default=False)
    granted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    source: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsentChange(Base):
    __tablename__ = "consent_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(16))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MemberNote(Base):
    __tablename__ = "member_notes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    author: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


TAG_KINDS = ("attribute", "behaviour", "value", "preference")
TAG_SOURCES = ("manual", "rule", "import")


class Tag(Base):
    """A tag in the catalog. `kind` says what it describes; `source` how members get it: by staff
    (manual), by a segment definition refreshed with the segments (rule; `definition` set), or by an
    import. A refresh only ever adds or removes assignments whose own source is 'rule'."""

    __tablename__ = "tags"
    __table_args__ = (
        CheckConstraint("kind in ('attribute','behaviour','value','preference')", name="kind"),
        CheckConstraint("source in ('manual','rule','import')", name="source"),
        CheckConstraint("(source = 'rule') = (definition IS NOT NULL)", name="rule_has_definition"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="attribute")
    source: Mapped[str] = mapped_column(String(16), default="manual")
    description: Mapped[str | None] = mapped_column(Text)
    #: For rule tags: a segment definition (the segments language); members matching it carry the tag.
    definition: Mapped[dict[str, Any] | None] = mapped_column(Json)
    refreshed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MemberTag(Base):
    __tablename__ = "member_tags"
    __table_args__ = (
        Index("ix_member_tags_tag_id", "tag_id"),
        CheckConstraint("source in ('manual','rule','import')", name="source"),
    )

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    #: How this member got the tag; a rule refresh removes only 'rule' assignments.
    source: Mapped[str] = mapped_column(String(16), default="manual")
    added_by: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TagChange(Base):
    """Tag history: every assignment added or removed, when, and by which rule or person."""

    __tablename__ = "tag_changes"
    __table_args__ = (
        CheckConstraint("change in ('added','removed')", name="change"),
        Index("ix_tag_changes_tag_at", "tag_id", "at"),
        # The changes staff and imports made, by id: what the incremental preference pass reads after a
        # mark (scoring.pref_scope) without scanning the millions a rule refresh writes.
        Index("ix_tag_changes_id_not_rule", "id", postgresql_where=text("source <> 'rule'"),
              sqlite_where=text("source <> 'rule'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"))
    change: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    #: The person (staff actor) or the rule ("rule:<tag name>") that made the change.
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MemberMerge(Base):
    __tablename__ = "member_merges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survivor_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    merged_id: Mapped[int] = mapped_column(ForeignKey("members.id"), unique=True)
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    moved: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    merged_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MergeCandidate(Base):
    """A pair that may be one person. `member_a_id < member_b_id` so each pair is stored once."""

    __tablename__ = "merge_candidates"
    __table_args__ = (
        UniqueConstraint("member_a_id", "member_b_id", "reason"),
        CheckConstraint("member_a_id < member_b_id", name="ordered"),
        CheckConstraint("status in ('open','merged','dismissed')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_a_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    member_b_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
