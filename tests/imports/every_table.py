"""Every row of every table, comparable between two runs that reached the same state by different paths
(the set-based fast path and the per-row path): what a row says, not the ids and times that depend on
the path taken.

- members are named by their identity keys (member ids differ: the fast path creates its members
  before the per-row path runs the rows it handed back), orders by (source, external id), so every
  column referring to either compares by meaning; other surrogate ids are left out;
- times a path stamps with its own clock ("now": created_at, updated_at, at, since, …) compare only
  as set or not set; times taken from the file (paid_at, joined_at, first_order_at, …) compare as they
  are;
- JSON compares parsed (PostgreSQL's jsonb and SQLite's text store the same object differently).
Tables neither run wrote stay out, so a table only one path writes is a difference."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, text

from orchard import db
from orchard.db import Base

#: Columns a path fills with its own clock.
NOW = {"created_at", "updated_at", "at", "since", "received_at", "granted_at", "withdrawn_at", "applied_at"}
_MEMBER_REFS = {("members", "id"), ("members", "merged_into_id")}


def _comparable(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.dumps(json.loads(value), sort_keys=True, ensure_ascii=False)
        except ValueError:
            return value
    return value


def dump() -> dict[str, list[tuple]]:
    with db.transaction(readonly=True) as s:
        keys: dict[int, set] = {}
        for member_id, kind, value in s.execute(text("SELECT member_id, kind, value FROM identities")):
            keys.setdefault(member_id, set()).add((kind, value))
        who = {mid: tuple(sorted(v)) for mid, v in keys.items()}
        order = {oid: (src, ext) for oid, src, ext in s.execute(text("SELECT id, source, external_id FROM orders"))}
        out: dict[str, list[tuple]] = {}
        for table in Base.metadata.sorted_tables:
            rows = s.execute(select(table)).mappings().all()
            if not rows:
                continue
            member_cols = {c.name for c in table.columns
                           if (table.name, c.name) in _MEMBER_REFS
                           or any(fk.column.table.name == "members" for fk in c.foreign_keys)}
            order_cols = {c.name for c in table.columns
                          if any(fk.column.table.name == "orders" for fk in c.foreign_keys)}
            if table.name == "orders":
                order_cols.add("id")
            dumped = []
            for row in rows:
                item = []
                for column in table.columns:
                    name, value = column.name, row[column.name]
                    if name in member_cols:
                        value = ("member", who.get(value, value))
                    elif name in order_cols:
                        value = ("order", order.get(value, value))
                    elif column.primary_key and name == "id":
                        continue
                    elif name in NOW:
                        value = value is not None
                    elif table.name == "audit_log" and name == "entity_id" and row["entity"] == "member":
                        value = ("member", who.get(int(value), value))
                    item.append((name, _comparable(value)))
                dumped.append(tuple(item))
            out[table.name] = sorted(dumped, key=repr)
    return out
