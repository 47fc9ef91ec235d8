"""Benchmark: HTTP ingestion against `orchard serve` on PostgreSQL, driven from loopback. Not part of
the test suite. Results go to docs/benchmarks.md ("HTTP ingestion").

    .venv/bin/python bench/ingest_http.py [--workers 1,2] [--single 10000] [--concurrency 32]
                                          [--batches 20] [--batch-concurrency 2] [--members 3000]
                                          [--new-share 0.1] [--order-share 0.2] [--card-share 0.5]
                                          [--db-prefix orchard_bench]

For each worker count: a fresh PostgreSQL database, `orchard db upgrade`, an HQ and four stores, an
integrator API key (`orchard apikeys create`), then `orchard serve --workers N` as a child process.
`--members` known members are seeded (one `sign_up` each, through /api/v1/ingest, not timed); then

* single: `--single` POSTs to /api/v1/events or /api/v1/orders (80 % behaviour events, 20 % orders
  with 1–3 lines), `--concurrency` connections in a closed loop: events/s and p50/p95/p99 latency;
* batch: `--batches` POSTs of 1,000 mixed items to /api/v1/ingest, `--batch-concurrency` at a time.

Each item names its member by phone (written in several formats), sometimes with a card number too;
`--new-share` of the items come from people never seen before (a new member each), the rest from
the seeded members. Every response must be 2xx (batch items `ok`); errors are counted and printed.
A final SQL count checks that every item sent was stored, and every new person became one member.

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio (request bodies encoded before
the clock starts) in this process, so it costs little of the two shared cores; its CPU time is
printed next to the server's (uvicorn processes) and PostgreSQL's (the server's backends), read from
/proc. `--py-spy DIR` records a py-spy profile (samples of the thread holding the GIL, i.e. where Python
spends CPU) of every server worker during each timed phase.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

PG = os.environ.get("ORCHARD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
STORES = ["S1", "S2", "S3", "S4"]
PREFIXES = ["138", "139", "135", "136", "137", "150", "151", "152", "158", "159", "186", "187", "188", "130",
            "131", "132", "155", "156", "185", "133", "153", "180", "181", "189", "177", "199"]
EVENT_NAMES = ["product_viewed"] * 10 + ["added_to_cart"] * 4 + ["store_visit"] * 3 + ["login"] * 4 + \
    ["coupon_used", "shared", "reviewed", "checked_in", "live_attended", "service_contacted"]
PRODUCTS = [("TEA-LJ-01", "明前龙井", "茶叶", 16800), ("TEA-TGY-02", "安溪铁观音", "茶叶", 9800),
            ("TEA-PE-03", "普洱饼茶", "茶叶", 25800), ("CUP-01", "青瓷茶杯", "茶具", 3900),
            ("POT-02", "紫砂壶", "茶具", 58800), ("GIFT-01", "中秋礼盒", "礼盒", 36800)]
CST = dt.timezone(dt.timedelta(hours=8))
TICK = os.sysconf("SC_CLK_TCK")


# --- data -------------------------------------------------------------------------------------

def phone(m: int, style: int) -> str:
    """Member m's mobile number (unique per m), written as a client might."""
    digits = PREFIXES[m % len(PREFIXES)] + f"{(m * 7919 + 12345) % 10**8:08d}"
    if style == 1:
        return f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    if style == 2:
        return f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}"
    return digits


CARD_SHARE = [0.5]  # --card-share


def member_ref(rng: random.Random, m: int) -> dict:
    ids = {"phone": phone(m, rng.choice((0, 0, 0, 1, 2)))}
    if m % 3 == 0 and rng.random() < CARD_SHARE[0]:
        ids["card_no"] = f"C{m:08d}"
    return {"identities": ids}


def when(rng: random.Random) -> str:
    t = dt.datetime.now(CST) - dt.timedelta(seconds=rng.randint(60, 30 * 86400))
    return t.isoformat(timespec="seconds")


ORDER_SHARE = [0.2]  # --order-share


def item(rng: random.Random, ext: str, m: int, order_share: float | None = None) -> dict:
    """One order or behaviour event (with its batch `type`)."""
    store = rng.choice(STORES)
    if rng.random() < (ORDER_SHARE[0] if order_share is None else order_share):
        lines = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            sku, name, cat, price = rng.choice(PRODUCTS)
            lines.append({"sku": sku, "name": name, "category": cat, "quantity": rng.choice((1, 1, 2)),
                          "unit_price_fen": price})
        return {"type": "order", "source": "pos", "external_id": ext, "paid_at": when(rng), "store_code": store,
                "channel": "pos", "member": member_ref(rng, m), "lines": lines}
    name = rng.choice(EVENT_NAMES)
    props: dict = {"platform": rng.choice(("miniprogram", "app", "h5"))}
    if name in ("product_viewed", "added_to_cart", "reviewed", "shared"):
        sku, pname, _, price = rng.choice(PRODUCTS)
        props.update(sku=sku, product=pname, price_fen=price)
    return {"type": "event", "source": "app", "external_id": ext, "name": name, "occurred_at": when(rng),
            "store_code": store, "member": member_ref(rng, m), "properties": props}


class People:
    """Seeded members are 0..known-1; each new person gets a fresh index, used once."""

    def __init__(self, known: int, new_share: float, rng: random.Random) -> None:
        self.known, self.new_share, self.rng, self.next_new = known, new_share, rng, known

    def pick(self) -> tuple[int, bool]:
        if self.rng.random() < self.new_share:
            self.next_new += 1
            return self.next_new - 1, True
        return int(self.known * (self.rng.paretovariate(1.5) - 1) / 4) % self.known, False


# --- a minimal HTTP/1.1 keep-alive client --------------------------------------------------------

def request_bytes(port: int, key: str, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> tuple[int, bytes]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    i = low.find(b"\r\ncontent-length:")
    if i >= 0:
        n = int(low[i + 17:low.index(b"\r\n", i + 2)])
        return status, await reader.readexactly(n)
    body = b""  # chunked
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


async def drive(port: int, requests: list[bytes], concurrency: int, deadline_s: float):
    """Send the requests over `concurrency` connections, each in a closed loop. Returns a list of
    (latency seconds, status, body, request index) in completion order, and the wall time."""
    queue = iter(enumerate(requests))
    results: list[tuple[float, int, bytes, int]] = []
    stop = time.perf_counter() + deadline_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index, data in queue:
                t = time.perf_counter()
                try:
                    status, body = await exchange(reader, writer, data)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:  # counted as an error (status 0)
                    status, body = 0, repr(exc).encode()
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                results.append((time.perf_counter() - t, status, body, index))
                if t > stop:
                    break
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - t0


# --- processes and CPU accounting ----------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class CpuMeter:
    """CPU seconds used during a phase by this process, the server tree and the server's PG backends."""

    def __init__(self, server_pid: int, engine, dbname: str) -> None:
        self.server_pid, self.engine, self.dbname = server_pid, engine, dbname

    def _backends(self) -> list[int]:
        with self.engine.connect() as c:
            return list(c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> "
                                       "pg_backend_pid()"), {"d": self.dbname}).scalars())

    def snapshot(self) -> dict:
        return {"gen": time.process_time(),
                "server": {p: cpu_seconds(p) for p in process_tree(self.server_pid)},
                "pg": {p: cpu_seconds(p) for p in self._backends()}}

    def delta(self, before: dict) -> dict:
        after = self.snapshot()
        return {"gen": after["gen"] - before["gen"], "backends": len(after["pg"]),
                "server": sum(v - before["server"].get(p, 0.0) for p, v in after["server"].items()),
                "pg": sum(v - before["pg"].get(p, 0.0) for p, v in after["pg"].items())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orchard(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "orchard.cli", *args], env=env, check=True, text=True,
                          capture_output=True).stdout


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("orchard serve exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("orchard serve did not start")


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --- one worker count ----------------------------------------------------------------------------

def run_one(args, workers: int, rng: random.Random, thin: bool = True) -> list[dict]:
    name = f"{args.db_prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG.rsplit("/", 1)[0] + "/" + name
    env = {**os.environ, "ORCHARD_DATABASE_URL": url, "ORCHARD_INGEST_FAST_PATH": "true" if thin else "false"}
    server = None
    profilers: list[subprocess.Popen] = []
    rows: list[dict] = []
    try:
        orchard(env, "db", "upgrade")
        orchard(env, "org", "add", "hq", "HQ", "总部")
        for code in STORES:
            orchard(env, "org", "add", "store", code, f"门店{code}", "--parent", "HQ", "--city", "上海")
        key = orchard(env, "apikeys", "create", "--name", "bench loader", "--role", "integrator").strip() \
            .splitlines()[-1]
        port = free_port()
        log = open(Path(tempfile.gettempdir()) / f"{name}.log", "wb")  # noqa: SIM115 - closed with the server
        print(f"workers={workers}: server log {log.name}")
        server = subprocess.Popen([sys.executable, "-m", "orchard.cli", "serve", "--host", "127.0.0.1", "--port",
                                   str(port), "--workers", str(workers)], env=env, stdout=log, stderr=log,
                                  start_new_session=True)
        wait_ready(port, server)
        time.sleep(1.0 if workers > 1 else 0.2)  # let every worker come up
        engine = create_engine(url)
        meter = CpuMeter(server.pid, engine, name)

        # Seed the known members: one sign_up each, 1,000 per request.
        seed = [{"type": "event", "source": "crm", "external_id": f"seed-{m}", "name": "sign_up",
                 "occurred_at": when(rng), "store_code": STORES[m % 4],
                 "member": {"identities": {"phone": phone(m, 0)}}} for m in range(args.members)]
        seed_reqs = [request_bytes(port, key, "/api/v1/ingest",
                                   json.dumps({"items": seed[i:i + 1000]}, ensure_ascii=False).encode())
                     for i in range(0, len(seed), 1000)]
        res, _ = asyncio.run(drive(port, seed_reqs, 1, 600))
        assert all(s == 200 and json.loads(b)["rejected"] == 0 for _, s, b, _i in res), res[:1]
        created_total, new_total = args.members, args.members  # new_total: new people among the items sent

        people = People(args.members, args.new_share, rng)
        # Warm-up (not timed): every worker imports, connects and fills its caches.
        warm = []
        for i in range(200):
            m, new = people.pick()
            new_total += new
            it = item(rng, f"w-{i}", m)
            warm.append(request_bytes(port, key, "/api/v1/orders" if it.pop("type") == "order" else "/api/v1/events",
                                      json.dumps(it, ensure_ascii=False).encode()))
        res, _ = asyncio.run(drive(port, warm, args.concurrency, 600))
        created_total += sum(s == 201 for _, s, _b, _i in res)

        def profile(phase: str, seconds: float) -> None:
            if not args.py_spy:
                return
            out = Path(args.py_spy)
            out.mkdir(parents=True, exist_ok=True)
            pids = [p for p in process_tree(server.pid) if p != server.pid] if workers > 1 else [server.pid]
            for p in pids:
                for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
                    profilers.append(subprocess.Popen(
                        [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "-r", "200",
                         "-d", str(int(seconds)), "-p", str(p), "-f", fmt,
                         "-o", str(out / f"w{workers}-{phase}-{p}.{ext}")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        # Single events.
        single, is_new = [], []
        for i in range(args.single):
            m, new = people.pick()
            is_new.append(new)
            it = item(rng, f"s-{i}", m)
            path = "/api/v1/orders" if it.pop("type") == "order" else "/api/v1/events"
            single.append(request_bytes(port, key, path, json.dumps(it, ensure_ascii=False).encode()))
        profile("single", min(args.max_seconds - 2, 30))
        before, load_before = meter.snapshot(), loadavg()
        res, wall = asyncio.run(drive(port, single, args.concurrency, args.max_seconds))
        cpu = meter.delta(before)
        new_total += sum(is_new[i] for _, s, _b, i in res if 200 <= s < 300)
        lat = sorted(r[0] for r in res)
        ok = [b for _, s, b, _i in res if 200 <= s < 300]
        errors = len(res) - len(ok)
        outcomes = [json.loads(b) for b in ok]
        created_total += sum(o["status"] == "created" for o in outcomes)
        if errors:
            print("single errors, e.g.:", next((s, b[:300]) for _, s, b, _i in res if not 200 <= s < 300))
        rows.append({"workers": workers, "path": "thin" if thin else "route",
                     "phase": f"single ×{args.concurrency} conn", "requests": len(res),
                     "events": len(res), "seconds": wall, "p50": pct(lat, .5), "p95": pct(lat, .95),
                     "p99": pct(lat, .99), "errors": errors,
                     "new": sum(o["member_created"] for o in outcomes), "cpu": cpu, "load": (load_before, loadavg())})
        for p in profilers:
            p.wait()
        profilers.clear()

        # Batches of 1,000.
        batches, batch_new = [], []
        for b in range(args.batches):
            items = []
            batch_new.append([])
            for i in range(1000):
                m, new = people.pick()
                batch_new[-1].append(new)
                items.append(item(rng, f"b-{b}-{i}", m))
            batches.append(request_bytes(port, key, "/api/v1/ingest",
                                         json.dumps({"items": items}, ensure_ascii=False).encode()))
        profile("batch", min(args.max_seconds - 2, 30))
        before, load_before = meter.snapshot(), loadavg()
        res, wall = asyncio.run(drive(port, batches, args.batch_concurrency, args.max_seconds))
        cpu = meter.delta(before)
        errors, accepted, new = 0, 0, 0
        for _, s, b, index in res:
            if s != 200:
                errors += 1000
                print("batch error:", s, b[:300])
                continue
            out = json.loads(b)
            accepted += out["accepted"]
            errors += out["rejected"]
            if out["rejected"]:
                print("batch item errors, e.g.:", next(r["error"] for r in out["results"] if not r["ok"]))
            for r in out["results"]:
                if r["ok"]:
                    new_total += batch_new[index][r["index"]]
                    created_total += r["outcome"]["status"] == "created"
                    new += r["outcome"]["member_created"]
        lat = sorted(r[0] for r in res)
        rows.append({"workers": workers, "path": "thin" if thin else "route",
                     "phase": f"batch 1,000 ×{args.batch_concurrency} conn",
                     "requests": len(res), "events": accepted, "seconds": wall, "p50": pct(lat, .5),
                     "p95": pct(lat, .95), "p99": pct(lat, .99), "errors": errors, "new": new, "cpu": cpu,
                     "load": (load_before, loadavg())})
        for p in profilers:
            p.wait()
        profilers.clear()

        # Everything sent was stored once; every new person is one member.
        with engine.connect() as c:
            stored = c.execute(text("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM orders)")).scalar()
            members = c.execute(text("SELECT count(*) FROM members")).scalar()
            lines = c.execute(text("SELECT count(*) FROM order_lines")).scalar()
        engine.dispose()
        check = "OK" if (stored, members) == (created_total, new_total) else "MISMATCH"
        print(f"workers={workers}: stored events+orders {stored:,} (created responses {created_total:,}), "
              f"order lines {lines:,}, members {members:,} (expected {new_total:,}): {check}")
        for r in rows:
            r["check"] = check
        return rows
    finally:
        for p in profilers:
            p.kill()
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts for `orchard serve`")
    ap.add_argument("--single", type=int, default=10_000, help="single-item POSTs per worker count")
    ap.add_argument("--concurrency", type=int, default=32, help="connections for single POSTs")
    ap.add_argument("--batches", type=int, default=20, help="1,000-item POSTs per worker count")
    ap.add_argument("--batch-concurrency", type=int, default=2)
    ap.add_argument("--members", type=int, default=3000, help="known members, seeded before the clock starts")
    ap.add_argument("--new-share", type=float, default=0.1, help="share of items from people never seen before")
    ap.add_argument("--order-share", type=float, default=0.2, help="share of orders among the timed items")
    ap.add_argument("--path", choices=("thin", "route", "both"), default="thin",
                    help="ingestion path of the server: the thin PostgreSQL path (events.ingest_pg, the default), the "
                         "FastAPI route alone (ORCHARD_INGEST_FAST_PATH=false), or both, route first, for ratios")
    ap.add_argument("--card-share", type=float, default=0.5,
                    help="share of items of every third member that also give a card number (its first sighting "
                         "links the card: a write the thin ingest path leaves to the route)")
    ap.add_argument("--max-seconds", type=float, default=60, help="stop a phase after this long")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--db-prefix", default="orchard_bench", help="name prefix of the database each run creates")
    ap.add_argument("--py-spy", metavar="DIR", help="record py-spy profiles of the server workers into DIR")
    args = ap.parse_args()
    ORDER_SHARE[0] = args.order_share
    CARD_SHARE[0] = args.card_share
    print(f"{os.cpu_count()} CPUs; load average {loadavg()} (1/5/15 min)")
    rows = []
    paths = {"thin": [True], "route": [False], "both": [False, True]}[args.path]
    for w in (int(x) for x in args.workers.split(",")):
        for thin in paths:
            rows += run_one(args, w, random.Random(args.seed), thin)
    head = ("workers", "path", "phase", "requests", "events/s", "p50 ms", "p95 ms", "p99 ms", "errors", "new members",
            "CPU gen/server/PG", "server CPU ms/event", "load before→after", "stored")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        c, s = r["cpu"], r["seconds"]
        print(f"| {r['workers']} | {r['path']} | {r['phase']} | {r['requests']:,} | {r['events'] / s:,.0f} | "
              f"{r['p50']:.1f} | "
              f"{r['p95']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['new']:,} | "
              f"{c['gen'] / s:.0%} / {c['server'] / s:.0%} / {c['pg'] / s:.0%} ({c['backends']}) | "
              f"{c['server'] * 1000 / max(r['events'], 1):.2f} | {r['load'][0]} → {r['load'][1]} | {r['check']} |")
    print("\nCPU columns: share of one core over the phase (200 % = both cores) for the load generator, the "
          "uvicorn processes and the server's PostgreSQL backends (how many). Server CPU ms/event: the uvicorn "
          "processes' CPU time per stored event, the figure least moved by other load on the machine.")


if __name__ == "__main__":
    main()
