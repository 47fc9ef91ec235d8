"""ASGI middleware for the `Idempotency-Key` header on POST, PUT, PATCH and DELETE.

Flow: authenticate the caller (unauthenticated requests pass through and fail in the route),
claim (principal, key) with the request fingerprint in its own committed transaction, run the
request, store the response. A replay gets the stored status and body plus `Idempotent-Replayed:
true`. A 5xx is not stored (the key is released so the client can retry). Database calls run in a
worker thread so the event loop never blocks on them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random

from anyio import to_thread
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchard.auth.service import principal_for
from orchard.config import get_settings
from orchard.db import new_session
from orchard.errors import PROBLEM, OrchardError
from orchard.idempotency.models import IdempotencyRecord
from orchard.kit.clock import utcnow

_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _problem(status: int, code: str, detail: str) -> tuple[int, bytes]:
    body = {"type": f"https://orchard.dev/problems/{code}", "title": detail, "status": status, "detail": detail,
            "code": code, "errors": [{"field": "Idempotency-Key", "reason": detail}]}
    return status, json.dumps(body, ensure_ascii=False).encode()


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("idempotency-key")
        auth = headers.get("authorization", "")
        if key is None or not auth.lower().startswith("bearer "):
            return await self.app(scope, receive, send)
        if not key or len(key) > 255:
            return await _send(send, *_problem(400, "idempotency.bad_key", "Idempotency-Key must be 1–255 characters"))

        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        actor = await to_thread.run_sync(_actor, auth[7:].strip())
        if actor is None:
            return await self.app(scope, _replay_receive(body), send)
        target = f"{scope['method']} {scope['path']}?{scope.get('query_string', b'').decode('latin-1')}\n"
        fp = hashlib.sha256(target.encode() + body).hexdigest()
        claim = await to_thread.run_sync(_claim, actor, key, fp)
        if claim is not None:
            return await _send(send, *claim, replayed=True)

        captured: dict = {"status": 500, "headers": [], "body": b""}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, _replay_receive(body), capture)
        finally:
            await to_thread.run_sync(_finish, actor, key, captured)


def _actor(credential: str) -> str | None:
    session = new_session(readonly=True)
    try:
        return principal_for(session, credential).actor
    except OrchardError:
        return None
    finally:
        session.close()


def _claim(actor: str, key: str, fp: str) -> tuple[int, bytes, str] | tuple[int, bytes] | None:
    """None when this request now owns the key; else the response to send instead."""
    session = new_session()
    try:
        if random.random() < 0.01:
            horizon = utcnow() - dt.timedelta(seconds=get_settings().idempotency_ttl_seconds)
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < horizon))
        session.add(IdempotencyRecord(principal=actor, key=key, fingerprint=fp, state="running"))
        session.commit()
        return None
    except IntegrityError:
        session.rollback()
        row = session.get(IdempotencyRecord, (actor, key))
        if row is None:  # released between our insert and read: treat as in flight
            return _problem(409, "idempotency.in_progress", "a request with this Idempotency-Key is in progress")
        if row.fingerprint != fp:
            return _problem(422, "idempotency.key_reused",
                            "this Idempotency-Key was used with a different request")
        if row.state == "running":
            return _problem(409, "idempotency.in_progress", "a request with this Idempotency-Key is in progress")
        return row.status_code, row.body or b"", row.content_type or "application/json"
    finally:
        session.close()


def _finish(actor: str, key: str, captured: dict) -> None:
    session = new_session()
    try:
        row = session.get(IdempotencyRecord, (actor, key))
        if row is not None:
            if captured["status"] >= 500:
                session.delete(row)
            else:
                ctype = next((v.decode("latin-1") for k, v in captured["headers"] if k.lower() == b"content-type"),
                             "application/json")
                row.state, row.status_code, row.content_type, row.body = "done", captured["status"], ctype, \
                    captured["body"]
        session.commit()
    finally:
        session.close()


def _replay_receive(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _send(send: Send, status: int, body: bytes, content_type: str = PROBLEM, *, replayed: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if replayed and status < 400 or content_type != PROBLEM:
        headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
