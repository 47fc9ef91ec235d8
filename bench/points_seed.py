"""Seed a points ledger set-based in SQL, for bench/points_redeem_http.py and bench/points_expiry.py (not a
benchmark itself). Everything is INSERT … SELECT generate_series, consistent so that `orchard points verify`
finds nothing:

* members 1..M (home stores round-robin) with their member_aggregates row;
* L earn entries with one lot each, lot n (1..L) belonging to member ((n − 1) mod M) + 1 — so a member's
  lots lie spread over the table as if earned over time, ids in earning order — of
  100 + 10·k + (m mod 10) points for the member's k-th lot, balance_after the running sum;
* one points_accounts row per member with a lot, balance = Σ of its lots.

Lots are written in their current shape (nothing expired: `expired` 0, no `expire_entry_id`) into a
table that keeps the fillfactor the migrations gave it, so the pages have the free space production
pages would.

Lot n is earned at `now − span + n·span/L` and expires 365 days later, with the span chosen so that
`expired_share` of the lots lie past their expiry (not yet expired by a pass: remaining = amount).

The database must be migrated and hold stores (org_units of kind 'store'). Seeding skips the foreign-key
triggers (session_replication_role = replica: the rows are consistent by construction) and builds the
secondary indexes of entries and lots after the rows are in, then VACUUM ANALYZEs, as a restore would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from sqlalchemy import create_engine, text

YEAR_DAYS = 365


def _rebuildable_indexes(c, table: str) -> list[tuple[str, str]]:
    """(drop, create) statements for every index of `table` but its primary key."""
    out = []
    for name, ddl in c.execute(text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
            "AND contype = 'u'"), {"t": table}):
        out.append((f'ALTER TABLE {table} DROP CONSTRAINT "{name}"',
                    f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {ddl}'))
    for name, ddl in c.execute(text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = :t AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname)"), {"t": table}):
        out.append((f'DROP INDEX "{name}"', ddl))
    return out


def seeder(engine, params: dict, log=print, steps: dict[str, float] | None = None):
    """A `step(name, *sql)` for seeding benches: runs the statements with triggers and foreign-key checks
    off (session_replication_role = replica) and generous memory, and records each step's seconds."""
    steps = {} if steps is None else steps

    def step(name: str, *sql: str) -> None:
        t = time.perf_counter()
        with engine.connect() as c:
            c.execute(text("SET session_replication_role = replica"))
            c.execute(text("SET maintenance_work_mem = '512MB'"))
            c.execute(text("SET work_mem = '256MB'"))
            for s in sql:
                c.execute(text(s), params)
        steps[name] = time.perf_counter() - t
        log(f"  seed {name}: {steps[name]:.1f} s")

    return step


def seed(url: str, members: int, lots: int, expired_share: float, fillfactor: int | None = None,
         log=print) -> dict[str, float]:
    """Seed the ledger; returns seconds per step. The lots get the table's fillfactor as the migrations
    set it (50 since 0013: room for HOT updates) unless `fillfactor` overrides it for a comparison."""
    assert 0 <= expired_share < 1 and members > 0 and lots >= 0
    span_days = YEAR_DAYS / (1 - expired_share)  # earned over this span, each lot expiring a year after
    params = {"m": members, "l": lots, "span": f"{span_days * 86400:.0f} seconds"}
    steps: dict[str, float] = {}
    engine = create_engine(url, isolation_level="AUTOCOMMIT")

    step = seeder(engine, params, log, steps)

    with engine.connect() as c:
        if not c.execute(text("SELECT count(*) FROM org_units WHERE kind = 'store'")).scalar():
            raise SystemExit("seed: the database needs stores first")
        rebuild = {t: _rebuildable_indexes(c, t) for t in ("points_entries", "points_lots")}
    stores = "(SELECT array_agg(id ORDER BY id) FROM org_units WHERE kind = 'store')"
    step("members",
         f"INSERT INTO members (id, status, name, gender, home_store_id, joined_at, attributes, reduce_disturbance, "
         f"created_at, updated_at) SELECT g, 'active', '会员' || g, (ARRAY['male','female','unknown'])[1 + g % 3], "
         f"s.ids[1 + g % cardinality(s.ids)], now() - interval '3 years', '{{}}', false, now(), now() "
         f"FROM generate_series(1, :m) g, {stores} s(ids)",
         "INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen) "
         "SELECT g, 0, 0, 0 FROM generate_series(1, :m) g",
         "SELECT setval('members_id_seq', :m)")
    step("drop entry/lot indexes", *(d for t in rebuild.values() for d, _ in t),
         *([f"ALTER TABLE points_lots SET (fillfactor = {int(fillfactor)})"] if fillfactor else []))
    # Lot n: member m = (n-1) % M + 1, its k-th lot with k = (n-1) / M; amount 100 + 10k + m%10.
    lot = ("FROM (SELECT n, (n - 1) % :m + 1 AS m, (n - 1) / :m AS k, "
           "now() - CAST(:span AS interval) + CAST(:span AS interval) * (CAST(n AS float8) / :l) AS earned "
           "FROM generate_series(1, :l) n) g")
    step("points_entries",
         "INSERT INTO points_entries (id, member_id, kind, amount, balance_after, reason, source, external_id, "
         "body_hash, actor, explanation, store_id, created_at) "
         f"SELECT n, m, 'earn', 100 + 10 * k + m % 10, (k + 1) * (100 + m % 10) + 5 * k * (k + 1), 'bench 种子积分', "
         f"'bench-seed', 'seed-' || n, '', 'bench', '{{}}', s.ids[1 + m % cardinality(s.ids)], earned "
         f"{lot}, {stores} s(ids)",
         "SELECT setval('points_entries_id_seq', greatest(:l, 1))")
    step("points_lots",
         "INSERT INTO points_lots (id, member_id, entry_id, amount, remaining, earned_at, expires_at, store_id) "
         "SELECT n, m, n, 100 + 10 * k + m % 10, 100 + 10 * k + m % 10, earned, earned + interval '365 days', "
         f"s.ids[1 + m % cardinality(s.ids)] {lot}, {stores} s(ids)",
         "SELECT setval('points_lots_id_seq', greatest(:l, 1))")
    # Member m has K = (L - m) / M + 1 lots (m ≤ L): Σ (100 + c + 10k) for k < K = K(100 + c) + 5K(K − 1).
    step("points_accounts",
         "INSERT INTO points_accounts (member_id, balance, debt, updated_at) "
         "SELECT m, kk * (100 + m % 10) + 5 * kk * (kk - 1), 0, now() "
         "FROM (SELECT m, (:l - m) / :m + 1 AS kk FROM generate_series(1, least(:m, :l)) m) a")
    for table, statements in rebuild.items():
        step(f"{table} indexes", *(create for _, create in statements))
    t = time.perf_counter()
    with engine.connect() as c:
        for table in ("members", "member_aggregates", "points_entries", "points_lots", "points_accounts",
                      "points_allocations", "audit_log"):
            c.execute(text(f"VACUUM ANALYZE {table}"))
        c.execute(text("CHECKPOINT"))
    steps["vacuum analyze"] = time.perf_counter() - t
    log(f"  seed vacuum analyze + checkpoint: {steps['vacuum analyze']:.1f} s")
    engine.dispose()
    return steps


def sizes(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class WHERE relname IN "
            "('points_entries', 'points_lots', 'points_allocations', 'points_accounts', 'members') ORDER BY relname"
        )).all()
        db = c.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
    engine.dispose()
    return ", ".join(f"{n} {s}" for n, s in rows) + f"; database {db}"


PG = os.environ.get("ORCHARD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
#: Prefix of the databases benches create (several engineers share one server: each names their own).
PREFIX = os.environ.get("ORCHARD_BENCH_DB_PREFIX", "orchard_bench")
STORES = ["S1", "S2", "S3", "S4"]


def orchard(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "orchard.cli", *args], env=env, check=True, text=True,
                          capture_output=True).stdout


def create_database(name: str | None = None) -> tuple[str, str, dict]:
    """A fresh database (name, url, env for `orchard` child processes): migrated, an HQ and four stores."""
    name = name or f"{PREFIX}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG.rsplit("/", 1)[0] + "/" + name
    env = {**os.environ, "ORCHARD_DATABASE_URL": url}
    orchard(env, "db", "upgrade")
    orchard(env, "org", "add", "hq", "HQ", "总部")
    for code in STORES:
        orchard(env, "org", "add", "store", code, f"门店{code}", "--parent", "HQ", "--city", "上海")
    return name, url, env


def database_exists(name: str) -> bool:
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        found = c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is not None
    admin.dispose()
    return found


def clone_database(template: str) -> tuple[str, str, dict]:
    """A copy of a seeded database (name, url, env), so that runs compared with each other start from the
    same pages and statistics, and a 10M-lot seed (minutes) is paid once. FILE_COPY: the default
    WAL_LOG strategy would write the whole copy through the WAL."""
    name = f"{PREFIX}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY = FILE_COPY'))
    admin.dispose()
    url = PG.rsplit("/", 1)[0] + "/" + name
    return name, url, {**os.environ, "ORCHARD_DATABASE_URL": url}


def drop_database(name: str) -> None:
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def timed_cli(env: dict, *args: str) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, stdout) of one `orchard …` child process."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "orchard.cli", *args], env={**env, "COLUMNS": "200"},
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, out + ("" if proc.returncode == 0 else f"\n(exit {proc.returncode})")


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())
