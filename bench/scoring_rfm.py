"""Lifecycle and RFM passes on PostgreSQL, against the way an analyst computes RFM with pandas.

    python bench/scoring_rfm.py --members 200000 --orders 2000000

A fresh database (dropped at the end) gets N members and M orders seeded set-based in SQL
(INSERT … SELECT generate_series with the orders' secondary indexes built afterwards, as a restore
would), spread over the two years before `now` with a skewed number of orders per member, 3 % partially
refunded, and member_aggregates rebuilt from the orders in one UPDATE. Then, in one run:

* `orchard.scoring.lifecycle.refresh` twice (the first pass places everyone; the second is the
  steady state where little changes) and `orchard.scoring.rfm.refresh` (365-day window), each in its
  own committed transaction;
* `rfm.refresh` again for the next day (the nightly steady state: rows updated in place);
* pandas: `pd.read_sql` of the window's orders, then groupby / `qcut` quintiles on the ranks / the
  8 classes against the means — the same definitions — and the ratio of the two RFM times.

Needs the `bench` extra (pandas). Set ORCHARD_BENCH_PG_URL to another server than 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

from sqlalchemy import create_engine, text

sys.path.insert(0, os.path.dirname(__file__))
import points_seed  # noqa: E402

NOW = dt.datetime(2026, 11, 1, 4, 0, tzinfo=dt.UTC)


def seed(url: str, members: int, orders: int, log=print) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    params = {"m": members, "o": orders, "now": NOW}

    step = points_seed.seeder(engine, params, log)

    with engine.connect() as c:
        rebuild = points_seed._rebuildable_indexes(c, "orders")
    stores = "(SELECT array_agg(id ORDER BY id) FROM org_units WHERE kind = 'store')"
    step("members",
         "INSERT INTO members (id, status, name, gender, home_store_id, joined_at, attributes, reduce_disturbance, "
         "created_at, updated_at) SELECT g, 'active', '会员' || g, 'unknown', s.ids[1 + g % cardinality(s.ids)], "
         f"CAST(:now AS timestamptz) - interval '3 years', '{{}}', false, now(), now() "
         f"FROM generate_series(1, :m) g, {stores} s(ids)",
         "INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen) "
         "SELECT g, 0, 0, 0 FROM generate_series(1, :m) g",
         "SELECT setval('members_id_seq', :m)")
    step("drop order indexes", *(d for d, _ in rebuild))
    # Member of order n: skewed (a few buy often, 15 % of members never): floor(m · u²) over 85 % of ids.
    step("orders",
         "INSERT INTO orders (id, source, external_id, body_hash, member_id, store_id, channel, status, currency, "
         "amount_fen, refunded_fen, paid_at, properties, created_at) "
         "SELECT n, 'bench', 'o' || n, '', 1 + floor(:m * 0.85 * power(random(), 2))::bigint, "
         "s.ids[1 + n % cardinality(s.ids)], (ARRAY['pos','miniapp','shop'])[1 + n % 3], "
         "CASE WHEN n % 33 = 0 THEN 'partially_refunded' ELSE 'paid' END, 'CNY', a, "
         "CASE WHEN n % 33 = 0 THEN a / 4 ELSE 0 END, "
         "CAST(:now AS timestamptz) - random() * interval '730 days', '{}', now() "
         f"FROM (SELECT n, 1000 + floor(random() * 50000)::bigint AS a FROM generate_series(1, :o) n) g, "
         f"{stores} s(ids)",
         "SELECT setval('orders_id_seq', :o)")
    step("order indexes", *(c for _, c in rebuild))
    step("aggregates",
         "UPDATE member_aggregates a SET order_count = x.c, total_spend_fen = x.s, refund_fen = x.r, "
         "first_order_at = x.f, last_order_at = x.l FROM (SELECT member_id, count(*) c, "
         "sum(amount_fen - refunded_fen) s, sum(refunded_fen) r, min(paid_at) f, max(paid_at) l FROM orders "
         "GROUP BY member_id) x WHERE x.member_id = a.member_id")
    t = time.perf_counter()
    with engine.connect() as c:
        for table in ("members", "member_aggregates", "orders"):
            c.execute(text(f"VACUUM ANALYZE {table}"))
        c.execute(text("CHECKPOINT"))
    log(f"  seed vacuum analyze: {time.perf_counter() - t:.1f} s")
    engine.dispose()


def pandas_rfm(url: str) -> tuple[float, dict[str, int]]:
    """RFM as an analyst writes it: read the window's orders, group, qcut, compare with the means."""
    import pandas as pd

    from orchard.scoring import days

    t = time.perf_counter()
    engine = create_engine(url)
    cut = days.cut(NOW, 365)
    df = pd.read_sql(text("SELECT member_id, paid_at, amount_fen - refunded_fen AS net FROM orders "
                          "WHERE status IN ('paid','partially_refunded') AND paid_at >= :cut AND paid_at <= :now"),
                     engine, params={"cut": cut, "now": NOW})
    today = pd.Timestamp(days.today(NOW))
    g = df.groupby("member_id").agg(last=("paid_at", "max"), f=("paid_at", "size"), m=("net", "sum"))
    local_day = g["last"].dt.tz_convert("Asia/Shanghai").dt.tz_localize(None).dt.normalize()
    g["r"] = (today - local_day).dt.days
    g = g.sort_index()
    # quintiles on ranks with ties in member-id order, as ntile(5) does
    g["r_score"] = pd.qcut(g["r"].rank(method="first", ascending=False), 5, labels=[1, 2, 3, 4, 5])
    g["f_score"] = pd.qcut(g["f"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5])
    g["m_score"] = pd.qcut(g["m"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5])
    recent, hf, hm = g["r"] < g["r"].mean(), g["f"] > g["f"].mean(), g["m"] > g["m"].mean()
    g["klass"] = (recent.astype(int).astype(str) + hf.astype(int).astype(str) + hm.astype(int).astype(str))
    counts = g["klass"].value_counts().to_dict()
    engine.dispose()
    return time.perf_counter() - t, counts


def timed(url: str, fn) -> tuple[float, dict]:
    from orchard import db

    t = time.perf_counter()
    with db.transaction() as session:
        result = fn(session, now=NOW)
    return time.perf_counter() - t, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--orders", type=int, default=10_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = ap.parse_args()
    name, url, env = points_seed.create_database()
    print(f"database {name}; {args.members:,} members, {args.orders:,} orders; load {points_seed.loadavg()}")
    try:
        seed(url, args.members, args.orders)
        os.environ["ORCHARD_DATABASE_URL"] = url
        from orchard import db
        from orchard.scoring import lifecycle, rfm

        db.reset_caches()
        s1, r1 = timed(url, lifecycle.refresh)
        print(f"lifecycle.refresh (first: everyone placed): {s1:.1f} s  {r1['by_stage']} changed {r1['changed']:,}")
        s2, r2 = timed(url, lifecycle.refresh)
        print(f"lifecycle.refresh (second, steady):         {s2:.1f} s  changed {r2['changed']:,}")
        s3, r3 = timed(url, rfm.refresh)
        print(f"rfm.refresh (365-day window):               {s3:.1f} s  scored {r3['scored']:,}  {r3['by_class']}")
        s4, counts = pandas_rfm(url)
        keys = {"111": "important_value", "101": "important_develop", "011": "important_keep",
                "001": "important_retain", "110": "general_value", "100": "general_develop",
                "010": "general_keep", "000": "general_retain"}
        same = {keys[k]: v for k, v in counts.items()} == {k: v for k, v in r3["by_class"].items() if v}
        print(f"pandas read_sql + groupby/qcut:             {s4:.1f} s  (same class counts: {same})")
        print(f"ratio pandas / rfm.refresh: {s4 / s3:.1f}×; load {points_seed.loadavg()}")
        s5, r5 = timed(url, lambda session, now: rfm.refresh(session, now=now + dt.timedelta(days=1)))
        print(f"rfm.refresh, next day (rows updated in place): {s5:.1f} s  scored {r5['scored']:,}; "
              f"ratio pandas / this pass: {s4 / s5:.1f}×; load {points_seed.loadavg()}")
        print("sizes: " + points_seed.sizes(url))
    finally:
        from orchard import db

        db.reset_caches()
        if not args.keep:
            points_seed.drop_database(name)


if __name__ == "__main__":
    main()
