"""The journey engine at scale on PostgreSQL (issue 6): the daily sweep of every absence and date trigger,
and the engine's throughput in member-steps per second with caps, quiet hours and consent enforced.

    python bench/journeys_engine.py --members 1000000 --orders 3000000 --events 3000000 --runs 200000

A fresh database (dropped at the end unless `--keep`) is seeded set-based by `segments_refresh.seed`
(members, orders, events, aggregates; 60 % with SMS marketing consent, 5 % asking to be left alone),
plus a phone identity for every member and a points lot expiring in 30 days for 2 % of them.

1. **Sweep** — the shipped journeys (`journeys.ready`, published) and one journey per remaining
   date/absence trigger kind are live; `engine.sweep(now)` is timed twice at 10:00 Shanghai: the
   first pass (enters every matching member, set-based) and a re-run the same day (enters nobody:
   every candidate's trigger key is taken). Target: ≤ 30 s for 1M members.
2. **Advance** — `--runs` members are put at the entry of a bench journey
   (condition on order count → split 45/45 with a 10 % control → send an SMS marketing message →
   wait a day), and `engine.advance` is called in a loop by `--workers` processes until no run is due.
   Every send goes through the outbox decision: consent, excluded tags, reduce-disturbance, the
   weekly cap (the sweep above already spent some members' budget) and quiet hours. Reports
   member-steps per second (steps counted by the engine). Target: ≥ 5,000/s.

Set ORCHARD_BENCH_PG_URL to use another server than 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

from sqlalchemy import create_engine, text

sys.path.insert(0, os.path.dirname(__file__))
import points_seed  # noqa: E402
import segments_refresh  # noqa: E402

NOW = segments_refresh.NOW  # Tuesday 2026-11-24 10:00 in Shanghai

BENCH_GRAPH = {
    "trigger": {"type": "event", "event": "bench_start"}, "entry": "check",
    "steps": {
        "check": {"type": "condition", "if": {"field": "order_count", "op": "gte", "value": 1},
                  "then": "split", "else": "split"},
        "split": {"type": "split", "control_percent": 10,
                  "variants": [{"name": "a", "percent": 45, "next": "send"},
                               {"name": "b", "percent": 45, "next": "send"}]},
        "send": {"type": "send", "template": "repurchase_sms", "next": "wait"},
        "wait": {"type": "wait", "days": 1, "next": None},
    },
}

#: Extra live journeys so every date/absence trigger kind is swept (the shipped ones cover the rest).
EXTRA = [
    ("bench_no_visit", {"trigger": {"type": "absence", "after": "last_visit", "absent": "store_visit", "days": 30},
                        "entry": "send", "steps": {"send": {"type": "send", "template": "winback_gift_sms"}}}),
]


def seed_extra(url: str, log=print) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    step = points_seed.seeder(engine, {"now": NOW}, log)
    step("phones",
         "INSERT INTO identities (member_id, kind, value, source, created_at) "
         "SELECT id, 'phone', '+86139' || lpad(id::text, 8, '0'), 'bench', now() FROM members")
    step("expiring lots",
         "INSERT INTO points_entries (id, member_id, kind, amount, balance_after, reason, source, external_id, "
         "body_hash, actor, explanation, created_at) "
         "SELECT id, id, 'earn', 500, 500, 'bench', 'bench', 'lot' || id, '', 'bench', '{}', now() "
         "FROM members WHERE id % 50 = 0",
         "INSERT INTO points_lots (member_id, entry_id, amount, remaining, earned_at, expires_at) "
         "SELECT id, id, 500, 500, CAST(:now AS timestamptz) - interval '300 days', "
         "CAST(:now AS timestamptz) + interval '30 days 4 hours' FROM members WHERE id % 50 = 0",
         "INSERT INTO points_accounts (member_id, balance, debt, updated_at) "
         "SELECT id, 500, 0, now() FROM members WHERE id % 50 = 0")
    with engine.connect() as c:
        for table in ("identities", "points_lots", "points_entries", "points_accounts"):
            c.execute(text(f"VACUUM ANALYZE {table}"))
    engine.dispose()


def install() -> None:
    from orchard import db
    from orchard.journeys import ready, service

    with db.transaction() as s:
        ready.install(s, actor="bench", publish=True)
        for code, graph in EXTRA:
            service.create(s, actor="bench", code=code, name=code, graph=graph)
            service.publish(s, code=code, actor="bench")
        service.create(s, actor="bench", code="bench_engine", name="bench engine", graph=BENCH_GRAPH,
                       reentry="always")
        service.publish(s, code="bench_engine", actor="bench")


def run_sweep(label: str, log=print) -> float:
    from orchard import db
    from orchard.journeys import engine

    t = time.perf_counter()
    with db.transaction() as s:
        out = engine.sweep(s, now=NOW)
    seconds = time.perf_counter() - t
    entered = {code: r["entered"] for code, r in out["journeys"].items() if r["entered"]}
    log(f"{label}: {seconds:.1f} s; entered {sum(entered.values()):,} {entered}")
    return seconds


def start_runs(url: str, runs: int) -> None:
    """`runs` members (spread over the id range) at the bench journey's entry, due now."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        jid, vid = c.execute(text("SELECT id, live_version_id FROM journeys WHERE code = 'bench_engine'")).one()
        members = c.execute(text("SELECT count(*) FROM members")).scalar()
        stride = max(members // runs, 1)
        c.execute(text(
            "INSERT INTO journey_runs (journey_id, version_id, member_id, trigger_key, status, step, wake_at, "
            "context, entered_at) SELECT :j, :v, m, 'bench:' || m, 'active', 'check', :now, '{}', :now "
            "FROM generate_series(1, :n) g, LATERAL (SELECT 1 + ((g - 1) * :stride) % :members AS m) x"),
            {"j": jid, "v": vid, "now": NOW, "n": runs, "stride": stride, "members": members})
        c.execute(text("VACUUM ANALYZE journey_runs"))
    engine.dispose()


def _advance_worker(url: str, batch: int, out) -> None:
    os.environ["ORCHARD_DATABASE_URL"] = url
    from orchard import db
    from orchard.journeys import engine

    db.reset_caches()
    steps = runs = sent = suppressed = 0
    try:
        while True:
            with db.transaction() as s:
                stats = engine.advance(s, now=NOW, limit=batch)
            if not stats.runs:
                break
            steps, runs, sent, suppressed = (steps + stats.steps, runs + stats.runs, sent + stats.sent,
                                             suppressed + stats.suppressed)
    finally:  # the parent waits for one answer per worker, also when a worker fails
        out.put((steps, runs, sent, suppressed))


def run_advance(url: str, workers: int, batch: int, log=print) -> float:
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_advance_worker, args=(url, batch, queue)) for _ in range(workers)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t
    steps, runs, sent, suppressed = (sum(r[i] for r in results) for i in range(4))
    rate = steps / seconds if seconds else 0.0
    log(f"advance ({workers} worker(s), batches of {batch}): {runs:,} runs, {steps:,} member-steps in "
        f"{seconds:.1f} s = {rate:,.0f} steps/s; {sent:,} sent, {suppressed:,} suppressed; "
        f"load {points_seed.loadavg()}")
    engine = create_engine(url)
    with engine.connect() as c:
        reasons = c.execute(text("SELECT coalesce(m.reason, m.status), count(*) FROM messages m JOIN journeys j "
                                 "ON j.id = m.journey_id WHERE j.code = 'bench_engine' GROUP BY 1 ORDER BY 2 DESC"))
        log("  bench journey messages: " + ", ".join(f"{r} {n:,}" for r, n in reasons))
    engine.dispose()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--orders", type=int, default=3_000_000)
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--runs", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = ap.parse_args()
    name, url, _ = points_seed.create_database()
    print(f"database {name}; {args.members:,} members, {args.orders:,} orders, {args.events:,} events, "
          f"{args.runs:,} runs; load {points_seed.loadavg()}")
    try:
        t = time.perf_counter()
        segments_refresh.seed(url, args.members, args.orders, args.events, arrival="random")  # as measured
        seed_extra(url)
        print(f"seeded in {time.perf_counter() - t:.0f} s; load {points_seed.loadavg()}")
        os.environ["ORCHARD_DATABASE_URL"] = url
        from orchard import db

        db.reset_caches()
        install()
        first = run_sweep("sweep, first pass")
        again = run_sweep("sweep, re-run the same day")
        start_runs(url, args.runs)
        db.reset_caches()
        rate = run_advance(url, args.workers, args.batch)
        print(f"\nsummary: sweep {first:.1f} s (re-run {again:.1f} s), advance {rate:,.0f} member-steps/s; "
              f"load {points_seed.loadavg()}")
    finally:
        from orchard import db

        db.reset_caches()
        if not args.keep:
            points_seed.drop_database(name)
        else:
            print(f"kept database {name}")


if __name__ == "__main__":
    main()
