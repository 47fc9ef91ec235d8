"""`orchard refresh`: everything computed from member data, in dependency order, set-based.

Order: lifecycle stages and RFM (they read only orders and aggregates), then the built-in preference
tags, then rule tags (their definitions may read stages, scores and other tags), then saved segments
(which may read all of the above and each other, in their own dependency order). Each step commits
on its own so a long refresh holds no lock for its whole length and a failure keeps earlier steps.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from orchard import db
from orchard.kit.clock import utcnow

STEPS = ("lifecycle", "rfm", "preferences", "tags", "segments")


def _step(name: str, session: Session, now: dt.datetime) -> Any:
    if name == "lifecycle":
        from orchard.scoring import lifecycle

        return lifecycle.refresh(session, now=now)
    if name == "rfm":
        from orchard.scoring import rfm

        return rfm.refresh(session, now=now)
    if name == "preferences":
        from orchard.scoring import preferences

        return preferences.refresh(session, now=now)
    if name == "tags":
        from orchard.segments import tags

        return tags.refresh(session, now=now)
    from orchard.segments import service

    return service.refresh(session, now=now)


def run(session: Session | None = None, *, now: dt.datetime | None = None, only: list[str] | None = None,
        progress: Callable[[str, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the steps; with a `session` all run in it (the scheduler's job transaction), else each in
    its own transaction. Returns one entry per step: its name, seconds and result."""
    now = now or utcnow()
    out = []
    for name in STEPS:
        if only and name not in only:
            continue
        started = time.perf_counter()
        if session is not None:
            result = _step(name, session, now)
        else:
            with db.transaction() as own:
                result = _step(name, own, now)
        entry = {"step": name, "seconds": round(time.perf_counter() - started, 2), "result": result}
        out.append(entry)
        if progress:
            progress(name, entry)
    return out
