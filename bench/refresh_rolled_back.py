"""`refresh.run` (or some of its steps) on a kept database inside one transaction that is rolled back:
every run starts from the same state, so two versions of the code can be timed alternately on it.

    .venv/bin/python bench/refresh_rolled_back.py --database seg_b --days-later 4
    PYTHONPATH=<git archive of another commit>/src .venv/bin/python bench/refresh_rolled_back.py \\
        --database seg_b --days-later 4 --steps tags,segments --explain

The clock is the segments benchmark's now (`segments_refresh.NOW`) plus `--days-later` days; a kept
database cannot be refreshed at an earlier time than its last pass, so use the day after it.
`--explain` loads auto_explain for the transaction (ANALYZE, BUFFERS, statements over 500 ms) into
the server's log. Prints each step's seconds and the total.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import points_seed  # noqa: E402
import segments_refresh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", required=True, help="a kept, seeded and refreshed database")
    ap.add_argument("--days-later", type=int, required=True, help="the run's clock: the bench's now plus N days")
    ap.add_argument("--steps", default="lifecycle,rfm,preferences,tags,segments")
    ap.add_argument("--explain", action="store_true", help="auto_explain the transaction's slow statements")
    args = ap.parse_args()
    os.environ["ORCHARD_DATABASE_URL"] = points_seed.PG.rsplit("/", 1)[0] + "/" + args.database
    from sqlalchemy import text

    from orchard import db
    from orchard.segments import refresh

    session = db.new_session()
    try:
        if args.explain:
            session.execute(text("LOAD 'auto_explain'"))
            for key, value in (("log_min_duration", "'500ms'"), ("log_analyze", "on"), ("log_buffers", "on"),
                               ("log_nested_statements", "on")):
                session.execute(text(f"SET auto_explain.{key} = {value}"))
        started = time.perf_counter()
        now = segments_refresh.NOW + dt.timedelta(days=args.days_later)
        for step in refresh.run(session, now=now, only=args.steps.split(",")):
            print(f"{step['step']} {step['seconds']:.2f}")
        print(f"total {time.perf_counter() - started:.2f} (load {points_seed.loadavg()})")
    finally:
        session.rollback()
        session.close()


if __name__ == "__main__":
    main()
