"""Benchmark: earning on import (issue 4, L2/L3: ≥ 20,000 earn entries/s in bulk from the order import
path) — `orchard import orders FILE --earn` end to end beside the same import without earning, in the
same run, on PostgreSQL. Not part of the test suite; results go to docs/benchmarks.md.

    .venv/bin/python bench/import_earn.py --members 20000 --orders 200000
    .venv/bin/python bench/import_earn.py --members 100000 --orders 1000000
    .venv/bin/python bench/import_earn.py --members 1000000 --orders 10000000      # full size (quiet machine)

Two fresh databases get the same members file (`orchard import members`) and the same earning set-up:
1 point per ¥1 capped at 2,000 a day (an amount rule), ×2 on Wednesdays (a member-day multiplier),
×1.5 for gold members (a tier multiplier), 1 growth per ¥1 (a growth rule) and a growth tier program
(silver at 2,000, gold at 8,000, so members upgrade mid-file and their next orders earn ×1.5). Then
the same orders file (bench/import_bulk.py's generator: heavy-tailed repeat buyers, 10 % of orders
from phones not in the members file) is imported into one without `--earn` and into the other with
it. For each import: wall seconds, rows/s, the import process's CPU (user + sys) and its PostgreSQL
backends' CPU (sampled from /proc while it runs), peak RSS, and the load average before and after
(this 2-core machine is shared). Then the earn entries written, earn entries/s end to end, the
marginal cost of earning (extra seconds, entries per extra second), and `orchard points verify`.

`--py-spy DIR` records the earning import with py-spy (`--gil`: the thread holding the GIL, i.e. where
Python spends its time, the writer thread included) and prints the top functions by own samples.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_bulk import STORES, make_files  # noqa: E402
from ingest_http import cpu_seconds  # noqa: E402

PG = os.environ.get("ORCHARD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


class BackendCpu(threading.Thread):
    """CPU seconds of a database's PostgreSQL backends while an import runs: polled from /proc every
    0.2 s (a backend's last reading before it exits counts)."""

    def __init__(self, url: str, dbname: str) -> None:
        super().__init__(daemon=True)
        self.engine, self.dbname = create_engine(url), dbname
        self.seen: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as c:
            me = c.execute(text("SELECT pg_backend_pid()")).scalar()
            while not self.done.wait(0.2):
                pids = c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> :me"),
                                 {"d": self.dbname, "me": me}).scalars().all()
                c.rollback()
                for p in pids:
                    if (v := cpu_seconds(p)) > 0:
                        self.seen[p] = v

    def stop(self) -> float:
        self.done.set()
        self.join()
        self.engine.dispose()
        return sum(self.seen.values())


def cli(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "orchard.cli", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def timed_import(env: dict, url: str, dbname: str, kind: str, path: Path, *extra: str,
                 py_spy: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "orchard.cli", "import", kind, str(path), *extra]
    backends = BackendCpu(url, dbname)
    backends.start()
    load = os.getloadavg()[0]
    t = time.perf_counter()
    if py_spy is not None:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "-r", "100",
                                 "-f", "raw", "-o", str(py_spy), "--", *cmd], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    pg_cpu = backends.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"import {kind} {' '.join(extra)} failed")
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "pg_cpu": pg_cpu,
            "rss": usage.ru_maxrss / 1024, "load": (load, os.getloadavg()[0])}


def setup_earning(url: str) -> None:
    """The earning rules and the tier program, through Orchard's own models and services."""
    os.environ["ORCHARD_DATABASE_URL"] = url
    from orchard import db
    from orchard.loyalty import tiers
    from orchard.loyalty.models import EarningRule
    from orchard.loyalty.schemas import TierProgramIn

    db.reset_caches()
    with db.transaction() as s:
        for name, kind, target, config in (
                ("每元1分", "amount", "points", {"points": 1, "per_fen": 100, "caps": {"day": 2000}}),
                ("周三会员日双倍", "multiplier", "points", {"factor": "2", "when": {"type": "member_day",
                                                                             "weekdays": [3]}}),
                ("金卡1.5倍", "multiplier", "points", {"factor": "1.5", "when": {"type": "tier", "levels": ["gold"]}}),
                ("消费成长值", "amount", "growth", {"points": 1, "per_fen": 100})):
            s.add(EarningRule(name=name, kind=kind, target=target, config=config, created_by="bench"))
        tiers.set_program(s, TierProgramIn.model_validate({"metric": "growth", "period": "lifetime", "levels": [
            {"code": "base", "name": "普通", "rank": 0, "threshold": 0},
            {"code": "silver", "name": "银卡", "rank": 1, "threshold": 2000},
            {"code": "gold", "name": "金卡", "rank": 2, "threshold": 8000}]}), actor="bench")
    db.reset_caches()


def report_py_spy(path: Path, top: int = 25) -> None:
    """Own samples per function (the leaf frame of each stack), and samples under a few entry points."""
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    marks = ("write_orders", "BatchEarning.start", "BatchEarning.write", "flush", "evaluate_order", "_prepare",
             "_parse", "order_fingerprint", "copy_rows", "_accounts", "execute")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for mark in marks:
            if any(f"{mark} (" in f for f in frames):
                under[mark] += n
    print(f"py-spy: {total:,} samples of the GIL holder (100/s)")
    for mark in marks:
        print(f"  under {mark:22s} {under[mark] / total:6.1%}")
    for frame, n in own.most_common(top):
        print(f"  own {n / total:6.1%}  {frame[:150]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=20_000)
    ap.add_argument("--orders", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--py-spy", metavar="DIR", help="record the earning import with py-spy into DIR")
    ap.add_argument("--db-prefix", default="orchard_bench", help="names of the two databases (created, dropped)")
    args = ap.parse_args()
    tmp, members_csv, orders_csv = make_files(args.members, args.orders, args.seed, "orchard-bench-earn-")
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    names = {k: f"{args.db_prefix}_{k}_{uuid.uuid4().hex[:8]}" for k in ("plain", "earn")}
    urls = {k: PG.rsplit("/", 1)[0] + "/" + n for k, n in names.items()}
    results = {}
    try:
        for k, name in names.items():
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
            env = {**os.environ, "ORCHARD_DATABASE_URL": urls[k]}
            cli(env, "db", "upgrade")
            cli(env, "org", "add", "hq", "HQ", "总部")
            for code in STORES:
                cli(env, "org", "add", "store", code, code, "--parent", "HQ")
            setup_earning(urls[k])  # rules in both: only --earn uses them
            m = timed_import(env, urls[k], name, "members", members_csv)
            print(f"[{k}] members: {args.members:,} in {m['seconds']:.1f} s; load {m['load'][1]:.1f}")
        print(f"load average before the orders: {os.getloadavg()[0]:.2f}")
        spy = None
        if args.py_spy:
            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
            spy = Path(args.py_spy) / "import-earn.txt"
        for k, extra in (("plain", ()), ("earn", ("--earn",))):
            env = {**os.environ, "ORCHARD_DATABASE_URL": urls[k]}
            results[k] = r = timed_import(env, urls[k], names[k], "orders", orders_csv, *extra,
                                          py_spy=spy if k == "earn" else None)
            print(f"[{k}] orders {' '.join(extra)}: {args.orders:,} in {r['seconds']:.1f} s = "
                  f"{args.orders / r['seconds']:,.0f} orders/s; import CPU {r['cpu']:.1f} s, PostgreSQL backends "
                  f"CPU {r['pg_cpu']:.1f} s; peak RSS {r['rss']:,.0f} MB; load {r['load'][0]:.2f} → {r['load'][1]:.2f}")
        engine = create_engine(urls["earn"])
        with engine.connect() as c:
            entries, points, awards, growth, upgrades, lots = c.execute(text(
                "SELECT (SELECT count(*) FROM points_entries WHERE kind = 'earn'), "
                "(SELECT coalesce(sum(amount), 0) FROM points_entries), (SELECT count(*) FROM points_awards), "
                "(SELECT count(*) FROM growth_entries), (SELECT count(*) FROM tier_changes), "
                "(SELECT count(*) FROM points_lots)")).one()
            orders = c.execute(text("SELECT count(*) FROM orders")).scalar()
        engine.dispose()
        plain, earn = results["plain"], results["earn"]
        extra = earn["seconds"] - plain["seconds"]
        print(f"earned: {entries:,} earn entries ({points:,} points), {lots:,} lots, {awards:,} awards, "
              f"{growth:,} growth rows, {upgrades:,} tier upgrades, for {orders:,} orders")
        print(f"earn entries/s end to end: {entries / earn['seconds']:,.0f}  (orders/s with earning "
              f"{args.orders / earn['seconds']:,.0f} vs without {args.orders / plain['seconds']:,.0f}: ratio "
              f"{plain['seconds'] / earn['seconds']:.2f})")
        if extra > 0:
            print(f"marginal: earning added {extra:.1f} s = {entries / extra:,.0f} earn entries per extra second; "
                  f"CPU added: import {earn['cpu'] - plain['cpu']:+.1f} s, "
                  f"PostgreSQL {earn['pg_cpu'] - plain['pg_cpu']:+.1f} s")
        if entries:
            print(f"CPU per earn entry (the whole earning import): import {earn['cpu'] / entries * 1e6:,.0f} µs, "
                  f"PostgreSQL {earn['pg_cpu'] / entries * 1e6:,.0f} µs; earning's extra: import "
                  f"{(earn['cpu'] - plain['cpu']) / entries * 1e6:+,.0f} µs, PostgreSQL "
                  f"{(earn['pg_cpu'] - plain['pg_cpu']) / entries * 1e6:+,.0f} µs")
        t = time.perf_counter()
        check = subprocess.run([sys.executable, "-m", "orchard.cli", "points", "verify"],
                               env={**os.environ, "ORCHARD_DATABASE_URL": urls["earn"]}, capture_output=True, text=True)
        print(f"points verify: exit {check.returncode} in {time.perf_counter() - t:.1f} s")
        if check.returncode != 0:
            print(check.stdout[-2000:], check.stderr[-2000:])
        if spy is not None:
            report_py_spy(spy)
    finally:
        with admin.connect() as c:
            for name in names.values():
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
