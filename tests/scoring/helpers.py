"""Plain factories for scoring tests: members, orders and aggregates written straight to the tables
(the scoring passes read tables, not the ingestion path), in the caller's session."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

from orchard.events import aggregates
from orchard.events.models import Order, OrderLine
from orchard.members.models import Member, MemberAggregate

SH = ZoneInfo("Asia/Shanghai")
_seq = itertools.count(1)


def local(y: int, m: int, d: int, hh: int = 12, mm: int = 0, ss: int = 0) -> dt.datetime:
    """An instant given as Asia/Shanghai wall-clock time."""
    return dt.datetime(y, m, d, hh, mm, ss, tzinfo=SH)


def member(session, *, joined_at: dt.datetime | None = None, store_id: int | None = None,
           status: str = "active", name: str | None = None) -> int:
    m = Member(joined_at=joined_at or local(2025, 1, 1), home_store_id=store_id, status=status, name=name)
    session.add(m)
    session.flush()
    session.add(MemberAggregate(member_id=m.id))
    session.flush()
    return m.id


def order(session, member_id: int, paid_at: dt.datetime, amount_fen: int = 10_000, *, refunded_fen: int = 0,
          status: str = "paid", channel: str | None = None, lines: list[tuple[str, str, int, int]] | None = None,
          source: str = "pos") -> int:
    """`lines`: (sku, category, quantity × unit price in fen as unit_price_fen, amount_fen)."""
    n = next(_seq)
    o = Order(source=source, external_id=f"o{n}", body_hash="x", member_id=member_id, channel=channel,
              status=status, amount_fen=amount_fen, refunded_fen=refunded_fen, paid_at=paid_at)
    session.add(o)
    session.flush()
    for i, (sku, category, unit_price, line_amount) in enumerate(lines or []):
        session.add(OrderLine(order_id=o.id, line_no=i + 1, sku=sku, category=category, quantity=1,
                              unit_price_fen=unit_price, amount_fen=line_amount))
    if status != "refunded":
        aggregates.on_order(session, member_id=member_id, amount_fen=amount_fen - refunded_fen, paid_at=paid_at)
    session.flush()
    return o.id
