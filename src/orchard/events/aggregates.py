"""Member aggregates, maintained in the transaction of the event that changes them.

Adding an order or a behaviour event is an atomic relative UPDATE (no read-modify-write, so
concurrent events never lose an increment). Refunds and merges, which can remove an order from the
counts, recompute the member's order aggregates with one UPDATE over that member's orders.
Definitions: an order counts once paid and stops counting when fully refunded; total spend is the
sum over counted and partially refunded orders of (amount − refunded).

A batch (`deferred`) collects the relative changes of its items instead and applies them once per
member at its end, still in its transaction, in member-id order: one UPDATE per member rather than
per item, and row locks taken late and in one order, so concurrent batches sharing members do not
deadlock. Only the changes of items that succeeded are kept (`item`). A member recomputed during
the batch is simply recomputed again at its end (a recompute is always right).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import bindparam, case, func, literal, select, update
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.events.models import Event, Order
from orchard.members.models import MemberAggregate

#: Behaviour events that also move a dedicated "last …" column (also read by imports.pg_events).
LAST_COLUMN = {"store_visit": "last_visit_at", "login": "last_login_at"}


def _later(col, value):
    value = literal(value, UTCDateTime())
    return case((col.is_(None), value), (col < value, value), else_=col)


def _earlier(col, value):
    value = literal(value, UTCDateTime())
    return case((col.is_(None), value), (col > value, value), else_=col)


@dataclass
class _Delta:
    """Relative changes to one member's aggregates; None = no change to that column."""

    order_count: int = 0
    total_spend_fen: int = 0
    first_order_at: dt.datetime | None = None
    last_order_at: dt.datetime | None = None
    last_visit_at: dt.datetime | None = None
    last_login_at: dt.datetime | None = None
    last_event_at: dt.datetime | None = None

    def merge(self, other: _Delta) -> None:
        self.order_count += other.order_count
        self.total_spend_fen += other.total_spend_fen
        self.first_order_at = _min(self.first_order_at, other.first_order_at)
        for col in ("last_order_at", "last_visit_at", "last_login_at", "last_event_at"):
            setattr(self, col, _max(getattr(self, col), getattr(other, col)))


def _min(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class _Deferred:
    pending: dict[int, _Delta] = field(default_factory=dict)
    #: Members recomputed during the batch (also by items later rolled back: recomputing is harmless).
    recomputed: set[int] = field(default_factory=set)
    #: The changes of the item in progress; None outside an item.
    staged: dict[int, _Delta] | None = None


_KEY = "orchard.aggregates.deferred"


@contextmanager
def deferred(session: Session) -> Iterator[None]:
    """Collect aggregate changes made inside `item` blocks and apply them when the block ends without
    an error (on an error the transaction is rolled back anyway)."""
    if _KEY in session.info:  # already collecting: the outer block applies
        yield
        return
    state = session.info[_KEY] = _Deferred()
    try:
        yield
        _apply_deferred(session, state)
    finally:
        session.info.pop(_KEY, None)


def is_deferred(session: Session) -> bool:
    """True inside a `deferred` block (a batch that applies its changes at its end)."""
    return _KEY in session.info


@contextmanager
def item(session: Session) -> Iterator[None]:
    """One item of a batch: its aggregate changes are kept only if the block completes."""
    state: _Deferred | None = session.info.get(_KEY)
    if state is None:
        yield
        return
    outer, staged = state.staged, {}
    state.staged = staged
    try:
        yield
    finally:
        state.staged = outer
    target = outer if outer is not None else state.pending
    for member_id, delta in staged.items():
        if member_id in target:
            target[member_id].merge(delta)
        else:
            target[member_id] = delta


def _stage(session: Session, member_id: int, delta: _Delta) -> bool:
    state: _Deferred | None = session.info.get(_KEY)
    if state is None or state.staged is None:
        return False
    if member_id in state.staged:
        state.staged[member_id].merge(delta)
    else:
        state.staged[member_id] = delta
    return True


def _newer(col, name: str):
    value = bindparam(name, type_=UTCDateTime())
    return case((value.is_(None), col), (col.is_(None), value), (col < value, value), else_=col)


def _older(col, name: str):
    value = bindparam(name, type_=UTCDateTime())
    return case((value.is_(None), col), (col.is_(None), value), (col > value, value), else_=col)


def _apply_deferred(session: Session, state: _Deferred) -> None:
    t = MemberAggregate.__table__
    stmt = update(t).where(t.c.member_id == bindparam("b_member_id")).values(
        order_count=t.c.order_count + bindparam("b_order_count"),
        total_spend_fen=t.c.total_spend_fen + bindparam("b_total_spend_fen"),
        first_order_at=_older(t.c.first_order_at, "b_first_order_at"),
        last_order_at=_newer(t.c.last_order_at, "b_last_order_at"),
        last_visit_at=_newer(t.c.last_visit_at, "b_last_visit_at"),
        last_login_at=_newer(t.c.last_login_at, "b_last_login_at"),
        last_event_at=_newer(t.c.last_event_at, "b_last_event_at"),
    )
    rows: list[dict] = []
    for member_id in sorted(state.pending.keys() | state.recomputed):
        if member_id in state.recomputed:
            if rows:
                session.execute(stmt, rows)
                rows = []
            recompute(session, member_id=member_id)
            continue
        d = state.pending[member_id]
        rows.append({"b_member_id": member_id, "b_order_count": d.order_count, "b_total_spend_fen": d.total_spend_fen,
                     "b_first_order_at": d.first_order_at, "b_last_order_at": d.last_order_at,
                     "b_last_visit_at": d.last_visit_at, "b_last_login_at": d.last_login_at,
                     "b_last_event_at": d.last_event_at})
    if rows:
        session.execute(stmt, rows)


def on_order(session: Session, *, member_id: int, amount_fen: int, paid_at: dt.datetime) -> None:
    if _stage(session, member_id, _Delta(order_count=1, total_spend_fen=amount_fen, first_order_at=paid_at,
                                         last_order_at=paid_at, last_event_at=paid_at)):
        return
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
    delta = _Delta(last_event_at=occurred_at)
    if name in LAST_COLUMN:
        setattr(delta, LAST_COLUMN[name], occurred_at)
    if _stage(session, member_id, delta):
        return
    A = MemberAggregate
    values = {"last_event_at": _later(A.last_event_at, occurred_at)}
    if name in LAST_COLUMN:
        col = LAST_COLUMN[name]
        values[col] = _later(getattr(A, col), occurred_at)
    session.execute(update(A).where(A.member_id == member_id).values(**values))


def recompute(session: Session, *, member_id: int) -> None:
    """Rebuild every aggregate of one member from its orders and events (one UPDATE)."""
    state: _Deferred | None = session.info.get(_KEY)
    if state is not None:
        state.recomputed.add(member_id)
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
