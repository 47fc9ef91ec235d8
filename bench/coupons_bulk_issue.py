"""Benchmark: bulk-issue one coupon to each of N members (default 1,000,000) on PostgreSQL, through
the same code path as `orchard coupons issue` (coupons.issuing.issue_bulk: ids into a temporary
table, one INSERT … SELECT with codes generated in SQL, collisions retried), in one transaction.
Not part of the test suite; results go to docs/benchmarks.md ("Coupons").

    .venv/bin/python bench/coupons_bulk_issue.py                    # 1M members, fresh database
    .venv/bin/python bench/coupons_bulk_issue.py --members 200000 --rounds 2

A fresh database is created (and dropped unless --keep), migrated, and filled with N bare members by
one INSERT … SELECT generate_series (not timed as part of the issue). Each round issues a batch from
a new template; the second and later rounds show the cost with coupons already in the table (the
unique index on code is larger). Besides wall time it prints the CPU seconds of the PostgreSQL
backend (from /proc, so run it on the database host) and of Python: on a shared machine wall time
stretches with other load, CPU time hardly does, and their sum is what the pass costs on a quiet one.
The load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

from sqlalchemy import create_engine, text

PG = os.environ.get("ORCHARD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()

    name = f"orchard_bench_coupons_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG.rsplit("/", 1)[0] + "/" + name
    os.environ["ORCHARD_DATABASE_URL"] = url
    try:
        run(url, args.members, args.rounds)
    finally:
        if not args.keep:
            from orchard import db

            db.reset_caches()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the PostgreSQL backend `pid` has used: the figure least moved by
    other load on a shared machine (wall time stretches when the cores are busy; CPU time does not)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(url: str, n: int, rounds: int) -> None:
    from orchard import db, migrate
    from orchard.coupons import issuing, templates
    from orchard.coupons.schemas import TemplateIn

    migrate.upgrade(url)
    engine = create_engine(url)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO members (status, name, gender, joined_at, attributes, reduce_disturbance, created_at, "
            "updated_at) SELECT 'active', '会员' || g, 'unknown', now(), '{}', false, now(), now() "
            "FROM generate_series(1, :n) g"), {"n": n})
        conn.execute(text("ANALYZE members"))
        ids = [row[0] for row in conn.execute(text("SELECT id FROM members ORDER BY id"))]
    print(f"{n:,} bare members created in {time.perf_counter() - t0:.1f}s; load {os.getloadavg()[0]:.1f}")
    for r in range(rounds):
        with db.transaction() as s:
            t = templates.create(s, body=TemplateIn(name=f"满100减20 #{r}", kind="amount_off", off_fen=2000,
                                                    threshold_fen=10000, validity="relative", valid_days=30,
                                                    per_member_limit=1), actor="bench")
            template_id = t.id
        load = os.getloadavg()[0]
        t0, cpu0 = time.perf_counter(), time.process_time()
        with db.transaction() as s:
            backend = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
            server0 = server_cpu(backend)
            batch, _ = issuing.issue_bulk(s, template_id=template_id, member_ids=ids, source="bench",
                                          external_id=f"bench-{r}", reason="bench", actor="bench")
            issued = batch.issued
            s.commit()
            server = server_cpu(backend) - server0
        seconds, client = time.perf_counter() - t0, time.process_time() - cpu0
        with engine.connect() as conn:
            distinct = conn.execute(text("SELECT count(DISTINCT code) FROM coupons WHERE template_id = :t"),
                                    {"t": template_id}).scalar_one()
        print(f"round {r + 1}: issued {issued:,} coupons in {seconds:.1f}s wall ({issued / seconds:,.0f}/s); CPU: "
              f"PostgreSQL backend {server:.1f}s + Python {client:.1f}s; {distinct:,} distinct codes; "
              f"load before {load:.1f}, after {os.getloadavg()[0]:.1f}")
        if issued != n or distinct != n:
            sys.exit("not every member got a distinct coupon")
    engine.dispose()


if __name__ == "__main__":
    main()
