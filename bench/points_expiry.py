"""Benchmark: the points expiry pass (`orchard points expire`, `orchard.loyalty.expiry.expire_due`) and
`orchard points verify` over a large ledger on PostgreSQL. Not part of the test suite; results go to
docs/benchmarks.md ("Points ledger").

    .venv/bin/python bench/points_expiry.py --members 1000000 --lots 10000000 [--expired-share 0.8]
    .venv/bin/python bench/points_expiry.py --members 20000 --lots 200000 --explain   # plans of each statement

A fresh database (migrated, an HQ and four stores) is seeded set-based (bench/points_seed.py: members,
earn entries, lots spread over the members, accounts), `--expired-share` of the lots past their expiry.
Then, each as a child process whose wall time and peak RSS are measured (wait4):

1. `orchard points expire` — the pass; its output names the lots, points and members expired;
2. `orchard points expire` again — must find nothing;
3. each verify check alone, right after the pass (statistics as the seed left them), then after an
   ANALYZE, with verify's debt check rewritten as a linear query beside it (`--no-checks` skips this);
4. `orchard points verify` — must find nothing.

`--explain` runs the pass in this process instead, with PostgreSQL's auto_explain (EXPLAIN ANALYZE,
BUFFERS of every statement, as notices to this client) and the wall time of each statement. The load
average is printed beside every figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import time

from points_seed import create_database, drop_database, loadavg, seed, sizes, timed_cli
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session


def explain_pass(url: str) -> None:
    """expire_due in this process, every statement EXPLAIN ANALYZEd by auto_explain and timed."""
    from orchard.db import make_engine
    from orchard.loyalty.expiry import expire_due

    engine = make_engine(url)
    timings: list[tuple[float, str]] = []
    notes: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info["t"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        timings.append((time.perf_counter() - conn.info.pop("t"), statement))

    with Session(engine) as session:
        raw = session.connection().connection.driver_connection
        raw.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
        for s in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0", "SET auto_explain.log_analyze = on",
                  "SET auto_explain.log_buffers = on", "SET auto_explain.log_triggers = on",
                  "SET client_min_messages = log"):
            session.execute(text(s))
        timings.clear()
        t = time.perf_counter()
        r = expire_due(session)
        session.commit()
        total = time.perf_counter() - t
    engine.dispose()
    print(f"pass (in process, under auto_explain): {r.lots:,} lots, {r.points:,} points, {r.members:,} members in "
          f"{total:.1f} s; load {loadavg()}")
    print("\nper statement (wall s, statement):")
    for s, stmt in timings:
        print(f"  {s:8.2f}  {' '.join(stmt.split())[:150]}")
    print("\nplans (auto_explain):")
    for n in notes:
        if n.startswith("duration"):
            print(re.sub(r"^", "    ", n, flags=re.M))


#: verify's debt_is_unpaid_reversals written so that no plan can be quadratic: Σ debits − Σ what lots paid
#: of them, per member (the same sum), instead of a LEFT JOIN of debits to an aggregate of allocations.
DEBT_CHECK_LINEAR = (
    "SELECT count(*) FROM points_accounts a LEFT JOIN (SELECT member_id, sum(owed) AS owed FROM ("
    "SELECT member_id, -amount AS owed FROM points_entries WHERE amount < 0 UNION ALL "
    "SELECT e.member_id, -x.amount FROM points_allocations x JOIN points_entries e ON e.id = x.entry_id "
    "WHERE e.amount < 0) t GROUP BY member_id) o ON o.member_id = a.member_id WHERE a.debt <> coalesce(o.owed, 0)")


def time_checks(url: str, timeout_s: float, only: set[str] | None = None) -> dict[str, float | None]:
    """Each verify check alone (None: cancelled at the timeout)."""
    from orchard.loyalty.verify import CHECKS

    engine = create_engine(url)
    out: dict[str, float | None] = {}
    checks = [c for c in CHECKS if only is None or c[0] in only]
    if only and "debt_is_unpaid_reversals (linear rewrite)" in only:
        checks.append(("debt_is_unpaid_reversals (linear rewrite)", "", DEBT_CHECK_LINEAR))
    with engine.connect() as c:
        c.execute(text(f"SET statement_timeout = '{timeout_s:.0f}s'"))
        for name, _rule, sql in checks:
            t = time.perf_counter()
            try:
                n = c.execute(text(sql)).scalar_one()
                out[name] = time.perf_counter() - t
                print(f"  {name}: {out[name]:.1f} s, {n} violations; load {loadavg()}")
            except OperationalError as exc:
                if "statement timeout" not in str(exc):
                    raise
                c.rollback()
                c.execute(text(f"SET statement_timeout = '{timeout_s:.0f}s'"))
                out[name] = None
                print(f"  {name}: cancelled after {timeout_s:.0f} s (statement_timeout); load {loadavg()}")
    engine.dispose()
    return out


def analyze(url: str) -> float:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    t = time.perf_counter()
    with engine.connect() as c:
        c.execute(text("ANALYZE points_entries, points_allocations, points_lots, points_accounts"))
    engine.dispose()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=2_000)
    ap.add_argument("--lots", type=int, default=20_000)
    ap.add_argument("--expired-share", type=float, default=0.8, help="share of the lots past their expiry")
    ap.add_argument("--explain", action="store_true", help="run the pass in process under auto_explain")
    ap.add_argument("--no-checks", action="store_true", help="do not time each verify check alone")
    ap.add_argument("--check-timeout", type=float, default=600, help="seconds before a verify check is cancelled")
    ap.add_argument("--lots-fillfactor", type=int, default=100, help="points_lots fillfactor for the seed")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average {loadavg()} (1/5/15 min)")
    name, url, env = create_database()
    print(f"database {name}")
    try:
        t = time.perf_counter()
        seed(url, args.members, args.lots, args.expired_share, fillfactor=args.lots_fillfactor)
        print(f"seeded {args.members:,} members, {args.lots:,} lots in {time.perf_counter() - t:.0f} s: {sizes(url)}; "
              f"load {loadavg()}")
        if args.explain:
            explain_pass(url)
        else:
            before = loadavg()
            s, mb, out = timed_cli(env, "points", "expire")
            print(f"pass: {s:.1f} s, peak RSS {mb:.0f} MB; load {before} → {loadavg()}: {out.strip()}")
        s, mb, out = timed_cli(env, "points", "expire")
        print(f"second pass: {s:.1f} s, peak RSS {mb:.0f} MB; load {loadavg()}: {out.strip()}")
        if not args.no_checks:
            # Right after the pass the planner still has the seed's statistics (autovacuum analyzes
            # points_entries only after 10 % of it changed; a pass adds one entry per member).
            print("verify checks one by one, right after the pass:")
            first = time_checks(url, args.check_timeout)
            print(f"ANALYZE of the ledger tables: {analyze(url):.1f} s")
            print("after ANALYZE:")
            again = {k for k, v in first.items() if v is None or v > 10} | {"debt_is_unpaid_reversals",
                                                                           "debt_is_unpaid_reversals (linear rewrite)"}
            time_checks(url, args.check_timeout, only=again)
        before = loadavg()
        s, mb, out = timed_cli({**env, "PGOPTIONS": f"-c statement_timeout={args.check_timeout * 1000:.0f}"},
                               "points", "verify")
        verdict = out.strip().splitlines()[-1] if out.strip() else "(no output)"
        print(f"verify (orchard points verify): {s:.1f} s, peak RSS {mb:.0f} MB; load {before} → {loadavg()}: "
              f"{verdict}")
        if "(exit" in verdict:
            print(out)
        print(f"after the pass: {sizes(url)}")
        print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            drop_database(name)


if __name__ == "__main__":
    main()
