"""The log-only provider for the demo and for development: renders the message, writes it to a logger and accepts
it. The recipient is masked; nothing is sent anywhere."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping

from .base import Channel, OutboundMessage, Quota, SendResult, StatusUpdate, mask_recipient
from .sms import render_template

logger = logging.getLogger("orchard.channels.log")


def render(msg: OutboundMessage) -> str:
    text = msg.body or ""
    try:
        text = render_template(text, msg.variables)
    except KeyError:
        pass  # shown with its placeholder: the demo log is for reading, not for delivery
    if not text:
        text = " ".join(f"{k}={v}" for k, v in msg.variables.items())
    sign = f"【{msg.sign_name}】" if msg.sign_name else ""
    subject = f"[{msg.subject}] " if msg.subject else ""
    return f"{sign}{subject}{text}"


class LogProvider:
    name = "log"

    def __init__(self, channel: Channel | str = Channel.log, *, log: logging.Logger | None = None) -> None:
        self.channel = Channel(channel)
        self._log = log or logger
        #: The last messages sent, for the demo screens and tests.
        self.sent: deque[OutboundMessage] = deque(maxlen=1000)

    def send(self, msg: OutboundMessage) -> SendResult:
        self._log.info("%s %s → %s [%s %s]: %s", msg.channel, msg.message_id, mask_recipient(msg.recipient),
                       msg.purpose, msg.template or "-", render(msg))
        self.sent.append(msg)
        return SendResult.ok(f"log:{msg.message_id}")

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        return []

    def quota(self) -> Quota | None:
        return None
