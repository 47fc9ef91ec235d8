"""A validator for the common shape of a behaviour event, equal to `schemas.EventIn` on what it accepts.

Why: pydantic validation of `EventIn` (with the `Attributes` after-validator, whose size check
serialises the properties with the stdlib encoder) plus `model_dump` for the fingerprint cost ~35 µs
of the ~50 µs of server CPU an item of a 1,000-event batch took on the thin path (docs/benchmarks.md,
"HTTP ingestion"); 50,000 events/s on two shared cores leaves ~40 µs per event for everything.

How it stays equal: it never rejects anything. It either *accepts* an item — and then returns exactly the
values `EventIn.model_validate` would give (same strings, same member reference, the same instant and
UTC offset, the same properties object, the same `model_dump(mode="json", exclude_none=True)`) — or
returns None, and the caller validates the item with pydantic as before, so every error is still
pydantic's own. Its accepted set is a deliberately narrow subset: plain JSON types only (an int where an
int is expected, never a numeric string or a bool), times written as RFC 3339 with an explicit offset,
years 1970–2999, no `profile`, finite floats only. tests/events/test_fast_event.py checks the
equality property with hypothesis (seeded mutations of this module fail it).

Precondition: strings are valid Unicode without lone surrogates, which holds for what `orjson.loads`
returns (the thin path uses this validator only on bodies orjson parsed; pydantic refuses lone
surrogates with `string_unicode`, which this module does not check).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

import orjson

from orchard.events.schemas import EVENT_NAME
from orchard.kit.hashing import fingerprint
from orchard.members.attributes import _KEY, MAX_BYTES, MAX_DEPTH

# pydantic's patterns run on Rust's regex crate, where `$` is the end of the text; Python's `$` also
# matches before a final newline, hence `\Z`. `[0-9]`, not `\d` (Unicode digits in Python).
_SOURCE = re.compile(r"[A-Za-z0-9_.:\-]+\Z")
_NAME = re.compile(EVENT_NAME.removeprefix("^").removesuffix("$") + r"\Z")
_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
                   r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))\Z")
_FIELDS = frozenset(("source", "external_id", "name", "member", "occurred_at", "store_code", "properties"))
_BATCH_FIELDS = _FIELDS | {"type"}
_MEMBER_FIELDS = frozenset(("id", "identities", "anonymous_id", "profile"))
_ZONES: dict[int, dt.timezone] = {}
_UTC = dt.UTC


class Ref:
    """`schemas.MemberRef` as far as the thin path reads it (`profile` is always None here)."""

    __slots__ = ("id", "identities", "anonymous_id")
    profile = None

    def __init__(self, id: int | None, identities: dict[str, str], anonymous_id: str | None) -> None:  # noqa: A002
        self.id, self.identities, self.anonymous_id = id, identities, anonymous_id


class FastEvent:
    """The values of an accepted item, read like an `EventIn` (source, external_id, name, member,
    occurred_at, store_code, properties), plus what the fingerprint needs."""

    __slots__ = ("source", "external_id", "name", "member", "occurred_at", "store_code", "properties",
                 "when", "has_float")

    def __init__(self, source: str, external_id: str, name: str, member: Ref, occurred_at: dt.datetime,
                 when: str, store_code: str | None, properties: dict[str, Any], has_float: bool) -> None:
        self.source, self.external_id, self.name, self.member = source, external_id, name, member
        self.occurred_at, self.when, self.store_code, self.properties = occurred_at, when, store_code, properties
        self.has_float = has_float

    def dump(self) -> dict[str, Any]:
        """`EventIn.model_dump(mode="json", exclude_none=True)` of the same item."""
        ref = self.member
        member: dict[str, Any] = {}
        if ref.id is not None:
            member["id"] = ref.id
        member["identities"] = ref.identities
        if ref.anonymous_id is not None:
            member["anonymous_id"] = ref.anonymous_id
        out = {"source": self.source, "external_id": self.external_id, "name": self.name, "member": member,
               "occurred_at": self.when}
        if self.store_code is not None:
            out["store_code"] = self.store_code
        out["properties"] = self.properties
        return out

    def fingerprint(self) -> str:
        """`ingest.body_fingerprint` of the same item (kit.hashing.fingerprint of `dump()`)."""
        return fast_fingerprint(self.dump(), self.has_float)


def fast_fingerprint(value: Any, has_float: bool) -> str:
    """`kit.hashing.fingerprint(value)`, through orjson when it writes the same bytes: sorted keys,
    compact separators and unescaped non-ASCII as the stdlib encoder with `ensure_ascii=False`; not for
    floats (orjson writes 1e-7 where the stdlib writes 1e-07) nor ints beyond 64 bits (orjson refuses
    them). tests/events/test_fast_event.py proves the equality on arbitrary JSON values."""
    if has_float:
        return fingerprint(value)
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an int beyond 64 bits
        return fingerprint(value)
    return hashlib.sha256(data).hexdigest()


def validate(raw: Any, *, batch: bool) -> FastEvent | None:
    """The item as `EventIn.model_validate` would give it, or None: pydantic decides (and words any
    error). `batch`: `raw` is a batch item, whose `type` key `ingest._parse` drops before validation."""
    if type(raw) is not dict or not raw.keys() <= (_BATCH_FIELDS if batch else _FIELDS):
        return None
    source = raw.get("source", "api")
    if type(source) is not str or not 1 <= len(source) <= 64 or not _SOURCE.match(source):
        return None
    external_id = raw.get("external_id")
    if type(external_id) is not str or not 1 <= len(external_id) <= 128:
        return None
    name = raw.get("name")
    if type(name) is not str or not _NAME.match(name):
        return None
    store_code = raw.get("store_code")
    if store_code is not None and (type(store_code) is not str or len(store_code) > 64):
        return None
    member = _member(raw.get("member"))
    if member is None:
        return None
    when = _time(raw.get("occurred_at"))
    if when is None:
        return None
    properties = raw.get("properties", _MISSING)
    if properties is _MISSING:
        properties, has_float = {}, False
    else:
        if type(properties) is not dict:
            return None
        has_float = _attributes(properties, 1)
        if has_float is None:
            return None
    event = FastEvent(source, external_id, name, member, when[0], when[1], store_code, properties, bool(has_float))
    if not _small(event):
        return None
    return event


_MISSING: Any = object()


def _member(raw: Any) -> Ref | None:
    """MemberRef: an int id in range, identities as a dict of ≤ 10 non-empty strings, an anonymous id,
    at least one of them; no profile (pydantic decides those)."""
    if type(raw) is not dict or not raw.keys() <= _MEMBER_FIELDS or raw.get("profile") is not None:
        return None
    member_id = raw.get("id")
    if member_id is not None and (type(member_id) is not int or not 1 <= member_id <= 2**62):
        return None
    identities = raw.get("identities", _MISSING)
    if identities is _MISSING:
        identities = {}
    elif type(identities) is not dict or len(identities) > 10:
        return None
    else:
        for value in identities.values():
            if type(value) is not str or not 1 <= len(value) <= 255:
                return None
    anonymous_id = raw.get("anonymous_id")
    if anonymous_id is not None and (type(anonymous_id) is not str or not 1 <= len(anonymous_id) <= 128):
        return None
    if member_id is None and not identities and anonymous_id is None:
        return None
    return Ref(member_id, identities, anonymous_id)


def _time(raw: Any) -> tuple[dt.datetime, str] | None:
    """(the aware datetime pydantic parses, its JSON form as pydantic writes it) for an RFC 3339 time with
    an offset; None for anything else (no offset, other separators, leap seconds, other years)."""
    if type(raw) is not str:
        return None
    m = _TIME.match(raw)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, oh, om = m.groups()
    year = int(year)
    if not 1970 <= year <= 2999:
        return None
    if zulu is not None:
        offset = 0
    else:
        hours, minutes = int(oh), int(om)
        if hours > 23 or minutes > 59:
            return None
        offset = (hours * 3600 + minutes * 60) * (-1 if sign == "-" else 1)
    zone = _ZONES.get(offset)
    if zone is None:
        zone = _ZONES.setdefault(offset, dt.timezone(dt.timedelta(seconds=offset)))
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    try:
        value = dt.datetime(year, int(month), int(day), int(hour), int(minute), int(second), micro, zone)
    except ValueError:
        return None
    text = value.isoformat()
    if offset == 0:  # pydantic writes a zero offset as Z
        text = text[:-6] + "Z"
    return value, text


def _attributes(value: dict[str, Any], depth: int) -> bool | None:
    """`members.attributes._check` for a dict at `depth`: None where it would refuse (pydantic words it),
    else whether a float occurs (NaN and ±Infinity are left to pydantic too)."""
    if not all(_KEY.match(key) for key in value):
        return None
    return _values(value.values(), depth)


def _values(items: Any, depth: int) -> bool | None:
    """The values of a dict or list at `depth`: None where `_check` would refuse one, else whether a
    float occurs among them."""
    if depth > MAX_DEPTH:
        return None
    has_float = False
    for item in items:
        inner = _value(item, depth)
        if inner is None:
            return None
        has_float = has_float or inner
    return has_float


def _value(item: Any, depth: int) -> bool | None:
    """One value inside a dict or list at `depth`: None where `_check` would refuse it, else whether it
    is or holds a float."""
    kind = type(item)
    if kind is str or kind is int or kind is bool or item is None:
        return False
    if kind is float:
        return None if item - item != 0 else True  # NaN or ±Infinity: refused
    if kind is dict:
        return _attributes(item, depth + 1)
    if kind is list:
        return _values(item, depth + 1)
    return None


def _small(event: FastEvent) -> bool:
    """`validate_attributes`' size check (the stdlib encoder's bytes, with ', ' and ': ', ≤ MAX_BYTES).
    Without floats the stdlib text of the properties is at most 6× orjson's compact text (a separator
    gains a space, an escape is at most 6 characters for one, everything else is the same bytes), so a
    small orjson text proves it; anything else is measured exactly as the validator does."""
    props = event.properties
    if not props:
        return True
    if not event.has_float:
        try:
            if 6 * len(orjson.dumps(props)) <= MAX_BYTES:
                return True
        except TypeError:  # an int beyond 64 bits
            pass
    return len(json.dumps(props, ensure_ascii=False).encode()) <= MAX_BYTES
