"""Member aggregates, maintained in the transaction of the event that changes them.

Adding an order or a behaviour event is an atomic relative UPDATE (no read-modify-write, so
concurrent events never lose an increment). Refunds and merges, which can remove an order from the
counts, recompute the member's order aggregates with one UPDATE over that member's orders.
Definitions: an order counts once paid and stops counting when fully refunded; total spend is the
sum over counted and partially refunded orders of (amount − refunded).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import case, func, literal, select, update
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.events.models import Event, Order
from orchard.members.models import MemberAggregate

#: Behaviour events that also move a dedicated "last …" column.
_LAST_COLUMN = {"store_visit": "last_visit_at", "login": "last_login_at"}


def _later(col, value):
    value = literal(value, UTCDateTime())
    return case((col.is_(None), value), (col < value, value), else_=col)


def _earlier(col, value):
    value = literal(value, UTCDateTime())
    return case((col.is_(None), value), (col > value, value), else_=col)


def on_order(session: Session, *, member_id: int, amount_fen: int, paid_at: dt.datetime) -> None:
    A = MemberAggregate
    session.execute(
        update(A).where(A.member_id == member_id).values(
            order_count=A.order_count + 1,
            total_spend_fen=A.total_spend_fen + amount_fen,
            first_order_at=_earlier(A.first_order_at, paid_at),
            last_order_at=_later(A.last_order_at, paid_at),
            last_event_at=_later(A.last_event_at, paid_at),
        )
    )


def on_event(session: Session, *, member_id: int, name: str, occurred_at: dt.datetime) -> None:
    A = MemberAggregate
    values = {"last_event_at": _later(A.last_event_at, occurred_at)}
    if name in _LAST_COLUMN:
        col = _LAST_COLUMN[name]
        values[col] = _later(getattr(A, col), occurred_at)
    session.execute(update(A).where(A.member_id == member_id).values(**values))


def recompute(session: Session, *, member_id: int) -> None:
    """Rebuild every aggregate of one member from its orders and events (one UPDATE)."""
    A = MemberAggregate
    counted = (Order.member_id == member_id) & (Order.status != "refunded")
    mine = Order.member_id == member_id

    def ev_max(name: str | None):
        q = select(func.max(Event.occurred_at)).where(Event.member_id == member_id)
        return (q.where(Event.name == name) if name else q).scalar_subquery()

    last_order = select(func.max(Order.paid_at)).where(counted).scalar_subquery()
    last_any_event = ev_max(None)
    session.execute(
        update(A).where(A.member_id == member_id).values(
            order_count=select(func.count()).where(counted).scalar_subquery(),
            total_spend_fen=select(func.coalesce(func.sum(Order.amount_fen - Order.refunded_fen), 0))
            .where(mine).scalar_subquery(),
            refund_fen=select(func.coalesce(func.sum(Order.refunded_fen), 0)).where(mine).scalar_subquery(),
            first_order_at=select(func.min(Order.paid_at)).where(counted).scalar_subquery(),
            last_order_at=last_order,
            last_visit_at=ev_max("store_visit"),
            last_login_at=ev_max("login"),
            last_event_at=case(
                (last_order.is_(None), last_any_event),
                (last_any_event.is_(None), last_order),
                (last_order > last_any_event, last_order),
                else_=last_any_event,
            ),
        )
    )
