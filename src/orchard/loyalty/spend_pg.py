"""The thin path of `POST /api/v1/members/{id}/points/spend` on PostgreSQL: one round trip per spend.

Why: through FastAPI's dependency solving, SQLAlchemy and four thread hand-offs a spend cost 10–14 ms of
server CPU and 14 SQL statements (docs/benchmarks.md, "Single redemptions over HTTP"); 500 spends/s on
two shared cores leaves ~2 ms. Here an ASGI middleware in front of the router parses and validates
the request itself (`SpendIn`, the same model), takes a connection from an async psycopg pool opened
in the app's lifespan (no pre-ping, no thread) and calls `orchard_points_spend()` (migration 0015),
which checks the credential, the permission, the member's scope and the store code and does the whole
ledger work in the same statement. The route answers from the one row it returns, with the errors
of `orchard.errors` and the response model of the service path, so clients see no difference.

What it does not handle it hands on, body and all, to the FastAPI route (`loyalty.endpoints.spend`, the
reference and SQLite's only path), which then answers exactly as it always did: a body that is not a
valid `SpendIn` or not JSON, a path id that is not a plain decimal in range, a missing or unrecognised
credential, a value PostgreSQL cannot store, and any request arriving while no pool is open (an app
used without its lifespan). The credential is checked by the function on every request, never cached,
so revoking a key or deactivating an account takes effect on the next request in every worker.

A spend is idempotent on (source, external_id), so a call whose connection broke is sent once more on a
fresh connection: if the first did commit, the second is its replay and returns the same entry.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg_pool
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from orchard.loyalty import ledger
from orchard.loyalty.schemas import EntryRead, SpendIn

log = logging.getLogger("orchard.loyalty.spend_pg")

#: The route's path, its `{member_id}` matched as Starlette matches a str parameter.
_PATH = re.compile(r"/api/v1/members/([^/]+)/points/spend")
#: The path ids the FastAPI route accepts and renders the same way: plain decimals in 1..2**62.
_PLAIN_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_ID = 2**62
_SPEND_ROLES = sorted(r.value for r, perms in ROLE_PERMS.items() if Perm.points_spend in perms)
_SCOPED_ROLES = sorted(r.value for r in STORE_SCOPED)
_CALL = ("SELECT * FROM orchard_points_spend(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
_ENTRY_FIELDS = ("id", "member_id", "kind", "amount", "balance_after", "reason", "source", "external_id", "actor",
                 "explanation", "store_id", "order_id", "created_at")


def enabled(database_url: str) -> bool:
    """Whether an app on this database serves spends through this path."""
    return database_url.startswith("postgresql") and get_settings().points_spend_fast_path


def conninfo(database_url: str) -> str:
    """The libpq URL of a SQLAlchemy one (`postgresql+psycopg://…` → `postgresql://…`)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def thin_pool(app: Any, attr: str, *, on: bool, size: int, timeout: float, name: str):
    """Keep `app.state.<attr>` an open async pool for the app's lifetime, or None when the path is off.

    Shared by the thin paths (this one and `events.ingest_pg`): autocommit, because the function call is
    its own transaction (no BEGIN/COMMIT round trips); prepare_threshold 0, because the call is a
    prepared statement from its first use on a connection."""
    if not on:
        setattr(app.state, attr, None)
        yield
        return
    pool = psycopg_pool.AsyncConnectionPool(
        conninfo(get_settings().database_url), min_size=1, max_size=size, open=False, timeout=timeout, name=name,
        kwargs={"autocommit": True, "prepare_threshold": 0, "options": "-c TimeZone=UTC",
                "application_name": f"orchard {name}"})
    await pool.open()
    setattr(app.state, attr, pool)
    try:
        yield
    finally:
        setattr(app.state, attr, None)
        await pool.close()


@asynccontextmanager
async def pool_for(app: Any):
    """Open the pool for the app's lifetime (the app's lifespan), when this path is enabled."""
    settings = get_settings()
    async with thin_pool(app, "points_pool", on=enabled(settings.database_url), size=settings.points_spend_pool_size,
                         timeout=settings.points_spend_pool_timeout, name="points-spend"):
        yield


class Stats:
    """Requests a thin path answered itself, and those it handed on to the route (tests read them)."""

    def __init__(self) -> None:
        self.served = 0
        self.handed_on = 0


class SpendFastPath:
    """ASGI middleware: `POST …/members/{id}/points/spend` takes the thin path; everything else, and any
    spend it leaves to the route (see the module docstring), goes on to the app unchanged. It sits inside
    the Idempotency-Key middleware (keyed requests are recorded as before) and outside the exception
    middleware, so it renders its errors itself with the same functions (`orchard.errors`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/points/spend"):
            return await self.app(scope, receive, send)
        found = _PATH.fullmatch(get_route_path(scope))
        app = scope.get("app")
        pool = getattr(app.state, "points_pool", None) if app is not None else None
        if found is None or pool is None:
            return await self.app(scope, receive, send)
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        stats: Stats = app.state.points_spend_stats
        call = _parse(scope, found.group(1), body)
        row = await _execute(pool, call) if call is not None else None
        if row is not None and row["status"] == "rehash":  # a merged member: the fingerprint names the live one
            call = _rehashed(call, row["resolved_member_id"])
            row = await _execute(pool, call)
        if row is None:  # not for this path, or PostgreSQL refused a value: the route answers as it always has
            stats.handed_on += 1
            return await self.app(scope, _replay(body), send)
        stats.served += 1
        await _response(row, call, scope)(scope, receive, send)


def _parse(scope: Scope, raw_id: str, body: bytes) -> dict[str, Any] | None:
    """The function's arguments, or None when the FastAPI route must answer."""
    if not _PLAIN_ID.fullmatch(raw_id) or int(raw_id) > _MAX_ID:
        return None
    authorization = content_type = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
    # fastapi.security.HTTPBearer, then auth.service.principal_for's two kinds of credential.
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    if credential.startswith(APIKEY_PREFIX):
        kind = "apikey"
    elif credential.startswith(TOKEN_PREFIX):
        kind = "token"
    else:
        return None
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json" or not body:
        return None
    try:
        spend = SpendIn.model_validate(json.loads(body))
        # What PostgreSQL cannot store (a NUL in the store code, a lone surrogate) stays with the route.
        if spend.store_code is not None and "\x00" in spend.store_code:
            return None
        for text in (spend.reason, spend.external_id, spend.store_code or ""):
            text.encode()
    except (ValueError, ValidationError, UnicodeError):
        return None
    member_id = int(raw_id)
    return {"kind": kind, "hash": secret_hash(credential), "member_id": member_id, "spend": spend,
            "body_hash": _body_hash(member_id, spend), "hash_member_id": member_id}


def _body_hash(member_id: int, spend: SpendIn) -> str:
    """The fingerprint `ledger.post` records for this spend (the same Command, so the same formula)."""
    return ledger.Command(member_id=member_id, amount=-spend.amount, kind="spend", reason=spend.reason,
                          source=spend.source, external_id=spend.external_id, actor="",
                          request=spend.model_dump(mode="json")).body_hash()


def _rehashed(call: dict[str, Any], member_id: int) -> dict[str, Any]:
    return {**call, "hash_member_id": member_id, "body_hash": _body_hash(member_id, call["spend"])}


async def _execute(pool: psycopg_pool.AsyncConnectionPool, call: dict[str, Any]) -> dict[str, Any] | None:
    """The function's row; None when PostgreSQL refused a value (the route reports it as it always has);
    {"status": "busy"} when no connection came free in time, {"status": "retry"} when the function
    rolled back (a lot changed under the lock)."""
    spend: SpendIn = call["spend"]
    params = (call["kind"], call["hash"], _SPEND_ROLES, _SCOPED_ROLES, call["member_id"], call["hash_member_id"],
              call["body_hash"], spend.amount, spend.reason, spend.source, spend.external_id, spend.store_code)
    for attempt in (1, 2):
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(_CALL, params, prepare=True)
                values = await cur.fetchone()
                return dict(zip([c.name for c in cur.description], values, strict=True))
        except psycopg.DataError:
            return None
        except psycopg_pool.PoolTimeout as exc:
            return {"status": "busy", "error": exc}
        except psycopg.errors.RaiseException as exc:
            if exc.diag.message_primary == "points.retry":
                return {"status": "retry", "detail": exc.diag.message_detail}
            raise
        except psycopg.OperationalError as exc:
            # A broken connection (the pool drops it) or a deadlock victim: the spend is idempotent.
            if attempt == 2 or not _retryable(exc):
                raise
            log.warning("points spend: %s; sending the call again", exc)
    raise AssertionError("unreachable")


def _retryable(exc: psycopg.OperationalError) -> bool:
    """Everything but a cancelled statement (statement_timeout) or a lock timeout, which would only
    wait as long again."""
    return not isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable)


def _response(row: dict[str, Any], call: dict[str, Any], scope: Scope) -> Response:
    status = row["status"]
    if status in ("ok", "replay"):
        entry = EntryRead.model_validate({f: row[f] for f in _ENTRY_FIELDS})
        if entry.created_at.tzinfo is not dt.UTC:
            entry.created_at = entry.created_at.astimezone(dt.UTC)
        return Response(entry.model_dump_json(by_alias=True), media_type="application/json")
    if status == "busy":
        return busy_problem(Request(scope), row["error"])
    return orchard_problem(Request(scope), _error(status, row, call))


def _error(status: str, row: dict[str, Any], call: dict[str, Any]) -> OrchardError:
    """The error the service path raises in the same situation (its handler renders both alike)."""
    spend: SpendIn = call["spend"]
    code = spend.store_code
    match status:
        case "bad_api_key":
            return Unauthorized("invalid or revoked API key", code="auth.bad_api_key")
        case "bad_token":
            return Unauthorized("invalid or expired token", code="auth.bad_token")
        case "forbidden":
            return Forbidden(f"role {row['role']} may not {Perm.points_spend}", code="auth.forbidden")
        case "member_not_found":
            return NotFound("member not found", code="member.not_found")
        case "store_unknown":
            return InvalidInput.field("store_code", f"unknown org unit code {code!r}")
        case "store_not_store":
            return InvalidInput.field("store_code", f"{code!r} is a {row['unit_kind']}, not a store")
        case "store_outside":
            return InvalidInput.field("store_code", f"store {code!r} is outside your stores")
        case "id_reused":
            return Conflict(f"points command {spend.source}/{spend.external_id} was already received with another "
                            "body", code="points.id_reused", source=spend.source, external_id=spend.external_id)
        case "insufficient":
            return ledger.Insufficient(int(row["available"]), spend.amount)
        case "retry":
            return Conflict(f"{row['detail']}; retry", code="points.retry")
    raise RuntimeError(f"orchard_points_spend returned an unknown status {status!r}")


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes) -> Receive:
    """The body once more, for the FastAPI route; then a disconnect, as a finished request reads."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def install(app: Any) -> None:
    """Put the thin path in front of the router when the app's database is PostgreSQL (the pool itself
    opens with the app's lifespan). Call before adding the Idempotency-Key middleware, which must stay
    outside it."""
    if not enabled(get_settings().database_url):
        return
    app.state.points_spend_stats = Stats()
    app.add_middleware(SpendFastPath)
