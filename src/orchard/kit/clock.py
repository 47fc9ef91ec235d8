"""Time: everything stored is UTC; the tenant's zone (ORCHARD_TIMEZONE) is only for display and for
interpreting bare dates sent by integrators (a bare date means midnight in the tenant's zone)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AfterValidator

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


def _plausible(value):
    """Dates a person could mean: year 1 or 9999 would overflow the moment they are shifted by a
    zone (a 500 instead of a clear 422)."""
    if not 1970 <= value.year <= 2999:
        raise ValueError("must be a date between 1970 and 2999")
    return value


#: A date or date-time field with a plausible year (input validation for API schemas).
PlausibleDate = Annotated[dt.date, AfterValidator(_plausible)]
PlausibleDateTime = Annotated[dt.datetime, AfterValidator(_plausible)]
