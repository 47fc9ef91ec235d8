"""What the set-based fast paths of imports share (imports.pg_orders, imports.pg_members): the work
tables of a batch (`WorkTables`: the one place where PostgreSQL and SQLite differ), an in-memory
union-find for identity clusters, and running a batch — the fast path for the rows whose outcome is
unambiguous, the per-row path for the rows it hands back — in one transaction.

The modules keep their `pg_` names for now (they run on SQLite too); see docs/architecture.md.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
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


def sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy stores it on SQLite, for statements that bypass its types (work tables
    filled with `executemany`, parameters of `text()`): times as naive UTC text with microseconds
    (`db.UTCDateTime` over SQLite's DATETIME), dates as ISO text. Comparisons of stored times in SQL
    are text comparisons there, so every time must have exactly this shape."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


#: The import connection's SQLite settings: a 64 MB page cache for the database (default 2 MB) so the
#: indexes of orders and identities a batch probes stay cached, and as much for the temp database,
#: so a batch's work tables stay in memory. (`temp_store = MEMORY` would say the same, but SQLite
#: refuses to change it inside a transaction once the connection has used a temp table — other
#: set-based jobs share pooled connections.) The page cache only grows as it is used.
#: `synchronous` stays NORMAL (db._sqlite_pragmas): in WAL mode a committed batch survives a killed
#: process; a power cut may lose the last committed batches but never corrupts the file, and a re-run
#: imports them again. OFF could corrupt the database on a power cut, so it is not used.
SQLITE_PRAGMAS = ("PRAGMA main.cache_size = -65536", "PRAGMA temp.cache_size = -65536")


class WorkTables:
    """A batch's work tables, and the few statements whose SQL differs between the databases.

    PostgreSQL: `CREATE TEMP TABLE … ON COMMIT DROP`, filled with COPY; JIT off (it costs more than it
    saves on freshly filled tables) and `synchronous_commit = off` (a batch lost to a database crash is
    re-imported by running the file again: imports are idempotent).
    SQLite: plain TEMP tables (no ON COMMIT DROP: `close` drops them at the end of the batch, and a
    rollback takes their creation back), filled with `executemany` through the driver; values in
    SQLAlchemy's storage shape (`sqlite_value`); arrays as JSON read with `json_each`.
    Everything else — the set-based statements themselves — is written once for both."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.sqlite = session.get_bind().dialect.name == "sqlite"
        self.names: list[str] = []

    def create(self, *tables: str) -> None:
        """`tables`: each `name (column type, …)`; created empty, after dropping any leftover."""
        for statement in SQLITE_PRAGMAS if self.sqlite else ("SET LOCAL jit = off",
                                                              "SET LOCAL synchronous_commit = off"):
            self.session.execute(text(statement))
        for table in tables:
            self._create(table.split("(", 1)[0].strip(), table)

    def _create(self, name: str, definition: str, params: dict[str, Any] | None = None) -> None:
        self.session.execute(text(f"DROP TABLE IF EXISTS {name}"))
        suffix = "" if self.sqlite else " ON COMMIT DROP"
        as_select = definition.startswith("AS ")
        self.session.execute(text(f"CREATE TEMP TABLE {name}{suffix} {definition}" if as_select
                                  else f"CREATE TEMP TABLE {definition}{suffix}"), self.params(params or {}))
        self.names.append(name)

    def fill(self, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        if not self.sqlite:
            copy_rows(self.session, table, list(columns), list(rows))
            return
        cur = self.session.connection().connection.driver_connection.cursor()
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        (tuple(map(sqlite_value, row)) for row in rows))
        cur.close()

    def create_as(self, name: str, select: str, params: dict[str, Any] | None = None) -> None:
        """A work table from a query (dropped with the others)."""
        self._create(name, f"AS {select}", params)

    def analyze(self) -> None:
        """Statistics for the planner: PostgreSQL assumes an unanalysed temp table is large. SQLite's
        planner needs none for these statements (every join probes a primary key or unique index)."""
        if not self.sqlite:
            self.session.execute(text(f"ANALYZE {', '.join(self.names)}"))

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.session.execute(text(sql), self.params(params or {}))

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: sqlite_value(v) for k, v in params.items()} if self.sqlite else params

    def any(self, expr: str, name: str) -> str:
        """SQL for `expr` being one of the values of the array parameter `name` (see `array`)."""
        return f"{expr} IN (SELECT value FROM json_each(:{name}))" if self.sqlite else f"{expr} = ANY(:{name})"

    def array(self, values: list[Any]) -> Any:
        return json.dumps(values) if self.sqlite else values

    def number_new_members(self, table: str, key: str) -> None:
        """Give the rows of `table` with `is_new` the ids of members yet to be inserted, in `key` order
        (as the per-row path would create them): PostgreSQL draws them from members' sequence; SQLite
        gives a rowid table max(id) + 1 onwards, which is what it would give each insert in turn (the
        batch holds the write lock: `BEGIN IMMEDIATE`)."""
        ids = ("(SELECT coalesce(max(id), 0) FROM members) + row_number() OVER (ORDER BY {key})" if self.sqlite
               else "nextval('members_id_seq')").format(key=key)
        self.execute(f"UPDATE {table} AS w SET member_id = n.id FROM (SELECT {key}, {ids} AS id "  # noqa: S608
                     f"FROM (SELECT {key} FROM {table} WHERE is_new ORDER BY {key}) o) n WHERE w.{key} = n.{key}")

    def earliest(self, a: str, b: str) -> str:
        """The earlier of two times, NULL only if both are (PostgreSQL's LEAST; SQLite's min() of two
        is NULL if either is)."""
        return f"LEAST({a}, {b})" if not self.sqlite else f"min(coalesce({a}, {b}), coalesce({b}, {a}))"

    def latest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})" if not self.sqlite else f"max(coalesce({a}, {b}), coalesce({b}, {a}))"

    def close(self) -> None:
        """SQLite: drop the work tables now (PostgreSQL drops them at commit)."""
        if self.sqlite:
            for name in self.names:
                self.session.execute(text(f"DROP TABLE {name}"))
        self.names = []


@dataclass
class Received:
    """What a batch of orders or events knows before it writes (`received`)."""

    repeats: set[int]  # rows whose id an earlier row of the batch has: the per-row path replays them
    hashes: dict[int, str]  # each row's replay fingerprint
    stored: dict[str, str]  # ids already stored under the source → their fingerprints
    ids: list[Any]  # the batch's ids, as an array parameter (`WorkTables.array`)


def received(work: WorkTables, items: list[tuple[int, dict[str, Any]]], source: str, table: str, id_key: str,
             fingerprint: Callable[[dict[str, Any], str], str]) -> Received:
    """Repeated ids, fingerprints (the reading thread may have computed them: `body_hash`), and one
    look-up of the ids `table` already holds under `source`."""
    repeats: set[int] = set()
    seen: set[str] = set()
    hashes: dict[int, str] = {}
    for i, clean in items:
        if clean[id_key] in seen:
            repeats.add(i)
        seen.add(clean[id_key])
        hashes[i] = clean.get("body_hash") or fingerprint(clean, source)
    ids = work.array(sorted(seen))
    stored = {r.external_id: r.body_hash for r in work.execute(
        f"SELECT external_id, body_hash FROM {table} WHERE source = :s AND {work.any('external_id', 'ids')}",
        {"s": source, "ids": ids})}
    return Received(repeats, hashes, stored, ids)


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
