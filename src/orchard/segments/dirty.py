"""The queue of members whose data changed since their real-time segments were last checked.

Writers (ingestion, the points ledger, profile edits) call `mark` in their own transaction: one
`INSERT … ON CONFLICT DO UPDATE` of the time, so a busy member costs one row however many events arrive;
the sweep (`segments.service.sweep`) re-checks the queued members set-based and removes what it handled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchard.kit.clock import utcnow
from orchard.segments.models import DirtyMember


def mark(session: Session, member_ids: Iterable[int | None], *, at: dt.datetime | None = None) -> None:
    """Queue these members for a real-time re-check (ids in ascending order, so that two writers
    marking overlapping sets lock the rows in the same order and cannot deadlock)."""
    ids = sorted({i for i in member_ids if i is not None})
    if not ids:
        return
    at = at or utcnow()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(DirtyMember)
    # A member already queued gets the newer time: a sweep that read it before this change deletes only
    # the row it read (same `since`), so this change is checked by the next sweep, never lost.
    stmt = stmt.on_conflict_do_update(index_elements=["member_id"], set_={"since": stmt.excluded.since})
    session.execute(stmt, [{"member_id": i, "since": at} for i in ids])
