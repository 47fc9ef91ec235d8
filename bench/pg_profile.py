"""Where a PostgreSQL pass spends its time, for the benches (not a benchmark itself): the CPU seconds of
the backend that ran it — comparable across runs on a shared machine, unlike wall time — per statement
(`profiled`, in this process, optionally under auto_explain) or for an `orchard …` child process
(`cli_with_cpu`)."""

from __future__ import annotations

import os
import re
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from points_seed import loadavg, timed_cli
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) a PostgreSQL backend of this machine has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profiled(url: str, fn: Callable[[Session], Any], explain: bool = False, label: str = "pass") -> tuple[Any, str]:
    """Run `fn(session)` and commit, in this process, printing every statement's wall time and backend
    CPU and, with `explain`, auto_explain's EXPLAIN (ANALYZE, BUFFERS, triggers) of each — which costs
    time itself: compare like with like. Returns fn's result and the load average before."""
    from orchard.db import make_engine

    engine = make_engine(url)
    timings: list[tuple[float, float, str]] = []
    notes: list[str] = []
    backend: dict[str, int] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info["t"] = (time.perf_counter(), backend_cpu(backend["pid"]) if backend else 0.0)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        t, cpu = conn.info.pop("t")
        timings.append((time.perf_counter() - t, backend_cpu(backend["pid"]) - cpu if backend else 0.0, statement))

    with Session(engine) as session:
        raw = session.connection().connection.driver_connection
        raw.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
        backend["pid"] = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        if explain:
            for s in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                      "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on",
                      "SET auto_explain.log_triggers = on", "SET client_min_messages = log"):
                session.execute(text(s))
        timings.clear()
        before = loadavg()
        t, cpu0, own0 = time.perf_counter(), backend_cpu(backend["pid"]), time.process_time()
        result = fn(session)
        session.commit()
        total, cpu, own = time.perf_counter() - t, backend_cpu(backend["pid"]) - cpu0, time.process_time() - own0
    engine.dispose()
    how = "under auto_explain" if explain else "no auto_explain"
    print(f"{label} (in process, {how}): {total:.1f} s wall; PostgreSQL backend CPU {cpu:.1f} s, this process "
          f"{own:.1f} s; load {before} → {loadavg()}")
    print("per statement (wall s, backend CPU s, statement):")
    for s, c, stmt in timings:
        print(f"  {s:8.2f} {c:8.2f}  {' '.join(stmt.split())[:150]}")
    if explain:
        print("plans (auto_explain):")
        for n in notes:
            if n.startswith("duration"):
                print(re.sub(r"^", "    ", n, flags=re.M))
    return result, before


class BackendCpu:
    """Samples the CPU of the PostgreSQL backends whose application_name is `app` (a child `orchard`
    process sets it through PGAPPNAME) until stopped: the database's side of a CLI run. The last
    sample before a backend exits is what is counted (at most `every` seconds short)."""

    def __init__(self, url: str, app: str, every: float = 0.2) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._engine = create_engine(url)
        self._app, self._every = app, every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._engine.connect() as c:
            while not self._stop.wait(self._every):
                pids = c.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"),
                                 {"a": self._app}).scalars().all()
                c.rollback()
                for pid in pids:
                    try:
                        self.seen[pid] = backend_cpu(pid)
                    except OSError:
                        pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()
        return sum(self.seen.values())


def cli_with_cpu(url: str, env: dict, *args: str) -> tuple[float, float, float, float, str]:
    """(wall s, peak RSS MB, the child's own CPU s, its PostgreSQL backends' CPU s, stdout) of `orchard …`."""
    app = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    sampler = BackendCpu(url, app)
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s, mb, out = timed_cli({**env, "PGAPPNAME": app}, *args)
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    return s, mb, own, sampler.stop(), out
