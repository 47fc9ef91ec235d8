"""Login throttling: after too many failed logins for one account or from one client address in a
window, further attempts are refused with 429 until the window moves on (OWASP API4 / S7).

Kept in process memory: enough for one server process (the default deployment); several workers
each count on their own, which only loosens the limit by the number of workers.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

MAX_FAILURES = 10
WINDOW_SECONDS = 15 * 60

_lock = threading.Lock()
_failures: dict[str, deque[float]] = defaultdict(deque)


def _prune(key: str, now: float) -> deque[float]:
    q = _failures[key]
    while q and q[0] <= now - WINDOW_SECONDS:
        q.popleft()
    return q


def retry_after(*keys: str) -> int | None:
    """Seconds to wait if any key is over the limit, else None."""
    now = time.monotonic()
    with _lock:
        waits = [int(q[0] + WINDOW_SECONDS - now) + 1 for k in keys if len(q := _prune(k, now)) >= MAX_FAILURES]
    return max(waits) if waits else None


def record_failure(*keys: str) -> None:
    now = time.monotonic()
    with _lock:
        for k in keys:
            _prune(k, now).append(now)


def clear(key: str) -> None:
    with _lock:
        _failures.pop(key, None)


def reset_all() -> None:
    with _lock:
        _failures.clear()
