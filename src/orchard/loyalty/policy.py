"""Expiry policies for earned points (SPEC L4), evaluated in the tenant's zone: "end of the month"
means the last instant of that month in Asia/Shanghai, not in UTC.

    never          points never expire
    days:N         N days after earning
    month_end      end of the month they were earned in
    year_end:N     end of the year N years after the year earned (year_end:0 = this year's 31 Dec,
                   year_end:1 = next year's, the common 年底清零 rule)
"""

from __future__ import annotations

import datetime as dt
import re

from orchard.config import get_settings
from orchard.kit.clock import tenant_zone

_POLICY = re.compile(r"never|days:(\d{1,5})|month_end|year_end:(\d{1,2})")


def check(policy: str) -> str:
    if not _POLICY.fullmatch(policy):
        raise ValueError(f"unknown points expiry policy {policy!r}: never, days:N, month_end or year_end:N")
    return policy


def expires_at(earned_at: dt.datetime, policy: str | None = None) -> dt.datetime | None:
    """When points earned at `earned_at` expire under `policy` (default: the configured one)."""
    policy = check(policy or get_settings().points_expiry)
    if policy == "never":
        return None
    zone = tenant_zone()
    local = earned_at.astimezone(zone)
    if policy.startswith("days:"):
        return (local + dt.timedelta(days=int(policy[5:]))).astimezone(dt.UTC)
    if policy == "month_end":
        first_next = (local.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        boundary = dt.datetime(first_next.year, first_next.month, 1, tzinfo=zone)
    else:
        boundary = dt.datetime(local.year + int(policy.split(":")[1]) + 1, 1, 1, tzinfo=zone)
    # Valid through the last instant of the period: expired from the first instant of the next.
    return boundary.astimezone(dt.UTC)


def describe(policy: str | None = None) -> str:
    return check(policy or get_settings().points_expiry)
