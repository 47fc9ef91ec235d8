"""Run an import: stream the file, validate each row, write valid rows in batches of one
transaction each, and report invalid rows (original row number, column, reason) in a CSV.

Writes go through the same services as HTTP ingestion, keyed the same way — orders, refunds and
events on (source, order_id | refund_id | event_id) with a canonical-body fingerprint, members on
their identity keys — so importing a file twice, or an overlapping file, creates nothing new, and a
run killed half-way and started again ends in exactly the state of an uninterrupted run (committed
batches replay as duplicates). A refund whose order is not imported yet is kept pending by the
ingestion service and applied when the order arrives; the report warns about it.

Orders, members, events and tags take the set-based path (imports.pg_bulk: work tables filled with
COPY on PostgreSQL, executemany on SQLite), proven to end in the same state as the per-row path, which
still takes the rows whose outcome depends on another row; refunds run row by row in batched
transactions.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.db import get_engine, transaction
from orchard.errors import InvalidInput, OrchardError, validation_errors
from orchard.events import ingest
from orchard.events.models import Refund
from orchard.events.schemas import EventIn, Outcome, RefundIn
from orchard.identity import resolve as identity_resolve
from orchard.imports import columns, pg_bulk, pg_events, pg_members, pg_orders, rows, tags
from orchard.imports.readers import FileUnreadable, open_table
from orchard.members.consent import set_consent
from orchard.members.models import Consent, Member
from orchard.members.service import fill_blanks
from orchard.org.models import OrgUnit
from orchard.segments import dirty

BATCH_SIZE = 1000
#: Orders and members go through work tables and set-based SQL, whose cost per batch is mostly fixed.
FAST_BATCH_SIZE = 20_000
SYSTEM = pg_bulk.SYSTEM


@dataclass
class ImportResult:
    kind: str
    rows: int = 0
    created: int = 0
    unchanged: int = 0
    updated: int = 0
    errors: int = 0
    warnings: int = 0
    unknown_columns: list[str] = field(default_factory=list)
    report_path: Path | None = None


@dataclass
class _Report:
    path: Path
    headers: list[str]
    _fh: Any = None
    _writer: Any = None

    def add(self, row_no: int, column: str, reason: str, level: str, values: list[Any]) -> None:
        if self._writer is None:
            self._fh = self.path.open("w", encoding="utf-8-sig", newline="")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["行号 row", "列 column", "原因 reason", "级别 level", *self.headers])
        self._writer.writerow([row_no, column, reason, level, *["" if v is None else v for v in values]])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def run_import(kind: str, path: Path, *, source: str = "import", report_path: Path | None = None,
               batch_size: int | None = None, progress: Callable[[int], None] | None = None,
               earn: bool = False) -> ImportResult:
    """Import `path`; raises FileUnreadable only when the file itself cannot be read. `earn` (orders
    only): each order the import creates earns points, growth and tier upgrades as if it had been
    sent to the API (`imports.pg_earn`, `imports.earn_sql` on PostgreSQL); without it an import loads history."""
    if kind not in columns.KINDS:
        raise FileUnreadable(f"unknown import kind {kind!r}; use one of {', '.join(columns.KINDS)}")
    if earn and kind != "orders":
        raise ValueError("only orders earn on import")
    table = open_table(path)
    mapping, unknown = columns.map_headers(kind, table.headers)
    _check_required(kind, mapping)
    result = ImportResult(kind=kind, unknown_columns=unknown)
    report = _Report(report_path or path.with_name(path.name + ".errors.csv"), table.headers)
    with transaction(readonly=True) as s:
        stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).tuples().all())
    fast = kind in _FAST
    size = batch_size or (FAST_BATCH_SIZE if fast else BATCH_SIZE)
    batches = _batches(_units(kind, table.rows, mapping), size)
    try:
        if fast:
            _pipelined(kind, batches, mapping, stores, source, result, report, progress, earn)
        else:
            for batch in batches:
                _write_batch(kind, batch, mapping, stores, source, result, report, earn)
                if progress:
                    progress(sum(len(unit.rows) for unit in batch))
    finally:
        report.close()
    result.report_path = report.path if (result.errors or result.warnings) else None
    return result


_MEMBER_KEYS = ("member_phone", "member_external_id", "member_card_no")
#: Per kind, the columns a header must have: one of each tuple.
_REQUIRED: dict[str, list[tuple[str, ...]]] = {
    "orders": [("order_id",), ("paid_at",), ("amount", "amount_fen"), _MEMBER_KEYS],
    "members": [("phone", "external_id", "card_no", "email", "wechat_unionid", "wechat_openid")],
    "refunds": [("refund_id",), ("order_id",), ("refunded_at",)],  # no amount: a full refund
    "events": [("event_id",), ("name",), ("occurred_at",), _MEMBER_KEYS],
    "tags": [("tags",), _MEMBER_KEYS],
}


def _check_required(kind: str, mapping: dict[str, int]) -> None:
    for options in _REQUIRED[kind]:
        if not any(o in mapping for o in options):
            raise FileUnreadable(f"the header has no column for {' / '.join(options)}")


#: Per kind, the column that names an item: an id received before with another body is reported there.
_ID_COLUMN = {"orders": "order_id", "members": "identities", "refunds": "refund_id", "events": "event_id",
              "tags": "tags"}

_Rows = list[tuple[int, list[Any]]]


@dataclass
class _Unit:
    """What becomes one item: one row, or (orders) the consecutive rows of one order, one per line.
    `oversize`: rows of an order with more lines than an order may have, none of them imported."""
    rows: _Rows
    oversize: bool = False


def _units(kind: str, table_rows: Iterator[tuple[int, list[Any]]], mapping: dict[str, int]) -> Iterator[_Unit]:
    """Rows grouped into units, streaming: an order's rows are held only until the order id changes
    (and never more than rows.MAX_LINES + 1 of them: the rest of an oversize order follows in chunks)."""
    if kind != "orders":
        for item in table_rows:
            yield _Unit([item])
        return
    at = mapping["order_id"]
    group: _Rows = []
    current, oversize = "", False
    for item in table_rows:
        values = item[1]
        order_id = rows.text(values[at]) if at < len(values) else ""
        if group and (order_id != current or not order_id):
            yield _Unit(group, oversize)
            group, oversize = [], False
        elif len(group) > rows.MAX_LINES:
            yield _Unit(group, True)
            group, oversize = [], True
        group.append(item)
        current = order_id
    if group:
        yield _Unit(group, oversize)


def _parse(kind: str, unit: _Unit, mapping: dict[str, int], stores: dict[str, int]
           ) -> tuple[dict[str, Any] | None, dict[int, rows.RowError]]:
    """(the clean item, {}) or (None, the bad rows' errors)."""
    if unit.oversize:
        return None, {n: rows.RowError("order_id", f"more than {rows.MAX_LINES} rows (lines) for one order")
                      for n, _ in unit.rows}
    if kind != "orders":
        row_no, values = unit.rows[0]
        try:
            return _KINDS[kind][0](rows.cells(values, mapping).get, stores), {}
        except rows.RowError as exc:
            return None, {row_no: exc}
    group, errors = [], {}
    for row_no, values in unit.rows:
        try:
            group.append((row_no, rows.cells(values, mapping).get))
        except rows.RowError as exc:
            errors[row_no] = exc
    try:
        clean = rows.order_group(group, stores) if group else None
    except rows.GroupError as exc:
        errors.update(exc.errors)
    return (None, dict(sorted(errors.items()))) if errors else (clean, {})


def _reject(result: ImportResult, report: _Report, unit: _Unit, errors: dict[int, rows.RowError]) -> None:
    """Report every row of a unit that is not imported: the bad rows with their reason, the other rows
    of the same order as rejected with it (nothing of an order is half-written)."""
    first_bad = next(iter(errors))
    for row_no, values in unit.rows:
        error = errors.get(row_no) or rows.RowError(
            "order_id", f"not imported: row {first_bad} of the same order has an error")
        result.errors += 1
        report.add(row_no, error.column, error.reason, "error", values)


def _record(result: ImportResult, report: _Report, kind: str, unit: _Unit,
            outcome: pg_bulk.RowOutcome | OrchardError | rows.RowError) -> None:
    """Count one unit's outcome (once: an order of several rows is one order) and report it if it is an
    error (on every row of the unit) or carries a warning (on its first row)."""
    if isinstance(outcome, rows.RowError):
        _reject(result, report, unit, {n: outcome for n, _ in unit.rows})
    elif isinstance(outcome, OrchardError):
        code = outcome.extra.get("code", outcome.code)
        error = (rows.RowError(outcome.errors[0]["field"], outcome.detail) if outcome.errors
                 else rows.RowError(_ID_COLUMN[kind], f"{outcome.detail} ({code})") if code == "ingest.id_reused"
                 else rows.RowError(code, outcome.detail))
        _reject(result, report, unit, {n: error for n, _ in unit.rows})
    else:
        status, warning = outcome
        setattr(result, status, getattr(result, status) + 1)
        if warning:
            result.warnings += 1
            row_no, values = unit.rows[0]
            report.add(row_no, _KINDS[kind][2], warning, "warning", values)


def _write_batch(kind: str, batch: list[_Unit], mapping: dict[str, int], stores: dict[str, int],
                 source: str, result: ImportResult, report: _Report, earn: bool = False) -> None:
    write = _writers(kind, earn)[1]
    with transaction() as session:
        for unit in batch:
            result.rows += len(unit.rows)
            clean, errors = _parse(kind, unit, mapping, stores)
            if errors:
                _reject(result, report, unit, errors)
                continue
            try:
                with session.begin_nested():
                    outcome = write(session, clean, source)
            except (rows.RowError, OrchardError) as exc:
                outcome = exc
            _record(result, report, kind, unit, outcome)


def _batches(units: Iterator[_Unit], size: int) -> Iterator[list[_Unit]]:
    """Units in batches of about `size` rows; a unit (an order's rows) is never split between batches."""
    batch: list[_Unit] = []
    count = 0
    for unit in units:
        batch.append(unit)
        count += len(unit.rows)
        if count >= size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


@dataclass
class _Prepared:
    rows: int
    items: list[tuple[int, dict[str, Any]]]  # (the unit's first row number, clean item)
    unit_of: dict[int, _Unit]


def _pipelined(kind: str, batches: Iterator[list[_Unit]], mapping: dict[str, int],
               stores: dict[str, int], source: str, result: ImportResult, report: _Report,
               progress: Callable[[int], None] | None, earn: bool = False) -> None:
    """Orders, members, events and tags: while one batch is written (work tables and set-based SQL,
    imports.pg_orders / pg_members / pg_events / tags) by a writer thread, the next is read and validated here — the
    database works on one core while Python validates on the other (SQLite too: its driver lets go of
    the GIL while a statement runs). Batches still commit one at a time, in file order."""

    def finish(prepared: _Prepared, outcome: dict[int, pg_bulk.RowOutcome | OrchardError]) -> None:
        for key, _ in prepared.items:
            _record(result, report, kind, prepared.unit_of[key], outcome[key])
        if progress:
            progress(prepared.rows)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchard-import") as writer:
        pending: tuple[_Prepared, Future] | None = None
        for batch in batches:
            prepared = _prepare(kind, batch, mapping, stores, source, result, report)
            if pending is not None:
                finish(pending[0], pending[1].result())
            pending = prepared, writer.submit(_store, kind, prepared, source, earn)
        if pending is not None:
            finish(pending[0], pending[1].result())


def _prepare(kind: str, batch: list[_Unit], mapping: dict[str, int], stores: dict[str, int],
             source: str, result: ImportResult, report: _Report) -> _Prepared:
    prepared = _Prepared(sum(len(unit.rows) for unit in batch), [], {})
    for unit in batch:
        result.rows += len(unit.rows)
        clean, errors = _parse(kind, unit, mapping, stores)
        if errors:
            _reject(result, report, unit, errors)
            continue
        if kind in _FINGERPRINT:  # hashed here, off the writer thread
            clean["body_hash"] = _FINGERPRINT[kind](clean, source)
        key = unit.rows[0][0]
        prepared.items.append((key, clean))
        prepared.unit_of[key] = unit
    return prepared


def _store(kind: str, prepared: _Prepared, source: str,
           earn: bool = False) -> dict[int, pg_bulk.RowOutcome | OrchardError]:
    with transaction() as session:
        return pg_bulk.run_batch(session, prepared.items, source, *_writers(kind, earn))


def _writers(kind: str, earn: bool) -> tuple[Any, Callable[..., tuple[str, str | None]]]:
    """(fast batch writer or None, per-row writer) of a kind; with `earn`, the orders' earning ones."""
    if earn:  # earning set-based (imports.pg_earn) is PostgreSQL's; on SQLite every order earns row by row
        fast = partial(pg_orders.write_orders, earn=True) if get_engine().dialect.name == "postgresql" else _per_row
        return fast, partial(_order, earn=True)
    return _FAST.get(kind), _KINDS[kind][1]


def _per_row(session: Session, items: list[tuple[int, dict[str, Any]]], source: str
             ) -> tuple[dict[int, pg_bulk.RowOutcome | OrchardError], list[int]]:
    """A batch writer that hands every row to the per-row path."""
    return {}, [i for i, _ in items]


def _order(session: Session, clean: dict[str, Any], source: str, earn: bool = False) -> tuple[str, str | None]:
    try:
        data = pg_orders.order_model(clean, source)
    except ValidationError as exc:  # the row validators catch all of this first; never a crash if not
        errors = validation_errors(list(exc.errors()))
        raise InvalidInput(errors[0]["reason"], errors=errors) from None
    outcome = ingest.ingest(session, principal=SYSTEM, kind="order", data=data, earn=earn)
    return ("created" if outcome.status == "created" else "unchanged"), None


def _member(session: Session, clean: dict[str, Any], source: str) -> tuple[str, str | None]:
    profile = {k: clean[k] for k in ("name", "gender", "birthday", "region", "source_channel") if clean[k]}
    profile["home_store_id"] = clean["store_id"]
    if clean["joined_at"]:
        profile["joined_at"] = clean["joined_at"]
    res = identity_resolve.resolve(session, keys=clean["keys"], source=source,
                                   profile={**profile, "source_channel": clean["source_channel"] or source})
    warning = (f"keys belong to several members {res.conflicts}: merge candidate recorded"
               if res.conflicts else None)
    consented = _consents(session, res.member_id, clean["consents"], source)
    dirty.mark(session, [res.member_id])  # its segments re-check in real time
    if res.created:
        return "created", warning
    member = session.get_one(Member, res.member_id)
    changed = fill_blanks(member, profile, {}, [])
    if clean["joined_at"] and clean["joined_at"] < member.joined_at:
        member.joined_at, changed = clean["joined_at"], True  # history older than the first event seen
    session.flush()
    return ("updated" if changed or res.linked or consented else "unchanged"), warning


def _consents(session: Session, member_id: int, given: dict[str, bool], source: str) -> bool:
    """Marketing consent as the file says it, through members.consent (history and audit); whether
    anything changed."""
    changed = False
    for channel, granted in given.items():
        row = session.get(Consent, (member_id, channel, "marketing"))
        if row is None or row.granted != granted:
            set_consent(session, member_id=member_id, channel=channel, purpose="marketing", granted=granted,
                        source=source, actor=SYSTEM.actor)
            changed = True
    return changed


def _refund(session: Session, clean: dict[str, Any], source: str) -> tuple[str, str | None]:
    """The refund's order is looked up under the same source (`--source`) as the refund."""
    line = clean["line"]
    fields = {"source": source, "external_id": clean["refund_id"], "order_external_id": clean["order_id"],
              "refunded_at": clean["refunded_at"], "amount_fen": clean["amount_fen"],
              "lines": [{k: v for k, v in line.items() if v is not None}] if line else None,
              "reason": clean["reason"]}
    amount = clean["amount_column"] or "amount"
    column_of = {"external_id": "refund_id", "order_external_id": "order_id", "refunded_at": "refunded_at",
                "amount_fen": amount, "lines": "sku", "lines[0]": "sku", "lines[0].sku": "sku",
                "lines[0].quantity": "quantity", "lines[0].amount_fen": amount, "ingest.id_reused": "refund_id"}
    outcome = _ingest(session, "refund", RefundIn, fields, column_of)
    if outcome.status == "pending":
        return "created", "order not found yet; kept pending until it arrives"
    if outcome.status == "created":
        return "created", None
    refund = session.get_one(Refund, outcome.id)
    if refund.status == "pending":
        return "unchanged", "order still not found; kept pending until it arrives"
    if refund.status == "rejected":
        return "unchanged", f"rejected when its order arrived: {refund.error}"
    return "unchanged", None


def _event(session: Session, clean: dict[str, Any], source: str) -> tuple[str, str | None]:
    fields = pg_events.event_fields(clean, source)
    column_of = {"external_id": "event_id", "name": "name", "occurred_at": "occurred_at", "store_code": "store_code",
                "properties": "properties", "member": "member_phone", "member.identities.phone": "member_phone",
                "member.identities.external_id": "member_external_id",
                "member.identities.card_no": "member_card_no", "ingest.id_reused": "event_id"}
    outcome = _ingest(session, "event", EventIn, fields, column_of)
    return ("created" if outcome.status == "created" else "unchanged"), None


def _ingest(session: Session, kind: str, schema: type[RefundIn | EventIn], fields: dict[str, Any],
            column_of: dict[str, str]) -> Outcome:
    """Ingest one item; a problem with it becomes a RowError naming the file's column, not the
    ingestion schema's field (the row validators catch almost everything before this)."""
    try:
        data = schema.model_validate({k: v for k, v in fields.items() if v is not None})
        return ingest.ingest(session, principal=SYSTEM, kind=kind, data=data, earn=False)
    except ValidationError as exc:
        error = exc.errors()[0]
        field_ = ".".join(str(p) for p in error["loc"])
        raise rows.RowError(column_of.get(field_, column_of.get(field_.split(".")[0], field_)), error["msg"]) from None
    except OrchardError as exc:
        field_, reason = ((exc.errors[0]["field"], exc.errors[0]["reason"]) if exc.errors
                          else (exc.extra.get("code", exc.code), exc.detail))
        raise rows.RowError(column_of.get(field_, field_), reason) from None


#: Kinds with a set-based fast path (both databases): kind → its batch writer.
_FAST: dict[str, pg_bulk.FastWriter] = {"orders": pg_orders.write_orders, "members": pg_members.write_members,
                                        "events": pg_events.write_events, "tags": tags.write_tags}
#: Kinds whose replay fingerprint `_prepare` computes on the reading thread.
_FINGERPRINT = {"orders": pg_orders.order_fingerprint, "events": pg_events.event_fingerprint}

#: kind → (row validator, writer, report column of the writer's warnings)
_KINDS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., tuple[str, str | None]], str]] = {
    "orders": (rows.order_row, _order, "identities"),
    "members": (rows.member_row, _member, "identities"),
    "refunds": (rows.refund_row, _refund, "order_id"),
    "events": (rows.event_row, _event, "member_phone"),
    "tags": (rows.tag_row, tags.write_tag, "tags"),
}
