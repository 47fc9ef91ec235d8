"""Benchmark: outbox dispatch to a local HTTP sink with several worker processes, on PostgreSQL. Not part of the
test suite; results go to docs/benchmarks.md ("Outbox dispatch (issue 6)"). Target (issue 6): ≥ 2,000
messages/s with two worker processes.

    .venv/bin/python bench/outbox_dispatch.py --messages 100000 --workers 2
    .venv/bin/python bench/outbox_dispatch.py              # small default: a quick smoke run

A fresh database (migrated, an HQ and four stores) is seeded set-based in SQL: `--messages` members, each with a
phone identity and SMS marketing consent, one published marketing SMS template, and one `queued`, due message per
member (the payload as `outbox.enqueue` renders it: body, variables, provider template, signature). `--suppress-pct`
percent of the members withdrew their consent after the decision and as many again asked for reduce-disturbance,
so the send-time re-check must suppress them (reasons `consent.sms` and `reduce_disturbance`); the contact policy's
quiet hours are widened to the whole day so the wall clock does not defer the run. `--channel webhook` queues
webhook messages instead (recipient `default`; no consent applies, so only reduce-disturbance suppresses).

The sink is a minimal asyncio HTTP/1.1 keep-alive server on loopback in this process, answering 200 the way the
provider does — Aliyun `SendSms` JSON (`{"Code": "OK", "BizId": …}`) for SMS, an empty 200 for the webhook — and
counting the idempotency ids it receives (Aliyun `OutId`, `webhook-id`). `--workers` child processes (this script
with `--as-worker`) each build the configured providers (`sending.providers()`, the Aliyun adapter pointed at the
sink with `ORCHARD_SMS_ALIYUN_ENDPOINT`, or the webhook adapter with `ORCHARD_WEBHOOK_DEFAULT_URL`) and run
`outbox.dispatch(…, to_outbound=sending.to_outbound)` in a loop, as the scheduler's job does, until no message is
queued or sending. The clock runs from "go" (every worker imported and connected) to the last worker's end.

Reported: messages/s end to end, the outcome counts (sent, suppressed by reason, retried, failed) against what
was seeded, the sink's distinct and duplicate ids (and whether the distinct ids are exactly the sent messages),
CPU of the workers / this process (the sink) / PostgreSQL backends, PostgreSQL commits per message, and the load
average. `--py-spy DIR` records a py-spy profile of each worker (samples of the thread holding the GIL, i.e.
where Python spends CPU; raw format, for flame graphs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ingest_http import cpu_seconds, free_port
from points_seed import create_database, drop_database, loadavg, seeder
from sqlalchemy import create_engine, text

SIGN = "果园"
BODY = "尊敬的{name}，您有积分待使用。拒收请回复R"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"orchard-bench-webhook-secret-32b").decode()


# --- seeding --------------------------------------------------------------------------------------

def seed(url: str, n: int, channel: str, suppress_pct: int) -> dict[str, float]:
    """Members 1..n with a phone, SMS marketing consent (withdrawn for `g % 100 < pct`) and reduce-disturbance
    for `pct ≤ g % 100 < 2·pct`; one queued, due marketing message each."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    params = {"n": n, "pct": suppress_pct, "channel": channel, "sign": SIGN,
              "recipient_sms": channel == "sms"}
    step = seeder(engine, params)
    stores = "(SELECT array_agg(id ORDER BY id) FROM org_units WHERE kind = 'store')"
    step("members",
         "INSERT INTO members (id, status, name, gender, home_store_id, joined_at, attributes, reduce_disturbance, "
         "created_at, updated_at) SELECT g, 'active', '会员' || g, (ARRAY['male','female','unknown'])[1 + g % 3], "
         f"s.ids[1 + g % cardinality(s.ids)], now() - interval '1 year', '{{}}', "
         f"g % 100 >= :pct AND g % 100 < 2 * :pct, now(), now() FROM generate_series(1, :n) g, {stores} s(ids)",
         "SELECT setval('members_id_seq', :n)")
    step("identities",
         "INSERT INTO identities (member_id, kind, value, source, created_at) "
         "SELECT g, 'phone', '+86138' || lpad(g::text, 8, '0'), 'bench', now() FROM generate_series(1, :n) g")
    step("consents",
         "INSERT INTO consents (member_id, channel, purpose, granted, granted_at, withdrawn_at, source, updated_at) "
         "SELECT g, 'sms', 'marketing', g % 100 >= :pct, now() - interval '30 days', "
         "CASE WHEN g % 100 < :pct THEN now() END, 'bench', now() FROM generate_series(1, :n) g")
    step("template",
         "INSERT INTO message_templates (code, name, channel, purpose, provider_template, sign_name, body, variables, "
         "status, version, created_by, created_at, updated_at, published_at) VALUES ('bench_promo', '积分提醒', "
         ":channel, 'marketing', 'SMS_0001', :sign, '尊敬的{{ member.name }}，您有积分待使用。拒收请回复R', "
         "'{\"name\": \"{{ member.name }}\"}', 'published', 1, 'bench', now(), now(), now())")
    step("contact policy (quiet hours: the whole day)",
         "INSERT INTO contact_policy (id, policy, updated_by, updated_at) VALUES (1, "
         "'{\"quiet_hours\": {\"start\": \"00:00:00\", \"end\": \"23:59:59.999999\"}}', 'bench', now())")
    step("messages",
         "INSERT INTO messages (key, member_id, template_id, channel, purpose, recipient, payload, status, priority, "
         "attempts, next_attempt_at, created_at) "
         "SELECT 'bench:' || g, g, t.id, :channel, 'marketing', "
         "CASE WHEN :recipient_sms THEN '+86138' || lpad(g::text, 8, '0') ELSE 'default' END, "
         f"jsonb_build_object('body', replace('{BODY}', '{{name}}', '会员' || g), "
         "'variables', jsonb_build_object('name', '会员' || g), 'provider_template', 'SMS_0001', "
         "'sign_name', CAST(:sign AS text)), "
         "'queued', 0, 0, now() - interval '1 minute', now() - interval '1 minute' "
         "FROM generate_series(1, :n) g, (SELECT id FROM message_templates WHERE code = 'bench_promo') t")
    t = time.perf_counter()
    with engine.connect() as c:
        for table in ("members", "identities", "consents", "messages", "message_templates", "contact_policy"):
            c.execute(text(f"VACUUM ANALYZE {table}"))
        c.execute(text("CHECKPOINT"))
    print(f"  seed vacuum analyze + checkpoint: {time.perf_counter() - t:.1f} s")
    engine.dispose()


# --- the sink -------------------------------------------------------------------------------------

class Sink:
    """Counts idempotency ids; runs an asyncio loop in a thread of this process."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.ids: Counter[str] = Counter()
        self.requests = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(self.loop.create_server(lambda: _SinkProtocol(self), "127.0.0.1",
                                                                      self.port, backlog=1024))
        self._started.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    def start(self) -> Sink:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def answer(self, head: bytes) -> bytes:
        """The provider's success answer for one request (its head: request line and headers)."""
        self.requests += 1
        lines = head.split(b"\r\n")
        if self.channel == "sms":
            query = parse_qs(urlsplit(lines[0].split(b" ")[1].decode()).query)
            msg_id = (query.get("OutId") or ["?"])[0]
            body = json.dumps({"Code": "OK", "Message": "OK", "BizId": f"biz-{self.requests}",
                               "RequestId": f"req-{self.requests}"}).encode()
        else:
            msg_id = next((ln.split(b":", 1)[1].strip().decode() for ln in lines[1:]
                           if ln.lower().startswith(b"webhook-id:")), "?")
            body = b""
        self.ids[msg_id] += 1
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body)


class _SinkProtocol(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(self.sink.answer(head))


# --- a worker process -----------------------------------------------------------------------------

def worker_main(args) -> None:
    """Dispatch rounds until nothing is queued or sending; protocol on stdio: "ready" → "go" → result → "quit"."""
    from orchard import db
    from orchard.messaging import outbox, sending

    providers = sending.providers()
    kw = {"limit": args.limit} if args.limit else {}
    if args.concurrency and "concurrency" in inspect.signature(outbox.dispatch).parameters:
        kw["concurrency"] = args.concurrency
    with db.transaction(readonly=True) as s:
        s.execute(text("SELECT 1"))
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0, t0 = time.process_time(), time.perf_counter()
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    rounds = idle = 0
    left_sql = text("SELECT count(*) FROM messages WHERE status IN ('queued', 'sending')")
    while time.perf_counter() - t0 < args.max_seconds:
        st = outbox.dispatch(providers, to_outbound=sending.to_outbound, **kw)
        rounds += 1
        for k in ("claimed", "sent", "retried", "failed", "suppressed", "deferred"):
            totals[k] += getattr(st, k)
        reasons.update(st.reasons)
        if st.claimed == 0:
            with db.transaction(readonly=True) as s:
                if not s.scalar(left_sql):
                    break
            idle += 1
            time.sleep(0.02)
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu0, "rounds": rounds,
                      "idle": idle, "totals": totals, "reasons": reasons, "end": time.time()}), flush=True)
    sys.stdin.readline()


# --- the run --------------------------------------------------------------------------------------

def backends(engine, name: str) -> dict[int, float]:
    with engine.connect() as c:
        pids = c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                         {"d": name}).scalars().all()
    return {p: cpu_seconds(p) for p in pids}


def run(args, name: str, url: str, env: dict) -> None:
    sink = Sink(args.channel).start()
    env = {**env, "ORCHARD_SCHEDULER": "0"}
    if args.channel == "sms":
        env.update({"ORCHARD_CHANNELS": "sms=aliyun", "ORCHARD_SMS_ALIYUN_ACCESS_KEY_ID": "bench",
                    "ORCHARD_SMS_ALIYUN_ACCESS_KEY_SECRET": "bench-secret", "ORCHARD_SMS_ALIYUN_SIGN_NAME": SIGN,
                    "ORCHARD_SMS_ALIYUN_ENDPOINT": f"http://127.0.0.1:{sink.port}"})
    else:
        env.update({"ORCHARD_CHANNELS": "webhook=webhook", "ORCHARD_WEBHOOK_SECRET": WEBHOOK_SECRET,
                    "ORCHARD_WEBHOOK_DEFAULT_URL": f"http://127.0.0.1:{sink.port}/hook"})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--as-worker", "--max-seconds", str(args.max_seconds)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.concurrency:
        cmd += ["--concurrency", str(args.concurrency)]
    workers = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                start_new_session=True) for _ in range(args.workers)]
    profilers: list[subprocess.Popen] = []
    engine = create_engine(url)
    try:
        for w in workers:
            if w.stdout.readline().strip() != "ready":
                raise SystemExit("a worker did not start")
        with engine.connect() as c:
            commits0 = c.execute(text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d"),
                                 {"d": name}).scalar()
        if args.py_spy:
            out = Path(args.py_spy)
            out.mkdir(parents=True, exist_ok=True)
            for w in workers:
                profilers.append(subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "100", "--gil", "-p",
                     str(w.pid), "-f", "raw", "-o", str(out / f"dispatch-{w.pid}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
        load_before, pg0, sink_cpu0 = loadavg(), backends(engine, name), time.process_time()
        t0 = time.time()
        for w in workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [json.loads(w.stdout.readline()) for w in workers]
        wall = max(r["end"] for r in results) - t0
        sink_cpu, load_after = time.process_time() - sink_cpu0, loadavg()
        pg1 = backends(engine, name)
        pg_cpu = sum(v - pg0.get(p, 0.0) for p, v in pg1.items())
        with engine.connect() as c:
            commits = c.execute(text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d"),
                                {"d": name}).scalar() - commits0
        for w in workers:
            w.stdin.write("quit\n")
            w.stdin.flush()
            w.wait(30)
        for p in profilers:
            p.wait(60)
        with engine.connect() as c:
            by_status = Counter({f"{s}{' ' + r if r else ''}": k for s, r, k in c.execute(text(
                "SELECT status, reason, count(*) FROM messages GROUP BY status, reason"))})
            sent_ids = {f"orchard-{i}" for i in c.execute(text("SELECT id FROM messages WHERE status = 'sent'"))
                        .scalars()}
            expected = c.execute(text(
                "SELECT count(*) FILTER (WHERE m.reduce_disturbance), count(*) FILTER (WHERE ms.channel = 'sms' AND "
                "NOT coalesce(k.granted, false) AND NOT m.reduce_disturbance) FROM messages ms JOIN members m ON "
                "m.id = ms.member_id LEFT JOIN consents k ON k.member_id = m.id AND k.channel = 'sms' AND "
                "k.purpose = 'marketing'")).one()
    finally:
        for p in profilers:
            if p.poll() is None:
                p.kill()
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        sink.stop()
        engine.dispose()
    n = args.messages
    distinct, total = len(sink.ids), sum(sink.ids.values())
    exact = "yes" if set(sink.ids) == sent_ids else f"NO ({len(set(sink.ids) ^ sent_ids)} differ)"
    totals = Counter()
    for r in results:
        totals.update(r["totals"])
    worker_cpu = sum(r["cpu"] for r in results)
    print(f"\n{n:,} messages, {args.workers} workers, channel {args.channel}: {wall:.1f} s = {n / wall:,.0f} "
          f"messages/s end to end ({by_status.get('sent', 0) / wall:,.0f} sent/s)")
    print(f"  outcomes in the database: {dict(by_status)}")
    print(f"  expected suppressions: reduce_disturbance {expected[0]:,}, consent.sms {expected[1]:,}")
    print(f"  workers' stats: {dict(totals)}; rounds {[r['rounds'] for r in results]}, idle polls "
          f"{[r['idle'] for r in results]}")
    print(f"  sink: {total:,} requests, {distinct:,} distinct ids, {total - distinct:,} duplicates; "
          f"distinct ids = the sent messages: {exact}")
    print(f"  CPU: workers {worker_cpu:.1f} s ({worker_cpu / wall:.0%}), sink {sink_cpu:.1f} s "
          f"({sink_cpu / wall:.0%}), PostgreSQL backends {pg_cpu:.1f} s ({pg_cpu / wall:.0%}); "
          f"PG commits per message {commits / n:.2f}")
    print(f"  load average {load_before} → {load_after} (1/5/15 min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5_000, help="members, one queued message each")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--channel", choices=("sms", "webhook"), default="sms")
    ap.add_argument("--limit", type=int, default=0, help="dispatch batch size (default: dispatch's own)")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="sends in flight per worker (dispatch's `concurrency`, when it has one; default: its own)")
    ap.add_argument("--suppress-pct", type=int, default=1,
                    help="percent of members with consent withdrawn, and as many with reduce-disturbance")
    ap.add_argument("--max-seconds", type=float, default=1800, help="a worker stops after this long")
    ap.add_argument("--py-spy", metavar="DIR", help="record py-spy profiles of the workers into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.as_worker:
        worker_main(args)
        return
    print(f"{os.cpu_count()} CPUs; load average {loadavg()} (1/5/15 min)")
    name, url, env = create_database()
    print(f"database {name}")
    try:
        t = time.perf_counter()
        seed(url, args.messages, args.channel, args.suppress_pct)
        print(f"seeded {args.messages:,} members and queued messages in {time.perf_counter() - t:.0f} s; "
              f"load {loadavg()}")
        run(args, name, url, env)
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            drop_database(name)


if __name__ == "__main__":
    main()
