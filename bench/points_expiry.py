"""Benchmark: the points expiry pass (`orchard points expire`, `orchard.loyalty.expiry.expire_due`) and
`orchard points verify` over a large ledger on PostgreSQL. Not part of the test suite; results go to
docs/benchmarks.md ("Points ledger").

    .venv/bin/python bench/points_expiry.py --members 1000000 --lots 10000000 [--expired-share 0.8]
    .venv/bin/python bench/points_expiry.py --members 20000 --lots 200000 --explain   # plans of each statement
    .venv/bin/python bench/points_expiry.py --members 100000 --lots 1000000 --profile --no-checks

A fresh database (migrated — lots and accounts with the migrations' fillfactor, 50 — an HQ and four
stores) is seeded set-based (bench/points_seed.py: members, earn entries, lots spread over the members,
accounts), `--expired-share` of the lots past their expiry. Then:

1. the pass: `orchard points expire` as a child process (wall time, peak RSS from wait4, and the CPU of
   its PostgreSQL backend sampled from /proc), or with `--profile` / `--explain` in this process (each
   statement's wall time and backend CPU; `--explain` adds auto_explain's EXPLAIN ANALYZE, BUFFERS and
   trigger times — which cost time themselves);
2. how many of the lot and account updates were HOT, and the spendable-lots query after the pass;
3. `orchard points expire` again — must find nothing;
4. each verify check alone, right after the pass (statistics as the seed left them; `--no-checks`
   skips this);
5. `orchard points verify` (which ANALYZEs stale ledger tables first) — must find nothing; then the
   slowest checks again.

The server settings and the load average are printed beside every figure: the machine is shared,
compare backend CPU seconds, not wall times, across runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from pg_profile import backend_cpu, cli_with_cpu, profiled
from points_seed import (
    clone_database,
    create_database,
    database_exists,
    drop_database,
    loadavg,
    orchard,
    seed,
    sizes,
)
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError


def explain_pass(url: str, explain: bool) -> None:
    """expire_due in this process, every statement timed (wall and the backend's CPU) and, with
    `explain`, EXPLAIN ANALYZEd by auto_explain (which itself costs time: compare like with like)."""
    from orchard.loyalty.expiry import expire_due

    r, before = profiled(url, expire_due, explain, "pass")
    print(f"  → {r.lots:,} lots, {r.points:,} points, {r.members:,} members (load before {before})")


def settings(url: str) -> str:
    """The server settings that decide a multi-GB pass (the lead sizes them for a full-size run)."""
    engine = create_engine(url)
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', "
            "'work_mem', 'maintenance_work_mem', 'checkpoint_timeout', 'synchronous_commit', 'full_page_writes') "
            "ORDER BY name")).all()
        ff = c.execute(text("SELECT relname, reloptions FROM pg_class WHERE relname IN ('points_lots', "
                            "'points_accounts') ORDER BY relname")).all()
        version = c.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    return (f"PostgreSQL {version}; " + ", ".join(f"{n}={v}{u or ''}" for n, v, u in rows) + "; " +
            ", ".join(f"{n} {o or 'default'}" for n, o in ff))


def time_checks(url: str, timeout_s: float, only: set[str] | None = None) -> dict[str, float | None]:
    """Each verify check alone (None: cancelled at the timeout)."""
    from orchard.loyalty.verify import CHECKS

    engine = create_engine(url)
    out: dict[str, float | None] = {}
    checks = [c for c in CHECKS if only is None or c[0] in only]
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


def table_stats(url: str) -> str:
    """Updates (and how many of them were HOT) and rows changed since the last ANALYZE, per ledger table."""
    time.sleep(1.5)  # a backend reports its table counters within a second of going idle
    engine = create_engine(url)
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT s.relname, s.n_tup_upd, s.n_tup_hot_upd, s.n_mod_since_analyze, c.reltuples FROM "
            "pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relname IN ('points_lots', "
            "'points_accounts', 'points_entries', 'points_allocations') ORDER BY s.relname")).all()
    engine.dispose()
    return "; ".join(f"{n}: {u:,} updates ({h / u if u else 0:.0%} HOT), {m:,} changed since ANALYZE "
                     f"(of {max(r, 0):,.0f})" for n, u, h, m, r in rows)


def spendable_probe(url: str, members: int, n: int = 2000) -> str:
    """The spendable-lots query a spend runs (ledger.spendable), for `n` members drawn at random after
    the pass: mean ms and the plan's shape (it must stay an index range scan on (member_id, expires_at))."""
    import random

    from sqlalchemy.dialects import postgresql

    from orchard.kit.clock import utcnow
    from orchard.loyalty.ledger import spendable

    engine = create_engine(url)
    now = utcnow()
    with engine.connect() as c:
        sql = str(spendable(1, now).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        plan = " / ".join(r[0].strip() for r in c.execute(text("EXPLAIN " + sql)) if "Scan" in r[0])
        pid = c.execute(text("SELECT pg_backend_pid()")).scalar_one()
        rng = random.Random(7)
        t, cpu = time.perf_counter(), backend_cpu(pid)
        for _ in range(n):
            c.execute(spendable(rng.randint(1, members), now)).all()
        ms, cpu_ms = (time.perf_counter() - t) * 1000 / n, (backend_cpu(pid) - cpu) * 1000 / n
    engine.dispose()
    return f"{ms:.2f} ms wall, {cpu_ms:.2f} ms backend CPU per member ({n:,} members, one connection); plan: {plan}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=2_000)
    ap.add_argument("--lots", type=int, default=20_000)
    ap.add_argument("--expired-share", type=float, default=0.8, help="share of the lots past their expiry")
    ap.add_argument("--explain", action="store_true", help="run the pass in process under auto_explain")
    ap.add_argument("--profile", action="store_true",
                    help="run the pass in process, each statement's wall and backend CPU time, no auto_explain")
    ap.add_argument("--no-checks", action="store_true", help="do not time each verify check alone")
    ap.add_argument("--check-timeout", type=float, default=600, help="seconds before a verify check is cancelled")
    ap.add_argument("--lots-fillfactor", type=int, default=None,
                    help="override points_lots' fillfactor before seeding (default: the migration's, 50)")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--template", metavar="NAME",
                    help="seed database NAME once (kept) and run on a fresh copy of it; later runs with the same "
                         "NAME (and sizes) only copy it. Drop it by hand when done")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average {loadavg()} (1/5/15 min)")
    if args.template and not database_exists(args.template):
        _, turl, _ = create_database(args.template)
        t = time.perf_counter()
        seed(turl, args.members, args.lots, args.expired_share, fillfactor=args.lots_fillfactor)
        print(f"seeded template {args.template}: {args.members:,} members, {args.lots:,} lots in "
              f"{time.perf_counter() - t:.0f} s; load {loadavg()}")
    if args.template:
        t = time.perf_counter()
        name, url, env = clone_database(args.template)
        orchard(env, "db", "upgrade")  # the template may predate a migration of this checkout
        print(f"database {name}: a copy of {args.template} in {time.perf_counter() - t:.0f} s (upgraded); "
              f"{settings(url)}")
    else:
        name, url, env = create_database()
        print(f"database {name}; {settings(url)}")
    try:
        if not args.template:
            t = time.perf_counter()
            seed(url, args.members, args.lots, args.expired_share, fillfactor=args.lots_fillfactor)
            print(f"seeded {args.members:,} members, {args.lots:,} lots in {time.perf_counter() - t:.0f} s: "
                  f"{sizes(url)}; load {loadavg()}")
        else:
            print(f"sizes: {sizes(url)}; load {loadavg()}")
        if args.explain or args.profile:
            explain_pass(url, args.explain)
        else:
            before = loadavg()
            s, mb, own, db_cpu, out = cli_with_cpu(url, env, "points", "expire")
            print(f"pass (orchard points expire): {s:.1f} s wall, peak RSS {mb:.0f} MB; CPU: PostgreSQL backend "
                  f"{db_cpu:.1f} s, CLI process {own:.1f} s; load {before} → {loadavg()}: {out.strip()}")
        print(f"table counters after the pass: {table_stats(url)}")
        print(f"spendable lots after the pass: {spendable_probe(url, args.members)}; load {loadavg()}")
        s, mb, own, db_cpu, out = cli_with_cpu(url, env, "points", "expire")
        print(f"second pass: {s:.1f} s, peak RSS {mb:.0f} MB, backend CPU {db_cpu:.1f} s; load {loadavg()}: "
              f"{out.strip()}")
        first: dict[str, float | None] = {}
        if not args.no_checks:
            # Right after the pass the planner still has the seed's statistics (autovacuum analyzes a
            # table only after 10 % of it changed; a pass adds one entry per member).
            print("verify checks one by one, right after the pass (no ANALYZE):")
            first = time_checks(url, args.check_timeout)
        # verify ANALYZEs the ledger tables whose statistics are stale before it checks.
        before = loadavg()
        s, mb, own, db_cpu, out = cli_with_cpu(
            url, {**env, "PGOPTIONS": f"-c statement_timeout={args.check_timeout * 1000:.0f}"}, "points", "verify")
        verdict = out.strip().splitlines()[-1] if out.strip() else "(no output)"
        print(f"verify (orchard points verify, refreshing stale statistics first): {s:.1f} s wall, peak RSS "
              f"{mb:.0f} MB, backend CPU {db_cpu:.1f} s; load {before} → {loadavg()}: {verdict}")
        if "(exit" in verdict or "inconsistent" in verdict:
            print(out)
        if first:
            print("the slowest checks again, with the statistics verify left:")
            time_checks(url, args.check_timeout, only={k for k, v in first.items() if v is None or v > 1}
                        | {"debt_is_unpaid_reversals", "debits_fully_allocated"})
        print(f"after the pass: {sizes(url)}")
        print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            drop_database(name)


if __name__ == "__main__":
    main()
