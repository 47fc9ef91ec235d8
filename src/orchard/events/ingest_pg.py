"""The thin path of `POST /api/v1/events` and of `POST /api/v1/ingest` batches of behaviour events on
PostgreSQL: one round trip per request.

Why: through FastAPI's dependency solving, SQLAlchemy, savepoints and thread hand-offs a single event cost
8–13 ms of server CPU and ~9 SQL statements (docs/benchmarks.md, "HTTP ingestion"); 2,000 events/s on two
shared cores leaves ~0.7 ms. Here an ASGI middleware in front of the router parses and validates the
request itself (the route's own `EventIn` model and `ingest._parse`, the same fingerprint), normalises
the identity keys, and makes ONE call of `orchard_ingest_events()` (migration 0019) on an async psycopg
pool opened in the app's lifespan. The function checks the credential, the permission and the caller's
stores on every call (never cached: a revoked key is refused on its next request in every worker) and
does for each item what `events.ingest.ingest` does for it: replay check, store code, member, insert,
aggregates, dirty mark.

It answers only what it can decide without the service path; everything else goes, body and all, to
the FastAPI route, which answers exactly as it always did: a body the route's models refuse, a missing
or unrecognised credential, an order or refund in the batch, an id repeated in the batch, an item
the function calls undecided (a new member, a key to link, a merge candidate, earning work, a member of
another store found by its keys), a time too far ahead, a value PostgreSQL cannot store, and any request
while no pool is open. A batch is all or nothing: one such item and the function writes nothing and the
route takes the whole batch, so a batch is still one transaction and its results are those of the
per-item path (tests/events/test_ingest_pg.py runs both and compares every answer and row).

An item is idempotent on (source, external_id), so a call whose connection broke is sent once more.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import orjson
import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from orchard.auth.roles import ROLE_PERMS, STORE_SCOPED, Perm
from orchard.auth.secrets import APIKEY_PREFIX, TOKEN_PREFIX, secret_hash
from orchard.config import get_settings
from orchard.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OrchardError,
    Unauthorized,
    busy_problem,
    orchard_problem,
)
from orchard.events import fast_event, ingest
from orchard.events.fast_event import FastEvent
from orchard.events.schemas import BatchIn, EventIn
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.kit.clock import as_utc, utcnow
from orchard.loyalty.spend_pg import Stats, _read_body, _replay, thin_pool

log = logging.getLogger("orchard.events.ingest_pg")

_SINGLE, _BATCH = "/api/v1/events", "/api/v1/ingest"
#: Role lists as array literals (role names are plain identifiers): adapting Python lists on every call cost
#: more than the rest of the parameters.
_INGEST_ROLES = "{" + ",".join(sorted(r.value for r, perms in ROLE_PERMS.items() if Perm.events_ingest in perms)) + "}"
_SCOPED_ROLES = "{" + ",".join(sorted(r.value for r in STORE_SCOPED)) + "}"
_CALL = "SELECT * FROM orchard_ingest_events(%s, %s, %s::text[], %s::text[], %s, %s, %s::jsonb)"
#: Parameters the route's JSON encoder uses (starlette.responses.JSONResponse.render), for the same bytes.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


class Fallback(Exception):  # noqa: N818 - a signal, not an error
    """The request is the FastAPI route's to answer."""


def enabled(database_url: str) -> bool:
    """Whether an app on this database serves ingestion through this path."""
    return database_url.startswith("postgresql") and get_settings().ingest_fast_path


@asynccontextmanager
async def pool_for(app: Any):
    """Open the pool for the app's lifetime (the app's lifespan), when this path is enabled."""
    settings = get_settings()
    async with thin_pool(app, "ingest_pool", on=enabled(settings.database_url), size=settings.ingest_pool_size,
                         timeout=settings.ingest_pool_timeout, name="ingest"):
        yield


class IngestFastPath:
    """ASGI middleware: `POST /api/v1/events` and `POST /api/v1/ingest` take the thin path; everything
    else, and whatever it leaves to the route (see the module docstring), goes on to the app unchanged.
    It sits inside the Idempotency-Key middleware (keyed requests are recorded as before) and outside the
    exception middleware, so it renders its errors itself with the same functions (`orchard.errors`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"][-7:] not in ("/events", "/ingest"):
            return await self.app(scope, receive, send)
        path = get_route_path(scope)
        app = scope.get("app")
        pool = getattr(app.state, "ingest_pool", None) if app is not None else None
        if path not in (_SINGLE, _BATCH) or pool is None:
            return await self.app(scope, receive, send)
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        stats: Stats = app.state.ingest_stats
        try:
            credential = _credential(scope)
            request = _single(body) if path == _SINGLE else _batch(body)
            rows = await _execute(pool, credential, request["items"])
            response = _response(scope, path, request, rows)
        except Fallback:
            stats.handed_on += 1
            return await self.app(scope, _replay(body), send)
        stats.served += 1
        await response(scope, receive, send)


def _credential(scope: Scope) -> tuple[str, str]:
    """(kind, hash) of the bearer credential, as fastapi.security.HTTPBearer and auth.service.principal_for
    read it; anything else (no header, another scheme, an unknown prefix, a non-JSON body type) is the
    route's."""
    authorization = content_type = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise Fallback
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Fallback
    if credential.startswith(APIKEY_PREFIX):
        return "apikey", secret_hash(credential)
    if credential.startswith(TOKEN_PREFIX):
        return "token", secret_hash(credential)
    raise Fallback


def _load(body: bytes) -> tuple[Any, bool]:
    """(the body's value, whether orjson read it). orjson reads ~10× faster than the stdlib and the same
    values, except that it reads an int beyond 64 bits as a float (tests/events/test_fast_event.py); so
    its value is used only when the fast validator accepted every item without meeting a float, and
    otherwise the body is read again by the stdlib (`_reload`) — what starlette's `Request.json()` gives
    the route. What orjson refuses (NaN, Infinity, lone surrogates, a BOM, invalid UTF-8) the stdlib reads
    or refuses as before. A text orjson accepted has no lone surrogates, whichever parser then reads it:
    the precondition of `fast_event.validate`."""
    if not body:
        raise Fallback
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError:
        pass
    return _reload(body), False


def _reload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise Fallback from None


def _single(body: bytes) -> dict[str, Any]:
    """The one item of `POST /api/v1/events`, validated as the route validates its body: the common
    shape by `fast_event` (equal to `EventIn` on what it accepts), anything else by `EventIn`."""
    value, clean = _load(body)
    data: EventIn | FastEvent | None = None
    if clean:
        data = fast_event.validate(value, batch=False)
        if data is None or data.has_float:
            value = _reload(body)
            data = fast_event.validate(value, batch=False)
    if data is None:
        try:
            data = EventIn.model_validate(value)
        except ValidationError:
            raise Fallback from None
    return {"items": [_item(0, data, _latest())], "data": [data]}


def _batch(body: bytes) -> dict[str, Any]:
    """The items of a batch of behaviour events: those that fail validation keep the per-item error the
    route gives them (`ingest._parse`, the same function); any other kind, or an id given twice, is the
    route's (its outcome depends on the order the per-item path writes in)."""
    value, clean = _load(body)
    if clean:
        request = _plain_batch(value)
        if request is not None:
            return request
        value = _reload(body)
    raw = value.get("items") if clean and type(value) is dict and len(value) == 1 else None
    if type(raw) is not list or not 1 <= len(raw) <= 1000:  # else BatchIn would give the same list
        try:
            raw = BatchIn.model_validate(value).items
        except ValidationError:
            raise Fallback from None
    items, data, errors, seen, latest = [], {}, {}, set(), _latest()
    for index, item in enumerate(raw):
        parsed: EventIn | FastEvent | None = None
        if clean and type(item) is dict and item.get("type") == "event":
            parsed, kind = fast_event.validate(item, batch=True), "event"
        if parsed is None:
            try:
                kind, parsed = ingest._parse(item)
            except OrchardError as exc:
                errors[index] = exc.to_problem()
                continue
        if kind != "event" or (parsed.source, parsed.external_id) in seen:
            raise Fallback
        seen.add((parsed.source, parsed.external_id))
        items.append(_item(index, parsed, latest))
        data[index] = parsed
    return {"items": items, "data": data, "errors": errors, "size": len(raw)}


def _plain_batch(value: Any) -> dict[str, Any] | None:
    """The common batch, as orjson read it: `{"items": [...]}` of 1–1,000 events that `fast_event`
    accepts, none with a float (so no number orjson could have read differently). None: anything else,
    which `_batch` reads again with the stdlib."""
    raw = value.get("items") if type(value) is dict and len(value) == 1 else None
    if type(raw) is not list or not 1 <= len(raw) <= 1000:
        return None
    items, data, seen, latest = [], {}, set(), _latest()
    validate = fast_event.validate
    for index, item in enumerate(raw):
        if type(item) is not dict or item.get("type") != "event":
            return None
        parsed = validate(item, batch=True)
        if parsed is None or parsed.has_float:
            return None
        key = (parsed.source, parsed.external_id)
        if key in seen:
            raise Fallback
        seen.add(key)
        items.append(_item(index, parsed, latest))
        data[index] = parsed
    return {"items": items, "data": data, "errors": {}, "size": len(raw)}


def _latest() -> dt.datetime:
    """The latest time an item may have without going to the route (`ingest._MAX_FUTURE_SKEW_S`)."""
    return utcnow() + dt.timedelta(seconds=ingest._MAX_FUTURE_SKEW_S)


def _item(index: int, data: EventIn | FastEvent, latest: dt.datetime) -> dict[str, Any]:
    """The function's view of one event: what `ingest._write` would compute before its first write
    (fingerprint, time, normalised keys, properties as PostgreSQL stores them), or Fallback for an
    item whose answer depends on checks the function leaves to the route.

    A `FastEvent` comes from a text orjson accepted (no lone surrogates), so its one unstorable
    character is NUL, which `_items_json` finds in the whole text; its time goes as pydantic's JSON form
    of it (RFC 3339 with its offset: the same instant for PostgreSQL)."""
    ref = data.member
    if type(data) is FastEvent:
        if data.occurred_at > latest:
            raise Fallback
        keys = [_normalized(kind, value) for kind, value in ref.identities.items()]
        if ref.anonymous_id is not None:
            keys.append(("anonymous_id", ref.anonymous_id))
        return {"i": index, "s": data.source, "e": data.external_id, "h": data.fingerprint(), "n": data.name,
                "t": data.when, "c": data.store_code, "m": ref.id, "k": list(dict.fromkeys(keys)),
                "a": ref.anonymous_id, "p": _stdlib(data.properties) if data.has_float else data.properties}
    if ref.profile is not None and ref.id is None:  # its home store code is checked even for a known member
        raise Fallback
    occurred = as_utc(data.occurred_at)
    if occurred > latest:
        raise Fallback
    texts = [data.external_id, ref.anonymous_id, data.store_code]
    if not all(ingest._storable(t) for t in texts if t is not None):
        raise Fallback
    keys = [_normalized(kind, value) for kind, value in ref.identities.items()]
    if ref.anonymous_id is not None:
        keys.append(("anonymous_id", ref.anonymous_id))
    if not all(ingest._storable(v) for _, v in keys):
        raise Fallback
    return {"i": index, "s": data.source, "e": data.external_id, "h": ingest.body_fingerprint(data),
            "n": data.name, "t": occurred.isoformat(), "c": data.store_code, "m": ref.id,
            "k": list(dict.fromkeys(keys)), "a": ref.anonymous_id, "p": _stdlib(data.properties)}


def _stdlib(properties: dict[str, Any]) -> orjson.Fragment:
    """Properties written by the stdlib encoder, as before, into orjson's text of the call: what floats
    are stored as must not depend on which encoder wrote them (orjson writes 1e-7 for the stdlib's
    1e-07, and PostgreSQL keeps a numeric's written scale). Fallback for what PostgreSQL could not store
    (±Infinity, NaN, lone surrogates); NUL is caught on the whole text."""
    try:
        return orjson.Fragment(json.dumps(properties, ensure_ascii=False, allow_nan=False).encode())
    except (ValueError, UnicodeEncodeError):
        raise Fallback from None


@lru_cache(maxsize=65536)
def _normalized_key(kind: str, value: str) -> tuple[str, str]:
    """`identity.normalize` is pure and its phone parsing is the costliest step of an item; the same
    people come back all day, so each process remembers the keys it has normalised."""
    return normalize(kind, value)


def _normalized(kind: str, value: str) -> tuple[str, str]:
    try:
        return _normalized_key(kind, value)
    except InvalidIdentity:  # the route names the field in its 422
        raise Fallback from None


def _items_json(items: list[dict[str, Any]]) -> bytes:
    """The items as one JSON text for the call (orjson; properties that are not plain orjson-safe values
    come pre-written by `_stdlib`), or Fallback when PostgreSQL could not store a value (what
    `pg_batch._json` refuses item by item: ±Infinity, a NUL, a lone surrogate; the whole request goes to
    the route, which reports the item as it always has)."""
    try:
        dumped = orjson.dumps(items)
    except TypeError:  # an int beyond 64 bits in properties (ids are ≤ 2**62): those the stdlib writes
        for item in items:
            if type(item["p"]) is not orjson.Fragment:
                item["p"] = _stdlib(item["p"])
        dumped = orjson.dumps(items)
    if b"\\u0000" in dumped:
        raise Fallback
    return dumped


def _written(text: bytes) -> bytes:
    """The items' text is written already (`_items_json`): psycopg passes the bytes on as they are."""
    return text


async def _execute(pool: psycopg_pool.AsyncConnectionPool, credential: tuple[str, str],
                   items: list[dict[str, Any]]) -> list[tuple]:
    """The function's rows. Fallback when PostgreSQL refused a value, or the call failed twice; a busy
    pool is a row of its own (`busy`)."""
    settings = get_settings()
    params = (credential[0], credential[1], _INGEST_ROLES, _SCOPED_ROLES,
              settings.points_order_pending_event or None, True, Jsonb(_items_json(items), dumps=_written))
    for attempt in (1, 2):
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(_CALL, params, prepare=True)
                return await cur.fetchall()
        except psycopg.DataError:
            raise Fallback from None
        except psycopg_pool.PoolTimeout as exc:
            return [(-1, "busy", None, None, exc)]
        except psycopg.errors.UndefinedFunction:
            # A database not yet upgraded to migration 0019: the route serves, as without this path.
            log.error("ingest: orchard_ingest_events() is missing; run `orchard db upgrade`")
            raise Fallback from None
        except (psycopg.errors.RaiseException, psycopg.OperationalError, psycopg.IntegrityError) as exc:
            # A concurrent writer of the same id rolled back, a deadlock victim, a broken connection, a
            # member deleted under the insert: the call wrote nothing, or (broken after commit) its items
            # replay. Once more, then the route, which reports whatever it still is.
            if attempt == 2 or isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
                raise Fallback from None
            log.warning("ingest: %s; sending the call again", exc)
    raise AssertionError("unreachable")


def _response(scope: Scope, path: str, request: dict[str, Any], rows: list[tuple]) -> Response:
    if rows and rows[0][0] == -1:
        _, status, _, _, detail = rows[0]
        if status == "fallback":
            raise Fallback
        if status == "busy":
            return busy_problem(Request(scope), detail)
        return orchard_problem(Request(scope), _refusal(status, detail))
    if path == _SINGLE:
        i, status, event_id, member_id, detail = rows[0]
        if status in ("created", "duplicate"):
            return _json_response(_outcome(status, event_id, member_id), 201 if status == "created" else 200)
        return orchard_problem(Request(scope), _error(status, detail, request["data"][0]))
    results: list[dict[str, Any] | None] = [None] * request["size"]
    for index, problem in request["errors"].items():
        results[index] = {"index": index, "ok": False, "outcome": None, "error": problem}
    for i, status, event_id, member_id, detail in rows:
        if status in ("created", "duplicate"):
            results[i] = {"index": i, "ok": True, "outcome": _outcome(status, event_id, member_id), "error": None}
        else:
            results[i] = {"index": i, "ok": False, "outcome": None,
                          "error": _error(status, detail, request["data"][i]).to_problem()}
    accepted = sum(r["ok"] for r in results)
    return _json_response({"accepted": accepted, "rejected": len(results) - accepted, "results": results}, 200,
                          plain=accepted == len(results))


def _outcome(status: str, event_id: int, member_id: int | None) -> dict[str, Any]:
    """`schemas.Outcome` as the route's response model renders it."""
    return {"type": "event", "status": status, "id": event_id, "member_id": member_id, "member_created": False}


def _json_response(content: dict[str, Any], status: int, *, plain: bool = True) -> Response:
    """`plain`: only outcomes (ids, statuses, no problem documents), for which orjson writes the bytes the
    route's encoder writes (dicts, lists, str, int, bool, None; tests/events/test_fast_event.py). Problem
    documents take the route's encoder: their details are not worth proving float-free."""
    data = None
    if plain:
        try:
            data = orjson.dumps(content)
        except TypeError:
            pass
    if data is None:
        data = _JSON.encode(content).encode()
    return Response(data, status_code=status, media_type=JSONResponse.media_type)


def _refusal(status: str, role: str | None) -> OrchardError:
    """The credential errors of `deps.get_principal` and `deps.require`."""
    match status:
        case "bad_api_key":
            return Unauthorized("invalid or revoked API key", code="auth.bad_api_key")
        case "bad_token":
            return Unauthorized("invalid or expired token", code="auth.bad_token")
        case "forbidden":
            return Forbidden(f"role {role} may not {Perm.events_ingest}", code="auth.forbidden")
    raise RuntimeError(f"orchard_ingest_events returned an unknown status {status!r}")


def _error(status: str, detail: str | None, data: EventIn) -> OrchardError:
    """The error `events.ingest` raises for the item in the same situation."""
    code = data.store_code
    match status:
        case "id_reused":
            return Conflict(f"event {data.source}/{data.external_id} was already received with a different body",
                            code="ingest.id_reused", source=data.source, external_id=data.external_id)
        case "store_unknown":
            return InvalidInput.field("store_code", f"unknown org unit code {code!r}")
        case "store_not_store":
            return InvalidInput.field("store_code", f"{code!r} is a {detail}, not a store")
        case "member_not_found":
            return NotFound("member not found", code="member.not_found")
    raise RuntimeError(f"orchard_ingest_events returned an unknown status {status!r}")


def install(app: Any) -> None:
    """Put the thin path in front of the router when the app's database is PostgreSQL (the pool itself
    opens with the app's lifespan). Call before adding the Idempotency-Key middleware, which must stay
    outside it."""
    if not enabled(get_settings().database_url):
        return
    app.state.ingest_stats = Stats()
    app.add_middleware(IngestFastPath)
