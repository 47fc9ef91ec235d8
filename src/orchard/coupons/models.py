"""Coupon templates, the coupons issued from them, their redemptions and bulk-issue batches (SPEC B1, B2).

Money is integer fen. A coupon's validity window is computed once, at issue, and stored on the coupon
(`valid_to` is exclusive: the first instant it is no longer usable). Its terms (discount, threshold,
scope, stacking) stay on the template, which is why a template's terms cannot be edited once created
(`coupons.templates`): only its name, status and limits can.

Status moves issued → redeemed | expired | voided; an undone redemption moves redeemed → issued (or
expired, if the window has passed meanwhile). Every move is a conditional UPDATE on the status it
expects, and CHECK constraints are the last line: the redemption and void columns are set exactly
when the status says so.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

TEMPLATE_KINDS = ("amount_off", "percent_off", "gift", "service")
COUPON_STATUSES = ("issued", "redeemed", "expired", "voided")


class CouponTemplate(Base):
    """What a coupon gives and when, where and to whom it may be issued and used.

    kind amount_off: `off_fen` off once the eligible amount reaches `threshold_fen` (满减; threshold 0
    is a no-threshold coupon). percent_off: `percent` % off the eligible amount, at most `max_off_fen`.
    gift / service: nothing off; `benefit` names the item or service handed over.
    """

    __tablename__ = "coupon_templates"
    __table_args__ = (
        CheckConstraint("kind in ('amount_off','percent_off','gift','service')", name="kind"),
        CheckConstraint("status in ('active','inactive')", name="status"),
        CheckConstraint("validity in ('fixed','relative')", name="validity"),
        CheckConstraint("off_fen IS NULL OR off_fen > 0", name="off_fen_pos"),
        CheckConstraint("percent IS NULL OR (percent >= 1 AND percent <= 99)", name="percent_range"),
        CheckConstraint("max_off_fen IS NULL OR max_off_fen > 0", name="max_off_fen_pos"),
        CheckConstraint("threshold_fen >= 0", name="threshold_nonneg"),
        CheckConstraint("(kind = 'amount_off' AND off_fen IS NOT NULL AND percent IS NULL) OR "
                        "(kind = 'percent_off' AND percent IS NOT NULL AND off_fen IS NULL) OR "
                        "(kind IN ('gift','service') AND off_fen IS NULL AND percent IS NULL)", name="kind_terms"),
        CheckConstraint("(validity = 'fixed' AND valid_from IS NOT NULL AND valid_to > valid_from) OR "
                        "(validity = 'relative' AND valid_days IS NOT NULL)", name="validity_terms"),
        CheckConstraint("valid_days IS NULL OR (valid_days >= 1 AND valid_days <= 3660)", name="valid_days_range"),
        CheckConstraint("starts_after_days >= 0", name="starts_after_nonneg"),
        CheckConstraint("total_limit IS NULL OR total_limit > 0", name="total_limit_pos"),
        CheckConstraint("per_member_limit IS NULL OR per_member_limit > 0", name="per_member_limit_pos"),
        CheckConstraint("issued_count >= 0 AND (total_limit IS NULL OR issued_count <= total_limit)",
                        name="issued_within_limit"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="active")
    #: For per-campaign redemption rates (核销率).
    campaign: Mapped[str | None] = mapped_column(String(64), index=True)
    off_fen: Mapped[int | None] = mapped_column(BigInteger)
    percent: Mapped[int | None] = mapped_column(Integer)
    max_off_fen: Mapped[int | None] = mapped_column(BigInteger)
    threshold_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    #: gift: {"sku", "name"}; service: {"description"}; {} for the discount kinds.
    benefit: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    #: fixed: [valid_from, valid_to) for every coupon. relative: from the start of the tenant-zone day
    #: `starts_after_days` after issue (or the issue instant when 0) for `valid_days` calendar days.
    validity: Mapped[str] = mapped_column(String(16))
    valid_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    valid_to: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    valid_days: Mapped[int | None] = mapped_column(Integer)
    starts_after_days: Mapped[int] = mapped_column(Integer, default=0)
    #: Where it may be redeemed: store codes, order-line categories, channels. Empty: anywhere.
    stores: Mapped[list[str]] = mapped_column(Json, default=list)
    categories: Mapped[list[str]] = mapped_column(Json, default=list)
    channels: Mapped[list[str]] = mapped_column(Json, default=list)
    #: Stacking: a non-stackable coupon is the only coupon on its order; stackable coupons combine,
    #: except two of the same exclusive group.
    stackable: Mapped[bool] = mapped_column(Boolean, default=False)
    exclusive_group: Mapped[str | None] = mapped_column(String(64))
    total_limit: Mapped[int | None] = mapped_column(BigInteger)
    per_member_limit: Mapped[int | None] = mapped_column(Integer)
    #: Coupons ever issued from this template (voided ones included): the row issuers lock.
    issued_count: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CouponBatch(Base):
    """One bulk issue: idempotent on (source, external_id); its coupons carry its id."""

    __tablename__ = "coupon_batches"
    __table_args__ = (UniqueConstraint("source", "external_id"),
                      CheckConstraint("requested >= 0 AND issued >= 0 AND issued <= requested", name="counts"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("coupon_templates.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(200))
    #: Distinct member ids asked for, and how many got a coupon; the rest are in `skipped`.
    requested: Mapped[int] = mapped_column(BigInteger)
    issued: Mapped[int] = mapped_column(BigInteger)
    skipped: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Coupon(Base):
    """One coupon in one member's wallet. `code` is what the member shows at the counter."""

    __tablename__ = "coupons"
    __table_args__ = (
        # Partial: bulk-issued coupons (no external id) skip this index entirely.
        Index("uq_coupons_source_external_id", "source", "external_id", unique=True,
              postgresql_where=text("external_id IS NOT NULL"), sqlite_where=text("external_id IS NOT NULL")),
        CheckConstraint("status in ('issued','redeemed','expired','voided')", name="status"),
        CheckConstraint("valid_to > valid_from", name="window"),
        CheckConstraint("(status = 'redeemed' AND redeemed_at IS NOT NULL AND redeemed_order_id IS NOT NULL) OR "
                        "(status <> 'redeemed' AND redeemed_at IS NULL AND redeemed_order_id IS NULL)",
                        name="redeemed_iff_status"),
        CheckConstraint("(status = 'voided' AND voided_at IS NOT NULL) OR (status <> 'voided' AND voided_at IS NULL)",
                        name="voided_iff_status"),
        CheckConstraint("discount_fen IS NULL OR discount_fen >= 0", name="discount_nonneg"),
        # The only secondary index besides code and the idempotency key: wallets (member_id) and the
        # per-member limit (member_id, template_id). Every index is paid per row by a bulk issue, so
        # the expiry pass and per-template stats scan the table instead (daily jobs and reports).
        Index("ix_coupons_member_id_template_id", "member_id", "template_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Crockford base32, 12 characters (60 random bits): see coupons.codes.
    code: Mapped[str] = mapped_column(String(16), unique=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("coupon_templates.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="issued")
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    valid_from: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    valid_to: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: A single issue's idempotency key; NULL for coupons of a batch (the batch has the key).
    source: Mapped[str | None] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(128))
    body_hash: Mapped[str | None] = mapped_column(String(64))
    #: The bulk issue that made it. Deliberately no foreign key: a bulk issue inserts a million rows in
    #: one statement, and each FK is a trigger per row (~20% of the insert); batches are never deleted.
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    issued_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(200))
    #: The live redemption (also in coupon_redemptions, which keeps undone ones too).
    redeemed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    redeemed_store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    redeemed_order_source: Mapped[str | None] = mapped_column(String(64))
    redeemed_order_id: Mapped[str | None] = mapped_column(String(128))
    discount_fen: Mapped[int | None] = mapped_column(BigInteger)
    voided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    void_reason: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CouponRedemption(Base):
    """Every redemption of a coupon, kept when undone (`cancelled_at`). One per (coupon, order): a retry
    for the same order finds it and answers with it."""

    __tablename__ = "coupon_redemptions"
    __table_args__ = (
        UniqueConstraint("coupon_id", "order_source", "order_id"),
        Index("ix_coupon_redemptions_order_source_order_id", "order_source", "order_id"),
        CheckConstraint("order_amount_fen >= 0 AND eligible_fen >= 0 AND discount_fen >= 0 "
                        "AND discount_fen <= eligible_fen", name="amounts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(ForeignKey("coupons.id", ondelete="CASCADE"))
    order_source: Mapped[str] = mapped_column(String(64))
    #: The client's order reference (its external id).
    order_id: Mapped[str] = mapped_column(String(128))
    store_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    channel: Mapped[str | None] = mapped_column(String(32))
    order_amount_fen: Mapped[int] = mapped_column(BigInteger)
    #: The part of the order the coupon applies to (lines in its categories, or the whole order).
    eligible_fen: Mapped[int] = mapped_column(BigInteger)
    discount_fen: Mapped[int] = mapped_column(BigInteger)
    body_hash: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    redeemed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancel_reason: Mapped[str | None] = mapped_column(String(200))
    cancelled_by: Mapped[str | None] = mapped_column(String(64))
