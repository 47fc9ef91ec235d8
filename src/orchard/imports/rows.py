"""Row validation: pure functions from raw cell values to clean values, or a RowError naming the
column and the reason. No database here; store codes are checked against a set given by the caller."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from orchard.events.schemas import EVENT_NAME, STANDARD_EVENTS
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.kit.clock import tenant_zone
from orchard.members.attributes import validate_attributes

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
            # ISO dates (the common case) without strptime, which costs ten times more
            day = (dt.date.fromisoformat(raw) if fmt == "%Y-%m-%d" and len(raw) == 10
                   else dt.datetime.strptime(raw, fmt).date())
        except ValueError:
            continue
        if not dt.date(1900, 1, 1) <= day <= dt.date.today():
            raise RowError(column, f"impossible date {raw!r}")
        return day
    raise RowError(column, f"not a date: {raw!r}")


_PLAIN_YUAN = re.compile(r"(\d{1,11})(?:\.(\d{1,2}))?")


def yuan_to_fen(value: Any, column: str) -> int:
    """Exact decimal: "128.5" → 12850; more than two decimals or a negative amount is an error."""
    if isinstance(value, str) and (plain := _PLAIN_YUAN.fullmatch(value)):  # the common case, without Decimal
        cents = plain.group(2) or ""
        return int(plain.group(1)) * 100 + int(cents.ljust(2, "0"))
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
    get = storable(get)
    order_id = text(get("order_id"))
    if not order_id:
        raise RowError("order_id", "is required")
    if len(order_id) > 128:
        raise RowError("order_id", "longer than 128 characters")
    keys = member_keys(get)
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


_YES = {"yes", "y", "true", "1", "是", "同意", "已同意", "订阅", "接收"}
_NO = {"no", "n", "false", "0", "否", "拒绝", "不同意", "退订", "不接收"}
CONSENT_CHANNELS = ("sms", "email", "wechat", "app_push", "wecom")


def consents(get) -> dict[str, bool]:
    """Marketing consent per channel from the consent_<channel> columns; empty cells say nothing."""
    out = {}
    for channel in CONSENT_CHANNELS:
        raw = text(get(f"consent_{channel}")).lower()
        if not raw:
            continue
        if raw in _YES:
            out[channel] = True
        elif raw in _NO:
            out[channel] = False
        else:
            raise RowError(f"consent_{channel}", f"not yes or no (是/否, 同意/拒绝): {raw!r}")
    return out


def member_row(get, stores: dict[str, int]) -> dict[str, Any]:
    get = storable(get)
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
            "source_channel": text(get("source_channel"))[:64] or None, "consents": consents(get)}


def _id(value: Any, column: str) -> str:
    raw = text(value)
    if not raw:
        raise RowError(column, "is required")
    if len(raw) > 128:
        raise RowError(column, "longer than 128 characters")
    return raw


def _past_time(value: Any, column: str) -> dt.datetime:
    at = parse_time(value, column)
    if at > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        raise RowError(column, "lies in the future")
    return at


class Cells(dict):
    """One file row by canonical column name, already checked by `cells` for NUL characters."""


def cells(values: list[Any], mapping: dict[str, int]) -> Cells:
    """The row's cells by column; a NUL character (which PostgreSQL cannot store) is a RowError
    naming its column. Checking the row once is cheaper than checking every read of a cell."""
    row = Cells((column, values[i]) for column, i in mapping.items() if i < len(values))
    if any(isinstance(v, str) and "\x00" in v for v in values):
        for column, value in row.items():
            if isinstance(value, str) and "\x00" in value:
                raise RowError(column, "contains a NUL character")
    return row


def storable(get):
    """`get`, refusing text PostgreSQL cannot store (a NUL character), so that such a row is an
    error row naming its column instead of a database error ending the whole import."""
    if isinstance(getattr(get, "__self__", None), Cells):
        return get

    def checked(column: str) -> Any:
        value = get(column)
        if isinstance(value, str) and "\x00" in value:
            raise RowError(column, "contains a NUL character")
        return value

    return checked


def member_keys(get) -> list[tuple[str, str]]:
    """The member columns of orders and events: at least one of phone, external id, card number."""
    keys = [k for k in (identity("phone", get("member_phone"), "member_phone"),
                        identity("external_id", get("member_external_id"), "member_external_id"),
                        identity("card_no", get("member_card_no"), "member_card_no")) if k]
    if not keys:
        raise RowError("member_phone", "give member_phone, member_external_id or member_card_no")
    return keys


def refund_row(get, stores: dict[str, int] | None = None) -> dict[str, Any]:
    """One refund per row. No amount → a full refund; a sku → a refund of that order line (all its
    units not yet refunded unless `quantity` says otherwise; the amount, if given, is the line's).
    A refund belongs to its order's store: `stores` is unused, kept so every kind parses alike."""
    get = storable(get)
    refund_id, order_id = _id(get("refund_id"), "refund_id"), _id(get("order_id"), "order_id")
    refunded_at = _past_time(get("refunded_at"), "refunded_at")
    amount_column = "amount_fen" if text(get("amount_fen")) else "amount" if text(get("amount")) else None
    amount = None
    if amount_column:
        amount = (fen if amount_column == "amount_fen" else yuan_to_fen)(get(amount_column), amount_column)
        if amount == 0:
            raise RowError(amount_column, "a refund of nothing; leave it empty for a full refund")
    quantity = None
    if text(get("quantity")):
        quantity = text(get("quantity"))
        if not quantity.isdigit() or not 1 <= int(quantity) <= 1_000_000:
            raise RowError("quantity", f"not a positive whole number: {quantity!r}")
        quantity = int(quantity)
    sku = text(get("sku"))
    if len(sku) > 128:
        raise RowError("sku", "longer than 128 characters")
    if quantity is not None and not sku:
        raise RowError("quantity", "a quantity refunds units of one order line: give its sku too")
    line = {"sku": sku, "quantity": quantity, "amount_fen": amount} if sku else None
    return {"refund_id": refund_id, "order_id": order_id, "refunded_at": refunded_at,
            "amount_fen": None if line else amount, "amount_column": amount_column, "line": line,
            "reason": text(get("reason"))[:500] or None}


#: Chinese labels of the standard events (orchard.events.schemas.STANDARD_EVENTS).
EVENT_LABELS = {"注册": "sign_up", "登录": "login", "到店": "store_visit", "浏览商品": "product_viewed",
                "加购": "added_to_cart", "分享": "shared", "评价": "reviewed", "签到": "checked_in",
                "参加活动": "campaign_joined", "观看直播": "live_attended", "用券": "coupon_used",
                "咨询客服": "service_contacted"}


def event_name(value: Any) -> str:
    """A standard name (any case) or its Chinese label → the standard name; anything else must be a
    valid custom name and is kept as written."""
    raw = text(value)
    if not raw:
        raise RowError("name", "is required")
    if raw in EVENT_LABELS:
        return EVENT_LABELS[raw]
    if raw.lower() in STANDARD_EVENTS:
        return raw.lower()
    if not re.match(EVENT_NAME, raw):
        raise RowError("name", f"not a standard event or a valid custom name (letters first, up to 64): {raw!r}")
    return raw


def properties(get) -> dict[str, Any]:
    """The `properties` JSON object, then the `category`, `sku`, `product_name` columns (which win)."""
    raw = text(get("properties"))
    props: Any = {}
    if raw:
        try:
            props = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RowError("properties", f"not valid JSON: {exc.msg} at character {exc.pos}") from None
        if not isinstance(props, dict):
            raise RowError("properties", "must be a JSON object, e.g. {\"coupon\": \"C1\"}")
        problem = _unstorable(props)
        if problem:
            raise RowError("properties", f"contains {problem}")
    for column in ("category", "sku", "product_name"):
        if text(get(column)):
            props[column] = text(get(column))
    try:
        return validate_attributes(props)
    except ValueError as exc:
        raise RowError("properties", str(exc).replace("attributes", "properties", 1)) from None


def _unstorable(value: Any) -> str | None:
    """What of a parsed JSON value the databases cannot store: Python's json reads NaN, Infinity
    and 1e400, which are not JSON, and a \\u0000 escape, which PostgreSQL's jsonb refuses."""
    if isinstance(value, str):
        return "a NUL character (\\u0000)" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "a number JSON cannot hold (NaN or Infinity)"
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    return next((p for p in map(_unstorable, items) if p), None)


def event_row(get, stores: dict[str, int]) -> dict[str, Any]:
    get = storable(get)
    return {"event_id": _id(get("event_id"), "event_id"), "name": event_name(get("name")),
            "keys": member_keys(get), "occurred_at": _past_time(get("occurred_at"), "occurred_at"),
            "store_id": store(get("store_code"), "store_code", stores),
            "store_code": text(get("store_code")) or None, "properties": properties(get)}
