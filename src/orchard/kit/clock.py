"""Time: everything stored is UTC; the tenant's zone (ORCHARD_TIMEZONE) is only for display and for
interpreting bare dates sent by integrators (a bare date means midnight in the tenant's zone)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from orchard.config import get_settings


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def tenant_zone() -> ZoneInfo:
    return ZoneInfo(get_settings().timezone)


def as_utc(value: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; a naive one is read in the tenant's zone."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=tenant_zone())
    return value.astimezone(dt.UTC)
