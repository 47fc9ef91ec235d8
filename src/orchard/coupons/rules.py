"""Whether a coupon may be redeemed on an order, and for how much. Pure: no database, no clock.

Order of checks (the first failure is the answer): status and window, store, channel, categories,
threshold, stacking. Each refusal is a 409 with its own `code` so a POS can say why in one line.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from orchard.coupons.kinds import KINDS, Terms
from orchard.errors import Conflict


class Refused(Conflict):
    """The coupon cannot be used on this order; `code` says why (coupon.expired, coupon.below_threshold…)."""

    def __init__(self, code: str, detail: str, **extra) -> None:
        super().__init__(detail, code=code, **extra)
        self.code = code


def window(issued_at: dt.datetime, *, zone: ZoneInfo, valid_days: int,
           starts_after_days: int = 0) -> tuple[dt.datetime, dt.datetime]:
    """[valid_from, valid_to) of a coupon valid for `valid_days` calendar days in the tenant zone.

    The issue day counts as day one: issued 31 Jan 20:00 (Shanghai) with 1 day, usable until the end
    of 31 Jan; with 28 days, until the end of 27 Feb. With `starts_after_days` D it starts at the
    beginning of the D-th day after the issue day and lasts `valid_days` days from there. Midnights
    are the tenant's, whatever the UTC date of the issue instant.
    """
    local_day = issued_at.astimezone(zone).date()

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)

    start_day = local_day + dt.timedelta(days=starts_after_days)
    start = issued_at if starts_after_days == 0 else midnight(start_day)
    return start.astimezone(dt.UTC), midnight(start_day + dt.timedelta(days=valid_days))


@dataclass(frozen=True)
class Line:
    category: str | None
    amount_fen: int


@dataclass(frozen=True)
class Scope:
    stores: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    stackable: bool = False
    exclusive_group: str | None = None


@dataclass(frozen=True)
class OrderIn:
    amount_fen: int
    store_code: str | None = None
    channel: str | None = None
    lines: tuple[Line, ...] | None = None


@dataclass(frozen=True)
class Other:
    """Another coupon already redeemed on the same order."""

    template_id: int
    stackable: bool
    exclusive_group: str | None


def check_state(status: str, valid_from: dt.datetime, valid_to: dt.datetime, now: dt.datetime) -> None:
    if status == "redeemed":
        raise Refused("coupon.already_redeemed", "券已核销 the coupon was already redeemed")
    if status == "voided":
        raise Refused("coupon.voided", "券已作废 the coupon was voided")
    if status == "expired" or now >= valid_to:
        raise Refused("coupon.expired", "券已过期 the coupon has expired", valid_to=valid_to.isoformat())
    if now < valid_from:
        raise Refused("coupon.not_yet_valid", "券未到使用时间 the coupon is not valid yet",
                      valid_from=valid_from.isoformat())


def eligible_amount(scope: Scope, order: OrderIn) -> int:
    if not scope.categories:
        return order.amount_fen
    return sum(ln.amount_fen for ln in order.lines or () if ln.category in scope.categories)


def discount(terms: Terms, scope: Scope, order: OrderIn, others: list[Other] = ()) -> tuple[int, int]:
    """(eligible_fen, discount_fen) for this order, or Refused."""
    if scope.stores and order.store_code not in scope.stores:
        raise Refused("coupon.store_not_allowed", "该门店不可用此券 the coupon is not valid at this store",
                      stores=list(scope.stores))
    if scope.channels and order.channel not in scope.channels:
        raise Refused("coupon.channel_not_allowed", "该渠道不可用此券 the coupon is not valid on this channel",
                      channels=list(scope.channels))
    eligible = eligible_amount(scope, order)
    if scope.categories and eligible == 0:
        raise Refused("coupon.category_not_allowed", "订单中没有适用品类 no order line is in the coupon's categories",
                      categories=list(scope.categories))
    if eligible < terms.threshold_fen:
        raise Refused("coupon.below_threshold", "未达到使用门槛 the order does not reach the threshold",
                      threshold_fen=terms.threshold_fen, eligible_fen=eligible)
    check_stacking(scope, others)
    return eligible, min(KINDS[terms.kind].discount(terms, eligible), eligible)


def check_stacking(scope: Scope, others: list[Other]) -> None:
    """A non-stackable coupon is alone on its order; stackable ones combine except within one
    exclusive group."""
    if not others:
        return
    if not scope.stackable or any(not o.stackable for o in others):
        raise Refused("coupon.not_stackable", "此券不可与其他券同时使用 the coupon cannot be combined with "
                      "the coupons already used on this order")
    if scope.exclusive_group and any(o.exclusive_group == scope.exclusive_group for o in others):
        raise Refused("coupon.not_stackable", "同组券不可叠加 a coupon of the same exclusive group is already "
                      "used on this order", exclusive_group=scope.exclusive_group)
