"""Id marks of incremental refreshes (`refresh_marks`): a family of marks shares a name prefix
("preferences:", "category_last:") and names one table each, plus whatever else the family keeps.

What the families share is reading them — locked, so two refreshes of one family take turns — and
the tables' top ids at the start of a pass, in one statement; what a pass then reads and how its
marks move is each family's own (`scoring.pref_scope`, `segments.order_summary`)."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from orchard.scoring.models import RefreshMark


def locked(session: Session, prefix: str) -> dict[str, RefreshMark]:
    """The family's marks by name without the prefix, locked until the transaction ends."""
    return {m.name[len(prefix):]: m for m in session.scalars(
        select(RefreshMark).where(RefreshMark.name.startswith(prefix)).with_for_update())}


def top_ids(session: Session, tables: dict[str, str]) -> dict[str, int]:
    """The highest id of each table (0 when empty), by the same keys, read in one statement."""
    row = session.execute(text("SELECT " + ", ".join(
        f"(SELECT COALESCE(MAX(id), 0) FROM {t})" for t in tables.values()))).one()
    return {k: int(v or 0) for k, v in zip(tables, row, strict=True)}


def forget(session: Session, prefix: str) -> None:
    """Delete the family's marks: its next pass starts from scratch."""
    session.execute(text("DELETE FROM refresh_marks WHERE name LIKE :p"), {"p": prefix + "%"})
