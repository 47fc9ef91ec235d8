"""The points ledger (SPEC L1, L3, L4): append-only entries, the lots earning creates, and the
allocations that say which lot paid which debit.

Entries are never updated or deleted. A lot's `remaining` is the only mutable amount, and it is
derived: amount − Σ allocations drawn from it (`orchard points verify` checks this). The account row
caches the balance (Σ entries) and is what a writer locks, so two spends of one member serialise.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

#: earn/adjust/spend/expire as named; reverse: a refund taking back what its order earned; restore: a
#: cancelled spend giving its points back to the lots they came from; transfer: a merge moving points.
ENTRY_KINDS = ("earn", "spend", "expire", "adjust", "reverse", "restore", "transfer")


class PointsAccount(Base):
    """One per member that ever had points: the row writers lock, and the cached balance."""

    __tablename__ = "points_accounts"
    __table_args__ = (CheckConstraint("debt >= 0", name="debt_nonneg"),
                      CheckConstraint("balance + debt >= 0", name="balance_covers_debt"))

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    #: Σ of the member's entries (checked by verify); negative only while the member owes points.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Points a refund took back that were already spent, under the "debt" refund policy: the part of
    #: debit entries no lot paid yet. The next credits repay it first. balance = Σ lot remaining − debt.
    debt: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PointsEntry(Base):
    __tablename__ = "points_entries"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_points_entries_member_id_id", "member_id", "id"),
        CheckConstraint("kind in ('earn','spend','expire','adjust','reverse','restore','transfer')", name="kind"),
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
    #: The order an earn or a reverse entry belongs to.
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
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
    """`amount` points of lot `lot_id` paid debit entry `entry_id` (a spend, an expiry, a reversal, a
    negative adjustment): so the issuing and the redeeming store of every point are known. A restore
    (a cancelled spend) puts points back into the lots they came from as negative allocations."""

    __tablename__ = "points_allocations"
    __table_args__ = (CheckConstraint("amount <> 0", name="amount_nonzero"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("points_lots.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class EarningRule(Base):
    """One earning rule (SPEC L2). `kind` says how `config` reads (loyalty.rules validates it):
    amount — points per amount spent; event — points per behaviour event; multiplier — a factor on
    amount rules (member day, birthday month, campaign). Edits change future earning only: every award
    keeps the inputs it was computed from in its entry's explanation."""

    __tablename__ = "earning_rules"
    __table_args__ = (CheckConstraint("kind in ('amount','event','multiplier')", name="kind"),
                      CheckConstraint("status in ('active','inactive')", name="status"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="active")
    #: Higher first; a rule with stop_further ends the evaluation of lower rules of its kind.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    stop_further: Mapped[bool] = mapped_column(Boolean, default=False)
    starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    config: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PointsAward(Base):
    """What one rule gave (or, negative, what a refund took back) for one order line, order or event:
    the accounting behind an earn or reverse entry. Caps sum it per member, rule and period; a refund
    reverses it line by line. Under the "cap" refund policy a reverse entry may move fewer points than
    its awards: the difference is the recorded shortfall."""

    __tablename__ = "points_awards"
    __table_args__ = (CheckConstraint("points <> 0", name="points_nonzero"),
                      Index("ix_points_awards_member_id_rule_id_awarded_at", "member_id", "rule_id", "awarded_at"),
                      Index("ix_points_awards_order_id", "order_id"),
                      Index("ix_points_awards_entry_id", "entry_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: None: a reversal that found nothing to take back under the "cap" policy (all shortfall).
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("points_entries.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    rule_id: Mapped[int] = mapped_column(ForeignKey("earning_rules.id"))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    #: The refund a negative award reverses for.
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))
    #: None: the whole order (an order without lines) or an event.
    line_no: Mapped[int | None] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    #: When the earning happened (the order's paid_at, the event's time): the period caps count in.
    awarded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
