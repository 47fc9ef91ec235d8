"""Orders, lines, refunds and behaviour events.

Each ingested row keeps `body_hash`, the fingerprint of the item as first received: a re-send with
the same hash is a replay (nothing changes, the original outcome is returned); a different hash
under the same (source, external_id) is a conflict.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_orders_member_paid", "member_id", "paid_at"),
        CheckConstraint("amount_fen >= 0", name="amount_nonneg"),
        CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refund_bounds"),
        CheckConstraint("status in ('paid','partially_refunded','refunded')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"), index=True)
    channel: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24), default="paid")
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    #: What the member paid, in fen (分); may be below the lines' sum when an order discount applies.
    amount_fen: Mapped[int] = mapped_column(BigId)
    refunded_fen: Mapped[int] = mapped_column(BigId, default=0)
    paid_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    properties: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrderLine(Base):
    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "line_no"),
        CheckConstraint("quantity > 0", name="quantity_pos"),
        CheckConstraint("amount_fen >= 0 AND unit_price_fen >= 0", name="money_nonneg"),
        CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refund_bounds"),
        CheckConstraint("refunded_quantity >= 0 AND refunded_quantity <= quantity", name="refund_qty_bounds"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: No index of its own: the unique (order_id, line_no) index serves every look-up by order, and
    #: a second one cost each imported line another B-tree insert.
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(100), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_fen: Mapped[int] = mapped_column(BigId)
    amount_fen: Mapped[int] = mapped_column(BigId)
    refunded_quantity: Mapped[int] = mapped_column(Integer, default=0)
    refunded_fen: Mapped[int] = mapped_column(BigId, default=0)


class Refund(Base):
    """A refund names its order by (order_source, order_external_id). If the order has not arrived
    yet the refund waits as 'pending' and is applied in the transaction that ingests the order."""

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_refunds_order_ref", "order_source", "order_external_id"),
        CheckConstraint("status in ('pending','applied','rejected')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    order_source: Mapped[str] = mapped_column(String(64))
    order_external_id: Mapped[str] = mapped_column(String(128))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    #: The request as received: {"lines": [...]} or {"amount_fen": n} or {} for a full refund.
    request: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    amount_fen: Mapped[int | None] = mapped_column(BigId)
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    refunded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    applied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class RefundLine(Base):
    __tablename__ = "refund_lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    refund_id: Mapped[int] = mapped_column(ForeignKey("refunds.id", ondelete="CASCADE"), index=True)
    order_line_id: Mapped[int] = mapped_column(ForeignKey("order_lines.id"), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    amount_fen: Mapped[int] = mapped_column(BigId)


class Event(Base):
    """A behaviour event. `member_id` is null only while the event carries nothing but an
    anonymous id not yet linked to a member; linking that id back-fills the events."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_events_member_name_time", "member_id", "name", "occurred_at"),
        #: Segments' behaviour windows ("product_viewed in the last 30 days") read one name's recent events;
        #: on PostgreSQL it covers member_id (migration 0020), so windows without a property filter read
        #: only the index.
        Index("ix_events_name_time", "name", "occurred_at", postgresql_include=["member_id"]),
        Index("ix_events_anonymous", "anonymous_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    anonymous_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(64))
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    properties: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
