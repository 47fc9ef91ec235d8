"""Segment / RudderStack HTTP tracking API (SPEC E3): `POST /v1/batch`, `/v1/identify`, `/v1/track`,
`/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group`.

Auth: HTTP Basic with an Orchard API key as the user name and an empty password (Segment's write
key), or `Authorization: Bearer <key>`; the key needs `events:ingest`. The body is read here, not by
FastAPI: it may be gzip- or deflate-compressed (`Content-Encoding`; RudderStack's SDK compresses by
default, Segment's when `gzip=True`), and is capped at 4 MB on the wire and after decompression (413).

Answers: 200 `{"success": true, ...}` whenever the request was accepted. A batch is never failed by
one of its messages: each message has a result (`ok`, `status`, or the `error` problem). A
single-message route answers the message's own error (422, 409) instead, as there is nothing else to
keep. Unauthenticated (401), forbidden (403) or malformed (400/413/415/422) requests answer a problem
document that also carries `message`, which the SDKs read to log (and to not retry) a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPBasic, HTTPBearer
from pydantic import BaseModel, ValidationError

from orchard.auth.roles import Perm
from orchard.auth.service import Principal, principal_for
from orchard.deps import SessionDep
from orchard.errors import Forbidden, InvalidInput, OrchardError, Unauthorized, validation_errors
from orchard.tracking import service
from orchard.tracking.schemas import (
    AliasIn,
    BatchIn,
    GroupIn,
    IdentifyIn,
    PageIn,
    ScreenIn,
    TrackIn,
    TrackingResult,
)

MAX_BODY_BYTES = 4 * 1024 * 1024


class PayloadTooLarge(OrchardError):
    status_code = 413
    code = "tracking.too_large"
    title = "请求体过大"


class UnsupportedEncoding(OrchardError):
    status_code = 415
    code = "tracking.unsupported_encoding"
    title = "不支持的内容编码"


class MalformedBody(OrchardError):
    status_code = 400
    code = "tracking.malformed_body"
    title = "请求体无法解析"


@contextmanager
def _for_sdks() -> Iterator[None]:
    """The SDKs read `code` and `message` from an error body; without `message` RudderStack's SDK
    fails on a KeyError and retries a 4xx it should drop."""
    try:
        yield
    except OrchardError as exc:
        exc.extra.setdefault("message", exc.detail)
        raise


# ---- auth -------------------------------------------------------------------------------------

class _WriteKey(HTTPBasic):
    """Documents HTTP Basic in the OpenAPI document; the header itself is read by `credential`."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class _Bearer(HTTPBearer):
    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


_write_key = _WriteKey(scheme_name="SegmentWriteKey", auto_error=False,
                       description="Segment-style write key: an Orchard API key as the user name, empty password")
_bearer = _Bearer(scheme_name="TrackingBearer", auto_error=False,
                  description="Authorization: Bearer <Orchard API key>")


def credential(header: str | None) -> str:
    """The API key from `Basic base64(key:)` or `Bearer key`; raises Unauthorized."""
    scheme, _, param = (header or "").strip().partition(" ")
    param = param.strip()
    if scheme.lower() == "bearer" and param:
        return param
    if scheme.lower() == "basic" and param:
        try:
            user, _, password = base64.b64decode(param, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            raise Unauthorized("malformed Basic credentials", code="auth.bad_credential") from None
        if user.strip() or password.strip():
            return user.strip() or password.strip()
    raise Unauthorized("missing credentials: send HTTP Basic with the API key as user name (Segment write key), "
                       "or Authorization: Bearer <API key>", code="auth.missing")


def tracking_principal(request: Request, session: SessionDep, _basic: Annotated[None, Depends(_write_key)],
                       _token: Annotated[None, Depends(_bearer)]) -> Principal:
    with _for_sdks():
        principal = principal_for(session, credential(request.headers.get("authorization")))
        request.state.principal = principal
        if not principal.can(Perm.events_ingest):
            raise Forbidden(f"role {principal.role} may not {Perm.events_ingest}", code="auth.forbidden")
        return principal


# ---- body -------------------------------------------------------------------------------------

def _inflate(raw: bytes, wbits: int) -> bytes:
    out = bytearray()
    data = raw
    while data:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, MAX_BODY_BYTES + 1 - len(out))
        except zlib.error:
            raise MalformedBody("the body is not valid compressed data for its Content-Encoding",
                                code="tracking.bad_encoding") from None
        if len(out) > MAX_BODY_BYTES or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the decompressed body is larger than {MAX_BODY_BYTES} bytes")
        if not inflater.eof:
            raise MalformedBody("the compressed body is truncated", code="tracking.bad_encoding")
        data = inflater.unused_data
    return bytes(out)


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    encodings = [e for e in encodings if e != "identity"]
    if not encodings:
        return _inflate(raw, 16 + zlib.MAX_WBITS) if raw[:2] == b"\x1f\x8b" else raw
    if encodings in (["gzip"], ["x-gzip"]):
        return _inflate(raw, 16 + zlib.MAX_WBITS)
    if encodings == ["deflate"]:
        return _inflate(raw, 32 + zlib.MAX_WBITS)  # zlib (as HTTP means it) or gzip, auto-detected
    raise UnsupportedEncoding(f"Content-Encoding {content_encoding!r} is not supported: send gzip, deflate or none")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise MalformedBody("the body is empty: send a JSON object", code="tracking.empty_body")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedBody("the body is not UTF-8", code="tracking.bad_json") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {str(exc)[:200]}", code="tracking.bad_json") from None


async def json_body(request: Request) -> Any:
    """The request body: size-capped, decompressed, parsed (NaN and Infinity refused)."""
    with _for_sdks():
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return parse_json(decode_body(b"".join(chunks), request.headers.get("content-encoding")))


def _validated(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise InvalidInput.field("body", "must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = validation_errors([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        raise InvalidInput("; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]), errors=errors) from None


# ---- routes -----------------------------------------------------------------------------------

_PROBLEM = {"application/problem+json": {"schema": {
    "type": "object", "required": ["type", "title", "status", "detail", "code"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object"}}}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not JSON, or not validly compressed", "content": _PROBLEM},
    401: {"description": "missing or invalid write key", "content": _PROBLEM},
    403: {"description": "the key may not ingest events", "content": _PROBLEM},
    413: {"description": "the body is larger than 4 MB (also after decompression)", "content": _PROBLEM},
    415: {"description": "unsupported Content-Encoding", "content": _PROBLEM},
    422: {"description": "the body does not have the documented shape", "content": _PROBLEM},
}
_SINGLE_ERRORS = {**_ERRORS,
                  409: {"description": "the messageId (or order_id) was already used with another body",
                        "content": _PROBLEM},
                  422: {"description": "the message does not have the documented shape, or cannot be mapped",
                        "content": _PROBLEM}}


def _doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    assert "$defs" not in schema, "tracking request models must be flat to be inlined"
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


router = APIRouter(tags=["tracking"])
PrincipalDep = Annotated[Principal, Depends(tracking_principal)]
BodyDep = Annotated[Any, Depends(json_body)]


def _single(session, principal: Principal, body: Any, model: type[BaseModel], type_: str) -> TrackingResult:
    with _for_sdks():
        _validated(model, body)
        return service.process(session, principal=principal, messages=[body], type_=type_, raise_errors=True)


@router.post("/v1/batch", response_model=TrackingResult, operation_id="trackBatch", openapi_extra=_doc(BatchIn),
             responses=_ERRORS, summary="Segment batch: many messages of any type")
def post_batch(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """What the Segment and RudderStack SDKs call. Up to 1,000 messages, applied in order, each on its
    own: rejected messages are listed in `results` and never fail the others."""
    with _for_sdks():
        envelope = _validated(BatchIn, body)
    return service.process(session, principal=principal, messages=envelope.batch, context=envelope.context)


@router.post("/v1/identify", response_model=TrackingResult, operation_id="trackIdentify",
             openapi_extra=_doc(IdentifyIn), responses=_SINGLE_ERRORS, summary="Segment identify")
def post_identify(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """Resolve or create the member from userId, traits.phone and traits.email, link anonymousId
    (back-filling its earlier events) and fill the member's empty profile fields."""
    return _single(session, principal, body, IdentifyIn, "identify")


@router.post("/v1/track", response_model=TrackingResult, operation_id="trackTrack", openapi_extra=_doc(TrackIn),
             responses=_SINGLE_ERRORS, summary="Segment track")
def post_track(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """`Order Completed` becomes an order, `Order Refunded` a refund, anything else a behaviour event."""
    return _single(session, principal, body, TrackIn, "track")


@router.post("/v1/page", response_model=TrackingResult, operation_id="trackPage", openapi_extra=_doc(PageIn),
             responses=_SINGLE_ERRORS, summary="Segment page")
def post_page(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """A `page_viewed` event."""
    return _single(session, principal, body, PageIn, "page")


@router.post("/v1/screen", response_model=TrackingResult, operation_id="trackScreen", openapi_extra=_doc(ScreenIn),
             responses=_SINGLE_ERRORS, summary="Segment screen")
def post_screen(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """A `screen_viewed` event."""
    return _single(session, principal, body, ScreenIn, "screen")


@router.post("/v1/alias", response_model=TrackingResult, operation_id="trackAlias", openapi_extra=_doc(AliasIn),
             responses=_SINGLE_ERRORS, summary="Segment alias")
def post_alias(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """Link previousId to userId's member (as external_id, and as anonymous_id so its anonymous events
    follow)."""
    return _single(session, principal, body, AliasIn, "alias")


@router.post("/v1/group", response_model=TrackingResult, operation_id="trackGroup", openapi_extra=_doc(GroupIn),
             responses=_SINGLE_ERRORS, summary="Segment group (accepted, ignored)")
def post_group(principal: PrincipalDep, body: BodyDep, session: SessionDep) -> TrackingResult:
    """Accepted and ignored: Orchard has no account or group model to attach it to."""
    return _single(session, principal, body, GroupIn, "group")
