"""Benchmark: `orchard import orders` end to end (identities resolved, aggregates updated) against raw
COPY of the same rows into a bare table, in the same run on the same PostgreSQL (or SQLite for
reference). Not part of the test suite. Results go to docs/benchmarks.md.

    .venv/bin/python bench/import_orders.py --orders 200000 --members 50000 [--sqlite]

Prints rows/s for both, their ratio, and the import process's peak memory (it runs as a child
process so its RSS is measured alone).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

PG = os.environ.get("ORCHARD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def make_file(path: Path, orders: int, members: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["order_id", "member_phone", "paid_at", "amount", "store_code"])
        for i in range(orders):
            m = int(members * rng.paretovariate(1.2)) % members
            w.writerow([f"B{i}", f"138{m:08d}", f"2026-{rng.randint(1, 10):02d}-{rng.randint(1, 28):02d}T"
                        f"{rng.randint(8, 21):02d}:00:00+08:00", f"{rng.randint(100, 99999) / 100:.2f}", "S1"])


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--members", type=int, default=25_000)
    ap.add_argument("--sqlite", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orchard-bench-"))
    data = tmp / "orders.csv"
    make_file(data, args.orders, args.members)
    py = sys.executable
    if args.sqlite:
        url, admin, name = f"sqlite:///{tmp / 'bench.db'}", None, None
    else:
        name = f"orchard_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG.rsplit("/", 1)[0] + "/" + name
    env = {**os.environ, "ORCHARD_DATABASE_URL": url}
    try:
        subprocess.run([py, "-m", "orchard.cli", "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([py, "-m", "orchard.cli", "org", "add", "hq", "HQ", "总部"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([py, "-m", "orchard.cli", "org", "add", "store", "S1", "门店", "--parent", "HQ"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        seconds = run([py, "-m", "orchard.cli", "import", "orders", str(data)], env)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"import: {args.orders:,} orders in {seconds:.1f} s = {args.orders / seconds:,.0f} rows/s; "
              f"peak RSS {peak_mb:,.0f} MB (children max before: {before / 1024:,.0f} MB)")
        if not args.sqlite:
            engine = create_engine(url)
            with engine.begin() as c:
                c.execute(text("CREATE TABLE bare (order_id text, member_phone text, paid_at timestamptz, "
                               "amount numeric, store_code text)"))
            raw = engine.raw_connection()
            t = time.perf_counter()
            with raw.cursor() as cur, data.open("rb") as fh:
                with cur.copy("COPY bare FROM STDIN WITH (FORMAT csv, HEADER true)") as cp:
                    while chunk := fh.read(1 << 20):
                        cp.write(chunk)
            raw.commit()
            copy_s = time.perf_counter() - t
            raw.close()
            engine.dispose()
            print(f"raw COPY: {args.orders / copy_s:,.0f} rows/s; import/COPY ratio "
                  f"{(args.orders / seconds) / (args.orders / copy_s):.2%}")
    finally:
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
