"""WeCom (企业微信) one-to-one message through the member's shopping guide.

Deliberately minimal: WeCom lets a company send to a customer only through a staff member who confirms the send
(客户联系 群发 / 聊天工具栏), so Orchard does not call a WeCom API here. The adapter turns the message into a
`GuideTask` — the text, the customer (external_userid) and the guide (userid) — and hands it to a sink supplied by
the database side, which stores the task and tracks done / not done as the guide confirms it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .base import Channel, OutboundMessage, Quota, Reason, SendResult, StatusUpdate
from .sms import render_template


@dataclass(frozen=True)
class GuideTask:
    task_id: str  # = Orchard's message id: storing it twice is a no-op for a unique key
    guide_userid: str
    external_userid: str
    text: str
    url: str | None = None


def build_task(msg: OutboundMessage) -> GuideTask:
    guide = msg.extra.get("guide_userid")
    if not guide:
        raise ValueError("extra['guide_userid'] (the member's shopping guide) is required")
    text = msg.body if msg.body is not None else ""
    try:
        text = render_template(text, msg.variables)
    except KeyError as exc:
        raise ValueError(f"missing template variable {exc}") from exc
    if not text.strip():
        raise ValueError("a guide task needs a text")
    return GuideTask(task_id=msg.message_id, guide_userid=guide, external_userid=msg.recipient, text=text,
                     url=msg.url)


class WeComGuideTaskProvider:
    channel = Channel.wecom
    name = "wecom_guide_task"

    def __init__(self, sink: Callable[[GuideTask], None]) -> None:
        self._sink = sink

    def send(self, msg: OutboundMessage) -> SendResult:
        try:
            task = build_task(msg)
        except ValueError as exc:
            return SendResult.fail(Reason.invalid_request, permanent=True, text=str(exc))
        self._sink(task)
        return SendResult.ok(f"wecom-task:{task.task_id}")

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """Completion is recorded by the guide in Orchard, not reported by WeCom: nothing to parse."""
        return []

    def quota(self) -> Quota | None:
        return None
