"""The queue of members whose data changed since their real-time segments were last checked.

Writers (ingestion, the points ledger, profile edits) call `mark` in their own transaction: one
`INSERT … ON CONFLICT DO UPDATE` of the time, so a busy member costs one row however many events arrive;
the sweep (`segments.service.sweep`) re-checks the queued members set-based and removes what it handled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Select, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.kit.clock import utcnow
from orchard.segments.models import DirtyMember


def _upsert(session: Session):
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(DirtyMember)
    # A member already queued gets the newer time: a sweep that read it before this change deletes only
    # the row it read (same `since`), so this change is checked by the next sweep, never lost.
    return stmt.on_conflict_do_update(index_elements=["member_id"], set_={"since": stmt.excluded.since})


def mark_from(session: Session, member_ids: Select, *, at: dt.datetime) -> None:
    """`mark` for a set given as a query of member ids (one INSERT … SELECT, no rows through Python)."""
    ids = member_ids.subquery()
    session.execute(_upsert(session).from_select(
        ["member_id", "since"], select(ids.c.member_id, literal(at, UTCDateTime())).order_by(ids.c.member_id)))


def mark(session: Session, member_ids: Iterable[int | None], *, at: dt.datetime | None = None) -> None:
    """Queue these members for a real-time re-check (ids in ascending order, so that two writers
    marking overlapping sets lock the rows in the same order and cannot deadlock)."""
    ids = sorted({i for i in member_ids if i is not None})
    if not ids:
        return
    at = at or utcnow()
    session.execute(_upsert(session), [{"member_id": i, "since": at} for i in ids])
