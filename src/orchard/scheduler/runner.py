"""Periodic jobs run by `orchard serve`: a thread that, every few seconds, claims due jobs through a
lease in `scheduled_jobs` and runs each in its own transaction.

The lease (`UPDATE … WHERE lease_until < now` — a conditional update, so exactly one process wins)
makes it safe to run several server processes: a job runs in one of them at a time, and a process
that dies mid-job loses its lease when `lease_until` passes. Job failures are recorded on the row
(status, error) and retried at the next period; they never stop the thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchard import db
from orchard.kit.clock import tenant_zone, utcnow
from orchard.scheduler.models import ScheduledJob

log = logging.getLogger("orchard.scheduler")


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[Session, dt.datetime], Any]
    #: Seconds between runs; or None with `daily_at` (local time in the tenant's zone).
    every: int | None = None
    daily_at: dt.time | None = None
    #: How long a claim holds before another process may take the job over.
    lease_seconds: int = 3600
    #: Shared jobs take no lease: every process runs them each period, because the work itself is claimed
    #: row by row (`FOR UPDATE SKIP LOCKED`), so several workers share it and a killed worker holds
    #: nothing but its own rows (which its row claims release) — not the whole job for a lease's length.
    shared: bool = False

    def next_after(self, now: dt.datetime) -> dt.datetime:
        if self.every is not None:
            return now + dt.timedelta(seconds=self.every)
        zone = tenant_zone()
        local = now.astimezone(zone)
        at = dt.datetime.combine(local.date(), self.daily_at, zone)
        if at <= local:
            at = dt.datetime.combine(local.date() + dt.timedelta(days=1), self.daily_at, zone)
        return at.astimezone(dt.UTC)


def _segments_sweep(session: Session, now: dt.datetime) -> Any:
    from orchard.segments import service

    return service.sweep(session, now=now)


def _segments_due(session: Session, now: dt.datetime) -> Any:
    from orchard.segments import service

    return service.refresh(session, due_only=True, now=now)


def _refresh_all(session: Session, now: dt.datetime) -> Any:
    from orchard.segments import refresh

    return refresh.run(session, now=now)


def _journeys_events(session: Session, now: dt.datetime) -> Any:
    """Cursor-based triggers (events, orders, tier changes, points, segment entry and exit): they read
    only what is new, so they run every few seconds and a journey starts within seconds of its event."""
    from orchard.journeys import engine, triggers

    return engine.sweep(session, now=now, kinds=triggers.CURSOR_KINDS, housekeeping=False)


def _journeys_dates(session: Session, now: dt.datetime) -> Any:
    """Absence, date and schedule triggers look at every member: every 10 minutes is soon enough for
    a day-grained trigger, and they are keyed, so each run enters only who is new."""
    from orchard.journeys import engine, triggers

    return engine.sweep(session, now=now, kinds=triggers.SWEEP_KINDS, housekeeping=False)


def _journeys_sweep(session: Session, now: dt.datetime) -> Any:
    """Conversions (exit_on) and runs whose awaited event arrived."""
    from orchard.journeys import engine

    return engine.sweep(session, now=now, kinds=(), housekeeping=True)


#: A draining job (advance, dispatch) works batch after batch, each in its own transaction, for at
#: most this long per period: a backlog drains at full speed instead of one batch per period.
DRAIN_SECONDS = 20.0
ADVANCE_BATCH = 1000
DISPATCH_BATCH = 200


def _journeys_advance(session: Session, now: dt.datetime) -> Any:
    from orchard.journeys import engine

    del session  # each batch of runs is its own transaction (its row claims end with it)
    started, total = time.monotonic(), 0
    while True:
        with db.transaction() as batch:
            stats = engine.advance(batch, now=now, limit=ADVANCE_BATCH)
        total += stats.runs
        if stats.runs < ADVANCE_BATCH or time.monotonic() - started > DRAIN_SECONDS:
            return {"runs": total}


def _outbox_dispatch(session: Session, now: dt.datetime) -> Any:
    from orchard.messaging import outbox, sending

    del session  # dispatch runs its own short transactions (two per batch)
    providers, started, total = sending.providers(), time.monotonic(), 0
    while True:
        stats = outbox.dispatch(providers, now=now, to_outbound=sending.to_outbound, limit=DISPATCH_BATCH,
                                rate=sending.rate_limiter())
        total += stats.claimed
        if stats.claimed < DISPATCH_BATCH or time.monotonic() - started > DRAIN_SECONDS:
            return {"claimed": total}


def _points_expire(session: Session, now: dt.datetime) -> Any:
    from orchard.loyalty.expiry import expire_due

    return expire_due(session, now=now)


def _coupons_expire(session: Session, now: dt.datetime) -> Any:
    from orchard.coupons.redeeming import expire_due

    return expire_due(session, now=now)


def _tiers_evaluate(session: Session, now: dt.datetime) -> Any:
    from orchard.loyalty import tiers

    return tiers.evaluate(session, now=now, actor="system:scheduler")


JOBS: tuple[Job, ...] = (
    Job("segments.sweep", _segments_sweep, every=10, lease_seconds=600),
    Job("segments.refresh_due", _segments_due, every=300),
    Job("journeys.events", _journeys_events, every=5, lease_seconds=600),
    Job("journeys.dates", _journeys_dates, every=600, lease_seconds=1800),
    Job("journeys.sweep", _journeys_sweep, every=30, lease_seconds=900),
    Job("journeys.advance", _journeys_advance, every=5, shared=True),
    Job("outbox.dispatch", _outbox_dispatch, every=2, shared=True),
    Job("refresh.nightly", _refresh_all, daily_at=dt.time(3, 0), lease_seconds=4 * 3600),
    Job("points.expire", _points_expire, daily_at=dt.time(0, 10)),
    Job("coupons.expire", _coupons_expire, daily_at=dt.time(0, 20)),
    Job("tiers.evaluate", _tiers_evaluate, daily_at=dt.time(1, 0), lease_seconds=4 * 3600),
)


#: When each shared job is next due in this process, by (process, job).
_shared_next: dict[tuple[str, str], dt.datetime] = {}


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


def ensure_rows(session: Session, jobs: tuple[Job, ...] = JOBS, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    for job in jobs:
        first = now if job.every is not None else job.next_after(now)
        session.execute(dialect.insert(ScheduledJob).values(name=job.name, next_run_at=first)
                        .on_conflict_do_nothing(index_elements=["name"]))


def claim(session: Session, job: Job, now: dt.datetime, me: str) -> bool:
    """Take the job if it is due and nobody holds a live lease (one conditional UPDATE)."""
    J = ScheduledJob
    won = session.execute(update(J).where(J.name == job.name, J.next_run_at <= now,
                                          or_(J.lease_until.is_(None), J.lease_until < now))
                          .values(leased_by=me, lease_until=now + dt.timedelta(seconds=job.lease_seconds),
                                  last_started_at=now)
                          .execution_options(synchronize_session=False)).rowcount
    return won == 1


def run_due(jobs: tuple[Job, ...] = JOBS, *, now: dt.datetime | None = None, me: str | None = None) -> list[str]:
    """Run every due job once (each claimed, run and released in its own transactions). Returns the
    names of the jobs run."""
    me = me or _me()
    ran = []
    with db.transaction() as session:
        ensure_rows(session, jobs, now=now)
    for job in jobs:
        started_at = now or utcnow()
        if job.shared:
            due = _shared_next.get((me, job.name), started_at)
            if started_at < due <= started_at + dt.timedelta(seconds=job.every or 0):
                continue  # this process ran it this period (a due time further out is a clock set back)
            _shared_next[(me, job.name)] = job.next_after(started_at)
        else:
            with db.transaction() as session:
                if not claim(session, job, started_at, me):
                    continue
        ran.append(job.name)
        started = time.perf_counter()
        status, error = "ok", None
        try:
            with db.transaction() as session:
                job.run(session, started_at)
        except Exception:  # noqa: BLE001 — recorded on the job row and logged; the next period retries
            status, error = "failed", traceback.format_exc()[-4000:]
            log.exception("scheduled job %s failed", job.name)
        with db.transaction() as session:
            J = ScheduledJob
            if job.shared:  # the last run of any process, for `orchard scheduler status`
                session.execute(update(J).where(J.name == job.name).values(
                    last_started_at=started_at, last_finished_at=utcnow(), last_status=status, last_error=error,
                    last_duration_ms=int((time.perf_counter() - started) * 1000),
                    next_run_at=_shared_next[(me, job.name)]).execution_options(synchronize_session=False))
                continue
            session.execute(update(J).where(J.name == job.name, J.leased_by == me).values(
                last_finished_at=utcnow(), last_status=status, last_error=error,
                last_duration_ms=int((time.perf_counter() - started) * 1000),
                next_run_at=job.next_after(utcnow() if now is None else started_at), leased_by=None,
                lease_until=None).execution_options(synchronize_session=False))
    return ran


def status(session: Session) -> list[ScheduledJob]:
    return list(session.scalars(select(ScheduledJob).order_by(ScheduledJob.name)))


class Scheduler:
    """The thread `orchard serve` starts (setting ORCHARD_SCHEDULER, on by default for `serve`)."""

    def __init__(self, tick_seconds: float = 2.0) -> None:
        self.tick = tick_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orchard-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait(self, seconds: float) -> bool:
        """Sleep until stopped or `seconds` pass; True once stopped."""
        return self._stop.wait(seconds)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                run_due()
            except Exception:  # noqa: BLE001 — e.g. the database is briefly away: try again next tick
                log.exception("scheduler tick failed")
            self._stop.wait(self.tick)
