"""Expiry policies are evaluated in the tenant's zone (Asia/Shanghai), across month and year ends."""

import datetime as dt

import pytest

from orchard.loyalty import policy

CN = dt.timezone(dt.timedelta(hours=8))


@pytest.mark.parametrize(("earned", "rule", "expires"), [
    # 23:30 on 31 Jan in Shanghai is still January there (15:30 UTC): expires at Feb 1 00:00 +08:00
    (dt.datetime(2026, 1, 31, 23, 30, tzinfo=CN), "month_end", dt.datetime(2026, 2, 1, tzinfo=CN)),
    # 00:30 on 1 Feb in Shanghai is 16:30 UTC on 31 Jan: it is February's
    (dt.datetime(2026, 2, 1, 0, 30, tzinfo=CN), "month_end", dt.datetime(2026, 3, 1, tzinfo=CN)),
    (dt.datetime(2026, 12, 31, 23, 59, tzinfo=CN), "month_end", dt.datetime(2027, 1, 1, tzinfo=CN)),
    (dt.datetime(2026, 12, 31, 23, 59, tzinfo=CN), "year_end:0", dt.datetime(2027, 1, 1, tzinfo=CN)),
    (dt.datetime(2026, 12, 31, 23, 59, tzinfo=CN), "year_end:1", dt.datetime(2028, 1, 1, tzinfo=CN)),
    (dt.datetime(2027, 1, 1, 0, 1, tzinfo=CN), "year_end:1", dt.datetime(2029, 1, 1, tzinfo=CN)),
    (dt.datetime(2024, 2, 29, 12, tzinfo=CN), "days:365", dt.datetime(2025, 2, 28, 12, tzinfo=CN)),
    (dt.datetime(2026, 5, 5, tzinfo=CN), "never", None),
])
def test_expiry_policies(earned, rule, expires):
    got = policy.expires_at(earned.astimezone(dt.UTC), rule)
    assert got == (expires.astimezone(dt.UTC) if expires else None)


@pytest.mark.parametrize("rule", ["monthly", "days:", "year_end", "days:-1"])
def test_unknown_policies_are_refused(rule):
    with pytest.raises(ValueError):
        policy.check(rule)
