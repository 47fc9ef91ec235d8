"""Idempotent ingestion of orders, refunds and behaviour events, single or in batches.

Each item runs in its own savepoint: a bad item rolls back everything it wrote and never blocks the
others. (source, external_id) identifies an item per kind: a re-send with the same canonical body
returns the original outcome and changes nothing; a different body under the same id is a 409.
Concurrent senders of the same item are settled by the unique constraint: the loser re-reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import Conflict, InvalidInput, OrchardError, validation_errors
from orchard.events import aggregates, orders
from orchard.events.members_ref import resolve_ref
from orchard.events.models import Event, Order, Refund
from orchard.events.schemas import BatchOut, EventIn, ItemResult, OrderIn, Outcome, RefundIn
from orchard.kit.clock import as_utc, utcnow
from orchard.kit.hashing import fingerprint
from orchard.org import service as org

_MODELS: dict[str, type] = {"order": Order, "refund": Refund, "event": Event}
_SCHEMAS: dict[str, type] = {"order": OrderIn, "refund": RefundIn, "event": EventIn}
#: Events may carry times a little ahead of the server clock (device clocks drift), not days.
_MAX_FUTURE_SKEW_S = 24 * 3600


def body_fingerprint(data: OrderIn | RefundIn | EventIn) -> str:
    """The canonical fingerprint an item is recognised by on replay (also used by bulk imports)."""
    return fingerprint(data.model_dump(mode="json", exclude_none=True))


def ingest(session: Session, *, principal: Principal, kind: str, data: OrderIn | RefundIn | EventIn) -> Outcome:
    body_hash = body_fingerprint(data)
    for attempt in range(2):
        prior = _replay(session, kind, data.source, data.external_id, body_hash)
        if prior is not None:
            return prior
        try:
            with session.begin_nested():
                return _write(session, principal=principal, kind=kind, data=data, body_hash=body_hash)
        except IntegrityError:
            # Someone wrote the same item concurrently (or a key race in identity resolution): re-read.
            if attempt == 1:
                raise Conflict("concurrent write of the same item; retry", code="ingest.retry") from None
    raise AssertionError("unreachable")


def _replay(session: Session, kind: str, source: str, external_id: str, body_hash: str) -> Outcome | None:
    model = _MODELS[kind]
    row = session.scalar(select(model).where(model.source == source, model.external_id == external_id))
    if row is None:
        return None
    if row.body_hash != body_hash:
        raise Conflict(f"{kind} {source}/{external_id} was already received with a different body",
                       code="ingest.id_reused", source=source, external_id=external_id)
    return Outcome(type=kind, status="duplicate", id=row.id, member_id=row.member_id)


def _check_time(value, field: str) -> None:
    if (as_utc(value) - utcnow()).total_seconds() > _MAX_FUTURE_SKEW_S:
        raise InvalidInput.field(field, "lies more than a day in the future")


def _write(session: Session, *, principal: Principal, kind: str, data: Any, body_hash: str) -> Outcome:
    if kind == "order":
        _check_time(data.paid_at, "paid_at")
        store_id = org.store_id_for_code(session, data.store_code)
        member_id, created = resolve_ref(session, principal=principal, ref=data.member, source=data.source,
                                         at=as_utc(data.paid_at), store_id=store_id)
        if member_id is None:
            raise InvalidInput.field("member", "an order needs a member: give an id or an identity other than an "
                                               "anonymous id that is not linked yet")
        order = orders.insert_order(session, data=data, member_id=member_id, store_id=store_id, body_hash=body_hash)
        return Outcome(type="order", status="created", id=order.id, member_id=member_id, member_created=created)
    if kind == "refund":
        _check_time(data.refunded_at, "refunded_at")
        refund = orders.insert_refund(session, data=data, body_hash=body_hash)
        return Outcome(type="refund", status="created" if refund.status == "applied" else "pending", id=refund.id,
                       member_id=refund.member_id)
    _check_time(data.occurred_at, "occurred_at")
    store_id = org.store_id_for_code(session, data.store_code)
    occurred = as_utc(data.occurred_at)
    member_id, created = resolve_ref(session, principal=principal, ref=data.member, source=data.source,
                                     at=occurred, store_id=store_id, create_anonymous=False)
    event = Event(source=data.source, external_id=data.external_id, body_hash=body_hash, member_id=member_id,
                  anonymous_id=data.member.anonymous_id, name=data.name, store_id=store_id, occurred_at=occurred,
                  properties=data.properties)
    session.add(event)
    session.flush()
    if member_id is not None:
        aggregates.on_event(session, member_id=member_id, name=data.name, occurred_at=occurred)
    return Outcome(type="event", status="created", id=event.id, member_id=member_id, member_created=created)


def ingest_batch(session: Session, *, principal: Principal, items: list[Any]) -> BatchOut:
    results = []
    for index, raw in enumerate(items):
        try:
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind not in _SCHEMAS:
                raise InvalidInput.field("type", "must be one of order, refund, event")
            try:
                data = _SCHEMAS[kind].model_validate({k: v for k, v in raw.items() if k != "type"})
            except ValidationError as exc:
                errors = validation_errors(list(exc.errors()))
                raise InvalidInput("; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]),
                                   errors=errors) from None
            outcome = ingest(session, principal=principal, kind=kind, data=data)
            results.append(ItemResult(index=index, ok=True, outcome=outcome))
        except OrchardError as exc:
            results.append(ItemResult(index=index, ok=False, error=exc.to_problem()))
        except DataError:
            # The database refused a value the schemas let through (e.g. a NUL character on
            # PostgreSQL); the item's savepoint is already rolled back.
            problem = InvalidInput("a value cannot be stored (e.g. it contains a NUL character)",
                                   code="invalid_input.unstorable").to_problem()
            results.append(ItemResult(index=index, ok=False, error=problem))
    ok = sum(r.ok for r in results)
    return BatchOut(accepted=ok, rejected=len(results) - ok, results=results)
