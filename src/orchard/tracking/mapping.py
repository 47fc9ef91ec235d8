"""One Segment / RudderStack tracking-spec message → one Orchard item. Pure: no database, no I/O.

Rules (SPEC E3):

| Segment                                   | Orchard                                                      |
|-------------------------------------------|--------------------------------------------------------------|
| any message                               | source `segment` (always: both Python SDKs report the same   |
|                                           | `context.library.name`, and messageIds are UUIDs)            |
| `messageId`                               | `external_id` of the event / refund; when absent,            |
|                                           | `sha256:<hash of the message>` so an exact re-send still     |
|                                           | deduplicates                                                  |
| `userId`                                  | identity `external_id`                                       |
| `anonymousId`                             | identity `anonymous_id` (never creates a member by itself)   |
| traits `phone`, `email`                   | identities `phone`, `email` (invalid ones: dropped + warning)|
| traits `name`, else `firstName`/`lastName`| `name`; "first last", but lastName+firstName with no space   |
|                                           | when either part has Chinese characters                      |
| traits `gender`                           | male/m/男/男性 → male, female/f/女/女性 → female (any case)    |
| traits `birthday`                         | date; a date-time is read in the tenant's zone               |
| traits `address.city` / `.state` / `.region` | `region` (first present)                                  |
| other traits (identify only)              | member `attributes`, keys not yet set (existing values win)  |
| `timestamp` / `originalTimestamp` / `receivedAt` | `occurred_at` (first present), else the server clock |
| identify (`traits`, and `context.traits`) | resolve/create the member, link `anonymousId`, fill empty   |
|                                           | profile fields                                               |
| track `Order Completed`                   | order: `order_id` → external_id, `total` (else `revenue`)   |
|                                           | yuan → `amount_fen`, `products[]` → lines (sku or product_id,|
|                                           | name, category, price → unit_price_fen, quantity),          |
|                                           | `store_code`, `currency` must be CNY if given                |
| track `Order Refunded`                    | refund of order `order_id`: by `products[]` (sku, quantity), |
|                                           | else `total`/`revenue` as amount, else a full refund         |
| track `Product Viewed` / `Product Added` / | `product_viewed` / `added_to_cart` /                        |
| `Signed Up` / `Signed In` / `Coupon Applied` | `sign_up` / `login` / `coupon_used` /                     |
| / `Product Reviewed` / `Product Shared`   | `reviewed` / `shared`                                        |
| track, any other name                     | snake_case of the name (Chinese characters kept)            |
| page / screen                             | event `page_viewed` / `screen_viewed` (+ `name`, `category`)|
| alias                                     | link `previousId` (as external_id and anonymous_id) to the  |
|                                           | member of `userId`                                           |
| group                                     | accepted and ignored: Orchard has no account/group model    |
| `integrations.Orchard` (or `.All`) false  | accepted and ignored                                         |

Money is yuan in Segment and integer fen in Orchard: exact decimal arithmetic, rounded half-up to
the fen (a float is read by its shortest repr, so 19.9 is 1990 and 0.1 + 0.2 is 30). Property and
trait keys that are not Orchard attribute names are snake_cased; values nested deeper than Orchard
allows are kept as a JSON string. Event names, event properties and order lines that cannot be
mapped reject the message with a field error named after the Segment field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from orchard.errors import InvalidInput, validation_errors
from orchard.events.schemas import EventIn, MemberRef, OrderIn, ProfileIn, RefundIn
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.kit.clock import as_utc, tenant_zone
from orchard.kit.hashing import fingerprint
from orchard.members.attributes import MAX_DEPTH, validate_attributes

SOURCE = "segment"
TYPES = ("identify", "track", "page", "screen", "alias", "group")
#: Segment e-commerce / B2B spec names (snake_cased) → Orchard standard event names.
EVENT_NAMES = {
    "product_viewed": "product_viewed",
    "product_added": "added_to_cart",
    "signed_up": "sign_up",
    "signed_in": "login",
    "coupon_applied": "coupon_used",
    "product_reviewed": "reviewed",
    "product_shared": "shared",
}
ORDER_EVENT = "order_completed"
REFUND_EVENT = "order_refunded"
GENDERS = {"male": "male", "m": "male", "男": "male", "男性": "male",
           "female": "female", "f": "female", "女": "female", "女性": "female"}
#: Traits that become identities or profile fields, never attributes.
PROFILE_TRAITS = frozenset({"phone", "email", "name", "firstName", "lastName", "first_name", "last_name",
                            "gender", "birthday", "address", "id", "userId", "anonymousId"})
GROUP_REASON = "group calls are accepted and ignored: Orchard has no account or group model"
MAX_YUAN = Decimal(10) ** 11  # Orchard's ceiling is 10**13 fen
#: Containers nested deeper than this in one message are rejected outright.
MAX_JSON_DEPTH = 32

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_ATTR_KEY = re.compile(r"^[A-Za-z_\u4e00-\u9fff][\w\u4e00-\u9fff\-]{0,63}$")
_EVENT_FIRST = re.compile(r"^[a-z\u4e00-\u9fff]")
_QUANTITY = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class Ingest:
    """An order, refund or event for `orchard.events.ingest.ingest`."""

    kind: Literal["order", "refund", "event"]
    data: OrderIn | RefundIn | EventIn
    #: The message carried no time: `occurred_at` is the server clock, so a re-send has another body.
    clock_time: bool = False


@dataclass(frozen=True)
class Identify:
    identities: dict[str, str]
    anonymous_id: str | None
    #: Validated profile fields: name, gender, birthday, region.
    profile: dict[str, Any]
    attributes: dict[str, Any]
    occurred_at: dt.datetime


@dataclass(frozen=True)
class Alias:
    user_id: str
    previous_id: str
    occurred_at: dt.datetime


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass
class Mapped:
    type: str
    #: The messageId (or the derived `sha256:` id) used as the item's external id.
    message_id: str
    action: Ingest | Identify | Alias | Ignore
    warnings: list[str] = field(default_factory=list)


# ---- the message ----------------------------------------------------------------------------

def map_message(message: Any, *, now: dt.datetime, context: dict[str, Any] | None = None,
                type_: str | None = None) -> Mapped:
    """Map one message. `context` is a batch-level context (the message's own wins key by key);
    `type_` is the type implied by a single-message route. Raises InvalidInput."""
    if not isinstance(message, dict):
        raise InvalidInput.field("message", "must be a JSON object")
    check_text(message)
    if context is not None:
        check_text(context)
    kind = type_ or message.get("type")
    if not isinstance(kind, str) or kind.strip().lower() not in TYPES:
        raise InvalidInput.field("type", f"must be one of {', '.join(TYPES)}")
    kind = kind.strip().lower()
    message_id = message_id_of(message)
    warnings: list[str] = []
    occurred, clock = message_time(message, now)
    ctx = _object(message.get("context"), "context")
    if context:
        ctx = {**context, **ctx}
    if not _enabled(message.get("integrations")):
        return Mapped(kind, message_id, Ignore("integrations disables Orchard for this message"), warnings)
    if kind == "group":
        return Mapped(kind, message_id, Ignore(GROUP_REASON), warnings)
    if kind == "alias":
        previous = id_value(message.get("previousId"), "previousId", 128)
        user = id_value(message.get("userId"), "userId", 255)
        if previous is None:
            raise InvalidInput.field("previousId", "is required")
        if user is None:
            raise InvalidInput.field("userId", "is required")
        return Mapped(kind, message_id, Alias(user, previous, occurred), warnings)

    user_id = id_value(message.get("userId"), "userId", 255)
    anonymous_id = id_value(message.get("anonymousId"), "anonymousId", 128)
    traits = _object(ctx.get("traits"), "context.traits")
    if kind == "identify":
        traits = {**traits, **_object(message.get("traits"), "traits")}
    identities = trait_identities(traits, warnings)
    if user_id is not None:
        identities = {"external_id": user_id, **identities}
    if not identities and anonymous_id is None:
        raise InvalidInput.field("userId", "send a userId or an anonymousId")
    profile = profile_from_traits(traits, warnings)
    attributes = attributes_from_traits(traits, warnings, field_name="context.traits" if kind != "identify"
                                        else "traits")
    if kind == "identify":
        return Mapped(kind, message_id, Identify(identities, anonymous_id, profile, attributes, occurred), warnings)

    member_profile = None
    if profile or attributes:
        member_profile = _validate(ProfileIn, {**profile, "attributes": attributes or None})
    ref = _validate(MemberRef, {"identities": identities, "anonymous_id": anonymous_id, "profile": member_profile})
    props = _object(message.get("properties"), "properties")
    store_code = _store_code(props)
    if kind in ("page", "screen"):
        name = "page_viewed" if kind == "page" else "screen_viewed"
        props = dict(props)
        for key in ("name", "category"):
            value = message.get(key)
            if isinstance(value, str) and value.strip() and key not in props:
                props[key] = value.strip()
        action = Ingest("event", _event(name, props, ref, message_id, occurred, store_code, warnings), clock)
        return Mapped(kind, message_id, action, warnings)

    event = message.get("event")
    if not isinstance(event, str) or not event.strip():
        raise InvalidInput.field("event", "a track call needs an event name")
    target, name = event_name(event)
    if target == "order":
        action = Ingest("order", order_from(props, ref, occurred, store_code, warnings), clock)
    elif target == "refund":
        action = Ingest("refund", refund_from(props, message_id, occurred), clock)
    else:
        action = Ingest("event", _event(name, props, ref, message_id, occurred, store_code, warnings), clock)
    return Mapped(kind, message_id, action, warnings)


def _event(name: str, props: dict, ref: MemberRef, message_id: str, occurred: dt.datetime, store_code: str | None,
           warnings: list[str]) -> EventIn:
    properties = clean_attributes({k: v for k, v in props.items() if k != "store_code"}, "properties", warnings)
    return _validate(EventIn, {"source": SOURCE, "external_id": message_id, "name": name, "member": ref,
                               "occurred_at": occurred, "store_code": store_code, "properties": properties})


def _enabled(integrations: Any) -> bool:
    if not isinstance(integrations, dict):
        return True
    for key in ("Orchard", "orchard"):
        if key in integrations:
            return integrations[key] is not False
    return integrations.get("All", True) is not False


def message_id_of(message: dict[str, Any]) -> str:
    raw = message.get("messageId")
    if raw is None or raw == "":
        return "sha256:" + fingerprint(message)
    value = id_value(raw, "messageId", 128)
    if value is None:
        return "sha256:" + fingerprint(message)
    return value


def message_time(message: dict[str, Any], now: dt.datetime) -> tuple[dt.datetime, bool]:
    """(occurred_at in UTC, whether it is the server clock)."""
    for key in ("timestamp", "originalTimestamp", "receivedAt"):
        value = message.get(key)
        if value is not None and value != "":
            return parse_time(value, key), False
    return as_utc(now), True


def parse_time(value: Any, field_name: str) -> dt.datetime:
    """An ISO 8601 date-time (a time without offset is read in the tenant's zone) → aware UTC."""
    if not isinstance(value, str):
        raise InvalidInput.field(field_name, "must be an ISO 8601 date-time string")
    try:
        parsed = as_utc(dt.datetime.fromisoformat(value.strip().upper()))
    except (ValueError, OverflowError):
        raise InvalidInput.field(field_name, "must be an ISO 8601 date-time, e.g. 2026-10-01T10:00:00+08:00") \
            from None
    if parsed.year < 1970:
        raise InvalidInput.field(field_name, "lies before 1970")
    return parsed


def id_value(value: Any, field_name: str, max_length: int) -> str | None:
    """A Segment id (string, or an integer sent as a number) → trimmed string; empty → None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput.field(field_name, "must be a string")
    text = str(value).strip()
    if not text:
        return None
    if len(text) > max_length:
        raise InvalidInput.field(field_name, f"is longer than {max_length} characters")
    return text


def check_text(value: Any) -> None:
    """Reject what no database column can hold: NUL characters, lone surrogates, absurd nesting."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_str(item)
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidInput.field("message", f"is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_str(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_str(text: str) -> None:
    if "\x00" in text:
        raise InvalidInput.field("message", "text may not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput.field("message", "text contains invalid Unicode (a lone surrogate)") from None


def _object(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput.field(field_name, "must be a JSON object")
    return value


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # A model-level error has an empty loc, which validation_errors cannot take: name the message.
        errors = validation_errors([{**e, "loc": e["loc"] or ("message",)} for e in exc.errors()])
        raise InvalidInput("; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]), errors=errors) from None


# ---- names ----------------------------------------------------------------------------------

def snake_case(text: str) -> str:
    """`Product Viewed` → `product_viewed`, `checkoutStarted` → `checkout_started`, `领取 优惠券` →
    `领取_优惠券`. Accents are dropped, other characters become `_`."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = re.sub(r"(?<=[a-z0-9\u4e00-\u9fff])(?=[A-Z])", "_", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", text)
    return re.sub(r"[^a-z0-9\u4e00-\u9fff]+", "_", text.lower()).strip("_")


def event_name(name: str) -> tuple[Literal["order", "refund", "event"], str]:
    """(what the track call becomes, the Orchard event name)."""
    snake = snake_case(name)
    if snake == ORDER_EVENT:
        return "order", snake
    if snake == REFUND_EVENT:
        return "refund", snake
    if snake in EVENT_NAMES:
        return "event", EVENT_NAMES[snake]
    if not snake:
        raise InvalidInput.field("event", "has no letters or digits to name an Orchard event")
    if not _EVENT_FIRST.match(snake):
        snake = "e_" + snake
    return "event", snake[:64].rstrip("_")


def gender(value: Any) -> str | None:
    """male / female, or None when the value says neither."""
    if not isinstance(value, str):
        return None
    return GENDERS.get(value.strip().lower())


def full_name(traits: dict[str, Any]) -> str | None:
    name = _text(traits.get("name"))
    if name:
        return name
    first = _text(traits.get("firstName")) or _text(traits.get("first_name"))
    last = _text(traits.get("lastName")) or _text(traits.get("last_name"))
    if not first and not last:
        return None
    if _CJK.search(first or "") or _CJK.search(last or ""):
        return f"{last or ''}{first or ''}"
    return " ".join(p for p in (first, last) if p)


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None


def birthday(value: Any) -> dt.date:
    """`1990-05-01`, or a date-time (its date in the tenant's zone). Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError("must be a date such as 1990-05-01")
    text = value.strip().upper()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        try:
            moment = dt.datetime.fromisoformat(text)
            day = moment.astimezone(tenant_zone()).date() if moment.tzinfo else moment.date()
        except (ValueError, OverflowError):
            raise ValueError("must be a date such as 1990-05-01") from None
    if day.year < 1900 or day > dt.datetime.now(tenant_zone()).date():
        raise ValueError("is not a plausible birthday")
    return day


# ---- traits ---------------------------------------------------------------------------------

def trait_identities(traits: dict[str, Any], warnings: list[str]) -> dict[str, str]:
    out = {}
    for kind in ("phone", "email"):
        value = traits.get(kind)
        if value is None or value == "":
            continue
        try:
            out[kind] = normalize(kind, value)[1]
        except InvalidIdentity as exc:
            warnings.append(f"traits.{kind} ignored: {exc.reason}")
    return out


def profile_from_traits(traits: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name = full_name(traits)
    if name:
        if len(name) > 100:
            warnings.append("traits.name ignored: longer than 100 characters")
        else:
            out["name"] = name
    raw_gender = traits.get("gender")
    if raw_gender not in (None, ""):
        mapped = gender(raw_gender)
        if mapped:
            out["gender"] = mapped
        elif not (isinstance(raw_gender, str) and raw_gender.strip().lower() in ("unknown", "u", "未知")):
            warnings.append("traits.gender ignored: not one of male, female, m, f, 男, 女")
    raw_birthday = traits.get("birthday")
    if raw_birthday not in (None, ""):
        try:
            out["birthday"] = birthday(raw_birthday)
        except ValueError as exc:
            warnings.append(f"traits.birthday ignored: {exc}")
    address = traits.get("address")
    if isinstance(address, dict):
        region = next((r for r in (_text(address.get(k)) for k in ("city", "state", "region")) if r), None)
        if region and len(region) > 100:
            warnings.append("traits.address ignored: longer than 100 characters")
        elif region:
            out["region"] = region
    return out


def attributes_from_traits(traits: dict[str, Any], warnings: list[str], *, field_name: str) -> dict[str, Any]:
    rest = {k: v for k, v in traits.items() if k not in PROFILE_TRAITS}
    if not rest:
        return {}
    try:
        return clean_attributes(rest, field_name, warnings)
    except InvalidInput as exc:
        warnings.append(f"{field_name}: other traits not kept as attributes: {exc.detail}")
        return {}


def clean_attributes(value: dict[str, Any], field_name: str, warnings: list[str]) -> dict[str, Any]:
    """Segment properties/traits → Orchard attributes: keys snake_cased where needed, containers
    nested deeper than Orchard allows kept as JSON text. Raises InvalidInput (e.g. too large)."""
    out = _clean_dict(value, 1, field_name, warnings)
    try:
        return validate_attributes(out)
    except ValueError as exc:
        raise InvalidInput.field(field_name, str(exc)) from None


def attribute_key(key: str) -> str | None:
    if _ATTR_KEY.match(key):
        return key
    snake = snake_case(key)[:63]
    if not snake:
        return None
    if not _ATTR_KEY.match(snake):
        snake = "_" + snake
    return snake if _ATTR_KEY.match(snake) else None


def _clean_dict(value: dict[str, Any], depth: int, path: str, warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = attribute_key(key)
        if name is None or name in out:
            warnings.append(f"{path}: key {key!r} dropped")
            continue
        out[name] = _clean_value(item, depth + 1, f"{path}.{name}", warnings)
    return out


def _clean_value(value: Any, depth: int, path: str, warnings: list[str]) -> Any:
    if isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if isinstance(value, dict):
            return _clean_dict(value, depth, path, warnings)
        return [_clean_value(v, depth + 1, f"{path}[{i}]", warnings) for i, v in enumerate(value)]
    return value


# ---- money and orders -----------------------------------------------------------------------

def to_fen(value: Any, field_name: str) -> int:
    """Yuan (number or numeric string) → integer fen, exactly; rounded half-up to the fen."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise InvalidInput.field(field_name, "must be an amount in yuan, e.g. 19.9")
    try:
        if isinstance(value, float):
            amount = Decimal(repr(value))
        elif isinstance(value, str):
            amount = Decimal(value.strip())
        else:
            amount = Decimal(value)
    except (InvalidOperation, ValueError):
        raise InvalidInput.field(field_name, "must be an amount in yuan, e.g. 19.9") from None
    if not amount.is_finite():
        raise InvalidInput.field(field_name, "must be a finite amount")
    if amount < 0:
        raise InvalidInput.field(field_name, "may not be negative")
    if amount > MAX_YUAN:
        raise InvalidInput.field(field_name, "is too large")
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def quantity(value: Any, field_name: str) -> int:
    if value is None:
        return 1
    if isinstance(value, bool):
        raise InvalidInput.field(field_name, "must be a whole number")
    if isinstance(value, int):
        qty = value
    elif isinstance(value, float) and value.is_integer():
        qty = int(value)
    elif isinstance(value, str) and _QUANTITY.match(value.strip()):
        qty = int(value.strip())
    else:
        raise InvalidInput.field(field_name, "must be a whole number")
    if not 1 <= qty <= 1_000_000:
        raise InvalidInput.field(field_name, "must be between 1 and 1000000")
    return qty


def _store_code(props: dict[str, Any]) -> str | None:
    code = props.get("store_code")
    if code is None or code == "":
        return None
    if not isinstance(code, str) or len(code) > 64:
        raise InvalidInput.field("properties.store_code", "must be a store code (text, at most 64 characters)")
    return code.strip()


def _amount(props: dict[str, Any]) -> int | None:
    for key in ("total", "revenue"):
        if props.get(key) is not None:
            return to_fen(props[key], f"properties.{key}")
    return None


def _products(props: dict[str, Any]) -> list[dict[str, Any]]:
    products = props.get("products")
    if products is None:
        return []
    if not isinstance(products, list):
        raise InvalidInput.field("properties.products", "must be a list of products")
    for i, product in enumerate(products):
        if not isinstance(product, dict):
            raise InvalidInput.field(f"properties.products[{i}]", "must be an object")
    return products


def _sku(product: dict[str, Any], field_name: str) -> str | None:
    return id_value(product.get("sku"), f"{field_name}.sku", 128) or \
        id_value(product.get("product_id"), f"{field_name}.product_id", 128)


def order_from(props: dict[str, Any], ref: MemberRef, occurred: dt.datetime, store_code: str | None,
               warnings: list[str]) -> OrderIn:
    order_id = id_value(props.get("order_id"), "properties.order_id", 128)
    if order_id is None:
        raise InvalidInput.field("properties.order_id", "an Order Completed event needs an order_id")
    currency = props.get("currency")
    if currency is not None and not (isinstance(currency, str) and currency.strip().upper() == "CNY"):
        raise InvalidInput.field("properties.currency", "only CNY is supported")
    lines = []
    for i, product in enumerate(_products(props)):
        where = f"properties.products[{i}]"
        if product.get("price") is None:
            raise InvalidInput.field(f"{where}.price", "every product needs a price")
        lines.append({"sku": _sku(product, where), "name": _text(product.get("name")),
                      "category": _text(product.get("category")),
                      "quantity": quantity(product.get("quantity"), f"{where}.quantity"),
                      "unit_price_fen": to_fen(product["price"], f"{where}.price")})
    properties = clean_attributes({k: v for k, v in props.items() if k not in ("products", "store_code")},
                                  "properties", warnings)
    return _validate(OrderIn, {"source": SOURCE, "external_id": order_id, "member": ref, "store_code": store_code,
                               "paid_at": occurred, "amount_fen": _amount(props), "lines": lines,
                               "properties": properties})


def refund_from(props: dict[str, Any], message_id: str, occurred: dt.datetime) -> RefundIn:
    order_id = id_value(props.get("order_id"), "properties.order_id", 128)
    if order_id is None:
        raise InvalidInput.field("properties.order_id", "an Order Refunded event needs the order_id")
    lines = None
    amount = None
    products = _products(props)
    if products:
        lines = []
        for i, product in enumerate(products):
            where = f"properties.products[{i}]"
            sku = _sku(product, where)
            if sku is None:
                raise InvalidInput.field(f"{where}.sku", "a refunded product needs its sku or product_id")
            qty = product.get("quantity")
            lines.append({"sku": sku, "quantity": None if qty is None else quantity(qty, f"{where}.quantity")})
    else:
        amount = _amount(props)
        if amount == 0:
            raise InvalidInput.field("properties.total", "a refund amount must be more than 0")
    reason = _text(props.get("reason"))
    return _validate(RefundIn, {"source": SOURCE, "external_id": message_id, "order_external_id": order_id,
                                "refunded_at": occurred, "amount_fen": amount, "lines": lines,
                                "reason": reason[:500] if reason else None})
