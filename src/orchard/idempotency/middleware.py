"""ASGI middleware for the `Idempotency-Key` header on POST, PUT, PATCH and DELETE.

Flow: authenticate the caller (unauthenticated requests pass through and fail in the route),
claim (principal, key) with the request fingerprint in its own committed transaction, run the
request, store the response. A replay gets the stored status and body plus `Idempotent-Replayed:
true`. A 5xx is not stored (the key is released so the client can retry). Database calls run in a
worker thread so the event loop never blocks on them.

The body is read once, before the claim, and handed to the route afterwards: it is spooled (in
memory up to 1 MiB, then in a file under ORCHARD_DATA_DIR/tmp), so a large upload with a key
(`POST /api/v1/imports`) is never held in memory, and it is capped at ORCHARD_UPLOAD_MAX_BYTES plus
1 MiB (413). The fingerprint of a multipart body leaves out its boundary, which clients draw at
random for every request: the same form sent again under the same key is a replay, not a 422.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from anyio import to_thread
from python_multipart.multipart import parse_options_header
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchard.auth.service import principal_for
from orchard.config import get_settings
from orchard.db import new_session
from orchard.errors import PROBLEM, OrchardError
from orchard.idempotency.models import IdempotencyRecord
from orchard.kit import i18n
from orchard.kit.clock import utcnow

_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SPOOL_MEMORY = 1024 * 1024
REPLAY_CHUNK = 64 * 1024
#: Room for multipart framing on top of the largest upload.
BODY_OVERHEAD = 1024 * 1024


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

        actor = await to_thread.run_sync(_actor, auth[7:].strip())
        if actor is None:  # the route answers 401; nothing of the body is read here
            return await self.app(scope, receive, send)
        cap = get_settings().upload_max_bytes + BODY_OVERHEAD
        length = headers.get("content-length", "")
        language = headers.get("accept-language")
        if length.isdigit() and int(length) > cap:
            return await _send(send, *_too_large(cap, language))
        target = f"{scope['method']} {scope['path']}?{scope.get('query_string', b'').decode('latin-1')}\n"
        body = _Body(target.encode(), _boundary(headers.get("content-type")))
        try:
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                if body.size + len(chunk) > cap:
                    return await _send(send, *_too_large(cap, language))
                await body.add(chunk)
                more = msg.get("more_body", False)
            claim = await to_thread.run_sync(_claim, actor, key, body.fingerprint())
            if claim is not None:
                return await _send(send, *claim, replayed=True)

            captured: dict = {"status": 500, "headers": [], "body": b"", "finished": False}

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    captured["status"] = message["status"]
                    captured["headers"] = message.get("headers", [])
                elif message["type"] == "http.response.body":
                    captured["body"] += message.get("body", b"")
                    if not message.get("more_body", False):
                        # Record the outcome before the client sees the end of the response, so a
                        # retry sent the moment the first answer arrives is a replay, not "in progress".
                        captured["finished"] = True
                        await to_thread.run_sync(_finish, actor, key, captured)
                await send(message)

            try:
                await self.app(scope, body.receive(), capture)
            finally:
                if not captured["finished"]:
                    await to_thread.run_sync(_finish, actor, key, captured)
        finally:
            body.close()


def _boundary(content_type: str | None) -> bytes | None:
    ctype, params = parse_options_header(content_type)
    if not ctype.startswith(b"multipart/"):
        return None
    return params.get(b"boundary") or None


class _Body:
    """The request body, read once: spooled (memory, then a file under ORCHARD_DATA_DIR/tmp) and
    hashed as it arrives. With a multipart boundary, every occurrence of `--boundary` is hashed as
    a fixed marker instead; a tail shorter than the delimiter is held back until the next chunk so
    a delimiter split across chunks is still found."""

    def __init__(self, target: bytes, boundary: bytes | None) -> None:
        self.size = 0
        self._hash = hashlib.sha256(target)
        self._delimiter = b"--" + boundary if boundary else None
        self._tail = b""
        self._file: Any = None
        self._directory = Path()

    def _spool(self, chunk: bytes, *, big: bool) -> None:
        if self._file is None:
            self._directory = Path(get_settings().data_dir) / "tmp"
            self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=self._directory)
        if big:  # this write may move the spool to disk: only then is the directory needed
            os.makedirs(self._directory, exist_ok=True)
        self._file.write(chunk)

    async def add(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._digest(chunk)
        big = self.size + len(chunk) > SPOOL_MEMORY
        self.size += len(chunk)
        if big:  # on disk: write from a thread
            await to_thread.run_sync(lambda: self._spool(chunk, big=True))
        else:
            self._spool(chunk, big=False)

    def _digest(self, data: bytes) -> None:
        if self._delimiter is None:
            self._hash.update(data)
            return
        *whole, last = (self._tail + data).split(self._delimiter)
        for piece in whole:
            self._hash.update(piece)
            self._hash.update(b"\x00boundary\x00")
        cut = max(len(last) - (len(self._delimiter) - 1), 0)
        self._hash.update(last[:cut])
        self._tail = last[cut:]

    def fingerprint(self) -> str:
        self._hash.update(self._tail)
        self._tail = b""
        return self._hash.hexdigest()

    def receive(self) -> Receive:
        """The body again, for the route, in chunks; then `http.disconnect`."""
        if self._file is not None:
            self._file.seek(0)
        sent = 0
        done = False

        async def receive() -> Message:
            nonlocal sent, done
            if done:
                return {"type": "http.disconnect"}
            chunk = b""
            if self._file is not None:
                chunk = (await to_thread.run_sync(self._file.read, REPLAY_CHUNK) if self.size > SPOOL_MEMORY
                         else self._file.read(REPLAY_CHUNK))
            sent += len(chunk)
            done = sent >= self.size or not chunk
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return receive

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _too_large(cap: int, accept_language: str | None) -> tuple[int, bytes]:
    detail = f"the body is larger than {cap} bytes"
    body = {"type": "https://orchard.dev/problems/request.too_large",
            "title": i18n.title("请求体过大", accept_language), "status": 413, "detail": detail,
            "code": "request.too_large", "errors": [{"field": "body", "reason": detail}]}
    return 413, json.dumps(body, ensure_ascii=False).encode()


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


async def _send(send: Send, status: int, body: bytes, content_type: str = PROBLEM, *, replayed: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if replayed and status < 400 or content_type != PROBLEM:
        headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
