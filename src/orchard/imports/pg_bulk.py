"""What the PostgreSQL fast paths of imports share (imports.pg_orders, imports.pg_members): COPY into
a table, an in-memory union-find for identity clusters, and running a batch — the fast path for the
rows whose outcome is unambiguous, the per-row path for the rows it hands back — in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.errors import OrchardError
from orchard.imports.rows import RowError

#: Who an import acts as: unscoped, unmasked; its writes are audited as "system:0".
#: Queue a batch's members for the segments' real-time sweep (segments.dirty), in member-id order like
#: every other marker; `{table}` is the batch's work table with a member_id column.
DIRTY = ("INSERT INTO segment_dirty_members (member_id, since) SELECT DISTINCT member_id, :now FROM {table} "
         "WHERE member_id IS NOT NULL ORDER BY member_id ON CONFLICT (member_id) DO UPDATE SET since = excluded.since")
SYSTEM = Principal("system", 0, "import", Role.admin, None, False)

#: (status, warning) of one row: status "created" | "updated" | "unchanged".
RowOutcome = tuple[str, str | None]
FastWriter = Callable[[Session, list[tuple[int, dict[str, Any]]], str],
                      tuple[dict[int, "RowOutcome | OrchardError | RowError"], list[int]]]
SlowWriter = Callable[[Session, dict[str, Any], str], RowOutcome]


class Redo(Exception):
    """The fast path met something only the per-row path decides (e.g. an order earning more than a
    points entry may hold): the whole batch runs on the per-row path, as after a unique-key race."""


class Clusters:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        self.parent[self.find(a)] = self.find(b)


def copy_rows(session: Session, table: str, columns: list[str], rows: list[tuple]) -> None:
    if not rows:
        return
    cur = session.connection().connection.driver_connection.cursor()
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def run_batch(session: Session, items: list[tuple[int, dict[str, Any]]], source: str, fast: FastWriter,
              slow: SlowWriter) -> dict[int, RowOutcome | OrchardError]:
    """The fast path for what it can take, the per-row path (`slow`) for the rest, in one transaction.
    A unique-constraint race with a concurrent writer (or `Redo`) sends the whole batch down the
    per-row path."""
    try:
        with session.begin_nested():
            outcome, slow_rows = fast(session, items, source)
    except (IntegrityError, Redo):
        outcome, slow_rows = {}, [i for i, _ in items]
    by_index = dict(items)
    for i in slow_rows:
        try:
            with session.begin_nested():
                outcome[i] = slow(session, by_index[i], source)
        except (OrchardError, RowError) as exc:
            outcome[i] = exc
    return outcome
