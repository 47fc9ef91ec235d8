"""Read models for orders, refunds and events, scoped through the member they belong to."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import NotFound
from orchard.events.models import Event, Order, OrderLine, Refund
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.members import scope
from orchard.members.models import Member


class OrderLineRead(BaseModel):
    line_no: int
    sku: str | None
    name: str | None
    category: str | None
    quantity: int
    unit_price_fen: int
    amount_fen: int
    refunded_quantity: int
    refunded_fen: int


class OrderRead(BaseModel):
    id: int
    source: str
    external_id: str
    member_id: int
    store_id: int | None
    channel: str | None
    status: str
    currency: str
    amount_fen: int
    refunded_fen: int
    paid_at: dt.datetime
    properties: dict[str, Any]
    lines: list[OrderLineRead]


class RefundRead(BaseModel):
    id: int
    source: str
    external_id: str
    order_source: str
    order_external_id: str
    order_id: int | None
    member_id: int | None
    status: str
    amount_fen: int | None
    reason: str | None
    error: str | None
    refunded_at: dt.datetime


class EventRead(BaseModel):
    id: int
    source: str
    external_id: str
    member_id: int | None
    name: str
    store_id: int | None
    occurred_at: dt.datetime
    received_at: dt.datetime
    properties: dict[str, Any]


class OrderPage(BaseModel):
    items: list[OrderRead]
    next_cursor: str | None


class EventPage(BaseModel):
    items: list[EventRead]
    next_cursor: str | None


def _check_member(session: Session, principal: Principal, member_id: int | None) -> None:
    member = session.get(Member, member_id) if member_id else None
    if member is None or not scope.can_see(principal, member):
        raise NotFound("not found", code="not_found")


def _orders_read(session: Session, orders: list[Order]) -> list[OrderRead]:
    lines: dict[int, list[OrderLine]] = {o.id: [] for o in orders}
    if orders:
        for ln in session.scalars(select(OrderLine).where(OrderLine.order_id.in_(list(lines)))
                                  .order_by(OrderLine.line_no)):
            lines[ln.order_id].append(ln)
    return [OrderRead(**{c: getattr(o, c) for c in OrderRead.model_fields if c != "lines"},
                      lines=[OrderLineRead.model_validate(ln, from_attributes=True) for ln in lines[o.id]])
            for o in orders]


def get_order(session: Session, principal: Principal, order_id: int) -> OrderRead:
    order = session.get(Order, order_id)
    if order is None:
        raise NotFound("order not found", code="order.not_found")
    _check_member(session, principal, order.member_id)
    return _orders_read(session, [order])[0]


def get_refund(session: Session, principal: Principal, refund_id: int) -> RefundRead:
    refund = session.get(Refund, refund_id)
    if refund is None:
        raise NotFound("refund not found", code="refund.not_found")
    if refund.member_id is not None or principal.store_ids is not None:
        _check_member(session, principal, refund.member_id)
    return RefundRead.model_validate(refund, from_attributes=True)


def member_orders(session: Session, principal: Principal, member_id: int, *, limit: int, cursor: str | None
                  ) -> OrderPage:
    member = scope.get_visible(session, principal, member_id)
    stmt = select(Order).where(Order.member_id == member.id)
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(Order.id < after)
    rows = list(session.scalars(stmt.order_by(Order.id.desc()).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return OrderPage(items=_orders_read(session, rows[:limit]), next_cursor=nxt)


def member_events(session: Session, principal: Principal, member_id: int, *, name: str | None, limit: int,
                  cursor: str | None) -> EventPage:
    member = scope.get_visible(session, principal, member_id)
    stmt = select(Event).where(Event.member_id == member.id)
    if name:
        stmt = stmt.where(Event.name == name)
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(Event.id < after)
    rows = list(session.scalars(stmt.order_by(Event.id.desc()).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return EventPage(items=[EventRead.model_validate(r, from_attributes=True) for r in rows[:limit]], next_cursor=nxt)
