"""The points ledger (SPEC L1, L3, L4): append-only entries, the lots earning creates, and the
allocations that say which lot paid which debit.

Entries are never updated or deleted. A lot's `remaining` is the only mutable amount, and it is
derived: amount − Σ allocations drawn from it − what an expiry took (`expired`; `orchard points verify`
checks this). The account row
caches the balance (Σ entries) and is what a writer locks, so two spends of one member serialise.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Date, ForeignKey, Index, Integer, String, UniqueConstraint
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
        CheckConstraint(f"kind in ({','.join(repr(k) for k in ENTRY_KINDS)})", name="kind"),
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
    """What one credit left to spend. Spent soonest-expiring first.

    On PostgreSQL the table has fillfactor 48 (migrations 0017, 0018): the columns that change —
    remaining, expired, expire_entry_id — are in no index, so with free space in the page their updates
    are HOT (a year-end pass rewrites every row of a page at once, each new version 8 bytes longer).
    Keep them out of every index (a partial index `WHERE remaining > 0` included)."""

    __tablename__ = "points_lots"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_pos"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
        CheckConstraint("expired >= 0 AND remaining + expired <= amount", name="expired_in_range"),
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
    #: Pending until this event happens for the lot's order (e.g. order_delivered); pending_until is
    #: far in the future meanwhile, so every "pending" rule applies unchanged.
    pending_event: Mapped[str | None] = mapped_column(String(64))
    #: Earned while the member had an open anomaly flag: held (pending) until the flag is reviewed.
    held_flag_id: Mapped[int | None] = mapped_column(ForeignKey("loyalty_flags.id"), index=True)
    #: Points the expire entry `expire_entry_id` took from this lot, written by the same UPDATE that
    #: empties it (loyalty.expiry) instead of an allocation row: 0 and None until then. A lot expired
    #: again later (points a cancelled spend restored into it) records that expiry as an allocation.
    #: Not a foreign key and not indexed, so the update stays HOT; verify checks what it names.
    expired: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    expire_entry_id: Mapped[int | None] = mapped_column(BigId)


class PointsAllocation(Base):
    """`amount` points of lot `lot_id` paid debit entry `entry_id` (a spend, a reversal, a negative
    adjustment; an expiry before migration 0017, or a second expiry of one lot): so the issuing and the
    redeeming store of every point are known. A restore (a cancelled spend) puts points back into the
    lots they came from as negative allocations. A lot's first expiry is on the lot (`expired`)."""

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
                      CheckConstraint("status in ('active','inactive')", name="status"),
                      CheckConstraint("target in ('points','growth')", name="target"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    #: What the rule feeds: points (spendable) or growth value (成长值, drives tiers).
    target: Mapped[str] = mapped_column(String(16), default="points", server_default="points")
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


class GrowthAccount(Base):
    """成长值 (SPEC L5): a member's growth value, which drives tiers and is never spent."""

    __tablename__ = "growth_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_nonneg"),)

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class GrowthEntry(Base):
    """Append-only growth postings, one per rule and order line (or event, or adjustment), dated when
    the growth happened (the order's paid_at, also for its reversal), so a tier window sums the
    growth of the orders inside it. An adjustment is idempotent on (source, external_id)."""

    __tablename__ = "growth_entries"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        CheckConstraint("kind in ('earn','reverse','adjust','transfer')", name="kind"),
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        Index("ix_growth_entries_member_id_occurred_at", "member_id", "occurred_at"),
        Index("ix_growth_entries_order_id", "order_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("earning_rules.id"))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    line_no: Mapped[int | None] = mapped_column(Integer)
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(200))
    actor: Mapped[str] = mapped_column(String(64))
    explanation: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TierProgram(Base):
    """The one tier program (SPEC L6): what qualifies (metric over a period), how tiers are kept."""

    __tablename__ = "tier_program"
    __table_args__ = (
        CheckConstraint("id = 1", name="single"),
        CheckConstraint("metric in ('growth','spend','orders','score')", name="metric"),
        CheckConstraint("period in ('rolling_12m','calendar_year','lifetime')", name="period"),
        CheckConstraint("downgrade in ('one_level','recompute')", name="downgrade"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    metric: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(16))
    downgrade: Mapped[str] = mapped_column(String(16))
    #: A tier reached (or qualified for again) is kept at least this long: the grace before a downgrade.
    hold_days: Mapped[int] = mapped_column(Integer)
    #: For metric "score": growth, spend_yuan and orders weights.
    weights: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TierLevel(Base):
    __tablename__ = "tier_levels"
    __table_args__ = (CheckConstraint("threshold >= 0", name="threshold_nonneg"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    #: Higher is better; the lowest active level is where every member starts.
    rank: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[int] = mapped_column(BigInteger)
    #: Data other modules read: discount_rate, free_shipping, birthday_gift, priority_service, …
    benefits: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    #: A level removed from the program stays for history (changes point at it) but is not reached.
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class MemberTier(Base):
    """A member's tier; no row means the base (lowest) level."""

    __tablename__ = "member_tiers"
    __table_args__ = (Index("ix_member_tiers_level_id", "level_id"),)

    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), primary_key=True)
    level_id: Mapped[int] = mapped_column(ForeignKey("tier_levels.id"))
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: Held at least until then; after it, a member below the level's threshold is downgraded.
    keep_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    override_level_id: Mapped[int | None] = mapped_column(ForeignKey("tier_levels.id"))
    override_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    override_reason: Mapped[str | None] = mapped_column(String(200))
    metric_value: Mapped[int] = mapped_column(BigInteger, default=0)
    evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TierChange(Base):
    """Every tier change with its reason: upgrade, downgrade, override, override_ended."""

    __tablename__ = "tier_changes"
    __table_args__ = (Index("ix_tier_changes_member_id_at", "member_id", "at"), Index("ix_tier_changes_at", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    from_level_id: Mapped[int | None] = mapped_column(ForeignKey("tier_levels.id"))
    to_level_id: Mapped[int | None] = mapped_column(ForeignKey("tier_levels.id"))
    reason: Mapped[str] = mapped_column(String(32))
    metric_value: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CheckinProgram(Base):
    """Daily check-in (签到, SPEC L7): the reward ladder by streak day and the make-up (补签) limits."""

    __tablename__ = "checkin_program"
    __table_args__ = (CheckConstraint("id = 1", name="single"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    #: [{"points": 5, "growth": 1}, …]: the reward of streak day 1, 2, …
    ladder: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    #: After the last step, start again at day 1 (True) or keep the last step's reward (False).
    cycle: Mapped[bool] = mapped_column(Boolean, default=False)
    makeup_per_month: Mapped[int] = mapped_column(Integer, default=0)
    makeup_cost_points: Mapped[int] = mapped_column(Integer, default=0)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkin(Base):
    """One day checked in (the tenant zone's date): once per member and day, by the unique key."""

    __tablename__ = "checkins"
    __table_args__ = (UniqueConstraint("member_id", "day"),
                      CheckConstraint("kind in ('checkin','makeup')", name="kind"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(16))
    #: The streak this day completed (1 = a new start).
    streak: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(Integer)
    growth: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoyaltyTask(Base):
    """An onboarding task (完善资料, 首单, 首评, 关注公众号 …), rewarded once per member. kind:
    profile — the profile is complete (name, gender, birthday, region); first_order — a first order;
    event — a first event of the given name (e.g. review, wechat_follow)."""

    __tablename__ = "loyalty_tasks"
    __table_args__ = (CheckConstraint("kind in ('profile','first_order','event')", name="kind"),
                      CheckConstraint("points >= 0 AND growth >= 0", name="rewards_nonneg"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    event: Mapped[str | None] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(Integer, default=0)
    growth: Mapped[int] = mapped_column(Integer, default=0)
    #: Display order of the series.
    rank: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class TaskCompletion(Base):
    __tablename__ = "task_completions"
    __table_args__ = (UniqueConstraint("member_id", "task_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("loyalty_tasks.id"))
    completed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    points: Mapped[int] = mapped_column(Integer)
    growth: Mapped[int] = mapped_column(Integer)


class LoyaltyFlag(Base):
    """An anomaly for review (SPEC L8): a member or store earning far above its own norm, or a
    member's burst of orders at one store in a day. While a member has an open flag, new earning is
    held pending; clearing the flag releases it, confirming forfeits it."""

    __tablename__ = "loyalty_flags"
    __table_args__ = (UniqueConstraint("kind", "subject", "day"),
                      CheckConstraint("status in ('open','cleared','confirmed')", name="status"),
                      Index("ix_loyalty_flags_status_day", "status", "day"),
                      Index("ix_loyalty_flags_member_id", "member_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    #: "member:<id>" or "store:<id>": one flag per kind, subject and day (a re-scan adds nothing).
    subject: Mapped[str] = mapped_column(String(48))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    day: Mapped[dt.date] = mapped_column(Date)
    value: Mapped[int] = mapped_column(BigInteger)
    baseline: Mapped[int] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(String(200))


class BenefitPolicy(Base):
    """HQ's limit on store benefits (SPEC B4): at most this share of what a member of a tier sees."""

    __tablename__ = "benefit_policy"
    __table_args__ = (CheckConstraint("id = 1", name="single"),
                      CheckConstraint("store_share_max_pct BETWEEN 0 AND 100", name="pct"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    store_share_max_pct: Mapped[int] = mapped_column(Integer, default=20)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Benefit(Base):
    """One benefit in the library (SPEC B3): HQ's (no owner store) or a store's own; monetary or not
    (priority purchase, dedicated service, event places are first-class); for some tiers or all."""

    __tablename__ = "benefits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(32))
    monetary: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(500), default="")
    owner_store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    #: Tier level codes the benefit is for; empty: every tier.
    tier_codes: Mapped[list[str]] = mapped_column(Json, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogItem(Base):
    """An item of the points catalog (积分商城, SPEC L3): a gift, a service or a coupon, for points
    (plus cash, in fen, paid at the till), with optional stock and per-member limit."""

    __tablename__ = "catalog_items"
    __table_args__ = (CheckConstraint("kind in ('gift','service','coupon')", name="kind"),
                      CheckConstraint("points_cost > 0", name="points_pos"),
                      CheckConstraint("cash_fen >= 0", name="cash_nonneg"),
                      CheckConstraint("stock IS NULL OR stock >= 0", name="stock_nonneg"),
                      CheckConstraint("redeemed >= 0", name="redeemed_nonneg"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(500), default="")
    #: For kind "coupon": the coupon template a redemption issues.
    coupon_template_id: Mapped[int | None] = mapped_column(BigInteger)
    points_cost: Mapped[int] = mapped_column(BigInteger)
    cash_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    #: None: unlimited. Taken with a conditional UPDATE, so it never goes below zero.
    stock: Mapped[int | None] = mapped_column(BigInteger)
    redeemed: Mapped[int] = mapped_column(BigInteger, default=0)
    per_member_limit: Mapped[int | None] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogRedemption(Base):
    __tablename__ = "catalog_redemptions"
    __table_args__ = (UniqueConstraint("source", "external_id"),
                      CheckConstraint("status in ('redeemed','cancelled')", name="status"),
                      CheckConstraint("quantity > 0", name="quantity_pos"),
                      Index("ix_catalog_redemptions_member_id_item_id", "member_id", "item_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("catalog_items.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    quantity: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    cash_fen: Mapped[int] = mapped_column(BigInteger)
    points_entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
