"""Status callbacks from the providers: `POST /api/v1/channels/{provider}/callbacks`.

The provider calls these, not staff, so there is no Orchard credential: the adapter's own check is the
authentication (Standard Webhooks signature, WeChat's token signature, JPush's Basic credentials). A callback that
fails it is a 401 and changes nothing. Aliyun and Tencent do not sign their SMS reports: their URLs rely on the
deployment (an unguessable host path behind a source-address allow-list; see docs/channels.md).

Each vendor gets the answer it expects, or it retries: Aliyun `{"code": 0, "msg": "成功"}`, Tencent
`{"result": 0, "errmsg": "OK"}`, WeChat `success`; webhook receivers and JPush get the counts as JSON. The counts
(received, matched, changed, unknown) are also in the `Orchard-Callback-Result` header for every provider.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from orchard.channels.base import CallbackRejected
from orchard.channels.providers import CALLBACK_PROVIDERS, callback_provider
from orchard.deps import SessionDep
from orchard.errors import NotFound, Unauthorized
from orchard.messaging import receipts
from orchard.messaging.sending import CHANNELS

router = APIRouter(tags=["channel callbacks"])
ProviderName = Annotated[str, Path(min_length=1, max_length=32, description="aliyun, tencent, wechat_oa, "
                                   "wechat_mp, jpush or webhook (configured providers only)")]

#: The body each vendor needs to stop retrying; None: JSON counts.
_ACK: dict[str, Any] = {
    "aliyun": {"code": 0, "msg": "成功"},
    "tencent": {"result": 0, "errmsg": "OK"},
    "wechat_oa": "success",
    "wechat_mp": "success",
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Applied (or nothing to apply). Body: the vendor's expected answer (Aliyun, Tencent, "
                         "WeChat) or the counts {received, matched, changed, unknown} (webhook, JPush)."},
    401: {"description": "The callback's signature or credentials do not verify, or its body is not the vendor's "
                         "shape: nothing applied"},
    404: {"description": "No such provider, or it is not configured"},
}


async def _raw_body(request: Request) -> bytes:
    """The body as the vendor signed it (a parsed model would lose the bytes the signature covers)."""
    return await request.body()


def _adapter(provider: str):
    adapter = callback_provider(provider)
    if adapter is None:
        raise NotFound(f"no configured provider {provider!r} receives callbacks "
                       f"(one of: {', '.join(CALLBACK_PROVIDERS)})", code="callback.unknown_provider")
    return adapter


@router.post("/channels/{provider}/callbacks", operation_id="receiveChannelCallback", responses=_RESPONSES)
def receive(provider: ProviderName, request: Request, session: SessionDep,
            body: Annotated[bytes, Depends(_raw_body)]) -> Response:
    """Delivery reports, read receipts and clicks from a provider, applied to the messages they name
    (idempotent; a late or repeated report never moves a message backwards; unknown ids are counted)."""
    adapter = _adapter(provider)
    try:
        updates = adapter.parse_callback(dict(request.headers), body, dict(request.query_params))
    except CallbackRejected as exc:
        raise Unauthorized(f"callback rejected: {exc}", code="callback.rejected") from None
    channels = [name for name, channel in CHANNELS.items() if channel == adapter.channel]
    applied = receipts.apply(session, updates, provider=adapter.name, channels=channels)
    counts = applied.as_dict()
    headers = {"Orchard-Callback-Result": json.dumps(counts, separators=(",", ":"))}
    ack = _ACK.get(provider)
    if isinstance(ack, str):
        return PlainTextResponse(ack, headers=headers)
    return JSONResponse(ack if ack is not None else counts, headers=headers)


@router.get("/channels/{provider}/callbacks", operation_id="verifyChannelCallback", responses={
    200: {"description": "The `echostr` the vendor sent, echoed as text/plain"},
    401: _RESPONSES[401], 404: {"description": "No such provider, not configured, or it has no URL check"}})
def url_check(provider: ProviderName, request: Request) -> PlainTextResponse:
    """The GET WeChat and JPush send when a callback URL is saved in their consoles: verified like a callback,
    answered with the `echostr` it carries."""
    adapter = _adapter(provider)
    check = getattr(adapter, "url_check", None)
    if check is None:
        raise NotFound(f"provider {provider!r} has no URL check", code="callback.no_url_check")
    try:
        echo = check(dict(request.headers), dict(request.query_params))
    except CallbackRejected as exc:
        raise Unauthorized(f"callback rejected: {exc}", code="callback.rejected") from None
    return PlainTextResponse(echo)
