"""Tier re-evaluation of every member in one set-based pass (`orchard tiers evaluate`), on PostgreSQL.

Target (issue 4): 1M members in ≤ 30 s. A fresh database gets M members and, set-based, growth
entries for a share of them (amounts spread so that the members land across the levels), a
four-level growth program over a rolling 12 months; then it times three passes as `orchard tiers
evaluate` child processes: the first (everyone placed: upgrades inserted), the second (nothing
changes: holds renewed), and a third after a quarter of the growth is reversed and the holds have
run out (downgrades).

    .venv/bin/python bench/tiers_evaluate.py --members 1000000
"""

from __future__ import annotations

import argparse
import json
import time

from pg_profile import cli_with_cpu, profiled
from points_seed import create_database, drop_database, loadavg, orchard
from sqlalchemy import create_engine, text

PROGRAM = {"metric": "growth", "period": "rolling_12m", "downgrade": "one_level", "hold_days": 0, "levels": [
    {"code": "NORMAL", "name": "普通会员", "rank": 0, "threshold": 0},
    {"code": "SILVER", "name": "银卡", "rank": 1, "threshold": 1000},
    {"code": "GOLD", "name": "金卡", "rank": 2, "threshold": 5000},
    {"code": "PLATINUM", "name": "铂金", "rank": 3, "threshold": 20000}]}


def seed(url: str, members: int, share: float) -> float:
    t = time.perf_counter()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text("SET session_replication_role = replica"))
        c.execute(text(
            "INSERT INTO members (id, name, gender, status, joined_at, created_at, updated_at, attributes, "
            "reduce_disturbance) SELECT g, '会员' || g, 'unknown', 'active', now(), now(), now(), '{}', false "
            "FROM generate_series(1, :m) g"), {"m": members})
        c.execute(text("INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen) "
                       "SELECT g, 0, 0, 0 FROM generate_series(1, :m) g"),
                  {"m": members})
        c.execute(text("SELECT setval(pg_get_serial_sequence('members', 'id'), :m)"), {"m": members})
        # Growth for a share of the members, 0..30,000 spread by a hash: all four levels are reached.
        c.execute(text(
            "INSERT INTO growth_entries (member_id, kind, amount, source, reason, actor, explanation, occurred_at, "
            "created_at) SELECT g, 'earn', 1 + (hashtext(g::text) & 32767) % 30000, 'bench', '成长值', 'bench', "
            "'{}', now() - interval '30 days', now() FROM generate_series(1, :m) g "
            "WHERE (hashtext('s' || g) & 1023) < :cut"), {"m": members, "cut": int(share * 1024)})
        c.execute(text("INSERT INTO growth_accounts (member_id, balance, updated_at) SELECT member_id, sum(amount), "
                       "now() FROM growth_entries GROUP BY member_id"))
        c.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=20000)
    ap.add_argument("--share", type=float, default=0.6, help="share of members with growth")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--profile", action="store_true",
                    help="run each pass in this process: every statement's wall time and backend CPU")
    args = ap.parse_args()
    name, url, env = create_database()
    try:
        print(f"seed {args.members:,} members: {seed(url, args.members, args.share):.1f} s  (load {loadavg()})")
        engine = create_engine(url)
        with engine.begin() as c:
            c.execute(text("INSERT INTO tier_program (id, metric, period, downgrade, hold_days, weights, updated_by, "
                           "updated_at) VALUES (1, 'growth', 'rolling_12m', 'one_level', 0, '{}', 'bench', now())"))
            for lv in PROGRAM["levels"]:
                c.execute(text("INSERT INTO tier_levels (code, name, rank, threshold, benefits, active) VALUES "
                               "(:code, :name, :rank, :threshold, '{}', true)"), lv)

        def run(label: str) -> None:
            if args.profile:
                from orchard.loyalty.tiers import evaluate

                r, _ = profiled(url, evaluate, label=label)
                print(f"  → {r}")
                return
            before = loadavg()
            seconds, rss, own, db_cpu, out = cli_with_cpu(url, env, "tiers", "evaluate")
            print(f"{label}: {seconds:.1f} s, peak RSS {rss:.0f} MB; CPU: PostgreSQL backend {db_cpu:.1f} s, CLI "
                  f"process {own:.1f} s; load {before} → {loadavg()}\n  {out.strip()}")

        run("first pass (placing everyone)")
        run("second pass (no change)")
        with engine.begin() as c:  # a quarter of the growth refunded: downgrades once the hold (0 days) is over
            c.execute(text("INSERT INTO growth_entries (member_id, kind, amount, source, reason, actor, explanation, "
                           "occurred_at, created_at) SELECT member_id, 'reverse', -amount, 'bench', '退款', 'bench', "
                           "'{}', occurred_at, now() FROM growth_entries WHERE member_id % 4 = 0"))
            c.execute(text("UPDATE growth_accounts SET balance = 0 WHERE member_id % 4 = 0"))
            c.execute(text("ANALYZE growth_entries"))
        run("third pass (downgrades)")
        print(json.loads(json.dumps({"verify": orchard(env, "points", "verify").splitlines()[-1]})))
        engine.dispose()
    finally:
        if not args.keep:
            drop_database(name)


if __name__ == "__main__":
    main()
