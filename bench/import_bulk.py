"""Benchmark: bulk import end to end — `orchard import members` then `orchard import orders` (identities
resolved, members created, aggregates updated) — against raw COPY of the same files into bare tables,
in the same run on the same PostgreSQL — or, with --sqlite, against csv + executemany of the same files
into bare SQLite tables. Not part of the test suite;
results go to docs/benchmarks.md.

    .venv/bin/python bench/import_bulk.py --members 1000000 --orders 10000000
    .venv/bin/python bench/import_bulk.py --members 20000 --orders 100000 --sqlite
    .venv/bin/python bench/import_bulk.py --members 1000000 --orders 10000000 --sqlite

Each import runs as a child process (`python -m orchard.cli import …`) so its peak RSS is its own;
the machine's load average is printed beside the figures because this 2-core machine is shared.
Orders go to members with a heavy-tailed repeat-purchase distribution; 10% of order rows name a
phone that is not in the members file (a new member is created from the order).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

PG = os.environ.get("ORCHARD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
STORES = ["SH001", "SH002", "BJ001", "GZ001", "SZ001", "HZ001", "CD001", "WH001"]


def phone(n: int) -> str:
    return f"13{n % 10}{n:08d}"[:11]


def make_members(path: Path, members: int, rng: random.Random) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["手机号", "姓名", "性别", "生日", "门店编码", "注册时间"])
        for n in range(members):
            birthday = f"{rng.randint(1960, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            joined = f"20{rng.randint(18, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            w.writerow([phone(n), rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN),
                        rng.choice("男女"), birthday, rng.choice(STORES), joined])


def make_orders(path: Path, orders: int, members: int, rng: random.Random) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["order_id", "member_phone", "paid_at", "amount", "store_code", "sku", "category"])
        for i in range(orders):
            if rng.random() < 0.1:
                who = members + rng.randrange(members // 4 or 1)  # not in the members file
            else:
                who = int(members * rng.paretovariate(1.16)) % members
            w.writerow([f"B{i:09d}", phone(who),
                        f"2026-{rng.randint(1, 10):02d}-{rng.randint(1, 28):02d}T{rng.randint(8, 21):02d}:"
                        f"{rng.randint(0, 59):02d}:00+08:00", f"{rng.randint(100, 99999) / 100:.2f}",
                        rng.choice(STORES), f"SKU{rng.randint(1, 5000)}", rng.choice(["服饰", "美妆", "食品", "家居"])])


def make_files(members: int, orders: int, seed: int, prefix: str) -> tuple[Path, Path, Path]:
    """(temporary folder, members file, orders file) of the given sizes, the same for the same seed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    rng = random.Random(seed)
    members_csv, orders_csv = tmp / "members.csv", tmp / "orders.csv"
    make_members(members_csv, members, rng)
    make_orders(orders_csv, orders, members, rng)
    return tmp, members_csv, orders_csv


def cli(py: str, env: dict, *args: str) -> None:
    subprocess.run([py, "-m", "orchard.cli", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def timed_import(py: str, env: dict, kind: str, path: Path) -> tuple[float, float, float]:
    """(seconds, CPU seconds, peak RSS in MB) of one `orchard import` child process. The CPU time is the
    child's own (user + system): on SQLite that is all of the work, on PostgreSQL the Python side only."""
    t = time.perf_counter()
    proc = subprocess.Popen([py, "-m", "orchard.cli", "import", kind, str(path)], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"import {kind} failed")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def new_pg_database() -> tuple[object, str, str]:
    """(admin engine, name, URL) of a fresh database on the bench server; drop it with `drop_pg_database`."""
    name = f"orchard_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    return admin, name, PG.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(admin, name: str) -> None:
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate_with_stores(py: str, env: dict) -> None:
    """Schema at head, and the HQ with the generator's stores (rows name them by code)."""
    cli(py, env, "db", "upgrade")
    cli(py, env, "org", "add", "hq", "HQ", "总部")
    for code in STORES:
        cli(py, env, "org", "add", "store", code, code, "--parent", "HQ")


def copy_csv(cur, table: str, path: Path) -> None:
    """COPY a CSV file with a header, as it is, into `table`."""
    with path.open("rb") as fh, cur.copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)") as cp:
        while chunk := fh.read(1 << 20):
            cp.write(chunk)


def raw_copy(url: str, members_csv: Path, orders_csv: Path) -> float:
    """Seconds to COPY both files, as they are, into bare text/number tables without indexes."""
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE bare_members (phone text, name text, gender text, birthday date, "
                       "store_code text, joined_at date)"))
        c.execute(text("CREATE TABLE bare_orders (order_id text, member_phone text, paid_at timestamptz, "
                       "amount numeric, store_code text, sku text, category text)"))
    raw = engine.raw_connection()
    t = time.perf_counter()
    with raw.cursor() as cur:
        for table, path in (("bare_members", members_csv), ("bare_orders", orders_csv)):
            copy_csv(cur, table, path)
    raw.commit()
    seconds = time.perf_counter() - t
    raw.close()
    engine.dispose()
    return seconds


def raw_sqlite(path: Path, members_csv: Path, orders_csv: Path) -> float:
    """SQLite's counterpart of raw COPY: seconds to read both files with the csv module and insert them,
    as they are, with `executemany` into bare tables without indexes (one transaction, same pragmas as
    the import connection)."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bare_members (phone, name, gender, birthday, store_code, joined_at)")
    conn.execute("CREATE TABLE bare_orders (order_id, member_phone, paid_at, amount, store_code, sku, category)")
    t = time.perf_counter()
    conn.execute("BEGIN")
    for table, path_, n in (("bare_members", members_csv, 6), ("bare_orders", orders_csv, 7)):
        with path_.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * n)})", reader)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - t
    conn.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=20_000)
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--sqlite", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t = time.perf_counter()
    tmp, members_csv, orders_csv = make_files(args.members, args.orders, args.seed, "orchard-bench-")
    print(f"files: {args.members:,} members, {args.orders:,} orders written in {time.perf_counter() - t:.0f} s "
          f"({(members_csv.stat().st_size + orders_csv.stat().st_size) / 2**20:,.0f} MB)")
    py = sys.executable
    admin = name = None
    if args.sqlite:
        url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        admin, name, url = new_pg_database()
    env = {**os.environ, "ORCHARD_DATABASE_URL": url}
    try:
        migrate_with_stores(py, env)
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        m_s, m_cpu, m_mb = timed_import(py, env, "members", members_csv)
        print(f"import members: {args.members:,} in {m_s:.1f} s = {args.members / m_s:,.0f} rows/s; "
              f"CPU {m_cpu:.1f} s; peak RSS {m_mb:,.0f} MB; load {os.getloadavg()[0]:.1f}")
        o_s, o_cpu, o_mb = timed_import(py, env, "orders", orders_csv)
        print(f"import orders: {args.orders:,} in {o_s:.1f} s = {args.orders / o_s:,.0f} rows/s; "
              f"CPU {o_cpu:.1f} s; peak RSS {o_mb:,.0f} MB; load {os.getloadavg()[0]:.1f}")
        total = args.members + args.orders
        rate = total / (m_s + o_s)
        print(f"import total: {total:,} rows in {m_s + o_s:.1f} s = {rate:,.0f} rows/s")
        engine = create_engine(url)
        with engine.connect() as c:
            counts = c.execute(text("SELECT (SELECT count(*) FROM members), (SELECT count(*) FROM orders), "
                                    "(SELECT sum(order_count) FROM member_aggregates)")).one()
        engine.dispose()
        print(f"stored: {counts[0]:,} members, {counts[1]:,} orders, aggregates count {counts[2]:,} orders")
        copy_s = raw_sqlite(tmp / "bare.db", members_csv, orders_csv) if args.sqlite else raw_copy(
            url, members_csv, orders_csv)
        what = "raw executemany (SQLite)" if args.sqlite else "raw COPY"
        print(f"{what}: {total:,} rows in {copy_s:.1f} s = {total / copy_s:,.0f} rows/s; "
              f"import/raw ratio {rate / (total / copy_s):.2%}; load {os.getloadavg()[0]:.1f}")
        print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    finally:
        if admin is not None:
            drop_pg_database(admin, name)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
