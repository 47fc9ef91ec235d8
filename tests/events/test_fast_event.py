"""The thin ingest path's shortcuts are equal to what they replace (events.fast_event, events.ingest_pg):

* `fast_event.validate` accepts only items `EventIn` accepts, with the same values, the same
  `model_dump(mode="json", exclude_none=True)` and the same fingerprint; everything else it leaves to
  pydantic (None), so errors stay pydantic's;
* `fast_fingerprint` writes the stdlib canonical bytes (`kit.hashing.fingerprint`) whenever it uses orjson;
* orjson reads a body as the stdlib does whenever the value it gives holds no float (the only values the
  thin path takes from orjson without reading the body again);
* orjson writes the responses' bytes as the route's encoder does.

No database: pure functions, many examples. Seeded mutations of `fast_event` (2026-11-24, each alone):
external_id ≤ 129, store_code ≤ 65, member id ≥ 0, the offset's sign dropped, a zero offset not written
as Z, nesting one level deeper, the size bound without its 6× factor, a space allowed in `source` — each
fails `test_each_limit_is_eventins_own` (and the sign and Z ones the hypothesis tests too); the random
property test alone catches a length bound off by one only by chance, hence the limits one at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchard.events import fast_event, ingest, ingest_pg
from orchard.events.fast_event import fast_fingerprint, validate
from orchard.events.schemas import EventIn
from orchard.kit.clock import as_utc
from orchard.kit.hashing import fingerprint

_ABSENT = object()


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1, 1.0 and True are different values here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def sized(lo: int, hi: int, alphabet: str = "aZ9_-.:") -> st.SearchStrategy[str]:
    """Strings whose lengths hit the bounds (every limit of EventIn's strings is among the edges)."""
    edges = [n for n in (0, 1, 2, 63, 64, 65, 127, 128, 129, 254, 255, 256) if lo <= n <= hi]
    return st.builds(lambda n, c: (c * n)[:n], st.one_of(st.sampled_from(edges), st.sampled_from(edges),
                                                       st.integers(lo, hi)),
                     st.sampled_from(list(alphabet)))


_TEXT = st.text(max_size=12)
_JUNK = st.one_of(st.none(), st.integers(-3, 3), st.booleans(), st.floats(), _TEXT, st.just([]), st.just({}))
_SOURCE = st.one_of(st.just(_ABSENT), st.sampled_from(["app", "pos", "a.b:c-d_e", "a b", "app\n", "应用", ""]),
                    sized(0, 66), _JUNK)
_EXT = st.one_of(st.sampled_from(["x1", "订单-1", " ", "a\nb"]), sized(0, 130), sized(0, 130), _TEXT, _JUNK,
                 st.just(_ABSENT))
_NAME = st.one_of(st.sampled_from(["login", "store_visit", "签到", "a b", "9bad", "login\n", "_x", "a" * 64, "a" * 65,
                                   "a\u4e00", "aé", ""]),
                  st.text(alphabet="ab9_ .:-\u4e00\u9fff\u9fa5é\n", max_size=66), _JUNK, st.just(_ABSENT))
_ZONE = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+08:00", "-05:30", "+05:45", "+23:59", "-23:59", "+24:00",
                         "+05:60", "+0800", "+08", "", "+8:00"])
_CLOCK = st.tuples(st.integers(1960, 3001), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
                   st.integers(0, 61), st.integers(0, 61))
_FRACTION = st.one_of(st.just(""), st.builds(lambda n: "." + "1234567890"[:n], st.integers(0, 10)),
                      st.sampled_from([".0", ".000000", ".5", ".999999"]))


@st.composite
def times(draw) -> Any:
    """Times near the accepted RFC 3339 form: every field at and past its bounds, other separators and
    offsets, fractions of 0–10 digits; and non-strings."""
    y, mo, d, h, mi, s = draw(_CLOCK)
    sep = draw(st.sampled_from(["T", "T", "t", " ", "_"]))
    text = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{draw(_FRACTION)}{draw(_ZONE)}"
    return draw(st.one_of(st.just(text), st.just(text + "\n"), st.just("\u0661" + text[1:]), _JUNK,
                          st.integers(0, 2**40), st.just(_ABSENT)))


_KEYS = st.one_of(st.sampled_from(["sku", "价格", "_a", "a-b", "9x", "a b", "", "a" * 64, "a" * 65, "x\n"]), _TEXT)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70), st.floats(),
                     st.text(), st.sampled_from([1e-7, 1e16, 1e15, -0.0, 0.1]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)
_NAMED = st.sampled_from(["a", "价格", "_b"])
_DEEP = st.recursive(st.one_of(st.integers(), st.text(max_size=3), st.none()),
                     lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(_NAMED, inner, max_size=2)),
                     max_leaves=6)
_PROPERTIES = st.one_of(st.just(_ABSENT), st.dictionaries(_KEYS, _JSON, max_size=5), _JUNK,
                        st.dictionaries(_NAMED, _DEEP, max_size=3),  # nesting at and past MAX_DEPTH
                        # the 16 KiB bound: 16,373 is the one length whose compact text fits and whose
                        # stdlib text (with ': ') does not
                        st.builds(lambda n: {"blob": "x" * n}, st.sampled_from([16372, 16373, 16374])),
                        st.builds(lambda n: {"blob": "\x01" * n}, st.integers(2720, 2740)))
_ID = st.one_of(st.sampled_from([1, 2, 0, -1, 2**62, 2**62 + 1, 2**63, True, False, 1.0, "5", None]),
                st.integers(), st.just(_ABSENT))
_IDENTITIES = st.one_of(st.just(_ABSENT), st.dictionaries(_TEXT, st.one_of(sized(0, 256), _TEXT, _JUNK), max_size=11),
                        _JUNK)
_ANON = st.one_of(st.just(_ABSENT), st.none(), sized(0, 129), _TEXT, _JUNK)
_PROFILE = st.one_of(st.just(_ABSENT), st.none(), st.just({}), st.just({"name": "x"}), st.just(1))


def _drop(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not _ABSENT}


_MEMBER = st.one_of(
    st.builds(lambda i, k, a, p: _drop({"id": i, "identities": k, "anonymous_id": a, "profile": p}),
              _ID, _IDENTITIES, _ANON, _PROFILE),
    st.builds(lambda m, x: {**m, "extra": x}, st.just({"id": 1}), _JUNK), _JUNK, st.just(_ABSENT))
_STORE = st.one_of(st.just(_ABSENT), st.none(), sized(0, 66), _TEXT, _JUNK)


#: The shape clients send (the bench's, the scenario's): the validator must take these.
COMMON = st.builds(
    lambda ext, name, phone, card, when, zone, store, props: _drop({
        "type": "event", "source": "app", "external_id": ext, "name": name,
        "member": {"identities": {"phone": phone, **({"card_no": card} if card else {})}},
        "occurred_at": when.replace(tzinfo=dt.timezone(dt.timedelta(minutes=zone))).isoformat(timespec="seconds"),
        "store_code": store, "properties": props}),
    st.text(min_size=1, max_size=128), st.sampled_from(["login", "product_viewed", "签到"]),
    st.sampled_from(["13800000001", "+86 138-0000-0001"]), st.sampled_from([None, "C1"]),
    st.datetimes(dt.datetime(1970, 1, 2), dt.datetime(2999, 12, 30)), st.integers(-23 * 60, 23 * 60),
    st.one_of(st.just(_ABSENT), st.none(), st.just("S1")),
    st.one_of(st.just(_ABSENT), st.dictionaries(st.sampled_from(["sku", "价格", "platform"]),
                                                st.one_of(st.text(), st.integers(-2**63, 2**63 - 1)))))


@st.composite
def raw_events(draw) -> dict:
    """A valid common item (COMMON) with 0–3 of its fields (or its member's) replaced by values near or
    past EventIn's limits, or dropped, or an extra key added."""
    item = dict(draw(COMMON))
    fields = {"type": st.sampled_from([_ABSENT, "event", "order", 1]), "source": _SOURCE, "external_id": _EXT,
              "name": _NAME, "member": _MEMBER, "occurred_at": times(), "store_code": _STORE,
              "properties": _PROPERTIES, "extra": st.one_of(st.just(_ABSENT), _JUNK)}
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        item[name] = draw(fields[name])
    member = item.get("member")
    if isinstance(member, dict) and draw(st.booleans()):
        member = dict(member)
        parts = {"id": _ID, "identities": _IDENTITIES, "anonymous_id": _ANON, "profile": _PROFILE,
                 "extra": st.one_of(st.just(_ABSENT), _JUNK)}
        for name in draw(st.lists(st.sampled_from(sorted(parts)), min_size=1, max_size=2)):
            member[name] = draw(parts[name])
        item["member"] = _drop(member)
    return _drop(item)



def _floats_in(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_floats_in(v) for v in value.values())
    if isinstance(value, list):
        return any(_floats_in(v) for v in value)
    return False


def check(raw: Any, *, batch: bool) -> fast_event.FastEvent | None:
    """The equality property for one input."""
    fast = validate(raw, batch=batch)
    if fast is None:
        return None
    body = {k: v for k, v in raw.items() if k != "type"} if batch else raw
    try:
        model = EventIn.model_validate(body)
    except ValidationError as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"fast_event accepted what EventIn refuses: {exc}")
    for field in ("source", "external_id", "name", "store_code", "properties"):
        assert same(getattr(fast, field), getattr(model, field)), field
    assert fast.member.id == model.member.id and type(fast.member.id) is type(model.member.id)
    assert same(fast.member.identities, model.member.identities)
    assert same(fast.member.anonymous_id, model.member.anonymous_id)
    assert model.member.profile is None
    assert fast.occurred_at == model.occurred_at
    assert fast.occurred_at.utcoffset() == model.occurred_at.utcoffset()
    assert as_utc(fast.occurred_at).isoformat() == as_utc(model.occurred_at).isoformat()
    assert same(fast.dump(), model.model_dump(mode="json", exclude_none=True))
    assert fast.fingerprint() == ingest.body_fingerprint(model)
    assert fast.has_float == _floats_in(model.properties)
    return fast


@settings(max_examples=3000, deadline=None)
@given(raw=raw_events(), batch=st.booleans())
def test_what_the_fast_validator_accepts_eventin_accepts_with_the_same_values(raw, batch):
    check(raw, batch=batch)


@settings(max_examples=300, deadline=None)
@given(raw=COMMON)
def test_the_fast_validator_takes_the_common_shape(raw):
    assert check(raw, batch=True) is not None
    assert check({k: v for k, v in raw.items() if k != "type"}, batch=False) is not None


@pytest.mark.parametrize("raw", [
    {"external_id": "x", "name": "login", "member": {"id": 1}, "occurred_at": "2026-11-20T10:00:00.5+05:45"},
    {"external_id": "x", "name": "签到", "member": {"anonymous_id": "a"}, "occurred_at": "2026-11-20T10:00:00Z",
     "properties": {"价格": 1.5, "n": None, "deep": {"a": [1, "二", None]}}},
    {"source": "pos", "external_id": "x", "name": "a b", "member": {"identities": {}, "id": 2**62},
     "occurred_at": "2999-12-31T23:59:59.999999-23:59", "store_code": ""},
])
def test_examples_at_the_edges_are_accepted_alike(raw):
    assert check(raw, batch=False) is not None


# --- orjson in place of the stdlib encoder and decoder ---------------------------------------------

_ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**80, 2**80), st.floats(allow_nan=False),
              st.text(), st.text(alphabet=st.characters(max_codepoint=0x7f)), st.sampled_from(["\u2028", "\x7f", "é"])),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)),
    max_leaves=20)


@settings(max_examples=1000, deadline=None)
@given(value=_ANY_JSON)
def test_fast_fingerprint_is_the_canonical_fingerprint(value):
    assert fast_fingerprint(value, _floats_in(value)) == fingerprint(value)
    if not _floats_in(value):  # where orjson writes it: the bytes themselves
        try:
            data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return
        assert data == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=1000, deadline=None)
@given(value=_ANY_JSON, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_orjson_reads_what_the_stdlib_reads_where_its_value_holds_no_float(value, ascii_only, indent):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    try:
        fast = orjson.loads(text)
    except orjson.JSONDecodeError:
        return  # the thin path reads it with the stdlib
    if not _floats_in(fast):
        assert same(fast, json.loads(text))


@pytest.mark.parametrize("text", [b"123456789012345678901234567890", b'{"a":18446744073709551616}', b"1e400", b"-0",
                                  b"[1.0, 1e16, 2.5e-7]", b'"\\ud800"', b"NaN", b'\xef\xbb\xbf{}'])
def test_orjson_reads_numbers_and_oddities_as_the_stdlib_or_gives_a_float_or_refuses(text):
    try:
        fast = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    if not _floats_in(fast):
        assert same(fast, json.loads(text))


@settings(max_examples=1000, deadline=None)
@given(value=_ANY_JSON.filter(lambda v: not _floats_in(v)))
def test_responses_are_written_byte_for_byte_as_the_route_writes_them(value):
    try:
        data = orjson.dumps(value)
    except TypeError:
        return  # ingest_pg._json_response falls back to the route's encoder
    assert data == ingest_pg._JSON.encode(value).encode()


# --- every limit, one at a time (deterministic: a mutated bound fails here, not only by chance) ------

def _base(**changes: Any) -> dict:
    item = {"type": "event", "source": "app", "external_id": "x", "name": "login",
            "member": {"identities": {"phone": "13800000001"}}, "occurred_at": "2026-11-20T10:00:00+08:00",
            "store_code": "S1", "properties": {"sku": "T1"}}
    member = changes.pop("member_changes", None)
    item.update(changes)
    if member is not None:
        item["member"] = _drop({**item["member"], **member})
    return _drop(item)


def _nest(depth: int) -> dict:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return value


LIMITS = [
    *(_base(source="s" * n) for n in (0, 1, 64, 65)),
    _base(source=_ABSENT), _base(source="a b"), _base(source="a\n"),
    *(_base(external_id="e" * n) for n in (0, 1, 128, 129)),
    *(_base(name="n" * n) for n in (64, 65)), _base(name="签" * 64), _base(name="1a"), _base(name="a\n"),
    *(_base(store_code="c" * n) for n in (0, 64, 65)), _base(store_code=None), _base(store_code=_ABSENT),
    *(_base(member_changes={"anonymous_id": "a" * n}) for n in (0, 1, 128, 129)),
    *(_base(member_changes={"identities": {"phone": "1" * n}}) for n in (0, 1, 255, 256)),
    *(_base(member_changes={"identities": {f"k{i}": "v" for i in range(n)}, "id": 1}) for n in (0, 10, 11)),
    *(_base(member_changes={"id": n}) for n in (0, 1, 2**62, 2**62 + 1)),
    _base(member={"id": None, "identities": {}}), _base(member={"anonymous_id": None, "id": 3}),
    *(_base(properties=_nest(d)) for d in (3, 4)), _base(properties={"l": [[1]]}), _base(properties={"l": [[[1]]]}),
    *(_base(properties={"blob": "x" * n}) for n in (16372, 16373, 16374)),
    _base(properties={"bad key": 1}), _base(properties={"f": 1.5}), _base(properties={"f": float("inf")}),
    _base(properties={"f": float("nan")}), _base(properties=[]),
    *(_base(occurred_at=t) for t in ("1970-01-01T00:00:00Z", "2999-12-31T23:59:59.999999+23:59",
                                     "2026-11-20T10:00:00-05:30", "2026-11-20T10:00:00.1-00:00",
                                     "2026-02-29T10:00:00Z", "2026-11-20T24:00:00Z", "2026-11-20T10:00:00+24:00",
                                     "2026-11-20T10:00:00")),
]
#: Deliberately left to pydantic although it accepts them (the validator's accepted set is narrower).
DEFERRED = {"2026-11-20T10:00:00"}


@pytest.mark.parametrize("raw", LIMITS, ids=lambda raw: repr(raw)[:60])
def test_each_limit_is_eventins_own(raw):
    fast = check(raw, batch=True)
    try:
        EventIn.model_validate({k: v for k, v in raw.items() if k != "type"})
        accepted = True
    except ValidationError:
        accepted = False
    props = raw.get("properties")
    if raw.get("occurred_at") in DEFERRED or (isinstance(props, dict) and any(
            isinstance(v, float) and not math.isfinite(v) for v in props.values())):
        assert fast is None
    else:
        assert (fast is not None) == accepted
