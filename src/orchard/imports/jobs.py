"""Import jobs: the rows behind `/api/v1/imports` and the worker that runs them.

Each server process runs one worker thread (`Worker`, started and stopped by the app's lifespan;
`ORCHARD_IMPORT_WORKER=false` turns it off in a process). It takes the oldest `queued` job with a
conditional UPDATE (`WHERE status = 'queued'`), so several processes never run the same job, and
runs one job at a time through `imports.service.run_import`, at the speed of the CLI; other jobs
wait in the queue, oldest first. Several server processes run several jobs at once.

While a job runs, every committed batch adds its rows to `rows_processed` and refreshes
`heartbeat_at`, and a heartbeat thread refreshes it every `HEARTBEAT_SECONDS` between batches.
A job whose process died stays `running` in the database; it is marked `failed` with the code
`imports.interrupted` (never re-run by itself: a file that crashed the server would crash it
again):

* when its worker was a process on this host that no longer exists (or an earlier process with
  our own pid, as in a restarted container): a restarted server fails them at startup;
* when its heartbeat is older than `STALE_AFTER`, wherever it ran.

Every worker checks both at startup and every `SWEEP_SECONDS`.

Rows committed before the interruption stay imported. Imports are idempotent, so uploading the
same file again finishes the work (those rows then count as unchanged). On a graceful shutdown the
running job stops after its current batch and is failed the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anyio import to_thread
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.auth.service import Principal
from orchard.config import get_settings
from orchard.db import transaction
from orchard.errors import NotFound
from orchard.imports.models import ImportJob
from orchard.imports.readers import FileUnreadable
from orchard.imports.service import run_import
from orchard.imports.uploads import Upload
from orchard.kit.clock import utcnow
from orchard.kit.pagination import decode_cursor, encode_cursor

log = logging.getLogger("orchard.imports")

HEARTBEAT_SECONDS = 15.0
STALE_AFTER = dt.timedelta(minutes=2)
POLL_SECONDS = 2.0
SWEEP_SECONDS = 30.0
#: Rows per transaction for HTTP imports (None: run_import's default).
BATCH_SIZE: int | None = None

HOST = socket.gethostname()[:100] or "localhost"
#: Ids of the workers alive in this process (a stopped one is removed once its thread has ended).
_LIVE: set[str] = set()

INTERRUPTED = "imports.interrupted"
UNREADABLE = "imports.unreadable"
INTERNAL = "imports.internal"
_DEAD = "the server process running this import stopped (restart or crash) before it finished"
_SHUTDOWN = "the server shut down while this import was running"


# ---- rows ----------------------------------------------------------------------------------------

def data_path(relative: str) -> Path:
    return Path(get_settings().data_dir) / relative


def _relative(path: Path) -> str:
    return path.relative_to(Path(get_settings().data_dir)).as_posix()


def create(session: Session, *, principal: Principal, upload: Upload) -> ImportJob:
    """The queued job for a stored upload, and its audit row, in the caller's transaction."""
    job = ImportJob(kind=upload.kind, status="queued", source=upload.source, earn=upload.earn,
                    file_name=upload.file_name,
                    file_path=_relative(upload.path), size_bytes=upload.size, sha256=upload.sha256,
                    rows_processed=0, created=0, unchanged=0, updated=0, errors=0, warnings=0, unknown_columns=[],
                    created_by=principal.actor)
    session.add(job)
    session.flush()
    audit.record(session, actor=principal.actor, action="import.uploaded", entity="import_job", entity_id=job.id,
                 data={"kind": upload.kind, "source": upload.source, "earn": upload.earn,
                       "file_name": upload.file_name,
                       "size_bytes": upload.size, "sha256": upload.sha256})
    session.flush()
    return job


def get(session: Session, job_id: int) -> ImportJob:
    job = session.get(ImportJob, job_id)
    if job is None:
        raise NotFound(f"import job {job_id} not found", code="imports.not_found")
    return job


def list_jobs(session: Session, *, status: str | None = None, kind: str | None = None, limit: int = 50,
              cursor: str | None = None) -> tuple[list[ImportJob], str | None]:
    """Newest first; the cursor is the last id of the page (the next page has smaller ids)."""
    stmt = select(ImportJob)
    if status:
        stmt = stmt.where(ImportJob.status == status)
    if kind:
        stmt = stmt.where(ImportJob.kind == kind)
    before = decode_cursor(cursor)
    if before is not None:
        stmt = stmt.where(ImportJob.id < before)
    rows = list(session.scalars(stmt.order_by(ImportJob.id.desc()).limit(limit + 1)))
    return rows[:limit], (encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)


# ---- running -------------------------------------------------------------------------------------

def new_worker_id() -> str:
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def claim_next(worker_id: str) -> int | None:
    """Mark the oldest queued job running for `worker_id`; its id, or None (nothing queued, or
    another process took it first)."""
    with transaction(readonly=True) as s:  # idle polling never takes SQLite's write lock
        job_id = s.scalar(select(ImportJob.id).where(ImportJob.status == "queued").order_by(ImportJob.id).limit(1))
    if job_id is None:
        return None
    now = utcnow()
    with transaction() as s:
        claimed = s.execute(update(ImportJob).where(ImportJob.id == job_id, ImportJob.status == "queued")
                            .values(status="running", worker=worker_id, started_at=now, heartbeat_at=now)).rowcount
    return job_id if claimed == 1 else None


class _Interrupted(Exception):
    """The worker is stopping: the job ends after the batch just committed."""


class _Gone(Exception):
    """The job's row was deleted, or taken over, while it ran."""


class _Heartbeat(threading.Thread):
    def __init__(self, job_id: int, worker_id: str) -> None:
        super().__init__(name=f"orchard-import-heartbeat-{job_id}", daemon=True)
        self.job_id, self.worker_id, self.done = job_id, worker_id, threading.Event()

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                with transaction() as s:
                    s.execute(update(ImportJob).where(ImportJob.id == self.job_id, ImportJob.worker == self.worker_id)
                              .values(heartbeat_at=utcnow()))
            except Exception:  # a busy database: the next beat tries again
                log.warning("import job %s: heartbeat not written", self.job_id, exc_info=True)

    def stop(self) -> None:
        self.done.set()
        self.join(HEARTBEAT_SECONDS + 35)


def _finish(job_id: int, worker_id: str, report: Path, **values: Any) -> None:
    values.update(finished_at=utcnow(), heartbeat_at=utcnow(),
                  report_path=_relative(report) if report.is_file() else None)
    with transaction() as s:
        s.execute(update(ImportJob).where(ImportJob.id == job_id, ImportJob.worker == worker_id).values(**values))


def run_job(job_id: int, *, worker_id: str, stop: threading.Event | None = None) -> None:
    """Run a job this worker has claimed, and record how it ended (never raises for the job's own
    failures: an unreadable file, an interruption or a bug end as a failed job)."""
    with transaction(readonly=True) as s:
        job = s.get(ImportJob, job_id)
    if job is None:
        return
    upload = data_path(job.file_path)
    report = upload.with_name("errors.csv")

    def progress(rows: int) -> None:
        with transaction() as s:
            hit = s.execute(update(ImportJob).where(ImportJob.id == job_id, ImportJob.worker == worker_id)
                            .values(rows_processed=ImportJob.rows_processed + rows, heartbeat_at=utcnow())).rowcount
        if not hit:
            raise _Gone
        if stop is not None and stop.is_set():
            raise _Interrupted

    beat = _Heartbeat(job_id, worker_id)
    beat.start()
    try:
        result = run_import(job.kind, upload, source=job.source, report_path=report, batch_size=BATCH_SIZE,
                            progress=progress, earn=job.earn)
    except FileUnreadable as exc:
        _finish(job_id, worker_id, report, status="failed", error_code=UNREADABLE, error_detail=str(exc))
    except _Interrupted:
        log.warning("import job %s interrupted by shutdown", job_id)
        _finish(job_id, worker_id, report, status="failed", error_code=INTERRUPTED, error_detail=_SHUTDOWN)
    except _Gone:
        log.warning("import job %s: its row is gone or was taken over; stopped", job_id)
    except Exception as exc:
        log.exception("import job %s failed", job_id)
        _finish(job_id, worker_id, report, status="failed", error_code=INTERNAL, error_detail=type(exc).__name__)
    else:
        _finish(job_id, worker_id, report, status="succeeded", rows_processed=result.rows, created=result.created,
                unchanged=result.unchanged, updated=result.updated, errors=result.errors,
                warnings=result.warnings, unknown_columns=list(result.unknown_columns))
    finally:
        beat.stop()


# ---- interrupted jobs ----------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check: the heartbeat decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def is_dead(worker: str | None, heartbeat_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a `running` job's process is gone (see the module docstring)."""
    if heartbeat_at is None or now - heartbeat_at > STALE_AFTER:
        return True
    try:
        host, pid_text, _ = (worker or "").rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != HOST or worker in _LIVE:
        return False
    return pid == os.getpid() or not _pid_alive(pid)


def recover_stale(now: dt.datetime | None = None) -> list[int]:
    """Fail the jobs left `running` by a dead process; returns their ids. A job whose heartbeat moved
    since it was read is alive and left alone."""
    now = now or utcnow()
    with transaction(readonly=True) as s:
        running = s.execute(select(ImportJob.id, ImportJob.worker, ImportJob.heartbeat_at)
                            .where(ImportJob.status == "running")).all()
    dead = [(job_id, beat) for job_id, worker, beat in running if is_dead(worker, beat, now)]
    failed = []
    if dead:
        with transaction() as s:
            for job_id, beat in dead:
                same_beat = ImportJob.heartbeat_at.is_(None) if beat is None else ImportJob.heartbeat_at == beat
                hit = s.execute(update(ImportJob)
                                .where(ImportJob.id == job_id, ImportJob.status == "running", same_beat)
                                .values(status="failed", finished_at=now, error_code=INTERRUPTED,
                                        error_detail=_DEAD)).rowcount
                if hit:
                    failed.append(job_id)
    for job_id in failed:
        log.warning("import job %s was left running by a dead process: marked failed", job_id)
    return failed


# ---- the worker ----------------------------------------------------------------------------------

class Worker:
    """The process's import thread: one job at a time, oldest first."""

    def __init__(self) -> None:
        self.id = new_worker_id()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        _LIVE.add(self.id)
        try:
            recover_stale()
        except Exception:  # e.g. the database is not migrated yet: the sweep retries later
            log.exception("import jobs: could not check for interrupted jobs at startup")
        self._thread = threading.Thread(target=self._loop, name="orchard-import-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the running job's current batch (the job is then failed as interrupted)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("import worker did not stop within %.0fs; its job will be failed as interrupted", timeout)
                return
        _LIVE.discard(self.id)

    def _loop(self) -> None:
        last_sweep = time.monotonic()
        failures = 0
        while not self._stop.is_set():
            job_id = None
            try:
                if time.monotonic() - last_sweep >= SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    recover_stale()
                job_id = claim_next(self.id)
                if job_id is not None:
                    run_job(job_id, worker_id=self.id, stop=self._stop)
                failures = 0
            except Exception:  # the database is away (or not migrated): back off, up to a minute
                failures += 1
                log.exception("import worker: %s", f"job {job_id}" if job_id else "polling failed")
            if job_id is None or failures:
                self._wake.wait(min(POLL_SECONDS * 2 ** min(failures, 5), 60.0))
                self._wake.clear()


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Start the import worker and (when enabled) the scheduler with the app; stop them on shutdown."""
    from orchard.scheduler.runner import Scheduler  # the scheduler's jobs import most domains

    worker = Worker() if get_settings().import_worker else None
    scheduler = Scheduler() if get_settings().scheduler else None
    app.state.import_worker, app.state.scheduler = worker, scheduler
    if worker is not None:
        await to_thread.run_sync(worker.start)
    if scheduler is not None:
        scheduler.start()
    try:
        yield
    finally:
        if scheduler is not None:
            await to_thread.run_sync(scheduler.stop)
        if worker is not None:
            await to_thread.run_sync(worker.stop)
