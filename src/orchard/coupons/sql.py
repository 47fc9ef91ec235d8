"""Raw SQL for the set-based passes, with timestamps bound the way the columns store them (on SQLite a
naive UTC string: a datetime written with "+00:00" would compare wrongly with it as text)."""

from __future__ import annotations

from sqlalchemy import TextClause, bindparam, text

from orchard.db import UTCDateTime

_TIMES = ("now", "valid_from", "valid_to")


def sql(statement: str) -> TextClause:
    clause = text(statement)
    times = [bindparam(name, type_=UTCDateTime) for name in _TIMES if f":{name}" in statement]
    return clause.bindparams(*times) if times else clause
