"""Per-channel send rates (ORCHARD_CHANNELS_RATE_LIMITS): parsed strictly, kept across dispatch rounds,
and spacing a channel's sends."""

from __future__ import annotations

import time

import pytest

from orchard.config import get_settings
from orchard.messaging import sending


def test_rate_limits_parse_strictly():
    assert sending.rate_limits("sms=50, email=2.5") == {"sms": 50.0, "email": 2.5}
    assert sending.rate_limits("") == {}
    for bad in ("sms", "sms=fast", "sms=0", "fax=3"):
        with pytest.raises(ValueError, match="ORCHARD_CHANNELS_RATE_LIMITS"):
            sending.rate_limits(bad)


def test_the_limiter_outlives_a_round_and_spaces_sends(monkeypatch):
    monkeypatch.setenv("ORCHARD_CHANNELS_RATE_LIMITS", "sms=20")
    get_settings.cache_clear()
    try:
        limiter = sending.rate_limiter()
        assert sending.rate_limiter() is limiter  # the same buckets next round
        started = time.monotonic()
        for _ in range(5):
            limiter.wait("sms")
            limiter.wait("email")  # not limited
        assert time.monotonic() - started >= 4 / 20 * 0.9
    finally:
        monkeypatch.delenv("ORCHARD_CHANNELS_RATE_LIMITS")
        get_settings.cache_clear()
