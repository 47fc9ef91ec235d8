"""The provider interface every channel adapter implements.

An adapter turns one `OutboundMessage` into one call to the provider and answers with a `SendResult`; it never
raises for a provider's error (a refusal, an HTTP error, a timeout): the outbox decides from `SendResult.permanent`
whether to retry. Adapters hold no database state: consent, caps, grants and the outbox live elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

import httpx


class Channel(StrEnum):
    sms = "sms"
    wechat_oa = "wechat_oa"  # official-account template message (service notices only)
    wechat_mp = "wechat_mp"  # mini-program subscribe message (one send per user grant)
    wecom = "wecom"  # one-to-one task for the member's shopping guide
    app_push = "app_push"
    email = "email"
    webhook = "webhook"
    log = "log"


class Purpose(StrEnum):
    marketing = "marketing"
    service = "service"


@dataclass(frozen=True)
class OutboundMessage:
    """One message to one recipient, as the outbox hands it to a provider.

    `message_id` is Orchard's idempotency key: the same on every retry of the same message, so every adapter
    passes it to the provider where the provider has a field for it (Aliyun OutId, Tencent SessionContext, WeChat
    client_msg_id, webhook-id, the e-mail Message-ID, JPush sendno).
    """

    message_id: str
    channel: Channel
    #: E.164 phone, openid, JPush registration id, e-mail address, URL, WeCom external_userid …
    recipient: str
    purpose: Purpose = Purpose.service
    #: Provider template code / id (Aliyun TemplateCode, Tencent TemplateId, WeChat template_id).
    template: str = ""
    #: Template variables. Tencent SMS templates are positional ({1}, {2}…): use the keys "1", "2", ….
    variables: dict[str, str] = field(default_factory=dict)
    subject: str | None = None
    body: str | None = None
    html: str | None = None
    sign_name: str | None = None
    unsubscribe_url: str | None = None
    #: Where a tap leads: OA template message url, mini-program page, push extras "url".
    url: str | None = None
    #: Channel specifics that are not worth a field each, e.g. {"guide_userid": …} for WeCom tasks,
    #: {"miniprogram_appid": …, "miniprogram_pagepath": …} for OA template messages.
    extra: dict[str, str] = field(default_factory=dict)
    #: Structured content for a JSON channel (a journey's webhook step): the webhook adapter posts it as the
    #: event's `data` (type "orchard.journey.webhook") instead of a rendered message.
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.message_id or len(self.message_id) > 128:
            raise ValueError("message_id must be 1..128 characters")
        if not re.fullmatch(r"[A-Za-z0-9._:\-]+", self.message_id):
            raise ValueError("message_id may only contain letters, digits and . _ : -")
        if not self.recipient:
            raise ValueError("recipient is required")
        object.__setattr__(self, "channel", Channel(self.channel))
        object.__setattr__(self, "purpose", Purpose(self.purpose))


class Reason(StrEnum):
    """Orchard's provider-independent failure categories (the provider's own code is kept in `error_code`)."""

    invalid_recipient = "invalid_recipient"  # malformed / non-existent number, openid, address, registration id
    invalid_request = "invalid_request"  # missing or malformed parameters, payload too large
    template_rejected = "template_rejected"  # template unknown, not approved, or its variables do not fit
    sign_rejected = "sign_rejected"  # SMS signature not approved
    content_rejected = "content_rejected"  # sensitive words, blacklisted content
    no_grant = "no_grant"  # mini-program subscribe message: the user gave no (more) grant
    recipient_blocked = "recipient_blocked"  # the recipient blocked / unfollowed / is on the provider's blacklist
    auth = "auth"  # credentials or signature refused: a configuration error
    throttled = "throttled"  # rate limit or per-number flow control
    insufficient_balance = "insufficient_balance"
    provider_unavailable = "provider_unavailable"  # 5xx, system busy
    timeout = "timeout"
    network = "network"
    unknown = "unknown"


@dataclass(frozen=True)
class SendResult:
    status: Literal["accepted", "failed"]
    #: For a failure: True = do not retry (invalid number, template not approved, no grant…);
    #: False = transient (throttled, 5xx, timeout): retry with backoff.
    permanent: bool = False
    provider_message_id: str | None = None
    #: Orchard's category of the failure (a `Reason` value).
    reason: str | None = None
    #: The provider's own error code, verbatim (e.g. "isv.MOBILE_NUMBER_ILLEGAL", "43101", "1011", "550").
    error_code: str | None = None
    error_text: str | None = None
    #: Seconds the provider asked us to wait (Retry-After), when it said so.
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def retryable(self) -> bool:
        return self.status == "failed" and not self.permanent

    @classmethod
    def ok(cls, provider_message_id: str | None) -> SendResult:
        return cls("accepted", provider_message_id=provider_message_id)

    @classmethod
    def fail(cls, reason: Reason | str, *, permanent: bool, code: str | None = None, text: str | None = None,
             retry_after: float | None = None) -> SendResult:
        return cls("failed", permanent=permanent, reason=str(reason), error_code=code,
                   error_text=(text or "")[:500] or None, retry_after=retry_after)


@dataclass(frozen=True)
class StatusUpdate:
    """A delivery receipt (or read / click) reported by the provider."""

    provider_message_id: str | None
    status: Literal["delivered", "failed", "read", "clicked"]
    at: datetime
    raw: dict[str, Any]
    #: Orchard's message id when the provider echoes it back (Aliyun out_id, WeChat client_msg_id…).
    message_id: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class InboundReply:
    """A text a member sent back (SMS MO / 上行). `opt_out` is set by `channels.sms.is_opt_out_reply`."""

    sender: str
    text: str
    at: datetime
    opt_out: bool
    raw: dict[str, Any]


@dataclass(frozen=True)
class Quota:
    """What the provider says is left; `None` fields are not reported by that provider."""

    limit: int | None = None
    used: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None
    detail: str | None = None


class CallbackRejected(Exception):
    """A callback whose signature (or shape) does not verify: answer it with 401/400 and apply nothing."""


@runtime_checkable
class Provider(Protocol):
    channel: Channel
    name: str

    def send(self, msg: OutboundMessage) -> SendResult: ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]: ...

    def quota(self) -> Quota | None: ...


# ---- shared helpers for HTTP adapters ------------------------------------------------------------------------------

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def utcnow() -> datetime:
    return datetime.now(UTC)


def http_failure(exc: httpx.HTTPError) -> SendResult:
    """A transport-level failure: no answer from the provider. Always transient (the message id makes the retry
    safe where the provider dedupes on it)."""
    if isinstance(exc, httpx.TimeoutException):
        return SendResult.fail(Reason.timeout, permanent=False, text=type(exc).__name__)
    return SendResult.fail(Reason.network, permanent=False, text=type(exc).__name__)


def status_failure(resp: httpx.Response, code: str | None = None, text: str | None = None) -> SendResult:
    """Map a non-2xx HTTP status without a more specific provider code: 408/429/5xx transient, other 4xx permanent."""
    s = resp.status_code
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    if s == 429:
        return SendResult.fail(Reason.throttled, permanent=False, code=code or "429", text=text,
                               retry_after=retry_after)
    if s == 408 or s >= 500:
        return SendResult.fail(Reason.provider_unavailable, permanent=False, code=code or str(s),
                               text=text or resp.text[:200], retry_after=retry_after)
    reason = Reason.auth if s in (401, 403) else Reason.invalid_request
    return SendResult.fail(reason, permanent=True, code=code or str(s), text=text or resp.text[:200])


def mapped_failure(table: Mapping[str, tuple[Reason, bool]], code: str, text: str | None, *,
                   default: tuple[Reason, bool] = (Reason.unknown, True)) -> SendResult:
    """Look a provider error code up in the adapter's table of (reason, permanent)."""
    reason, permanent = table.get(code, default)
    return SendResult.fail(reason, permanent=permanent, code=code, text=text)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def mask_recipient(recipient: str) -> str:
    """For logs: keep enough to tell messages apart, never the whole phone / address / openid."""
    if "@" in recipient:
        local, _, domain = recipient.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(recipient) <= 4:
        return "***"
    return f"{recipient[:3]}****{recipient[-4:]}" if len(recipient) >= 11 else f"***{recipient[-4:]}"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup on any mapping."""
    low = name.lower()
    for k, v in headers.items():
        if k.lower() == low:
            return v
    return None
