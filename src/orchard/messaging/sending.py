"""The bridge from the outbox to the provider adapters (orchard.channels): which adapter serves which
outbox channel, and the `OutboundMessage` a stored message becomes.

The provider's idempotency id is `orchard-{message id}`: the same on every attempt of one message (a
worker that died after the provider accepted resends with the same id, so the provider can drop it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard.channels.base import Channel, OutboundMessage
from orchard.channels.providers import build_providers
from orchard.config import get_settings
from orchard.messaging.models import Message

#: Outbox channel → adapter channel.
CHANNELS = {"sms": Channel.sms, "wechat_template": Channel.wechat_oa, "wechat_subscribe": Channel.wechat_mp,
            "app_push": Channel.app_push, "email": Channel.email, "webhook": Channel.webhook,
            "wecom": Channel.wecom, "log": Channel.log}


def providers() -> Mapping[str, Any]:
    """The configured adapters keyed by outbox channel (unconfigured channels are absent, so their
    messages fail permanently with "no provider configured", unless the log fallback is on)."""
    built = build_providers(get_settings())
    return {name: built[channel] for name, channel in CHANNELS.items() if channel in built}


def to_outbound(message: Message) -> OutboundMessage:
    payload = message.payload or {}
    return OutboundMessage(
        message_id=f"orchard-{message.id}", channel=CHANNELS[message.channel], recipient=message.recipient or "",
        purpose=message.purpose, template=payload.get("provider_template") or "",
        variables={k: str(v) for k, v in (payload.get("variables") or {}).items()},
        subject=payload.get("subject"), body=payload.get("body"), sign_name=payload.get("sign_name"),
        unsubscribe_url=payload.get("unsubscribe_url"), data=payload.get("data"))


def rate_limits(spec: str) -> dict[str, float]:
    """ORCHARD_CHANNELS_RATE_LIMITS ("sms=50,email=10") as outbox channel → sends per second."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            rate = float(value)
        except ValueError:
            rate = 0.0
        if not sep or name not in CHANNELS or rate <= 0:
            raise ValueError(f"ORCHARD_CHANNELS_RATE_LIMITS: {part!r} is not <channel>=<sends per second> "
                             f"(channels: {', '.join(CHANNELS)})")
        out[name] = rate
    return out


_limiter: tuple[str, Any] | None = None


def rate_limiter() -> Any:
    """This process's token buckets (they must outlive one dispatch round to limit a rate)."""
    from orchard.messaging.outbox import RateLimiter

    global _limiter
    spec = get_settings().channels_rate_limits
    if _limiter is None or _limiter[0] != spec:
        _limiter = (spec, RateLimiter(rate_limits(spec)))
    return _limiter[1]

