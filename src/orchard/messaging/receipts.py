"""Delivery receipts, read receipts and clicks, applied to the outbox's messages.

A provider reports on messages it accepted (`channels.base.StatusUpdate`): delivered, failed (undelivered),
read, clicked. Each report names the message by Orchard's id where the provider echoes it (`orchard-{id}`:
Aliyun `out_id`, webhook receivers) or by the provider's own id (`provider_message_id`: Tencent `sid`, WeChat
`MsgID`, Aliyun `biz_id`). Providers resend reports and do not keep their order, so every change is a
conditional UPDATE that only moves a message forward:

* `delivered` → status `delivered` and `delivered_at`, from `sending` / `sent` (a receipt may beat the worker's
  own record of the send; `outbox._record` then keeps it); a later receipt only ever moves `delivered_at`
  earlier, never changes anything else.
* `failed` → status `failed`, reason `provider.undelivered`, the provider's code in `detail`, from `sending` /
  `sent` only: a message already delivered, read or clicked stays delivered.
* `read` → `opened_at`; `clicked` → `clicked_at` (the first time is kept). Both prove delivery, so a message
  still `sending` / `sent` becomes `delivered` at that time.

Applying the same report twice changes nothing. Reports for messages Orchard does not know (another system's
traffic on the same vendor account, or messages since deleted) are ignored and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from orchard.channels.base import StatusUpdate
from orchard.db import UTCDateTime
from orchard.kit.clock import as_utc
from orchard.messaging.models import Message

log = logging.getLogger("orchard.messaging.receipts")

_ORCHARD_ID = re.compile(r"^orchard-(\d{1,18})$")
#: The order changes are applied in within one batch: proof of delivery (a click, a read) before the receipts, so
#: a "failed" report for a message the member has opened is recognised as wrong.
_ORDER = {"clicked": 0, "read": 1, "delivered": 2, "failed": 3}
#: Where a message can be when its provider reports on it (a receipt may beat the worker's own record).
_IN_FLIGHT = ("sending", "sent")


@dataclass
class Applied:
    """What one callback did: `received` reports, `matched` to a message, `changed` messages (0 for a repeat),
    `unknown` reports that matched no message (their ids, at most 20, in `unknown_ids`)."""

    received: int = 0
    matched: int = 0
    changed: int = 0
    unknown: int = 0
    unknown_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "matched": self.matched, "changed": self.changed,
                "unknown": self.unknown}


@dataclass(frozen=True)
class Change:
    """One status change for one message (by Orchard's id)."""

    message_id: int
    status: str  # delivered | failed | read | clicked
    at: dt.datetime
    code: str | None = None


def orchard_id(value: str | None) -> int | None:
    """Orchard's message id from the idempotency id it gave the provider (`sending.to_outbound`)."""
    m = _ORCHARD_ID.match(value or "")
    return int(m.group(1)) if m else None


def resolve(session: Session, updates: Sequence[StatusUpdate], *, provider: str, channels: Iterable[str]
            ) -> tuple[list[Change], list[str]]:
    """Match reports to messages (two queries, whatever the batch size): by Orchard's id when echoed (and the
    message went out on one of `channels`), else by the provider's id among the messages `provider` sent.
    Returns the changes and the ids of the reports that matched nothing."""
    channels = tuple(channels)
    by_id = {orchard_id(u.message_id) for u in updates} - {None}
    by_pmid = {u.provider_message_id for u in updates if u.provider_message_id} - {None}
    known_ids: set[int] = set()
    if by_id:
        known_ids = set(session.scalars(select(Message.id).where(Message.id.in_(by_id),
                                                                  Message.channel.in_(channels))))
    pmids: dict[str, int] = {}
    if by_pmid:
        pmids = dict(session.execute(select(Message.provider_message_id, Message.id).where(
            Message.provider == provider, Message.provider_message_id.in_(by_pmid))).tuples().all())
    changes, unknown = [], []
    for u in updates:
        mid = orchard_id(u.message_id)
        if mid not in known_ids:
            mid = pmids.get(u.provider_message_id or "")
        if mid is None:
            unknown.append(u.message_id or u.provider_message_id or "?")
            continue
        changes.append(Change(mid, u.status, as_utc(u.at), u.error_code))
    return changes, unknown


def _snapshot(session: Session, ids: set[int]) -> dict[int, tuple]:
    M = Message
    rows = session.execute(select(M.id, M.status, M.reason, M.detail, M.delivered_at, M.opened_at, M.clicked_at)
                           .where(M.id.in_(ids)))
    return {r[0]: tuple(r[1:]) for r in rows}


def mark(session: Session, changes: Sequence[Change]) -> int:
    """Apply status changes (a few statements, each executed once for the whole batch); returns how many
    messages changed. Every statement is guarded so that it only moves a message forward (module docstring)."""
    if not changes:
        return 0
    T = Message.__table__
    mid, code = bindparam("b_mid"), bindparam("b_code")
    at = bindparam("b_at", type_=UTCDateTime())
    in_flight = or_(*(T.c.status == s for s in _IN_FLIGHT))  # not IN (…): expanding lists cannot executemany
    earlier = and_(T.c.status == "delivered", T.c.delivered_at > at)
    undelivered = and_(T.c.status == "failed", T.c.reason == "provider.undelivered")
    to_delivered = update(T).values(status="delivered", delivered_at=at, reason=None, detail=None)
    stamp_opened = update(T).where(T.c.id == mid, or_(T.c.opened_at.is_(None), T.c.opened_at > at)) \
        .values(opened_at=at)
    stamp_clicked = update(T).where(T.c.id == mid, or_(T.c.clicked_at.is_(None), T.c.clicked_at > at)) \
        .values(clicked_at=at)
    proved = to_delivered.where(T.c.id == mid, or_(in_flight, earlier, undelivered))
    statements = {
        # a delivery report: from in flight, or an earlier time for one already delivered
        "delivered": [to_delivered.where(T.c.id == mid, or_(in_flight, earlier))],
        # a read or a click: stamped once (the earliest), and proof of delivery, even over an undelivered report
        "read": [stamp_opened, proved],
        "clicked": [stamp_clicked, proved],
        # an undelivered report: only for a message nobody has reported on yet
        "failed": [update(T).where(T.c.id == mid, in_flight)
                   .values(status="failed", reason="provider.undelivered", detail=code)],
    }
    ids = {c.message_id for c in changes}
    before = _snapshot(session, ids)
    for kind in sorted({c.status for c in changes}, key=_ORDER.__getitem__):
        batch = [c for c in changes if c.status == kind]
        if kind == "failed":
            params = [{"b_mid": c.message_id, "b_code": (c.code or "")[:500] or None} for c in batch]
        else:
            params = [{"b_mid": c.message_id, "b_at": c.at} for c in batch]
        for stmt in statements[kind]:
            session.execute(stmt, params)
    after = _snapshot(session, ids)
    return sum(1 for i in ids if before.get(i) != after.get(i))


def apply(session: Session, updates: Sequence[StatusUpdate], *, provider: str, channels: Iterable[str]) -> Applied:
    """Match a provider's reports to messages and apply them (idempotent, order-tolerant)."""
    changes, unknown = resolve(session, updates, provider=provider, channels=channels)
    out = Applied(received=len(updates), matched=len(changes), unknown=len(unknown), unknown_ids=unknown[:20])
    out.changed = mark(session, changes)
    if unknown:
        log.info("%s: %d report(s) for unknown messages, e.g. %s", provider, len(unknown), unknown[:5])
    return out
