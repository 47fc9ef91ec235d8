"""The points ledger (SPEC L1, L3, L4): append-only entries, the lots earning creates, and the
allocations that say which lot paid which debit.

Entries are never updated or deleted. A lot's `remaining` is the only mutable amount, and it is
derived: amount − Σ allocations drawn from it (`orchard points verify` checks this). The account row
caches the balance (Σ entries) and is what a writer locks, so two spends of one member serialise.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

ENTRY_KINDS = ("earn", "spend", "expire", "adjust")


class PointsAccount(Base):
    """One per member that ever had points: the row writers lock, and the cached balance."""

    __tablename__ = "points_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_nonneg"),)

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    #: Σ of the member's entries (checked by verify).
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PointsEntry(Base):
    __tablename__ = "points_entries"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_points_entries_member_id_id", "member_id", "id"),
        CheckConstraint("kind in ('earn','spend','expire','adjust')", name="kind"),
        CheckConstraint("amount <> 0", name="amount_nonzero"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    #: Signed: credits positive, debits negative.
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    #: (source, external_id) makes every command idempotent: a retry returns this entry.
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    #: What produced it and from which inputs, for the member's history ("¥128 × 2 member day = 256").
    explanation: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PointsLot(Base):
    """What one credit left to spend. Spent soonest-expiring first."""

    __tablename__ = "points_lots"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_pos"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
        Index("ix_points_lots_member_id_expires_at", "member_id", "expires_at"),
        Index("ix_points_lots_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    earned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: None: never expires.
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Not spendable before this time (T+N).
    pending_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))


class PointsAllocation(Base):
    """`amount` points of lot `lot_id` paid debit entry `entry_id` (a spend, an expiry, a negative
    adjustment): so the issuing and the redeeming store of every point are known."""

    __tablename__ = "points_allocations"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_pos"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("points_lots.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
