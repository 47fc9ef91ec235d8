"""Generic webhook with Standard Webhooks signing (standardwebhooks.com, "Signature scheme").

    webhook-id: Orchard's message id (stable across retries: receivers dedupe on it)
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>
    key = base64-decoded secret after the `whsec_` prefix

2xx = accepted; 408, 429 and 5xx = transient; other 4xx = permanent; timeouts and network errors = transient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from .base import (
    DEFAULT_TIMEOUT,
    CallbackRejected,
    Channel,
    OutboundMessage,
    Quota,
    Reason,
    SendResult,
    StatusUpdate,
    header,
    http_failure,
    status_failure,
)

TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(CallbackRejected):
    pass


def _key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("webhook secret must be whsec_<base64>") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), to_sign, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: int = TOLERANCE_SECONDS,
           now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Verify a Standard Webhooks request; return the JSON payload or raise WebhookVerificationError.
    Several space-separated signatures may be present (key rotation): one matching v1 signature suffices."""
    msg_id = header(headers, "webhook-id")
    ts = header(headers, "webhook-timestamp")
    sigs = header(headers, "webhook-signature")
    if not (msg_id and ts and sigs):
        raise WebhookVerificationError("missing webhook-id / webhook-timestamp / webhook-signature")
    try:
        timestamp = int(ts)
    except ValueError as exc:
        raise WebhookVerificationError("bad webhook-timestamp") from exc
    if abs(now() - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).partition(",")[2]
    for candidate in sigs.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            try:
                return json.loads(body)
            except ValueError as exc:
                raise WebhookVerificationError("body is not JSON") from exc
    raise WebhookVerificationError("no matching signature")


def payload(msg: OutboundMessage) -> dict[str, Any]:
    """The body Orchard posts: what a receiver needs to render or route the message, nothing more. A
    structured message (a journey's webhook step) is posted as its own `data`, with the message id."""
    if msg.data is not None:
        return {"type": "orchard.journey.webhook", "data": {"message_id": msg.message_id, **msg.data}}
    data: dict[str, Any] = {"message_id": msg.message_id, "purpose": str(msg.purpose), "template": msg.template,
                            "variables": msg.variables}
    for k in ("subject", "body", "url", "unsubscribe_url"):
        if getattr(msg, k):
            data[k] = getattr(msg, k)
    if msg.extra:
        data["extra"] = msg.extra
    return {"type": "orchard.message", "data": data}


class WebhookProvider:
    """Posts to the message's recipient URL (or the configured default URL when the recipient is "default")."""

    channel = Channel.webhook
    name = "webhook"

    def __init__(self, secret: str, *, default_url: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        _key(secret)  # fail fast on a malformed secret
        self._secret = secret
        self.default_url = default_url
        self._clock = clock
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def __repr__(self) -> str:
        return f"WebhookProvider(default_url={self.default_url!r})"

    def send(self, msg: OutboundMessage) -> SendResult:
        url = self.default_url if msg.recipient == "default" else msg.recipient
        if not url or not url.startswith(("https://", "http://")):
            return SendResult.fail(Reason.invalid_recipient, permanent=True, text="recipient must be an http(s) URL")
        body = json.dumps(payload(msg), ensure_ascii=False, separators=(",", ":")).encode()
        ts = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg.message_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self._secret, msg.message_id, ts, body),
        }
        try:
            resp = self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return http_failure(exc)
        if 200 <= resp.status_code < 300:
            return SendResult.ok(msg.message_id)
        return status_failure(resp, text=resp.text[:200])

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """A receiver may report back with a signed `orchard.message.status` event:
        {"type": "orchard.message.status", "data": {"message_id", "status", "at"?}} (same secret, same scheme)."""
        data = verify(self._secret, headers, body, now=self._clock)
        if data.get("type") != "orchard.message.status":
            return []
        d = data.get("data") or {}
        status = d.get("status")
        if status not in ("delivered", "failed", "read", "clicked"):
            raise WebhookVerificationError(f"unknown status {status!r}")
        try:
            at = datetime.fromisoformat(d["at"]) if d.get("at") else datetime.now(UTC)
        except (TypeError, ValueError) as exc:
            raise WebhookVerificationError("bad 'at' timestamp") from exc
        return [StatusUpdate(provider_message_id=d.get("message_id"), message_id=d.get("message_id"),
                             status=status, at=at, raw=data)]

    def quota(self) -> Quota | None:
        return None

    def close(self) -> None:
        self._http.close()
