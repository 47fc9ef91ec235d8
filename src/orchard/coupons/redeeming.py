"""Redeeming a coupon exactly once, undoing a redemption, voiding, and the expiry pass.

The gate is one conditional UPDATE: `… SET status = 'redeemed' WHERE id = :id AND status = 'issued'
AND valid_from <= :now AND valid_to > :now`. On PostgreSQL (READ COMMITTED) a second redeemer blocks
on the row until the first commits, then re-evaluates the WHERE and matches nothing; on SQLite
writers are serial. So of 50 stores redeeming one code at once exactly one succeeds. The loser
reads the coupon again: redeemed for its own order (a retry that raced itself) → the first answer;
otherwise 409 coupon.already_redeemed. Checks made before the UPDATE (window, scope, threshold,
stacking) give precise refusals; the UPDATE alone decides who wins.

Stacking reads the order's other live redemptions; two coupons redeemed on one order at once are
serialised by a transaction-scoped advisory lock on the order reference (PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.coupons import codes, rules
from orchard.coupons.models import Coupon, CouponRedemption, CouponTemplate
from orchard.coupons.sql import sql
from orchard.coupons.templates import scope_of, terms_of
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.kit.hashing import fingerprint


@dataclass(frozen=True)
class Order:
    source: str
    external_id: str
    amount_fen: int
    store_id: int | None
    store_code: str | None
    channel: str | None
    lines: tuple[rules.Line, ...] | None


def by_code(session: Session, raw: str, *, lock: bool = False) -> Coupon:
    code = codes.normalize(raw)
    if code is None:
        raise InvalidInput.field("code", "not a coupon code (letters and digits, e.g. 7K3M-9QWX-2D8F)")
    stmt = select(Coupon).where(Coupon.code == code).execution_options(populate_existing=True)
    coupon = session.scalar(stmt.with_for_update() if lock else stmt)
    if coupon is None:
        raise NotFound("券不存在 coupon not found", code="coupon.not_found")
    return coupon


def _fresh(session: Session, coupon_id: int) -> Coupon:
    return session.scalar(select(Coupon).where(Coupon.id == coupon_id).execution_options(populate_existing=True))


def _redemption(session: Session, coupon_id: int, source: str, order_id: str) -> CouponRedemption | None:
    return session.scalar(select(CouponRedemption).where(
        CouponRedemption.coupon_id == coupon_id, CouponRedemption.order_source == source,
        CouponRedemption.order_id == order_id).execution_options(populate_existing=True))


def _replay(session: Session, coupon: Coupon, order: Order, body_hash: str) -> CouponRedemption | None:
    prior = _redemption(session, coupon.id, order.source, order.external_id)
    if prior is None:
        return None
    if prior.body_hash != body_hash:
        raise Conflict(f"该订单已用此券核销，内容不同 "
                       f"order {order.source}/{order.external_id} already redeemed this coupon with another body",
                       code="coupon.id_reused")
    if prior.cancelled_at is not None:
        raise Conflict("该订单的核销已撤销 this order's redemption of the coupon was undone; "
                       "a new order needs its own reference",
                       code="coupon.redemption_cancelled")
    return prior


def _others(session: Session, coupon: Coupon, order: Order) -> list[rules.Other]:
    rows = session.execute(
        select(CouponTemplate.id, CouponTemplate.stackable, CouponTemplate.exclusive_group)
        .join(Coupon, Coupon.template_id == CouponTemplate.id)
        .join(CouponRedemption, CouponRedemption.coupon_id == Coupon.id)
        .where(CouponRedemption.order_source == order.source, CouponRedemption.order_id == order.external_id,
               CouponRedemption.cancelled_at.is_(None), Coupon.id != coupon.id)).all()
    return [rules.Other(template_id=r[0], stackable=r[1], exclusive_group=r[2]) for r in rows]


def redeem(session: Session, *, coupon: Coupon, order: Order, actor: str,
           now: dt.datetime | None = None) -> tuple[CouponRedemption, bool]:
    """Redeem `coupon` on `order` once. Returns (redemption, created); a retry for the same order
    returns the first redemption. 409 with a coupon.* code when the coupon cannot be used."""
    body_hash = fingerprint({"amount_fen": order.amount_fen, "store": order.store_code, "channel": order.channel,
                             "lines": [(ln.category, ln.amount_fen) for ln in order.lines or ()]})
    if (prior := _replay(session, coupon, order, body_hash)) is not None:
        return prior, False
    now = now or utcnow()
    t = session.get(CouponTemplate, coupon.template_id)
    scope = scope_of(t)
    if scope.categories and order.lines is None:
        raise InvalidInput.field("lines", f"required: the coupon applies to categories {', '.join(scope.categories)}")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                        {"k": f"coupon-order:{order.source}:{order.external_id}"})
    rules.check_state(coupon.status, coupon.valid_from, coupon.valid_to, now)
    eligible, discount = rules.discount(terms_of(t), scope, rules.OrderIn(
        amount_fen=order.amount_fen, store_code=order.store_code, channel=order.channel, lines=order.lines),
        _others(session, coupon, order))
    won = session.execute(
        update(Coupon).where(Coupon.id == coupon.id, Coupon.status == "issued", Coupon.valid_from <= now,
                             Coupon.valid_to > now)
        .values(status="redeemed", redeemed_at=now, redeemed_store_id=order.store_id,
                redeemed_order_source=order.source, redeemed_order_id=order.external_id, discount_fen=discount,
                updated_at=now)).rowcount
    if won != 1:
        # Someone else got there first (their commit is visible to this new statement).
        if (prior := _replay(session, coupon, order, body_hash)) is not None:
            return prior, False
        current = _fresh(session, coupon.id)
        rules.check_state(current.status, current.valid_from, current.valid_to, now)
        raise Conflict("券状态已变化，请重试 the coupon changed while it was being redeemed; retry",
                       code="coupon.retry")
    redemption = CouponRedemption(coupon_id=coupon.id, order_source=order.source, order_id=order.external_id,
                                  store_id=order.store_id, channel=order.channel, order_amount_fen=order.amount_fen,
                                  eligible_fen=eligible, discount_fen=discount, body_hash=body_hash, actor=actor,
                                  redeemed_at=now)
    session.add(redemption)
    session.flush()
    audit.record(session, actor=actor, action="coupon.redeemed", entity="coupon", entity_id=coupon.id,
                 data={"redemption_id": redemption.id, "order_source": order.source,
                       "order_external_id": order.external_id, "store_id": order.store_id,
                       "discount_fen": discount, "eligible_fen": eligible})
    return redemption, True


def cancel(session: Session, *, coupon: Coupon, order_source: str, order_id: str, reason: str, actor: str,
           now: dt.datetime | None = None) -> tuple[CouponRedemption, bool]:
    """Undo the redemption of `coupon` by this order (the order was cancelled): the coupon is usable
    again, or expired if its window has passed. Once: a repeat returns the undone redemption."""
    redemption = _redemption(session, coupon.id, order_source, order_id)
    if redemption is None:
        raise NotFound("该订单未核销此券 this coupon was not redeemed by that order",
                       code="coupon.redemption_not_found")
    if redemption.cancelled_at is not None:
        return redemption, False
    now = now or utcnow()
    undone = session.execute(update(CouponRedemption).where(CouponRedemption.id == redemption.id,
                                                            CouponRedemption.cancelled_at.is_(None))
                             .values(cancelled_at=now, cancel_reason=reason, cancelled_by=actor)).rowcount
    if undone != 1:  # a concurrent cancel won; answer like a repeat
        return _redemption(session, coupon.id, order_source, order_id), False
    back = session.execute(
        update(Coupon).where(Coupon.id == coupon.id, Coupon.status == "redeemed",
                             Coupon.redeemed_order_source == order_source, Coupon.redeemed_order_id == order_id)
        .values(status="expired" if coupon.valid_to <= now else "issued", redeemed_at=None, redeemed_store_id=None,
                redeemed_order_source=None, redeemed_order_id=None, discount_fen=None, updated_at=now)).rowcount
    if back != 1:
        raise Conflict("the coupon is not redeemed by this order any more", code="coupon.inconsistent")
    audit.record(session, actor=actor, action="coupon.redemption_cancelled", entity="coupon", entity_id=coupon.id,
                 data={"redemption_id": redemption.id, "order_source": order_source, "order_external_id": order_id,
                       "reason": reason})
    return _redemption(session, coupon.id, order_source, order_id), True


def void(session: Session, *, coupon: Coupon, reason: str, actor: str, now: dt.datetime | None = None) -> Coupon:
    """Void an unused coupon (issued by mistake, member complaint, fraud). Voiding a voided coupon
    returns it unchanged; a redeemed or expired one is a 409 coupon.not_voidable."""
    now = now or utcnow()
    done = session.execute(update(Coupon).where(Coupon.id == coupon.id, Coupon.status == "issued")
                           .values(status="voided", voided_at=now, void_reason=reason, updated_at=now)).rowcount
    current = _fresh(session, coupon.id)
    if done != 1:
        if current.status == "voided":
            return current
        raise Conflict(f"该券不可作废 a {current.status} coupon cannot be voided", code="coupon.not_voidable",
                       status=current.status)
    audit.record(session, actor=actor, action="coupon.voided", entity="coupon", entity_id=coupon.id,
                 data={"reason": reason, "member_id": coupon.member_id, "template_id": coupon.template_id})
    return current


def expire_due(session: Session, *, now: dt.datetime | None = None, actor: str = "system:expiry") -> int:
    """Mark every issued coupon past its window expired, in one UPDATE; one audit row per template
    with the count. Re-running finds nothing to do. Redemption already refuses such coupons, so the
    pass only makes the status say so (wallets, stats and exports read it)."""
    now = now or utcnow()
    n = session.execute(sql("UPDATE coupons SET status = 'expired', updated_at = :now "
                            "WHERE status = 'issued' AND valid_to <= :now"), {"now": now}).rowcount or 0
    if n:
        data = "'{\"count\": ' || count(*) || '}'"
        if session.get_bind().dialect.name == "postgresql":
            data = f"CAST({data} AS jsonb)"
        session.execute(sql(
            "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) "
            "SELECT :now, :actor, 'coupon.expired', 'coupon_template', CAST(template_id AS varchar), "
            f"{data} FROM coupons "
            "WHERE status = 'expired' AND valid_to <= :now AND updated_at = :now GROUP BY template_id"),
            {"now": now, "actor": actor})
    return n

