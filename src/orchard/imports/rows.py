"""Row validation: pure functions from raw cell values to clean values, or a RowError naming the
column and the reason. No database here; store codes are checked against a set given by the caller."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.kit.clock import tenant_zone

_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d", "%Y年%m月%d日")
_GENDERS = {"male": "male", "m": "male", "男": "male", "男性": "male", "1": "male",
            "female": "female", "f": "female", "女": "female", "女性": "female", "2": "female",
            "unknown": "unknown", "未知": "unknown", "0": "unknown", "": "unknown"}
MAX_FEN = 10**13


class RowError(ValueError):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def parse_time(value: Any, column: str) -> dt.datetime:
    """ISO 8601 date-time (with or without offset) or a bare date; times without an offset and bare
    dates are read in the tenant's zone (a bare date means midnight there)."""
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime.combine(value, dt.time())
    else:
        raw = text(value)
        if not raw:
            raise RowError(column, "is required")
        parsed = None
        try:
            parsed = dt.datetime.fromisoformat(raw.replace("/", "-") if re.match(r"^\d{4}/", raw) else raw)
        except ValueError:
            for fmt in _DATE_FORMATS:
                try:
                    parsed = dt.datetime.strptime(raw, fmt)
                    break
                except ValueError:
                    continue
        if parsed is None:
            raise RowError(column, f"not a date or ISO 8601 date-time: {raw!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tenant_zone())
    return parsed.astimezone(dt.UTC)


def parse_date(value: Any, column: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    raw = text(value)
    for fmt in _DATE_FORMATS:
        try:
            day = dt.datetime.strptime(raw, fmt).date()
        except ValueError:
            continue
        if not dt.date(1900, 1, 1) <= day <= dt.date.today():
            raise RowError(column, f"impossible date {raw!r}")
        return day
    raise RowError(column, f"not a date: {raw!r}")


def yuan_to_fen(value: Any, column: str) -> int:
    """Exact decimal: "128.5" → 12850; more than two decimals or a negative amount is an error."""
    raw = text(value).replace(",", "").replace("¥", "").replace("￥", "")
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise RowError(column, f"not an amount: {raw!r}") from None
    if not amount.is_finite() or amount < 0:
        raise RowError(column, f"not a valid amount: {raw!r}")
    if amount.as_tuple().exponent < -2 and amount != amount.quantize(Decimal("0.01")):
        raise RowError(column, f"more than 2 decimals: {raw!r}")
    fen = int(amount * 100)
    if fen > MAX_FEN:
        raise RowError(column, "amount too large")
    return fen


def fen(value: Any, column: str) -> int:
    raw = text(value)
    if not re.fullmatch(r"\d{1,14}", raw) or int(raw) > MAX_FEN:
        raise RowError(column, f"not a whole number of fen: {raw!r}")
    return int(raw)


def identity(kind: str, value: Any, column: str) -> tuple[str, str] | None:
    raw = text(value)
    if not raw:
        return None
    try:
        return normalize(kind, raw)
    except InvalidIdentity as exc:
        raise RowError(column, exc.reason) from None


def store(value: Any, column: str, stores: dict[str, int]) -> int | None:
    code = text(value)
    if not code:
        return None
    if code not in stores:
        raise RowError(column, f"unknown store {code!r}")
    return stores[code]


def order_row(get, stores: dict[str, int]) -> dict[str, Any]:
    """`get(column)` returns the raw cell (or None when the file has no such column)."""
    order_id = text(get("order_id"))
    if not order_id:
        raise RowError("order_id", "is required")
    if len(order_id) > 128:
        raise RowError("order_id", "longer than 128 characters")
    keys = [k for k in (identity("phone", get("member_phone"), "member_phone"),
                        identity("external_id", get("member_external_id"), "member_external_id"),
                        identity("card_no", get("member_card_no"), "member_card_no")) if k]
    if not keys:
        raise RowError("member_phone", "give member_phone, member_external_id or member_card_no")
    paid_at = parse_time(get("paid_at"), "paid_at")
    if paid_at > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        raise RowError("paid_at", "lies in the future")
    if text(get("amount_fen")):
        amount = fen(get("amount_fen"), "amount_fen")
    elif text(get("amount")):
        amount = yuan_to_fen(get("amount"), "amount")
    else:
        raise RowError("amount", "give amount (yuan) or amount_fen")
    quantity = text(get("quantity")) or "1"
    if not quantity.isdigit() or int(quantity) < 1:
        raise RowError("quantity", f"not a positive whole number: {quantity!r}")
    line = None
    if any(text(get(c)) for c in ("sku", "product_name", "category")):
        q = int(quantity)
        line = {"sku": text(get("sku"))[:128] or None, "name": text(get("product_name"))[:200] or None,
                "category": text(get("category"))[:100] or None, "quantity": q,
                "unit_price_fen": amount // q, "amount_fen": amount}
    return {"order_id": order_id, "keys": keys, "paid_at": paid_at, "amount_fen": amount,
            "store_id": store(get("store_code"), "store_code", stores),
            "store_code": text(get("store_code")) or None, "channel": text(get("channel"))[:32] or None,
            "line": line}


def member_row(get, stores: dict[str, int]) -> dict[str, Any]:
    keys = [k for k in (identity(kind, get(kind), kind) for kind in
                        ("phone", "external_id", "card_no", "email", "wechat_unionid", "wechat_openid")) if k]
    if not keys:
        raise RowError("phone", "give at least one of phone, external_id, card_no, email, wechat ids")
    gender = text(get("gender")).lower()
    if gender not in _GENDERS:
        raise RowError("gender", f"unknown gender {gender!r} (男/女/male/female)")
    name = text(get("name"))
    if len(name) > 100:
        raise RowError("name", "longer than 100 characters")
    joined = parse_time(get("joined_at"), "joined_at") if text(get("joined_at")) or isinstance(
        get("joined_at"), dt.date) else None
    return {"keys": keys, "name": name or None, "gender": _GENDERS[gender],
            "birthday": parse_date(get("birthday"), "birthday"), "region": text(get("region"))[:100] or None,
            "store_id": store(get("store_code"), "store_code", stores), "joined_at": joined,
            "source_channel": text(get("source_channel"))[:64] or None}
