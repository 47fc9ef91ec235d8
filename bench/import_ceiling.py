"""Benchmark: the ceiling of a set-based import on this machine — what `orchard import` could reach if
no row went through Python at all — beside raw COPY of the same files, in the same run.

    .venv/bin/python bench/import_ceiling.py --members 200000 --orders 1000000 [--rebuild-indexes]

Why: issue 3 asks for ≥ 25 % of raw COPY's rate end to end. This script measures the database's own
floor for the work an import cannot skip: the files (bench/import_bulk.py's generator) are COPYed
into unlogged text tables, then plain SQL — phones normalised with a regular expression, times and
amounts cast, members and identities created for unknown phones, orders with a SHA-256 body hash,
one order line each, member aggregates upserted — writes into the real, migrated schema with its
indexes, foreign keys and checks. It skips what the real import also does (per-row error reports,
replay/conflict detection, identity clusters, the segments' dirty queue), so its rate is an upper
bound, not an implementation. `--rebuild-indexes` drops the secondary indexes and foreign keys of
orders and order_lines for the load and rebuilds them after it (as pg_restore does; only possible
on a database that takes no other traffic), and counts the rebuild in the time.

Not part of the test suite; figures go to docs/benchmarks.md (§ Bulk import).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from sqlalchemy import create_engine

sys.path.insert(0, os.path.dirname(__file__))
from import_bulk import (  # noqa: E402
    copy_csv,
    drop_pg_database,
    make_files,
    migrate_with_stores,
    new_pg_database,
    raw_copy,
)

#: What the load does, statement by statement (`:src` is the import's source name).
MEMBERS_SQL = [
    ("members: normalise", "CREATE UNLOGGED TABLE c_members AS SELECT DISTINCT ON (p) p AS phone, r.name, "
     "CASE r.gender WHEN '男' THEN 'male' WHEN '女' THEN 'female' ELSE 'unknown' END AS gender, "
     "r.birthday::date AS birthday, s.id AS store_id, (r.joined_at || ' 00:00+08')::timestamptz AS joined_at "
     "FROM (SELECT '+86' || regexp_replace(phone, '[^0-9]', '', 'g') AS p, * FROM s_members) r "
     "LEFT JOIN org_units s ON s.kind = 'store' AND s.code = r.store_code "
     "WHERE p ~ '^\\+861[3-9][0-9]{9}$' ORDER BY p"),
    ("members: new ids", "ALTER TABLE c_members ADD COLUMN member_id bigint"),
    ("members: number", "UPDATE c_members SET member_id = nextval('members_id_seq')"),
    ("members: insert", "INSERT INTO members (id, status, name, gender, birthday, home_store_id, joined_at, "
     "attributes, reduce_disturbance, source_channel, created_at, updated_at) SELECT member_id, 'active', "
     "name, gender, birthday, store_id, joined_at, '{}', false, :src, now(), now() FROM c_members "
     "ORDER BY member_id"),
    ("members: identities", "INSERT INTO identities (member_id, kind, value, source, created_at) "
     "SELECT member_id, 'phone', phone, :src, now() FROM c_members ORDER BY member_id"),
]
ORDERS_SQL = [
    ("orders: normalise + resolve", "CREATE UNLOGGED TABLE c_orders AS SELECT r.order_id, r.p AS phone, "
     "r.paid_at::timestamptz AS paid_at, round(r.amount::numeric * 100)::bigint AS amount_fen, s.id AS store_id, "
     "r.sku, r.category, i.member_id, encode(sha256(convert_to(concat_ws('|', :src, r.order_id, r.p, r.paid_at, "
     "r.amount, r.store_code, r.sku, r.category), 'UTF8')), 'hex') AS body_hash "
     "FROM (SELECT '+86' || regexp_replace(member_phone, '[^0-9]', '', 'g') AS p, * FROM s_orders) r "
     "LEFT JOIN org_units s ON s.kind = 'store' AND s.code = r.store_code "
     "LEFT JOIN identities i ON i.kind = 'phone' AND i.value = r.p WHERE r.p ~ '^\\+861[3-9][0-9]{9}$'"),
    ("orders: new members", "CREATE UNLOGGED TABLE c_new AS SELECT phone, nextval('members_id_seq') AS member_id, "
     "first_store, first_at FROM (SELECT phone, (array_agg(store_id ORDER BY paid_at))[1] AS first_store, "
     "min(paid_at) AS first_at FROM c_orders WHERE member_id IS NULL GROUP BY phone ORDER BY phone) n"),
    ("orders: insert new members", "INSERT INTO members (id, status, gender, home_store_id, joined_at, attributes, "
     "reduce_disturbance, source_channel, created_at, updated_at) SELECT member_id, 'active', 'unknown', "
     "first_store, first_at, '{}', false, :src, now(), now() FROM c_new ORDER BY member_id"),
    ("orders: their identities", "INSERT INTO identities (member_id, kind, value, source, created_at) "
     "SELECT member_id, 'phone', phone, :src, now() FROM c_new ORDER BY member_id"),
    ("orders: resolve new", "UPDATE c_orders o SET member_id = n.member_id FROM c_new n "
     "WHERE o.member_id IS NULL AND n.phone = o.phone"),
    ("orders: insert", "INSERT INTO orders (source, external_id, body_hash, member_id, store_id, channel, status, "
     "currency, amount_fen, refunded_fen, paid_at, properties, created_at) SELECT :src, order_id, body_hash, "
     "member_id, store_id, NULL, 'paid', 'CNY', amount_fen, 0, paid_at, '{}', now() FROM c_orders"),
    ("orders: lines", "INSERT INTO order_lines (order_id, line_no, sku, name, category, quantity, unit_price_fen, "
     "amount_fen, refunded_quantity, refunded_fen) SELECT d.id, 1, c.sku, NULL, c.category, 1, c.amount_fen, "
     "c.amount_fen, 0, 0 FROM c_orders c JOIN orders d ON d.source = :src AND d.external_id = c.order_id"),
    ("orders: aggregates", "INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen, "
     "first_order_at, last_order_at, last_event_at) SELECT member_id, count(*), sum(amount_fen), 0, min(paid_at), "
     "max(paid_at), max(paid_at) FROM c_orders GROUP BY member_id ORDER BY member_id "
     "ON CONFLICT (member_id) DO UPDATE SET order_count = member_aggregates.order_count + excluded.order_count, "
     "total_spend_fen = member_aggregates.total_spend_fen + excluded.total_spend_fen, "
     "first_order_at = least(member_aggregates.first_order_at, excluded.first_order_at), "
     "last_order_at = greatest(member_aggregates.last_order_at, excluded.last_order_at), "
     "last_event_at = greatest(member_aggregates.last_event_at, excluded.last_event_at)"),
]
#: Secondary indexes and foreign keys of the two big tables (`--rebuild-indexes`).
REBUILD = [
    ("ix_orders_member_paid", "CREATE INDEX ix_orders_member_paid ON orders (member_id, paid_at)"),
    ("ix_orders_paid_at", "CREATE INDEX ix_orders_paid_at ON orders (paid_at)"),
    ("ix_orders_store_id", "CREATE INDEX ix_orders_store_id ON orders (store_id)"),
    ("ix_order_lines_category", "CREATE INDEX ix_order_lines_category ON order_lines (category)"),
]
FKS = [
    ("orders", "fk_orders_member_id_members", "FOREIGN KEY (member_id) REFERENCES members(id)"),
    ("orders", "fk_orders_store_id_org_units", "FOREIGN KEY (store_id) REFERENCES org_units(id)"),
    ("order_lines", "fk_order_lines_order_id_orders", "FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=200_000)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--rebuild-indexes", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    tmp, members_csv, orders_csv = make_files(args.members, args.orders, args.seed, "orchard-ceiling-")
    admin, name, url = new_pg_database()
    env = {**os.environ, "ORCHARD_DATABASE_URL": url}
    try:
        migrate_with_stores(sys.executable, env)
        engine = create_engine(url)
        raw = engine.raw_connection()
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        steps: list[tuple[str, float]] = []
        started = time.perf_counter()

        def run(label: str, sql: str) -> None:
            t = time.perf_counter()
            with raw.cursor() as cur:
                cur.execute(sql.replace(":src", "'import'"))
            steps.append((label, time.perf_counter() - t))

        run("stage tables", "CREATE UNLOGGED TABLE s_members (phone text, name text, gender text, birthday text, "
            "store_code text, joined_at text); CREATE UNLOGGED TABLE s_orders (order_id text, member_phone text, "
            "paid_at text, amount text, store_code text, sku text, category text)")
        t = time.perf_counter()
        with raw.cursor() as cur:
            copy_csv(cur, "s_members", members_csv)
            copy_csv(cur, "s_orders", orders_csv)
        steps.append(("COPY files into stage tables", time.perf_counter() - t))
        run("analyze stage", "ANALYZE s_members, s_orders")
        for label, sql in MEMBERS_SQL:
            run(label, sql)
        raw.commit()
        if args.rebuild_indexes:
            for idx, _ in REBUILD:
                run(f"drop {idx}", f"DROP INDEX {idx}")
            for table, fk, _ in FKS:
                run(f"drop {fk}", f"ALTER TABLE {table} DROP CONSTRAINT {fk}")
        run("analyze", "ANALYZE members, identities, member_aggregates")
        for label, sql in ORDERS_SQL:
            run(label, sql)
        if args.rebuild_indexes:
            run("maintenance_work_mem", "SET maintenance_work_mem = '512MB'")
            for idx, sql in REBUILD:
                run(f"build {idx}", sql)
            for table, fk, sql in FKS:
                run(f"add {fk}", f"ALTER TABLE {table} ADD CONSTRAINT {fk} {sql}")
        raw.commit()
        total_s = time.perf_counter() - started
        with raw.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM members), (SELECT count(*) FROM orders), "
                        "(SELECT count(*) FROM order_lines), (SELECT sum(order_count) FROM member_aggregates)")
            counts = cur.fetchone()
            cur.execute("DROP TABLE s_members, s_orders, c_members, c_orders, c_new")
        raw.commit()
        raw.close()
        engine.dispose()
        for label, s in steps:
            print(f"  {label:40s} {s:8.2f} s")
        rows = args.members + args.orders
        rate = rows / total_s
        print(f"stored: {counts[0]:,} members, {counts[1]:,} orders, {counts[2]:,} lines, aggregates {counts[3]:,}")
        print(f"set-based SQL load: {rows:,} rows in {total_s:.1f} s = {rate:,.0f} rows/s; "
              f"load {os.getloadavg()[0]:.1f}")
        copy_s = raw_copy(url, members_csv, orders_csv)
        print(f"raw COPY: {rows:,} rows in {copy_s:.1f} s = {rows / copy_s:,.0f} rows/s; "
              f"ratio {rate / (rows / copy_s):.1%}; load {os.getloadavg()[0]:.1f}")
    finally:
        drop_pg_database(admin, name)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
