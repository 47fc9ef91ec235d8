"""Tenant-zone calendar days, in Python and in SQL, for both databases.

Scoring counts days the way an operator reads a calendar in the tenant's zone: an order paid at
23:59 on 1 January (Asia/Shanghai) is "90 days ago" on 1 April, one paid at 00:00 on 2 January is
89. Thresholds are turned into UTC instants in Python (`cut`), so the SQL only compares stored UTC
timestamps with bound parameters and keeps using the (member_id, paid_at) and paid_at indexes.

Where SQL must itself produce a zone date or a local midnight (R in days, a stage's `since`),
PostgreSQL uses `AT TIME ZONE` with the zone name (exact across DST changes); SQLite has no zone
database, so it shifts by the zone's UTC offset at the pass time (exact for Asia/Shanghai, which has
no DST; elsewhere off by an hour for dates on the other side of a DST change).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import Date, bindparam, text
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.kit.clock import tenant_zone


def today(now: dt.datetime) -> dt.date:
    return now.astimezone(tenant_zone()).date()


def day_start(day: dt.date) -> dt.datetime:
    """The UTC instant of local midnight at the start of `day`."""
    return dt.datetime.combine(day, dt.time(), tzinfo=tenant_zone()).astimezone(dt.UTC)


def cut(now: dt.datetime, days: int) -> dt.datetime:
    """A timestamp is fewer than `days` tenant-zone days before `now` iff it is >= this instant
    (today is day 0, so `days` = 1 means "today")."""
    return day_start(today(now) - dt.timedelta(days=days - 1))


def run(session: Session, sql: str, params: dict[str, Any]):
    """Execute `sql` with the parameters it names: `now` and `cut_*` bound as UTC instants, `today` as a
    date (so SQLite compares them in the stored text shape, PostgreSQL as timestamptz/date)."""
    used = {k: v for k, v in params.items() if re.search(rf":{k}\b", sql)}
    binds = [bindparam(k, type_=UTCDateTime()) for k in used if k == "now" or k.startswith("cut_")]
    binds += [bindparam(k, type_=Date()) for k in used if k == "today"]
    stmt = text(sql)
    return session.execute(stmt.bindparams(*binds) if binds else stmt, used)


class Sql:
    """Dialect fragments; bind `params()` with the statement. Day counts are validated ints and
    inlined."""

    def __init__(self, session: Session, now: dt.datetime) -> None:
        self.pg = session.get_bind().dialect.name == "postgresql"
        self.now = now
        self.today = today(now)
        minutes = int(now.astimezone(tenant_zone()).utcoffset().total_seconds() // 60)
        self._offset = f"{minutes:+d} minutes"
        self._back = f"{-minutes:+d} minutes"

    def params(self) -> dict:
        return {"tz": tenant_zone().key, "offset": self._offset, "back": self._back}

    def midnight_after(self, col: str, days: int) -> str:
        """Local midnight starting the day `days` after `col`'s local date, as a stored timestamp."""
        days = int(days)
        if self.pg:
            return f"((date_trunc('day', {col} AT TIME ZONE :tz) + interval '{days} days') AT TIME ZONE :tz)"
        # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff': keep that exact shape so
        # string comparisons with other stored values stay right.
        return f"(strftime('%Y-%m-%d %H:%M:%S', date({col}, :offset), '+{days} days', :back) || '.000000')"

    def days_ago(self, col: str) -> str:
        """Whole tenant-zone days from `col`'s local date to today (0 = today)."""
        if self.pg:
            return f"(:today - CAST(({col}) AT TIME ZONE :tz AS date))"
        return f"CAST(julianday(:today) - julianday(date({col}, :offset)) AS INTEGER)"
