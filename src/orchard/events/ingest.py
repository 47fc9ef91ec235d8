"""Idempotent ingestion of orders, refunds and behaviour events, single or in batches.

Each item runs in its own savepoint: a bad item rolls back everything it wrote and never blocks the
others. (source, external_id) identifies an item per kind: a re-send with the same canonical body
returns the original outcome and changes nothing; a different body under the same id is a 409.
Concurrent senders of the same item are settled by the unique constraint: the loser re-reads.

A batch validates every item first, looks the ids already received up in one query per kind, and
applies member aggregate changes at its end (`aggregates.deferred`): its outcomes, rows and
aggregates are those of the same items sent one by one (tests/events/test_batch_equivalence.py).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, text, tuple_
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import Conflict, InvalidInput, OrchardError, validation_errors
from orchard.events import aggregates, orders, pg_batch
from orchard.events.members_ref import resolve_ref
from orchard.events.models import Event, Order, Refund
from orchard.events.schemas import BatchOut, EventIn, ItemResult, OrderIn, Outcome, RefundIn
from orchard.kit.clock import as_utc, utcnow
from orchard.kit.hashing import fingerprint
from orchard.loyalty import earning
from orchard.org import service as org
from orchard.segments import dirty

_MODELS: dict[str, type] = {"order": Order, "refund": Refund, "event": Event}
_SCHEMAS: dict[str, type] = {"order": OrderIn, "refund": RefundIn, "event": EventIn}
#: Events may carry times a little ahead of the server clock (device clocks drift), not days.
_MAX_FUTURE_SKEW_S = 24 * 3600


def body_fingerprint(data: OrderIn | RefundIn | EventIn) -> str:
    """The canonical fingerprint an item is recognised by on replay (also used by bulk imports)."""
    return fingerprint(data.model_dump(mode="json", exclude_none=True))


def ingest(session: Session, *, principal: Principal, kind: str, data: OrderIn | RefundIn | EventIn,
           body_hash: str | None = None, unseen: bool = False, earn: bool = True) -> Outcome:
    """`unseen`: the caller has just looked (source, external_id) up and found nothing, so the first
    attempt goes straight to the write (a concurrent writer still ends in the re-read below).
    `earn`: orders and events earn points through the earning rules (bulk imports of history pass
    False)."""
    body_hash = body_hash or body_fingerprint(data)
    for attempt in range(2):
        if not (unseen and attempt == 0):
            prior = _replay(session, kind, data.source, data.external_id, body_hash)
            if prior is not None:
                return prior
        try:
            with aggregates.item(session), session.begin_nested():
                outcome = _write(session, principal=principal, kind=kind, data=data, body_hash=body_hash, earn=earn)
            if not aggregates.is_deferred(session):  # a batch marks its members once, at its end
                dirty.mark(session, [outcome.member_id])
            return outcome
        except IntegrityError:
            # Someone wrote the same item concurrently (or a key race in identity resolution): re-read.
            if attempt == 1:
                raise Conflict("concurrent write of the same item; retry", code="ingest.retry") from None
    raise AssertionError("unreachable")


def _replay(session: Session, kind: str, source: str, external_id: str, body_hash: str) -> Outcome | None:
    model = _MODELS[kind]
    row = session.execute(select(model.id, model.member_id, model.body_hash)
                          .where(model.source == source, model.external_id == external_id)).first()
    return _replayed(kind, source, external_id, body_hash, row)


def _replayed(kind: str, source: str, external_id: str, body_hash: str, row) -> Outcome | None:
    if row is None:
        return None
    if row.body_hash != body_hash:
        raise Conflict(f"{kind} {source}/{external_id} was already received with a different body",
                       code="ingest.id_reused", source=source, external_id=external_id)
    return Outcome(type=kind, status="duplicate", id=row.id, member_id=row.member_id)


def _check_time(value, field: str) -> None:
    if (as_utc(value) - utcnow()).total_seconds() > _MAX_FUTURE_SKEW_S:
        raise InvalidInput.field(field, "lies more than a day in the future")


def _store_id(session: Session, code: str | None) -> int | None:
    """`org.store_id_for_code`, remembered for the session (one request or batch): org units are never
    removed or re-coded, and unknown codes are not remembered."""
    if code is None:
        return None
    stores = session.info.setdefault("orchard.ingest.store_ids", {})
    if code not in stores:
        stores[code] = org.store_id_for_code(session, code)
    return stores[code]


def _write(session: Session, *, principal: Principal, kind: str, data: Any, body_hash: str,
           earn: bool = True) -> Outcome:
    if kind == "order":
        _check_time(data.paid_at, "paid_at")
        store_id = _store_id(session, data.store_code)
        member_id, created = resolve_ref(session, principal=principal, ref=data.member, source=data.source,
                                         at=as_utc(data.paid_at), store_id=store_id)
        if member_id is None:
            raise InvalidInput.field("member", "an order needs a member: give an id or an identity other than an "
                                               "anonymous id that is not linked yet")
        order = orders.insert_order(session, data=data, member_id=member_id, store_id=store_id, body_hash=body_hash,
                                    earn=earn)
        return Outcome(type="order", status="created", id=order.id, member_id=member_id, member_created=created)
    if kind == "refund":
        _check_time(data.refunded_at, "refunded_at")
        refund = orders.insert_refund(session, data=data, body_hash=body_hash)
        return Outcome(type="refund", status="created" if refund.status == "applied" else "pending", id=refund.id,
                       member_id=refund.member_id)
    _check_time(data.occurred_at, "occurred_at")
    store_id = _store_id(session, data.store_code)
    occurred = as_utc(data.occurred_at)
    member_id, created = resolve_ref(session, principal=principal, ref=data.member, source=data.source,
                                     at=occurred, store_id=store_id, create_anonymous=False)
    # A Core INSERT: nothing needs the ORM object, and the unit of work costs more than the statement.
    event_id = session.execute(insert(Event.__table__).values(
        source=data.source, external_id=data.external_id, body_hash=body_hash, member_id=member_id,
        anonymous_id=data.member.anonymous_id, name=data.name, store_id=store_id, occurred_at=occurred,
        properties=data.properties)).inserted_primary_key[0]
    earning.release_on_event(session, name=data.name, source=data.source, properties=data.properties)
    if member_id is not None:
        aggregates.on_event(session, member_id=member_id, name=data.name, occurred_at=occurred)
        if earn and data.name in earning.event_names(session):
            earning.on_event(session, event_id=event_id, member_id=member_id, name=data.name, occurred_at=occurred,
                             store_id=store_id, properties=data.properties)
    return Outcome(type="event", status="created", id=event_id, member_id=member_id, member_created=created)


def _parse(raw: Any) -> tuple[str, OrderIn | RefundIn | EventIn]:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in _SCHEMAS:
        raise InvalidInput.field("type", "must be one of order, refund, event")
    try:
        return kind, _SCHEMAS[kind].model_validate({k: v for k, v in raw.items() if k != "type"})
    except ValidationError as exc:
        errors = validation_errors(list(exc.errors()))
        raise InvalidInput("; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]), errors=errors) from None


def _storable(text: str) -> bool:
    """Whether the database can take the text as a query parameter (PostgreSQL refuses NUL)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _received(session: Session, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Any]:
    """The stored (id, member_id, body_hash) of those (kind, source, external_id) already received."""
    found: dict[tuple[str, str, str], Any] = {}
    for kind, model in _MODELS.items():
        pairs = sorted({(s, e) for k, s, e in keys if k == kind and _storable(s) and _storable(e)})
        for i in range(0, len(pairs), 400):  # SQLite limits bound parameters per statement
            rows = session.execute(select(model.source, model.external_id, model.id, model.member_id, model.body_hash)
                                   .where(tuple_(model.source, model.external_id).in_(pairs[i:i + 400])))
            found.update(((kind, r.source, r.external_id), r) for r in rows)
    return found


#: PostgreSQL's deadlock_detected and serialization_failure: the whole transaction was chosen to fail.
_START_OVER = {"40P01", "40001"}
_WAITS_FOR = re.compile(r"Process (\d+) waits for \w+ on transaction (\d+); blocked by process (\d+)")


def ingest_batch(session: Session, *, principal: Principal, items: list[Any], start_over: bool = False) -> BatchOut:
    """`start_over` (the batch is the caller's whole transaction): a batch holds many key locks until
    it commits, so two that link the same new identity keys in different orders can deadlock. The one
    PostgreSQL picks rolls back, waits until the transaction it was waiting for has ended (so as not to
    meet it again) and starts over; every item is idempotent."""
    for attempt in range(4 if start_over else 1):
        me = _backend_pid(session)
        try:
            return _ingest_batch(session, principal=principal, items=items)
        except OperationalError as exc:
            if not start_over or getattr(exc.orig, "sqlstate", None) not in _START_OVER or attempt == 3:
                raise
            session.rollback()
            _wait_for_winner(session, me, exc)
    raise AssertionError("unreachable")


def _backend_pid(session: Session) -> int | None:
    if session.get_bind().dialect.name != "postgresql":
        return None
    return session.connection().connection.driver_connection.info.backend_pid


def _wait_for_winner(session: Session, me: int | None, exc: OperationalError, timeout_s: float = 30.0) -> None:
    detail = getattr(getattr(exc.orig, "diag", None), "message_detail", None) or ""
    waits = {int(pid): (xid, int(blocker)) for pid, xid, blocker in _WAITS_FOR.findall(detail)}
    if me not in waits:
        time.sleep(random.uniform(0.1, 1.0))
        return
    xid, blocker = waits[me]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = session.scalar(text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid AND backend_xid::text = :xid"),
                                 {"pid": blocker, "xid": xid})
        session.rollback()  # a fresh statistics snapshot for the next look
        if running is None:
            return
        time.sleep(0.05)


def _fast_events(session: Session, principal: Principal, parsed: list, keys: list[tuple[str, str, str]],
                 known: dict, hashes: dict[int, str]) -> dict[int, Outcome]:
    """The behaviour events the PostgreSQL set-based path takes (`pg_batch`): new ones whose id
    occurs once in the batch; it decides which of those it can write and returns their outcomes."""
    if not pg_batch.applies(session):
        return {}
    counts = Counter(keys)
    candidates = [pg_batch.Candidate(i, p[1], hashes[i]) for i, p in enumerate(parsed)
                  if not isinstance(p, OrchardError) and p[0] == "event"
                  and counts[("event", p[1].source, p[1].external_id)] == 1
                  and ("event", p[1].source, p[1].external_id) not in known]
    return pg_batch.write_events(session, principal=principal, items=candidates,
                                 linkable=pg_batch.linkable_anonymous_ids(parsed))


def _ingest_batch(session: Session, *, principal: Principal, items: list[Any]) -> BatchOut:
    """Items are validated first; the ids already received are looked up in one query per kind; the
    rest are written one by one (each in its own savepoint), their aggregate changes applied at the end."""
    parsed: list[tuple[str, Any] | OrchardError] = []
    for raw in items:
        try:
            parsed.append(_parse(raw))
        except OrchardError as exc:
            parsed.append(exc)
    keys = [(p[0], p[1].source, p[1].external_id) for p in parsed if not isinstance(p, OrchardError)]
    looked_up = set(keys)
    known = _received(session, keys)
    hashes = {i: body_fingerprint(p[1]) for i, p in enumerate(parsed) if not isinstance(p, OrchardError)}
    results = []
    with aggregates.deferred(session):
        fast = _fast_events(session, principal, parsed, keys, known, hashes)
        for index, item in enumerate(parsed):
            try:
                if isinstance(item, OrchardError):
                    raise item
                if index in fast:
                    results.append(ItemResult(index=index, ok=True, outcome=fast[index]))
                    continue
                kind, data = item
                key = (kind, data.source, data.external_id)
                body_hash = hashes[index]
                outcome = None
                if key in known:
                    outcome = _replayed(kind, data.source, data.external_id, body_hash, known[key])
                if outcome is None:
                    # Unseen when first met in this batch; a repeat of an earlier item reads again.
                    unseen = key in looked_up and _storable(data.source) and _storable(data.external_id)
                    looked_up.discard(key)
                    outcome = ingest(session, principal=principal, kind=kind, data=data, body_hash=body_hash,
                                     unseen=unseen)
                results.append(ItemResult(index=index, ok=True, outcome=outcome))
            except OrchardError as exc:
                results.append(ItemResult(index=index, ok=False, error=exc.to_problem()))
            except DataError:
                # The database refused a value the schemas let through (e.g. a NUL character on
                # PostgreSQL); the item's savepoint is already rolled back.
                problem = InvalidInput("a value cannot be stored (e.g. it contains a NUL character)",
                                       code="invalid_input.unstorable").to_problem()
                results.append(ItemResult(index=index, ok=False, error=problem))
    dirty.mark(session, [r.outcome.member_id for r in results
                         if r.ok and r.outcome is not None and r.outcome.status != "duplicate"])
    ok = sum(r.ok for r in results)
    return BatchOut(accepted=ok, rejected=len(results) - ok, results=results)
