"""Fast path for behaviour-event imports: set-based SQL over work tables instead of one savepoint,
identity resolution, insert and aggregate update per row (PostgreSQL: work tables filled with COPY;
SQLite: with executemany; imports.pg_bulk.WorkTables holds the little that differs).

Why: a history of behaviour events is the largest file a brand brings (the demo writes ~3 per member,
a real app log tens), and row by row an event cost ~3 ms (330 events/s: 30M events would take a day).

For one batch (one transaction) of validated rows it must end in exactly the state the per-row path
(`events.ingest.ingest` with earn=False) would reach, so it takes only the rows whose outcome is
unambiguous and hands the rest back to the per-row path (which runs them after this, in file order):

1. rows repeating an event id already seen in the batch go back (a replay or a conflict of the first);
2. events already stored: same fingerprint → unchanged, another → a conflict error;
3. events named as the one pending points wait for (`points_order_pending_event`) go back: the
   per-row path releases those points (`loyalty.earning.release_on_event`);
4. the member must be decided without writing anything: every key of the row already belongs to one
   member (the per-row path then writes no identity and records no merge candidate). A row with an
   unknown key (a new member, a key to link) or keys of two members goes back;
5. the rest is inserted in file order, members' "last event / visit / login" times moved in one
   `UPDATE … FROM`, and the members queued for the segments' real-time sweep.
An import never earns (history), so event-earning rules play no part. A unique-constraint race with a
concurrent writer raises IntegrityError; the caller then redoes the batch on the per-row path
(tests/imports/test_pg_events.py holds the paths equal).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from orchard.config import get_settings
from orchard.events import aggregates
from orchard.identity.resolve import owners_of
from orchard.imports.pg_bulk import DIRTY, RowOutcome, WorkTables, received
from orchard.imports.rows import RowError
from orchard.kit.clock import utcnow
from orchard.kit.hashing import fingerprint


def event_fields(clean: dict[str, Any], source: str) -> dict[str, Any]:
    """The fields of the EventIn an import row stands for (None: not given)."""
    return {"source": source, "external_id": clean["event_id"], "name": clean["name"],
            "member": {"identities": dict(clean["keys"])}, "occurred_at": clean["occurred_at"],
            "store_code": clean["store_code"], "properties": clean["properties"]}


def event_fingerprint(clean: dict[str, Any], source: str) -> str:
    """`ingest.body_fingerprint` of the EventIn of `event_fields` without building the pydantic model,
    which would cost more than the rest of an imported row; tests hold the two equal."""
    body: dict[str, Any] = {
        "source": source, "external_id": clean["event_id"], "name": clean["name"],
        "member": {"identities": dict(clean["keys"])},
        "occurred_at": clean["occurred_at"].isoformat().replace("+00:00", "Z"), "properties": clean["properties"]}
    if clean["store_code"] is not None:
        body["store_code"] = clean["store_code"]
    return fingerprint(body)


_TABLE = ("_imp_events (idx int PRIMARY KEY, member_id bigint NOT NULL, external_id text NOT NULL, "
          "body_hash text NOT NULL, name text NOT NULL, store_id bigint, occurred_at timestamptz NOT NULL, "
          "properties {json})")


def write_events(session: Session, items: list[tuple[int, dict[str, Any]]], source: str
                 ) -> tuple[dict[int, RowOutcome | RowError], list[int]]:
    """items: (index, clean row) in file order. Returns ({index: (status, None) | RowError},
    indexes to run on the per-row path, in file order)."""
    outcome: dict[int, RowOutcome | RowError] = {}
    work = WorkTables(session)
    known = received(work, items, source, "events", "event_id", event_fingerprint)
    slow, hashes, stored = known.repeats, known.hashes, known.stored
    releasing = get_settings().points_order_pending_event
    todo = []
    for i, clean in items:
        if i in slow:
            continue
        eid = clean["event_id"]
        if eid in stored:
            # The per-row path's error for it: ingest's Conflict as imports.service._ingest reports it.
            outcome[i] = ("unchanged", None) if stored[eid] == hashes[i] else RowError(
                "event_id", f"event {source}/{eid} was already received with a different body")
        elif clean["name"] == releasing:
            slow.add(i)
        else:
            todo.append((i, clean))
    owners = owners_of(session, {k for _, c in todo for k in c["keys"]})
    fast = []
    for i, clean in todo:
        found = {owners.get(k) for k in clean["keys"]}
        if len(found) == 1 and None not in found:
            fast.append((i, found.pop(), clean))
        else:
            slow.add(i)
    if fast:
        _write(work, source, [(i, member_id, clean, hashes[i]) for i, member_id, clean in fast])
        for i, _, _ in fast:
            outcome[i] = ("created", None)
    return outcome, [i for i, _ in items if i in slow]


def _write(work: WorkTables, source: str, rows: list[tuple[int, int, dict[str, Any], str]]) -> None:
    work.create(_TABLE.format(json="text" if work.sqlite else "jsonb"))
    # json.dumps as SQLAlchemy's JSON type writes it (what the per-row path stores on SQLite).
    work.fill("_imp_events", ["idx", "member_id", "external_id", "body_hash", "name", "store_id", "occurred_at",
                              "properties"],
              [(i, member_id, c["event_id"], body_hash, c["name"], c["store_id"], c["occurred_at"],
                json.dumps(c["properties"])) for i, member_id, c, body_hash in rows])
    work.analyze()
    params = {"src": source, "now": utcnow()}
    work.execute(
        "INSERT INTO events (source, external_id, body_hash, member_id, anonymous_id, name, store_id, occurred_at, "
        "received_at, properties) SELECT :src, external_id, body_hash, member_id, NULL, name, store_id, occurred_at, "
        ":now, properties FROM _imp_events ORDER BY idx", params)
    # One row per member: its latest event, visit and login of the batch (aggregates.on_event per row).
    # (event names are identifiers: events.schemas.EVENT_NAME)
    lasts = "".join(f", max(CASE WHEN name = '{name}' THEN occurred_at END) AS {column}"
                    for name, column in aggregates.LAST_COLUMN.items())
    work.create_as("_imp_event_sums", f"SELECT member_id, max(occurred_at) AS last_event_at{lasts} "
                   "FROM _imp_events GROUP BY member_id")
    moves = ", ".join(f"{column} = {work.latest(f'a.{column}', f's.{column}')}"
                      for column in ("last_event_at", *aggregates.LAST_COLUMN.values()))
    work.execute(f"UPDATE member_aggregates AS a SET {moves} FROM _imp_event_sums s WHERE a.member_id = s.member_id")
    work.execute(DIRTY.format(table="_imp_event_sums"), params)
    work.close()
