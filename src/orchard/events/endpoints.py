"""Ingestion and event read routes. Single-item writes answer 201 when written, 200 for a replay
(or a refund kept pending), 409 when the id was used with another body."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.events import ingest, reads
from orchard.events.schemas import BatchIn, BatchOut, EventIn, OrderIn, Outcome, RefundIn

router = APIRouter(tags=["events"])
Id = Annotated[int, Path(ge=1, le=2**62)]
_CONFLICT = {409: {"description": "the same (source, external_id) was sent with a different body"}}


def _status(response: Response, outcome: Outcome) -> Outcome:
    response.status_code = 201 if outcome.status == "created" else 200
    return outcome


@router.post("/orders", response_model=Outcome, status_code=201, operation_id="ingestOrder", responses=_CONFLICT)
def post_order(body: OrderIn, response: Response, session: SessionDep, principal: Actor(Perm.events_ingest)):
    return _status(response, ingest.ingest(session, principal=principal, kind="order", data=body))


@router.post("/refunds", response_model=Outcome, status_code=201, operation_id="ingestRefund", responses=_CONFLICT)
def post_refund(body: RefundIn, response: Response, session: SessionDep, principal: Actor(Perm.events_ingest)):
    return _status(response, ingest.ingest(session, principal=principal, kind="refund", data=body))


@router.post("/events", response_model=Outcome, status_code=201, operation_id="ingestEvent", responses=_CONFLICT)
def post_event(body: EventIn, response: Response, session: SessionDep, principal: Actor(Perm.events_ingest)):
    return _status(response, ingest.ingest(session, principal=principal, kind="event", data=body))


@router.post("/ingest", response_model=BatchOut, operation_id="ingestBatch")
def post_batch(body: BatchIn, session: SessionDep, principal: Actor(Perm.events_ingest)) -> BatchOut:
    """Up to 1,000 orders, refunds and events (each with `"type"`); per-item results, in order."""
    return ingest.ingest_batch(session, principal=principal, items=body.items, start_over=True)


@router.get("/orders/{order_id}", response_model=reads.OrderRead, operation_id="getOrder")
def get_order(order_id: Id, session: SessionDep, principal: Actor(Perm.events_read)):
    return reads.get_order(session, principal, order_id)


@router.get("/refunds/{refund_id}", response_model=reads.RefundRead, operation_id="getRefund")
def get_refund(refund_id: Id, session: SessionDep, principal: Actor(Perm.events_read)):
    return reads.get_refund(session, principal, refund_id)


@router.get("/members/{member_id}/orders", response_model=reads.OrderPage, operation_id="listMemberOrders",
            tags=["members"])
def member_orders(member_id: Id, session: SessionDep, principal: Actor(Perm.events_read),
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: Annotated[str | None, Query(max_length=200)] = None):
    return reads.member_orders(session, principal, member_id, limit=limit, cursor=cursor)


@router.get("/members/{member_id}/events", response_model=reads.EventPage, operation_id="listMemberEvents",
            tags=["members"])
def member_events(member_id: Id, session: SessionDep, principal: Actor(Perm.events_read),
                  name: Annotated[str | None, Query(max_length=64)] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: Annotated[str | None, Query(max_length=200)] = None):
    return reads.member_events(session, principal, member_id, name=name, limit=limit, cursor=cursor)
