"""Run an import: stream the file, validate each row, write valid rows in batches of one
transaction each, and report invalid rows (original row number, column, reason) in a CSV.

Writes go through the same services as HTTP ingestion, keyed the same way — orders on
(source, order_id) with a canonical-body fingerprint, members on their identity keys — so importing
a file twice, or an overlapping file, creates nothing new, and a run killed half-way and started
again ends in exactly the state of an uninterrupted run (committed batches replay as duplicates).

This is the portable batched path (SQLite and PostgreSQL). The PostgreSQL COPY + set-based path
for tens of millions of rows is the next step of issue #3.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.db import transaction
from orchard.errors import OrchardError
from orchard.events import ingest
from orchard.events.schemas import OrderIn
from orchard.identity import resolve as identity_resolve
from orchard.imports import columns, rows
from orchard.imports.readers import FileUnreadable, open_table
from orchard.members.models import Member
from orchard.members.service import fill_blanks
from orchard.org.models import OrgUnit

BATCH_SIZE = 1000
SYSTEM = Principal("system", 0, "import", Role.admin, None, False)


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
               batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> ImportResult:
    """Import `path`; raises FileUnreadable only when the file itself cannot be read."""
    if kind not in columns.KINDS:
        raise FileUnreadable(f"unknown import kind {kind!r}; use one of {', '.join(columns.KINDS)}")
    table = open_table(path)
    mapping, unknown = columns.map_headers(kind, table.headers)
    _check_required(kind, mapping)
    result = ImportResult(kind=kind, unknown_columns=unknown)
    report = _Report(report_path or path.with_name(path.name + ".errors.csv"), table.headers)
    with transaction(readonly=True) as s:
        stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).tuples().all())
    size = batch_size or BATCH_SIZE
    batch: list[tuple[int, list[Any]]] = []
    try:
        for row_no, values in table.rows:
            batch.append((row_no, values))
            if len(batch) >= size:
                _write_batch(kind, batch, mapping, stores, source, result, report)
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            _write_batch(kind, batch, mapping, stores, source, result, report)
            if progress:
                progress(len(batch))
    finally:
        report.close()
    result.report_path = report.path if (result.errors or result.warnings) else None
    return result


def _check_required(kind: str, mapping: dict[str, int]) -> None:
    if kind == "orders":
        needs = [("order_id",), ("paid_at",), ("amount", "amount_fen"),
                 ("member_phone", "member_external_id", "member_card_no")]
    else:
        needs = [("phone", "external_id", "card_no", "email", "wechat_unionid", "wechat_openid")]
    for options in needs:
        if not any(o in mapping for o in options):
            raise FileUnreadable(f"the header has no column for {' / '.join(options)}")


def _write_batch(kind: str, batch: list[tuple[int, list[Any]]], mapping: dict[str, int], stores: dict[str, int],
                 source: str, result: ImportResult, report: _Report) -> None:
    with transaction() as session:
        for row_no, values in batch:
            result.rows += 1

            def get(column: str, _values=values) -> Any:
                i = mapping.get(column)
                return _values[i] if i is not None and i < len(_values) else None

            try:
                clean = rows.order_row(get, stores) if kind == "orders" else rows.member_row(get, stores)
                with session.begin_nested():
                    status, warning = (_order(session, clean, source) if kind == "orders"
                                       else _member(session, clean, source))
            except rows.RowError as exc:
                result.errors += 1
                report.add(row_no, exc.column, exc.reason, "error", values)
                continue
            except OrchardError as exc:
                result.errors += 1
                field_ = exc.errors[0]["field"] if exc.errors else exc.code
                report.add(row_no, field_, exc.detail, "error", values)
                continue
            setattr(result, status, getattr(result, status) + 1)
            if warning:
                result.warnings += 1
                report.add(row_no, "identities", warning, "warning", values)


def _order(session: Session, clean: dict[str, Any], source: str) -> tuple[str, str | None]:
    data = OrderIn(source=source, external_id=clean["order_id"], member={"identities": dict(clean["keys"])},
                   store_code=clean["store_code"], channel=clean["channel"], paid_at=clean["paid_at"],
                   amount_fen=clean["amount_fen"], lines=[clean["line"]] if clean["line"] else [])
    outcome = ingest.ingest(session, principal=SYSTEM, kind="order", data=data)
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
    if res.created:
        return "created", warning
    member = session.get_one(Member, res.member_id)
    changed = fill_blanks(member, profile, {}, [])
    if clean["joined_at"] and clean["joined_at"] < member.joined_at:
        member.joined_at, changed = clean["joined_at"], True  # history older than the first event seen
    session.flush()
    return ("updated" if changed or res.linked else "unchanged"), warning
