"""Message templates, the outbox of messages (every decision, sent or suppressed), the contact policy,
and tracked short links.

A message row is written in the transaction that decides it (the transactional outbox): either
`queued` (a worker will send it) or `suppressed` with the reason, so "why did member X get nothing"
is a query. Its `key` is the idempotency key: the same decision made twice (a retried job, a crash
and re-run) finds the first row, and providers receive the key so a resend is recognisably the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

CHANNELS = ("sms", "wechat_template", "wechat_subscribe", "app_push", "email", "webhook", "wecom", "log")
PURPOSES = ("marketing", "service")
STATUSES = ("queued", "sending", "sent", "delivered", "failed", "dead", "suppressed", "cancelled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} in ({','.join(repr(v) for v in values)})"


class MessageTemplate(Base):
    __tablename__ = "message_templates"
    __table_args__ = (
        CheckConstraint(_in("channel", CHANNELS), name="channel"),
        CheckConstraint(_in("purpose", PURPOSES), name="purpose"),
        CheckConstraint("status in ('draft','published','retired')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(24))
    purpose: Mapped[str] = mapped_column(String(16))
    #: The provider's approved template (SMS template code, WeChat template id, …), when it has one.
    provider_template: Mapped[str | None] = mapped_column(String(128))
    #: SMS signature (签名) without brackets.
    sign_name: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(200))
    #: Jinja2 (sandboxed) text; for provider templates, the variables map instead (`variables`).
    body: Mapped[str] = mapped_column(Text)
    #: Provider template variables: name → Jinja2 expression rendered per member.
    variables: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(_in("channel", CHANNELS), name="channel"),
        CheckConstraint(_in("purpose", PURPOSES), name="purpose"),
        CheckConstraint(_in("status", STATUSES), name="status"),
        # What workers claim: due queued messages.
        Index("ix_messages_due", "next_attempt_at", postgresql_where=text("status = 'queued'"),
              sqlite_where=text("status = 'queued'")),
        # Caps and "touched in the last N days": a member's recent messages by purpose.
        Index("ix_messages_member_time", "member_id", "created_at"),
        Index("ix_messages_recipient_time", "channel", "recipient", "created_at"),
        Index("ix_messages_journey", "journey_id", "created_at"),
        Index("ix_messages_status_time", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Idempotency key of the decision (e.g. "journey:12:run:345:step:s3"); also sent to the provider.
    key: Mapped[str] = mapped_column(String(160), unique=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("message_templates.id"))
    channel: Mapped[str] = mapped_column(String(24))
    purpose: Mapped[str] = mapped_column(String(16))
    #: Where it goes: E.164 phone, openid, registration id, e-mail, URL (null when suppressed before).
    recipient: Mapped[str | None] = mapped_column(String(255))
    #: The rendered content and provider variables, as sent.
    payload: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    #: Why it was suppressed, failed or cancelled (a stable code, e.g. "cap.global", "consent.sms").
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    #: Higher wins when journeys compete for the same member in the same window.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    journey_id: Mapped[int | None] = mapped_column(BigId)
    run_id: Mapped[int | None] = mapped_column(BigId)
    step: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: A worker's claim: who sends it now, and until when the claim holds.
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Receipts (messaging.receipts): the provider's delivery report, a read receipt, the first click (a tracked
    #: link or the provider's click report). A read or click also stamps `delivered_at` when no receipt did.
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    clicked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ContactPolicy(Base):
    """The respect rules (one row, id 1; absent means the defaults in `respect.DEFAULT_POLICY`)."""

    __tablename__ = "contact_policy"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    policy: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ShortLink(Base):
    """A tracked link in a message: `/t/{code}` records the click and redirects to `url`."""

    __tablename__ = "short_links"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    first_click_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
