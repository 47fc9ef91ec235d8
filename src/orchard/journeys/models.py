"""Journeys, their immutable published versions, members' runs, and the decision log.

A run is a row with the step it is at and when it next wakes: a journey survives restarts and a
million members in flight are a million small rows, advanced by an index on `wake_at`. Every
decision about a member (entered or why not, each step, each branch, suppressed sends, exits) is a
row in `journey_log`, which is what "why did member X not get message M" reads.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

OPEN = ("active", "waiting")


class Journey(Base):
    __tablename__ = "journeys"
    __table_args__ = (
        CheckConstraint("status in ('draft','live','paused','archived')", name="status"),
        CheckConstraint("reentry in ('once','cooldown','always')", name="reentry"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    #: Higher wins when journeys compete for the same member's message budget.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    reentry: Mapped[str] = mapped_column(String(16), default="once")
    reentry_days: Mapped[int | None] = mapped_column(Integer)
    live_version_id: Mapped[int | None] = mapped_column(BigId)
    owner_unit_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    #: Trigger sweep position: the last event / order / segment spell id already considered.
    cursor: Mapped[int] = mapped_column(BigId, default=0)
    #: PostgreSQL: ids up to here are final (no transaction still holding one can commit); between
    #: it and `cursor`, rows the last sweep's snapshot (`cursor_snapshot`, pg_snapshot as text) could
    #: not see are read again — they committed after a later id was read (journeys.triggers).
    cursor_settled: Mapped[int | None] = mapped_column(BigId)
    cursor_snapshot: Mapped[str | None] = mapped_column(Text)
    #: Time cursor, for triggers an id cannot follow: segment exits (a spell ends by an update in
    #: place) are read from here on; a schedule's last occurrence fired.
    cursor_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class JourneyVersion(Base):
    """A graph; once published it never changes (edits make a new draft version)."""

    __tablename__ = "journey_versions"
    __table_args__ = (
        UniqueConstraint("journey_id", "version"),
        CheckConstraint("status in ('draft','published')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    graph: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class JourneyRun(Base):
    __tablename__ = "journey_runs"
    __table_args__ = (
        CheckConstraint("status in ('active','waiting','completed','exited','failed')", name="status"),
        # One run per member and trigger occurrence (an event, a birthday, a schedule date): the sweep
        # can be re-run without entering anyone twice. Also the (journey_id, member_id) lookup.
        UniqueConstraint("journey_id", "member_id", "trigger_key"),
        Index("ix_journey_runs_wake", "wake_at", postgresql_where=text("status IN ('active','waiting')"),
              sqlite_where=text("status IN ('active','waiting')")),
        Index("ix_journey_runs_member_status", "member_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("journey_versions.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    trigger_key: Mapped[str] = mapped_column(String(160))
    status: Mapped[str] = mapped_column(String(16), default="active")
    step: Mapped[str] = mapped_column(String(64))
    wake_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Waiting for this event (with `wake_at` as the timeout).
    wait_event: Mapped[str | None] = mapped_column(String(64))
    #: A/B variant or "control" (held out: receives nothing, still tracked).
    variant: Mapped[str | None] = mapped_column(String(32))
    context: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    entered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(64))


class JourneyLog(Base):
    __tablename__ = "journey_log"
    __table_args__ = (
        Index("ix_journey_log_member_at", "member_id", "at"),
        Index("ix_journey_log_journey_kind", "journey_id", "kind", "at"),
        Index("ix_journey_log_run", "run_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(BigId)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    step: Mapped[str | None] = mapped_column(String(64))
    #: entered | not_entered | step | branch | sent | suppressed | waited | exited | completed | converted
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class StaffTask(Base):
    """A task for a person: a service call-back (回访) or a WeCom one-to-one message for the member's
    shopping guide. Assigned to the member's home store (and a named staff member when known); the
    journey only records it, the staff member marks it done or not."""

    __tablename__ = "staff_tasks"
    __table_args__ = (
        CheckConstraint("kind in ('callback','wecom')", name="kind"),
        CheckConstraint("status in ('open','done','failed','cancelled')", name="status"),
        Index("ix_staff_tasks_store_status", "store_id", "status", "due_at"),
        UniqueConstraint("key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Idempotency key of the decision (journey, run, step).
    key: Mapped[str] = mapped_column(String(160))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    assignee_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    journey_id: Mapped[int | None] = mapped_column(BigId)
    run_id: Mapped[int | None] = mapped_column(BigId)
    outcome: Mapped[str | None] = mapped_column(Text)
    done_by: Mapped[str | None] = mapped_column(String(64))
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SubscribeGrant(Base):
    """Mini-program subscribe messages: each user grant allows one send of that template. The
    mini-program reports grants; a send uses one; members with none are skipped (reason no_grant)."""

    __tablename__ = "subscribe_grants"
    __table_args__ = (CheckConstraint("remaining >= 0", name="remaining_nonneg"),)

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    template: Mapped[str] = mapped_column(String(128), primary_key=True)
    remaining: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
