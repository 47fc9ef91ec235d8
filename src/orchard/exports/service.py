"""Exports in two steps, because the body streams after the request's transaction has ended.

1. `plan_members` / `plan_orders` / `plan_events`, in the caller's session: check the fields,
   resolve the filters (store codes, phone normalisation) into one scoped, filtered `Select`, run it
   once with `LIMIT 0` so a value the database refuses fails now as a problem response rather than
   half-way through a download, and write the audit row (`export.members` ..., with format,
   fields, filters). The row count is not in the audit row: it commits before the first byte
   leaves; `stream`/`write_file` count the rows and log the count when done (or aborted).
2. `stream` (HTTP) or `write_file` (CLI) open their OWN read-only session, take a snapshot
   (SQLite: one deferred read transaction; PostgreSQL: REPEATABLE READ READ ONLY) and walk the
   `Select` in id order, `CHUNK_SIZE` rows per query (keyset: `id > last`), adding each chunk's
   aggregates / identities / tags / consents / order lines in one query apiece, only for the
   chosen columns. Memory is one chunk.

Scope: members come from `members.scope.visible(principal)`; orders and events are those of
visible members (joined on the member; an event not linked to any member is visible only to
unscoped principals). Identity values are masked with `members.service`'s own masking.
The member filters mirror `members.service.list_members` (which builds and runs its query in one
function, so its filter logic cannot be reused without a refactor of that module).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.auth.service import Principal
from orchard.db import new_session
from orchard.errors import InvalidInput
from orchard.events.models import Event, Order, OrderLine
from orchard.exports import columns as catalog
from orchard.exports.columns import Column, RowContext
from orchard.identity.models import Identity
from orchard.kit import tabular
from orchard.kit.clock import as_utc, tenant_zone, utcnow
from orchard.members import scope
from orchard.members.models import Consent, Member, MemberAggregate, MemberTag, Tag
from orchard.members.service import _MASKED_KINDS, MemberFilters, _mask_identity, apply_filters
from orchard.org import service as org
from orchard.org.models import OrgUnit

log = logging.getLogger("orchard.exports")

#: Rows per keyset query. A module constant so tests can make it tiny.
CHUNK_SIZE = 2000

#: Sheet titles and file-name stems, Chinese / English.
_TITLES = {"members": ("会员", "members"), "orders": ("订单", "orders"), "events": ("事件", "events")}


@dataclass(frozen=True)
class OrderFilters:
    paid_from: dt.datetime | None = None
    paid_to: dt.datetime | None = None
    #: Store or region code of the store the order was placed in.
    store: str | None = None


@dataclass(frozen=True)
class EventFilters:
    name: str | None = None
    occurred_from: dt.datetime | None = None
    occurred_to: dt.datetime | None = None
    store: str | None = None


@dataclass(frozen=True)
class Plan:
    """A validated, audited export, independent of any session."""

    kind: str
    fmt: tabular.Format
    columns: tuple[Column, ...]
    english: bool
    principal: Principal
    #: The scoped, filtered query; the keyset condition and ORDER BY id are added per chunk.
    stmt: Select
    key: Any

    @property
    def header(self) -> list[str]:
        return [c.header(self.english) for c in self.columns]

    @property
    def needs(self) -> set[str]:
        return {c.needs for c in self.columns if c.needs}

    @property
    def media_type(self) -> str:
        return tabular.MEDIA_TYPES[self.fmt]

    @property
    def sheet_title(self) -> str:
        zh, en = _TITLES[self.kind]
        return en if self.english else zh

    def filename(self, day: dt.date, *, english: bool | None = None) -> str:
        """`会员导出-20261123.csv`, or `members-export-20261123.csv` in English."""
        english = self.english if english is None else english
        zh, en = _TITLES[self.kind]
        stem = f"{en}-export" if english else f"{zh}导出"
        return f"{stem}-{day:%Y%m%d}.{self.fmt}"


def today() -> dt.date:
    """The tenant's calendar day (for file names)."""
    return utcnow().astimezone(tenant_zone()).date()


# ---- planning (request session) -----------------------------------------------------------------

def choose_columns(kind: str, fields: str | None) -> tuple[Column, ...]:
    """`fields` is comma-separated catalog keys, exported in the order given; None means the
    catalog's defaults."""
    cat = catalog.CATALOGS[kind]
    if fields is None:
        return tuple(c for c in cat if c.default)
    by_key = {c.key: c for c in cat}
    chosen: list[Column] = []
    for raw in fields.split(","):
        key = raw.strip()
        if not key:
            continue
        if key not in by_key:
            raise InvalidInput.field("fields", f"unknown field {key!r}; choose from: {catalog.keys(cat)}")
        if by_key[key] in chosen:
            raise InvalidInput.field("fields", f"field {key!r} is listed twice")
        chosen.append(by_key[key])
    if not chosen:
        raise InvalidInput.field("fields", f"choose at least one field from: {catalog.keys(cat)}")
    return tuple(chosen)


def _utc(value: dt.datetime | None, field: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return as_utc(value)
    except (OverflowError, ValueError):
        raise InvalidInput.field(field, "date-time out of range") from None


def _stores(session: Session, code: str) -> list[int]:
    unit = org.get_by_code(session, code, field="store")
    return sorted(org.stores_under(session, [unit.id]))


def _finish(session: Session, *, kind: str, fmt: str, fields: tuple[Column, ...], english: bool,
            principal: Principal, stmt: Select, key: Any, filters: Any, actor: str | None) -> Plan:
    session.execute(stmt.limit(0))  # the database checks every bound value now, not mid-download
    shown = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(filters).items()
             if v is not None}
    audit.record(session, actor=actor or principal.actor, action=f"export.{kind}", entity="export", entity_id=kind,
                 data={"format": fmt, "fields": [c.key for c in fields], "filters": shown,
                       "lang": "en" if english else "zh"})
    return Plan(kind=kind, fmt=fmt, columns=fields, english=english, principal=principal, stmt=stmt, key=key)


def plan_members(session: Session, *, principal: Principal, fmt: tabular.Format = "csv", fields: str | None = None,
                 english: bool = False, filters: MemberFilters = MemberFilters(), actor: str | None = None) -> Plan:
    cols = choose_columns("members", fields)
    # Aggregates are a per-chunk lookup, not a join here: PostgreSQL merge-joins an outer-joined
    # table from its first row, so every later chunk would rescan all earlier members' aggregates.
    stmt = (select(Member.id, Member.name, Member.gender, Member.birthday, Member.region, Member.source_channel,
                   Member.joined_at, Member.attributes, Member.reduce_disturbance,
                   OrgUnit.code.label("store_code"), OrgUnit.name.label("store_name"))
            .outerjoin(OrgUnit, OrgUnit.id == Member.home_store_id))
    stmt = apply_filters(session, stmt, principal=principal, filters=filters)
    return _finish(session, kind="members", fmt=fmt, fields=cols, english=english, principal=principal, stmt=stmt,
                   key=Member.id, filters=filters, actor=actor)


def plan_orders(session: Session, *, principal: Principal, fmt: tabular.Format = "csv", fields: str | None = None,
                english: bool = False, filters: OrderFilters = OrderFilters(), actor: str | None = None) -> Plan:
    """One row per order line when a line column is chosen (an order without lines still gets one
    row, its line columns empty), else one row per order."""
    cols = choose_columns("orders", fields)
    f = filters
    stmt = (select(Order.id, Order.source, Order.external_id, Order.member_id, Member.name.label("member_name"),
                   OrgUnit.code.label("store_code"), OrgUnit.name.label("store_name"), Order.channel, Order.status,
                   Order.currency, Order.amount_fen, Order.refunded_fen, Order.paid_at, Order.properties)
            .join(Member, Member.id == Order.member_id)
            .outerjoin(OrgUnit, OrgUnit.id == Order.store_id)
            .where(scope.visible(principal)))
    if f.paid_from is not None:
        stmt = stmt.where(Order.paid_at >= _utc(f.paid_from, "paid_from"))
    if f.paid_to is not None:
        stmt = stmt.where(Order.paid_at < _utc(f.paid_to, "paid_to"))
    if f.store is not None:
        stmt = stmt.where(Order.store_id.in_(_stores(session, f.store)))
    return _finish(session, kind="orders", fmt=fmt, fields=cols, english=english, principal=principal, stmt=stmt,
                   key=Order.id, filters=f, actor=actor)


def plan_events(session: Session, *, principal: Principal, fmt: tabular.Format = "csv", fields: str | None = None,
                english: bool = False, filters: EventFilters = EventFilters(), actor: str | None = None) -> Plan:
    cols = choose_columns("events", fields)
    f = filters
    # Outer join: for an unscoped principal `visible` is TRUE and unlinked events come too; for
    # store staff it tests the member's home store, which is NULL (not true) without a member.
    stmt = (select(Event.id, Event.name, Event.occurred_at, Event.member_id, Member.name.label("member_name"),
                   Event.anonymous_id, OrgUnit.code.label("store_code"), OrgUnit.name.label("store_name"),
                   Event.source, Event.external_id, Event.received_at, Event.properties)
            .outerjoin(Member, Member.id == Event.member_id)
            .outerjoin(OrgUnit, OrgUnit.id == Event.store_id)
            .where(scope.visible(principal)))
    if f.name is not None:
        stmt = stmt.where(Event.name == f.name)
    if f.occurred_from is not None:
        stmt = stmt.where(Event.occurred_at >= _utc(f.occurred_from, "occurred_from"))
    if f.occurred_to is not None:
        stmt = stmt.where(Event.occurred_at < _utc(f.occurred_to, "occurred_to"))
    if f.store is not None:
        stmt = stmt.where(Event.store_id.in_(_stores(session, f.store)))
    return _finish(session, kind="events", fmt=fmt, fields=cols, english=english, principal=principal, stmt=stmt,
                   key=Event.id, filters=f, actor=actor)


def count(session: Session, plan: Plan) -> int:
    """The number of rows the export will have (a progress bar's total)."""
    base = plan.stmt.subquery()
    stmt = select(func.count()).select_from(base)
    if plan.kind == "orders" and "lines" in plan.needs:  # an order without lines is still one row
        stmt = stmt.outerjoin(OrderLine, OrderLine.order_id == base.c.id)
    return session.scalar(stmt) or 0


# ---- reading (the export's own session) ---------------------------------------------------------

@contextmanager
def reading() -> Iterator[Session]:
    """A read-only session holding one snapshot for the whole export, so chunks read minutes
    apart still agree (a member's aggregates with its orders, no row seen twice or missed)."""
    session = new_session(readonly=True)
    try:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ",
                                                  "postgresql_readonly": True})
        yield session
    finally:
        session.close()


def rows(session: Session, plan: Plan) -> Iterator[list[Any]]:
    """The export's rows, in id order, one keyset query per `CHUNK_SIZE` records."""
    build = _BUILDERS[plan.kind]
    last = None
    while True:
        stmt = plan.stmt if last is None else plan.stmt.where(plan.key > last)
        chunk = session.execute(stmt.order_by(plan.key).limit(CHUNK_SIZE)).all()
        if not chunk:
            return
        yield from build(session, plan, chunk)
        if len(chunk) < CHUNK_SIZE:
            return
        last = chunk[-1].id


class _Counted:
    """Counts rows as they pass; reports progress every `every` rows (and at the end)."""

    def __init__(self, plan: Plan, on_rows: Callable[[int], None] | None = None, every: int = 500) -> None:
        self.plan, self.on_rows, self.every = plan, on_rows, every
        self.n, self.done = 0, False

    def __call__(self, it: Iterable[list[Any]]) -> Iterator[list[Any]]:
        pending = 0
        for row in it:
            self.n += 1
            pending += 1
            if self.on_rows and pending == self.every:
                self.on_rows(pending)
                pending = 0
            yield row
        if self.on_rows and pending:
            self.on_rows(pending)
        self.done = True

    def log(self) -> None:
        p = self.plan
        log.info("export.%s by %s: %d rows (%s)%s", p.kind, p.principal.actor, self.n, p.fmt,
                 "" if self.done else ", not finished")


def stream(plan: Plan) -> Iterator[bytes]:
    """The file's bytes. Runs after the endpoint returned, in its own session, closed at the end,
    on error, or when the client goes away and the generator is closed."""
    counted = _Counted(plan)
    try:
        with reading() as session:
            yield from tabular.chunks(plan.fmt, plan.header, counted(rows(session, plan)),
                                      sheet_title=plan.sheet_title)
    finally:
        counted.log()


def write_file(plan: Plan, path: Path, *, on_rows: Callable[[int], None] | None = None) -> int:
    """Write the export to `path` (via a temporary file beside it, renamed when complete, so a
    failed export never leaves a truncated file). `on_rows(n)` reports progress. Returns the row count."""
    counted = _Counted(plan, on_rows)
    part = path.with_name(f".{path.name}.part")
    try:
        with reading() as session, part.open("wb") as out:
            tabular.write(plan.fmt, plan.header, counted(rows(session, plan)), out,
                          sheet_title=plan.sheet_title)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
        counted.log()
    return counted.n


# ---- per-chunk lookups and row building ---------------------------------------------------------

def _shown(principal: Principal, kind: str, value: str) -> str:
    return _mask_identity(kind, value) if principal.masked and kind in _MASKED_KINDS else value


def _identities(session: Session, plan: Plan, member_ids: set[int]) -> dict[int, dict[str, list[str]]]:
    kinds = sorted(n.partition(":")[2] for n in plan.needs if n.startswith("identity:"))
    out: dict[int, dict[str, list[str]]] = {}
    if not kinds or not member_ids:
        return out
    stmt = (select(Identity.member_id, Identity.kind, Identity.value)
            .where(Identity.member_id.in_(sorted(member_ids)), Identity.kind.in_(kinds)).order_by(Identity.id))
    for mid, kind, value in session.execute(stmt):
        out.setdefault(mid, {}).setdefault(kind, []).append(_shown(plan.principal, kind, value))
    return out


def _member_rows(session: Session, plan: Plan, chunk: list[Any]) -> Iterator[list[Any]]:
    ids = [r.id for r in chunk]
    needs = plan.needs
    idents = _identities(session, plan, set(ids))
    tags: dict[int, list[str]] = {}
    if "tags" in needs:
        for mid, name in session.execute(select(MemberTag.member_id, Tag.name).join(Tag, Tag.id == MemberTag.tag_id)
                                         .where(MemberTag.member_id.in_(ids)).order_by(Tag.name)):
            tags.setdefault(mid, []).append(name)
    consents: dict[int, set[tuple[str, str]]] = {}
    if "consents" in needs:
        for mid, channel, purpose in session.execute(select(Consent.member_id, Consent.channel, Consent.purpose)
                                                     .where(Consent.member_id.in_(ids), Consent.granted.is_(True))):
            consents.setdefault(mid, set()).add((channel, purpose))
    aggs: dict[int, Any] = {}
    if "aggregates" in needs:
        agg = MemberAggregate
        aggs = {a.member_id: a for a in session.execute(
            select(agg.member_id, agg.order_count, agg.total_spend_fen, agg.refund_fen, agg.first_order_at,
                   agg.last_order_at, agg.last_visit_at, agg.last_login_at, agg.last_event_at)
            .where(agg.member_id.in_(ids)))}
    for r in chunk:
        ctx = RowContext(r, idents.get(r.id, {}), tags.get(r.id, []), frozenset(consents.get(r.id, ())),
                         aggs.get(r.id))
        yield [c.value(ctx) for c in plan.columns]


def _order_rows(session: Session, plan: Plan, chunk: list[Any]) -> Iterator[list[Any]]:
    idents = _identities(session, plan, {r.member_id for r in chunk})
    lines: dict[int, list[Any]] | None = None
    if "lines" in plan.needs:
        lines = {}
        stmt = (select(OrderLine.order_id, OrderLine.line_no, OrderLine.sku, OrderLine.name, OrderLine.category,
                       OrderLine.quantity, OrderLine.unit_price_fen, OrderLine.amount_fen,
                       OrderLine.refunded_quantity, OrderLine.refunded_fen)
                .where(OrderLine.order_id.in_([r.id for r in chunk])).order_by(OrderLine.order_id, OrderLine.line_no))
        for ln in session.execute(stmt):
            lines.setdefault(ln.order_id, []).append(ln)
    for r in chunk:
        ctx = RowContext(r, idents.get(r.member_id, {}))
        for line in (lines.get(r.id) or [None]) if lines is not None else [None]:
            ctx.line = line
            yield [c.value(ctx) for c in plan.columns]


def _event_rows(session: Session, plan: Plan, chunk: list[Any]) -> Iterator[list[Any]]:
    idents = _identities(session, plan, {r.member_id for r in chunk if r.member_id is not None})
    for r in chunk:
        ctx = RowContext(r, idents.get(r.member_id, {}) if r.member_id is not None else {})
        yield [c.value(ctx) for c in plan.columns]


_BUILDERS: dict[str, Callable[[Session, Plan, list[Any]], Iterator[list[Any]]]] = {
    "members": _member_rows, "orders": _order_rows, "events": _event_rows,
}
