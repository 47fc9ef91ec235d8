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
    if value.__class__ is str:  # CSV cells, the common case: ~25 calls per order row
        return value.strip()
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


#: Columns of the order itself: repeated on every row of a several-line order, and they must agree.
ORDER_LEVEL = ("member_phone", "member_external_id", "member_card_no", "paid_at", "amount", "store_code", "channel")
#: A row describes an order line when one of these is filled (a quantity alone does not, as before lines).
LINE_COLUMNS = ("sku", "product_name", "category", "unit_price", "unit_price_fen", "line_amount", "line_amount_fen",
                "line_no")
#: The most lines one order may have (as over HTTP: events.schemas.OrderIn).
MAX_LINES = 500
MAX_QUANTITY = 1_000_000


class GroupError(ValueError):
    """Some rows of one order (a group of rows) are bad, so none of it is imported: row number → error."""

    def __init__(self, errors: dict[int, RowError]) -> None:
        super().__init__("; ".join(f"row {n}: {e}" for n, e in errors.items()))
        self.errors = errors


def _money(get, column: str) -> tuple[int | None, str]:
    """`column` in yuan or `column_fen` in fen (fen wins, as for the order amount): (fen or None, column read)."""
    if text(get(f"{column}_fen")):
        return fen(get(f"{column}_fen"), f"{column}_fen"), f"{column}_fen"
    if text(get(column)):
        return yuan_to_fen(get(column), column), column
    return None, column


def _order_field(column: str, get, stores: dict[str, int]) -> tuple[Any, str] | None:
    """One order-level field of one row, parsed: (value, column read), or None when the cell is empty."""
    if column == "amount":
        amount, read = _money(get, "amount")
        return None if amount is None else (amount, read)
    raw = get(column)
    if not text(raw):
        return None
    if column in ("member_phone", "member_external_id", "member_card_no"):
        return identity(column.removeprefix("member_"), raw, column), column
    if column == "paid_at":
        return _past_time(raw, "paid_at"), column
    if column == "store_code":
        store(raw, column, stores)
        return text(raw), column
    return text(raw)[:32], column  # channel


def order_line(get) -> dict[str, Any] | None:
    """The order line a row describes, or None. A price missing on both unit_price and line_amount
    stays None here: the caller decides (an order of one line takes the order amount, as before)."""
    quantity = text(get("quantity")) or "1"
    if not quantity.isdigit() or not 1 <= int(quantity) <= MAX_QUANTITY:
        raise RowError("quantity", f"not a positive whole number up to {MAX_QUANTITY:,}: {quantity!r}")
    if not any(text(get(c)) for c in LINE_COLUMNS):
        return None
    q = int(quantity)
    line_no = None
    if text(get("line_no")):
        raw = text(get("line_no"))
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise RowError("line_no", f"not a line number from 1 to 10000: {raw!r}")
        line_no = int(raw)
    unit, unit_column = _money(get, "unit_price")
    amount, _ = _money(get, "line_amount")
    if unit is not None and amount is None:
        amount = unit * q
        if amount > MAX_FEN:
            raise RowError(unit_column, "quantity × unit price is too large")
    elif unit is None and amount is not None:
        unit = amount // q
    return {"line_no": line_no, "sku": text(get("sku"))[:128] or None, "name": text(get("product_name"))[:200] or None,
            "category": text(get("category"))[:100] or None, "quantity": q, "unit_price_fen": unit,
            "amount_fen": amount}


def order_group(group: list[tuple[int, Any]], stores: dict[str, int]) -> dict[str, Any]:
    """One order from its rows (row number, `get`), in file order: one row per order line, or a single
    row for an order without line columns. Order-level columns (ORDER_LEVEL) must agree on every row
    that fills them (an empty cell takes the others' value: merged Excel cells); the order amount,
    if given, is what the member paid (below the lines' sum: an order discount), else the lines' sum.
    Raises GroupError naming every bad row: one bad row rejects the whole order."""
    errors: dict[int, RowError] = {}
    first = group[0][0]
    order_id = text(storable(group[0][1])("order_id"))
    try:
        if not order_id:
            raise RowError("order_id", "is required")
        if len(order_id) > 128:
            raise RowError("order_id", "longer than 128 characters")
    except RowError as exc:
        raise GroupError({first: exc}) from None
    if len(group) > MAX_LINES:
        raise GroupError({n: RowError("order_id", f"order {order_id!r} has more than {MAX_LINES} rows (lines)")
                          for n, _ in group})
    chosen: dict[str, tuple[int, Any, Any]] = {}  # column → (row, raw text, value)
    lines: list[tuple[int, dict[str, Any] | None]] = []
    for row_no, get in group:
        get = storable(get)
        try:
            for column in ORDER_LEVEL:
                field = _order_field(column, get, stores)
                if field is None:
                    continue
                value, read = field
                if column not in chosen:
                    chosen[column] = (row_no, text(get(read)), value)
                elif chosen[column][2] != value:
                    there_row, there, _ = chosen[column]
                    raise RowError(read, f"differs from row {there_row} of order {order_id!r}: "
                                         f"{text(get(read))!r} here, {there!r} there")
            lines.append((row_no, order_line(get)))
        except RowError as exc:
            errors[row_no] = exc
    if errors:
        raise GroupError(errors)
    if not any(k in chosen for k in ("member_phone", "member_external_id", "member_card_no")):
        errors[first] = RowError("member_phone", "give member_phone, member_external_id or member_card_no")
    elif "paid_at" not in chosen:
        errors[first] = RowError("paid_at", "is required")
    amount = chosen["amount"][2] if "amount" in chosen else None
    described = [(n, ln) for n, ln in lines if ln is not None]
    if len(described) == 1 and len(lines) == 1 and described[0][1]["amount_fen"] is None and amount is not None:
        line = described[0][1]  # one row, one line without a price: the line is the whole order, as before
        line["amount_fen"], line["unit_price_fen"] = amount, amount // line["quantity"]
    if described:
        for row_no, line in lines:
            if line is None:
                errors.setdefault(row_no, RowError("sku", f"order {order_id!r} has several lines and this row "
                                                          "describes none: give sku, product_name or a price"))
            elif line["amount_fen"] is None and len(lines) == 1:
                errors.setdefault(row_no, RowError("amount", "give amount (yuan) or amount_fen, or the line's "
                                                             "unit_price or line_amount"))
            elif line["amount_fen"] is None:
                errors.setdefault(row_no, RowError("line_amount", "give unit_price or line_amount for each line of "
                                                                  "an order of several rows"))
        seen: dict[int, int] = {}
        for position, (row_no, line) in enumerate(described, start=1):
            number = line["line_no"] or position
            if number in seen:
                errors.setdefault(row_no, RowError("line_no", f"line {number} of order {order_id!r} is also on "
                                                              f"row {seen[number]}"))
            seen.setdefault(number, row_no)
    if amount is None and not errors:
        if not described:
            errors[first] = RowError("amount", "give amount (yuan) or amount_fen")
        else:
            amount = sum(line["amount_fen"] for _, line in described)
            if amount > MAX_FEN:
                errors[first] = RowError("line_amount", "the lines add up to more than an order can hold")
    if errors:
        raise GroupError(errors)
    store_code = chosen["store_code"][2] if "store_code" in chosen else None
    keys = [chosen[c][2] for c in ("member_phone", "member_external_id", "member_card_no") if c in chosen]
    return {"order_id": order_id, "keys": keys, "paid_at": chosen["paid_at"][2], "amount_fen": amount,
            "store_id": stores[store_code] if store_code else None, "store_code": store_code,
            "channel": chosen["channel"][2] if "channel" in chosen else None,
            "lines": [line for _, line in described]}


def order_row(get, stores: dict[str, int]) -> dict[str, Any]:
    """An order of one row: `get(column)` returns the raw cell (or None when the file has no such column)."""
    try:
        return order_group([(1, get)], stores)
    except GroupError as exc:
        raise next(iter(exc.errors.values())) from None


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


_TAG_SEPARATORS = re.compile(r"[,，;；|、]")
#: Tag names are at most this long (tags.name).
TAG_NAME_MAX = 64


def tag_row(get, stores: dict[str, int] | None = None) -> dict[str, Any]:
    """A row of a tag file: the member's keys and its tags, in the order given, each once."""
    get = storable(get)
    keys = member_keys(get)
    names = list(dict.fromkeys(n.strip() for n in _TAG_SEPARATORS.split(text(get("tags"))) if n.strip()))
    if not names:
        raise RowError("tags", "is required: one or more tag names")
    for name in names:
        if len(name) > TAG_NAME_MAX:
            raise RowError("tags", f"tag name longer than {TAG_NAME_MAX} characters: {name[:20]}…")
    return {"keys": keys, "tags": names}
