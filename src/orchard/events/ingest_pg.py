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

import json
import logging
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import psycopg
import psycopg_pool
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
from orchard.events import ingest
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


def _load(body: bytes) -> Any:
    if not body:
        raise Fallback
    try:
        return json.loads(body)
    except ValueError:
        raise Fallback from None


def _single(body: bytes) -> dict[str, Any]:
    """The one item of `POST /api/v1/events`, validated as the route validates its body."""
    try:
        data = EventIn.model_validate(_load(body))
    except ValidationError:
        raise Fallback from None
    return {"items": [_item(0, data)], "data": [data]}


def _batch(body: bytes) -> dict[str, Any]:
    """The items of a batch of behaviour events: those that fail validation keep the per-item error the
    route gives them (`ingest._parse`, the same function); any other kind, or an id given twice, is the
    route's (its outcome depends on the order the per-item path writes in)."""
    try:
        raw = BatchIn.model_validate(_load(body)).items
    except ValidationError:
        raise Fallback from None
    items, data, errors, seen = [], {}, {}, set()
    for index, value in enumerate(raw):
        try:
            kind, parsed = ingest._parse(value)
        except OrchardError as exc:
            errors[index] = exc.to_problem()
            continue
        if kind != "event" or (parsed.source, parsed.external_id) in seen:
            raise Fallback
        seen.add((parsed.source, parsed.external_id))
        items.append(_item(index, parsed))
        data[index] = parsed
    return {"items": items, "data": data, "errors": errors, "size": len(raw)}


def _item(index: int, data: EventIn) -> dict[str, Any]:
    """The function's view of one event: what `ingest._write` would compute before its first write
    (fingerprint, UTC time, normalised keys, properties as PostgreSQL stores them), or Fallback for an
    item whose answer depends on checks the function leaves to the route."""
    ref = data.member
    if ref.profile is not None and ref.id is None:  # its home store code is checked even for a known member
        raise Fallback
    occurred = as_utc(data.occurred_at)
    if (occurred - utcnow()).total_seconds() > ingest._MAX_FUTURE_SKEW_S:
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
            "k": list(dict.fromkeys(keys)), "a": ref.anonymous_id, "p": data.properties}


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


def _items_json(items: list[dict[str, Any]]) -> str:
    """The items as one JSON text for the call, or Fallback when PostgreSQL could not store a value of the
    properties (what `pg_batch._json` refuses item by item: ±Infinity, a NUL, a lone surrogate; the whole
    request goes to the route, which reports the item as it always has)."""
    try:
        dumped = json.dumps(items, ensure_ascii=False, allow_nan=False)
        dumped.encode()
    except (ValueError, UnicodeEncodeError):
        raise Fallback from None
    if "\\u0000" in dumped:
        raise Fallback
    return dumped


async def _execute(pool: psycopg_pool.AsyncConnectionPool, credential: tuple[str, str],
                   items: list[dict[str, Any]]) -> list[tuple]:
    """The function's rows. Fallback when PostgreSQL refused a value, or the call failed twice; a busy
    pool is a row of its own (`busy`)."""
    settings = get_settings()
    params = (credential[0], credential[1], _INGEST_ROLES, _SCOPED_ROLES,
              settings.points_order_pending_event or None, True, _items_json(items))
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
    return _json_response({"accepted": accepted, "rejected": len(results) - accepted, "results": results}, 200)


def _outcome(status: str, event_id: int, member_id: int | None) -> dict[str, Any]:
    """`schemas.Outcome` as the route's response model renders it."""
    return {"type": "event", "status": status, "id": event_id, "member_id": member_id, "member_created": False}


def _json_response(content: dict[str, Any], status: int) -> Response:
    return Response(_JSON.encode(content).encode(), status_code=status, media_type=JSONResponse.media_type)


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
