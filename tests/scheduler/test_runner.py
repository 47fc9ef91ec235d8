"""The scheduler: due jobs run once per period, a live lease keeps a second process out, a failure
is recorded and retried, daily jobs fall at their local time."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from orchard import db
from orchard.scheduler import runner
from orchard.scheduler.models import ScheduledJob

SH = dt.timezone(dt.timedelta(hours=8))


def test_due_jobs_run_once_and_failures_are_recorded(clean_db):
    calls: list[str] = []

    def ok(session, now):
        calls.append("ok")

    def boom(session, now):
        raise RuntimeError("nope")

    jobs = (runner.Job("t.ok", ok, every=60), runner.Job("t.boom", boom, every=60))
    now = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
    assert runner.run_due(jobs, now=now, me="p1") == ["t.ok", "t.boom"]
    assert runner.run_due(jobs, now=now + dt.timedelta(seconds=30), me="p1") == []  # not due yet
    assert calls == ["ok"]
    with db.transaction(readonly=True) as s:
        rows = {j.name: j for j in s.scalars(select(ScheduledJob))}
    assert rows["t.boom"].last_status == "failed" and "RuntimeError: nope" in rows["t.boom"].last_error
    assert rows["t.ok"].last_status == "ok" and rows["t.ok"].next_run_at == now + dt.timedelta(seconds=60)
    assert rows["t.ok"].leased_by is None


def test_a_live_lease_keeps_another_process_out(clean_db):
    job = runner.Job("t.lease", lambda s, n: None, every=60, lease_seconds=600)
    now = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
    with db.transaction() as s:
        runner.ensure_rows(s, (job,), now=now)
    with db.transaction() as s:
        assert runner.claim(s, job, now, "p1") is True
    with db.transaction() as s:
        assert runner.claim(s, job, now + dt.timedelta(seconds=5), "p2") is False
    with db.transaction() as s:  # p1 died: after its lease, p2 takes over
        assert runner.claim(s, job, now + dt.timedelta(seconds=601), "p2") is True


def test_daily_jobs_fall_at_their_local_time():
    job = runner.Job("t.daily", lambda s, n: None, daily_at=dt.time(3, 0))
    before = dt.datetime(2026, 11, 24, 2, 0, tzinfo=SH)
    after = dt.datetime(2026, 11, 24, 3, 0, tzinfo=SH)
    assert job.next_after(before.astimezone(dt.UTC)) == dt.datetime(2026, 11, 24, 3, 0, tzinfo=SH)
    assert job.next_after(after.astimezone(dt.UTC)) == dt.datetime(2026, 11, 25, 3, 0, tzinfo=SH)


def test_shared_jobs_run_in_every_process_without_a_lease(clean_db, monkeypatch):
    """Advance and dispatch claim their rows themselves: each process runs them every period, and a
    process killed mid-run holds no lease that would keep the others out."""
    monkeypatch.setattr(runner, "_shared_next", {})  # this process's memory of when it last ran them
    calls: list[str] = []
    job = runner.Job("t.shared", lambda s, n: calls.append("x"), every=5, shared=True)
    now = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
    assert runner.run_due((job,), now=now, me="p1") == ["t.shared"]
    assert runner.run_due((job,), now=now, me="p2") == ["t.shared"]  # no lease keeps p2 out
    assert runner.run_due((job,), now=now + dt.timedelta(seconds=2), me="p1") == []  # p1's period not over
    assert runner.run_due((job,), now=now + dt.timedelta(seconds=5), me="p1") == ["t.shared"]
    assert len(calls) == 3
    with db.transaction(readonly=True) as s:
        row = s.scalar(select(ScheduledJob).where(ScheduledJob.name == "t.shared"))
    assert row.leased_by is None and row.lease_until is None and row.last_status == "ok"
    assert {j.name for j in runner.JOBS if j.shared} == {"journeys.advance", "outbox.dispatch"}
