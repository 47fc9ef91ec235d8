"""Benchmark: `orchard demo --members N` end to end on a fresh PostgreSQL database — the generated
files, each import through the bulk path (members, orders, refunds, events), the duplicate scan, tier
placement and the first refresh — with each step's time, its rows/s, and the loader's peak memory.
Not part of the test suite; results go to docs/benchmarks.md.

    .venv/bin/python bench/demo_load.py --members 1000000 --seed 1
    .venv/bin/python bench/demo_load.py --members 1000000 --seed 1 --keep   # keep the database

Why a bench of its own: the issue asks that `--members 1000000` work for benchmarks, i.e. finish in
a time one waits for, with memory that does not grow with the data. The loader runs in this process
(`orchard.demo.load.load_demo`, what the CLI calls), so the peak RSS printed is the loader's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from import_bulk import drop_pg_database, new_pg_database  # noqa: E402


class Steps:
    """A `demo.load.Tracker` that records when each step starts and when its last row arrives."""

    def __init__(self) -> None:
        self.steps: list[list] = []  # [description, total, started, last advance, rows]

    def start(self, description: str, total: int | None) -> Callable[[int], None]:
        step = [description, total, time.perf_counter(), None, 0]
        self.steps.append(step)
        print(f"  {time.strftime('%H:%M:%S')} {description} …", flush=True)

        def advance(n: int) -> None:
            step[3] = time.perf_counter()
            step[4] += n
        return advance


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = ap.parse_args()
    admin, name, url = new_pg_database()
    os.environ["ORCHARD_DATABASE_URL"] = url
    print(f"database {name}; {args.members:,} members, seed {args.seed}, {args.months} months; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        from orchard import migrate
        from orchard.demo.load import load_demo

        migrate.upgrade()
        steps = Steps()
        t0 = time.perf_counter()
        result = load_demo(members=args.members, seed=args.seed, months=args.months, tracker=steps)
        total = time.perf_counter() - t0
        print(f"\ndemo --members {args.members:,} --seed {args.seed}: {total:,.0f} s in all; "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB; "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| step | rows | seconds | rows/s |\n|---|---|---|---|")
        ends = [s[2] for s in steps.steps[1:]] + [t0 + total]
        for (description, _total, started, _last, rows), end in zip(steps.steps, ends, strict=True):
            seconds = end - started
            rate = f"{rows / seconds:,.0f}" if rows > 100 and seconds > 0 else "—"
            print(f"| {description} | {rows:,} | {seconds:,.1f} | {rate} |")
        for line in result.lines():
            print(line)
    finally:
        if args.keep:
            print(f"kept database {name}: {url}")
            admin.dispose()
        else:
            drop_pg_database(admin, name)


if __name__ == "__main__":
    main()
