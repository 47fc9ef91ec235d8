"""Benchmark: single points redemptions (`POST /api/v1/members/{id}/points/spend`) against `orchard serve`
on PostgreSQL, driven from loopback. Not part of the test suite; results go to docs/benchmarks.md
("Points ledger").

    .venv/bin/python bench/points_redeem_http.py --members 1000000 --lots 3000000 --requests 30000
    .venv/bin/python bench/points_redeem_http.py            # small default: a quick smoke run

A fresh database (migrated, an HQ and four stores) is seeded set-based (bench/points_seed.py: members,
earn entries, lots spread over the members, accounts; `--expired-share` of the lots already past their
expiry but not yet expired by a pass, which spends must skip), and an integrator API key is created
(`orchard apikeys create`). For each `--workers` count, `orchard serve --workers N` runs as a child
process; after a warm-up (not timed), `--requests` spends of 1–`--max-amount` points go to members
drawn uniformly at random, each with a unique external_id and a store code, over `--concurrency`
keep-alive connections in a closed loop (the minimal asyncio HTTP/1.1 client of bench/ingest_http.py,
bodies encoded before the clock starts). Reported: spends/s, p50/p95/p99, the 409s by code
(points.insufficient, points.id_reused), other errors, CPU of the load generator / server / its
PostgreSQL backends, server CPU ms per spend, PostgreSQL commits per spend. `--floor` first times, under
the same load, a raw ASGI app and a bare FastAPI async route with the same body model (bench/floor_app.py,
no database): the floor the thin path is measured against. `--service-path` serves spends through the
service path instead of the thin one (the "before", on the same code); `--http` and `--loop` choose
uvicorn's parser and event loop for every server (auto: httptools and uvloop when installed). Afterwards
a SQL count checks one spend entry per 200, and `orchard points verify` is run and timed over the whole
ledger (its statement_timeout: `--verify-timeout`). `--py-spy DIR` records flame graphs of the server workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ingest_http import CpuMeter, drive, free_port, pct, process_tree, request_bytes, wait_ready
from points_seed import STORES, create_database, drop_database, loadavg, orchard, seed, sizes, timed_cli
from sqlalchemy import create_engine, text


def spends(port: int, key: str, rng: random.Random, members: int, n: int, tag: str, max_amount: int) -> list[bytes]:
    out = []
    for i in range(n):
        body = {"amount": rng.randint(1, max_amount), "reason": "积分兑换 bench redemption",
                "external_id": f"{tag}-{i}", "source": "pos", "store_code": rng.choice(STORES)}
        out.append(request_bytes(port, key, f"/api/v1/members/{rng.randint(1, members)}/points/spend",
                                 json.dumps(body, ensure_ascii=False).encode()))
    return out


def outcome(status: int, body: bytes) -> str:
    if 200 <= status < 300:
        return "ok"
    try:
        return f"{status} {json.loads(body).get('code', '')}".strip()
    except ValueError:
        return f"{status}"


def server_command(server: str, port: int, workers: int, args) -> list[str]:
    """`orchard serve` (the thin path on PostgreSQL unless ORCHARD_POINTS_SPEND_FAST_PATH=false), or a floor app."""
    if server == "orchard":
        return [sys.executable, "-m", "orchard.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers), "--http", args.http, "--loop", args.loop]
    return [sys.executable, "-m", "uvicorn", f"floor_app:{server}", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--http", args.http, "--loop", args.loop, "--no-access-log",
            "--app-dir", str(Path(__file__).parent)]


def run_workers(args, url: str, env: dict, name: str, key: str, workers: int, rng: random.Random,
                server_name: str = "orchard") -> dict:
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"{name}-{server_name}-w{workers}.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(server_command(server_name, port, workers, args), env=env, stdout=log, stderr=log,
                              start_new_session=True)
    profilers: list[subprocess.Popen] = []
    engine = create_engine(url)
    try:
        wait_ready(port, server)
        time.sleep(1.0 if workers > 1 else 0.2)
        meter = CpuMeter(server.pid, engine, name)
        tag = f"w{workers}" if server_name == "orchard" else f"{server_name}{workers}"
        warm = spends(port, key, rng, args.members, 200, f"warm-{tag}", args.max_amount)
        asyncio.run(drive(port, warm, args.concurrency, 600))
        timed = spends(port, key, rng, args.members, args.requests, tag, args.max_amount)
        if args.py_spy:
            out = Path(args.py_spy)
            out.mkdir(parents=True, exist_ok=True)
            pids = [p for p in process_tree(server.pid) if p != server.pid] if workers > 1 else [server.pid]
            for p in pids:
                profilers.append(subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "-r", "200", "-d",
                     str(int(min(args.max_seconds - 2, 30))), "-p", str(p), "-f", "raw",
                     "-o", str(out / f"redeem-{server_name}-w{workers}-{p}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        commits_sql = text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d")
        with engine.connect() as c:
            commits0 = c.execute(commits_sql, {"d": name}).scalar()
        before, load_before = meter.snapshot(), loadavg()
        res, wall = asyncio.run(drive(port, timed, args.concurrency, args.max_seconds))
        cpu = meter.delta(before)
        load_after = loadavg()
        for p in profilers:
            p.wait()
        kinds = Counter(outcome(s, b) for _, s, b, _i in res)
        with engine.connect() as c:
            stored = c.execute(text("SELECT count(*) FROM points_entries WHERE kind = 'spend' AND external_id LIKE "
                                    ":tag"), {"tag": f"{tag}-%"}).scalar()
            commits = c.execute(commits_sql, {"d": name}).scalar() - commits0
        lat = sorted(r[0] for r in res)
        ok = kinds.get("ok", 0)
        check = ("OK" if stored == ok else f"MISMATCH ({stored:,} stored)") if server_name == "orchard" else "—"
        row = {"server": server_name, "workers": workers, "requests": len(res), "seconds": wall, "ok": ok,
               "kinds": kinds, "cpu": cpu, "p50": pct(lat, .5), "p95": pct(lat, .95), "p99": pct(lat, .99),
               "load": (load_before, load_after), "check": check, "commits": commits}
        print(f"{server_name} workers={workers}: {len(res):,} spends in {wall:.1f} s = {len(res) / wall:,.0f}/s, "
              f"p50 {row['p50']:.1f} p95 {row['p95']:.1f} p99 {row['p99']:.1f} ms; outcomes {dict(kinds)}; "
              f"stored {stored:,}; load {load_before} → {load_after}")
        return row
    finally:
        for p in profilers:
            p.kill()
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=2_000)
    ap.add_argument("--lots", type=int, default=None, help="points lots (default: 3 per member)")
    ap.add_argument("--expired-share", type=float, default=0.2, help="share of the lots past expiry, not expired")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts for `orchard serve`")
    ap.add_argument("--requests", type=int, default=2_000, help="timed spends per worker count")
    ap.add_argument("--concurrency", type=int, default=16, help="keep-alive connections, each a closed loop")
    ap.add_argument("--max-seconds", type=float, default=60, help="stop the timed phase after this long")
    ap.add_argument("--max-amount", type=int, default=50, help="each spend takes 1..this many points")
    ap.add_argument("--verify-timeout", type=float, default=600, help="statement_timeout of `orchard points verify`")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--py-spy", metavar="DIR", help="record py-spy profiles of the server workers into DIR")
    ap.add_argument("--floor", action="store_true",
                    help="also time the floor under the same load: a bare FastAPI async route (bench/floor_app.py "
                         "fastapi_app) and a raw ASGI app (raw_app), no database")
    ap.add_argument("--http", default="auto", help="uvicorn's HTTP parser for every server: auto, h11, httptools")
    ap.add_argument("--loop", default="auto", help="uvicorn's event loop for every server: auto, asyncio, uvloop")
    ap.add_argument("--service-path", action="store_true",
                    help="serve spends through the service path (ORCHARD_POINTS_SPEND_FAST_PATH=false): the "
                         "'before' of the thin path, on the same code")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    lots = args.lots if args.lots is not None else 3 * args.members
    rng = random.Random(args.seed)
    print(f"{os.cpu_count()} CPUs; load average {loadavg()} (1/5/15 min)")
    name, url, env = create_database()
    print(f"database {name}")
    rows = []
    try:
        t = time.perf_counter()
        seed(url, args.members, lots, args.expired_share)
        print(f"seeded {args.members:,} members, {lots:,} lots in {time.perf_counter() - t:.0f} s: {sizes(url)}; "
              f"load {loadavg()}")
        key = orchard(env, "apikeys", "create", "--name", "bench redeem", "--role", "integrator").strip() \
            .splitlines()[-1]
        if args.service_path:
            env = {**env, "ORCHARD_POINTS_SPEND_FAST_PATH": "false"}
        for w in (int(x) for x in args.workers.split(",")):
            if args.floor:
                for floor in ("raw_app", "fastapi_app"):
                    rows.append(run_workers(args, url, env, name, key, w, rng, floor))
            rows.append(run_workers(args, url, env, name, key, w, rng))
        if not args.no_verify:
            before = loadavg()
            s, mb, out = timed_cli({**env, "PGOPTIONS": f"-c statement_timeout={args.verify_timeout * 1000:.0f}"},
                                   "points", "verify")
            verdict = out.strip().splitlines()[-1] if out.strip() else "(no output)"
            print(f"verify (orchard points verify): {s:.1f} s, peak RSS {mb:.0f} MB; load {before} → {loadavg()}: "
                  f"{verdict}")
            if "(exit" in verdict:
                print(out)
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            drop_database(name)
    import uvicorn

    path = "service path" if args.service_path else "thin path"
    print(f"\nuvicorn {uvicorn.__version__}, --http {args.http} --loop {args.loop} (auto: httptools "
          f"{'installed' if _installed('httptools') else 'absent'}, uvloop "
          f"{'installed' if _installed('uvloop') else 'absent'}); orchard = `orchard serve`, spends on the {path}")
    head = ("server", "workers", "connections", "spends", "spends/s", "p50 ms", "p95 ms", "p99 ms", "409s",
            "other errors", "CPU gen/server/PG", "server CPU ms/spend", "PG commits/spend", "load before → after",
            "stored")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        c, s, k = r["cpu"], r["seconds"], r["kinds"]
        conflicts = ", ".join(f"{v} {n.split(' ', 1)[1]}" for n, v in k.items() if n.startswith("409")) or "0"
        other = sum(v for n, v in k.items() if n != "ok" and not n.startswith("409"))
        print(f"| {r['server']} | {r['workers']} | {args.concurrency} | {r['requests']:,} | {r['requests'] / s:,.0f} | "
              f"{r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {conflicts} | {other} | "
              f"{c['gen'] / s:.0%} / {c['server'] / s:.0%} / {c['pg'] / s:.0%} ({c['backends']}) | "
              f"{c['server'] * 1000 / max(r['requests'], 1):.2f} | {r['commits'] / max(r['requests'], 1):.2f} | "
              f"{r['load'][0]} → {r['load'][1]} | {r['check']} |")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
