"""`orchard refresh` (lifecycle, RFM, preference tags, 20 rule tags, 20 saved segments) and the live
count of `POST /segments/preview`, on PostgreSQL.

    python bench/segments_refresh.py --members 200000 --orders 2000000 --events 6000000

A fresh database (dropped at the end unless `--keep`) is migrated and seeded set-based in SQL —
`INSERT … SELECT generate_series`, the secondary indexes of orders, order lines and events dropped
during the load and rebuilt after it, as a restore would — with no randomness: every "random" figure
is `hashint8extended(row number, salt)`, so two runs with the same sizes hold the same rows.

* N members (gender, region, source channel, home store, joined over the last three years, some
  birthdays, 5 % asking to be left alone, 60 % with SMS marketing consent);
* M orders over two years (a few members buy often, about 15 % never; 3 % partially refunded), each
  with one order line (SKU, one of 12 categories);
* E behaviour events over the last 365 days: product_viewed 60 %, added_to_cart 20 %, store_visit
  12 %, live_attended 8 %, each with a `category` property (a member mostly looks at one category);
* member_aggregates rebuilt from the orders and the events (orders, spend, first/last order, last
  visit, last event); then VACUUM ANALYZE.

Then 20 rule tags and 20 saved segments are defined through `orchard.segments.tags.define(...,
apply_now=False)` and `orchard.segments.service.create(..., refresh_now=False)`, and
`orchard.segments.refresh.run()` is timed twice: the first pass (everyone placed, every spell opened)
and the next day's pass (the steady state of the nightly job), with the time of each step, rule tag
and segment. Finally `segments.preview.preview` of three typical definitions (3–5 conditions, one behaviour
window; sample of 10) — the median of 5 runs each.

`--explain` prints EXPLAIN (ANALYZE, BUFFERS) of each preview's statement (`segments.preview.statement`). Set
ORCHARD_BENCH_PG_URL to use another server than 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

from sqlalchemy import create_engine, text

sys.path.insert(0, os.path.dirname(__file__))
import points_seed  # noqa: E402

#: The run's "now": Tuesday 2026-11-24 10:00 in Shanghai.
NOW = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
CATEGORIES = ("运动鞋", "服装", "配件", "美妆", "家居", "食品", "母婴", "数码", "茶叶", "酒水", "户外", "图书")
REGIONS = ("上海", "杭州", "南京", "苏州", "北京", "广州", "深圳", "成都")


def _arr(values) -> str:
    return "ARRAY[" + ",".join(f"'{v}'" for v in values) + "]"


def _when(n: str, count: str, salt: int, days: int, arrival: str) -> str:
    """A row's time in the last `days`: with arrival "time" row n arrives in time order (ids follow
    time, give or take one row's slot), as ingestion appends; "random" scatters times over the ids."""
    if arrival == "time":
        share = f"(({count} - {n} + bench_u({n}, {salt})) / {count})"
        return f"CAST(:now AS timestamptz) - {share} * interval '{days} days'"
    return f"CAST(:now AS timestamptz) - bench_u({n}, {salt}) * interval '{days} days'"


def seed(url: str, members: int, orders: int, events: int, log=print, arrival: str = "time") -> dict[str, float]:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    params = {"m": members, "o": orders, "e": events, "now": NOW}
    steps: dict[str, float] = {}

    step = points_seed.seeder(engine, params, log, steps)

    with engine.connect() as c:
        rebuild = [x for t in ("orders", "order_lines", "events", "members")
                   for x in points_seed._rebuildable_indexes(c, t)]
    stores = "(SELECT array_agg(id ORDER BY id) FROM org_units WHERE kind = 'store')"
    cats, regions = _arr(CATEGORIES), _arr(REGIONS)
    step("functions",
         # A uniform number in [0, 1) from (row number, salt): deterministic, unlike random().
         "CREATE OR REPLACE FUNCTION bench_u(n bigint, salt bigint) RETURNS float8 LANGUAGE sql IMMUTABLE "
         "PARALLEL SAFE AS $$ SELECT (hashint8extended(n, salt) & 2147483647)::float8 / 2147483648.0 $$")
    step("drop indexes", *(d for d, _ in rebuild))
    step("members",
         "INSERT INTO members (id, status, name, gender, birthday, region, source_channel, home_store_id, joined_at, "
         "attributes, reduce_disturbance, created_at, updated_at) "
         "SELECT g, 'active', '会员' || g, (ARRAY['male','female','female','unknown'])[1 + g % 4], "
         "CASE WHEN bench_u(g, 1) < 0.7 THEN DATE '1960-01-01' + floor(bench_u(g, 2) * 16000)::int END, "
         f"CASE WHEN bench_u(g, 3) < 0.9 THEN ({regions})[1 + floor(bench_u(g, 4) * {len(REGIONS)})::int] END, "
         "(ARRAY['miniapp','pos','shop','import'])[1 + g % 4], s.ids[1 + g % cardinality(s.ids)], "
         "CAST(:now AS timestamptz) - bench_u(g, 5) * interval '1095 days', '{}', bench_u(g, 6) < 0.05, "
         f"now(), now() FROM generate_series(1, :m) g, {stores} s(ids)",
         "SELECT setval('members_id_seq', :m)",
         "INSERT INTO consents (member_id, channel, purpose, granted, granted_at, updated_at) "
         "SELECT g, 'sms', 'marketing', true, CAST(:now AS timestamptz) - interval '400 days', "
         "CAST(:now AS timestamptz) - interval '400 days' "
         "FROM generate_series(1, :m) g WHERE bench_u(g, 7) < 0.6")
    # Member of order n: skewed (a few buy often, ~15 % never): floor(m · u²) over 85 % of the ids.
    step("orders",
         "INSERT INTO orders (id, source, external_id, body_hash, member_id, store_id, channel, status, currency, "
         "amount_fen, refunded_fen, paid_at, properties, created_at) "
         "SELECT n, 'bench', 'o' || n, '', 1 + floor(:m * 0.85 * power(bench_u(n, 11), 2))::bigint, "
         "s.ids[1 + n % cardinality(s.ids)], (ARRAY['pos','miniapp','shop'])[1 + n % 3], "
         "CASE WHEN n % 33 = 0 THEN 'partially_refunded' ELSE 'paid' END, 'CNY', a, "
         "CASE WHEN n % 33 = 0 THEN a / 4 ELSE 0 END, "
         f"{_when('n', 'CAST(:o AS float8)', 12, 730, arrival)}, '{{}}', now() "
         "FROM (SELECT n, 1000 + floor(bench_u(n, 13) * 50000)::bigint AS a FROM generate_series(1, :o) n) g, "
         f"{stores} s(ids)",
         "SELECT setval('orders_id_seq', :o)")
    # One line per order; 10 % of the orders paid below list price (a discount).
    step("order_lines",
         "INSERT INTO order_lines (id, order_id, line_no, sku, name, category, quantity, unit_price_fen, amount_fen, "
         "refunded_quantity, refunded_fen) "
         "SELECT o.id, o.id, 1, 'SKU' || (c * 100 + floor(bench_u(o.id, 21) * 40)::int), '商品', "
         f"({cats})[1 + c], 1, CASE WHEN o.id % 10 = 0 THEN o.amount_fen + 500 ELSE o.amount_fen END, "
         "o.amount_fen, 0, o.refunded_fen "
         "FROM (SELECT id, amount_fen, refunded_fen, CASE WHEN bench_u(id, 22) < 0.5 THEN member_id % 12 "
         f"ELSE floor(bench_u(id, 23) * 12)::int END AS c FROM orders) o",
         "SELECT setval('order_lines_id_seq', greatest(:o, 1))")
    step("events",
         "INSERT INTO events (id, source, external_id, body_hash, member_id, name, store_id, occurred_at, "
         "received_at, properties) "
         "SELECT n, 'bench', 'e' || n, '', mid, "
         "CASE WHEN k < 0.60 THEN 'product_viewed' WHEN k < 0.80 THEN 'added_to_cart' "
         "WHEN k < 0.92 THEN 'store_visit' ELSE 'live_attended' END, "
         "CASE WHEN k >= 0.80 AND k < 0.92 THEN s.ids[1 + mid % cardinality(s.ids)] END, t, t, "
         "jsonb_build_object('category', "
         f"({cats})[1 + CASE WHEN bench_u(n, 33) < 0.6 THEN mid % 12 ELSE floor(bench_u(n, 34) * 12)::int END]) "
         "FROM (SELECT n, 1 + floor(:m * 0.9 * power(bench_u(n, 31), 1.5))::bigint AS mid, bench_u(n, 32) AS k, "
         f"{_when('n', 'CAST(:e AS float8)', 35, 365, arrival)} AS t "
         f"FROM generate_series(1, :e) n) g, {stores} s(ids)",
         "SELECT setval('events_id_seq', greatest(:e, 1))")
    step("indexes", *(c for _, c in rebuild))
    step("aggregates",
         "INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen) "
         "SELECT g, 0, 0, 0 FROM generate_series(1, :m) g",
         "UPDATE member_aggregates a SET order_count = x.c, total_spend_fen = x.s, refund_fen = x.r, "
         "first_order_at = x.f, last_order_at = x.l FROM (SELECT member_id, count(*) c, "
         "sum(amount_fen - refunded_fen) s, sum(refunded_fen) r, min(paid_at) f, max(paid_at) l FROM orders "
         "GROUP BY member_id) x WHERE x.member_id = a.member_id",
         "UPDATE member_aggregates a SET last_event_at = x.l, last_visit_at = x.v FROM (SELECT member_id, "
         "max(occurred_at) l, max(occurred_at) FILTER (WHERE name = 'store_visit') v FROM events "
         "GROUP BY member_id) x WHERE x.member_id = a.member_id")
    t = time.perf_counter()
    with engine.connect() as c:
        for table in ("members", "member_aggregates", "consents", "orders", "order_lines", "events"):
            c.execute(text(f"VACUUM ANALYZE {table}"))
        c.execute(text("CHECKPOINT"))
    steps["vacuum analyze"] = time.perf_counter() - t
    log(f"  seed vacuum analyze + checkpoint: {steps['vacuum analyze']:.1f} s")
    engine.dispose()
    return steps


def _ev(event: str, days: int, op: str = "gte", value: int = 1, **extra) -> dict:
    return {"event": event, "last_days": days, "op": op, "value": value, **extra}


def _cat(category: str) -> list[dict]:
    return [{"prop": "category", "op": "eq", "value": category}]


#: Rule tags: (name, kind, definition).
TAGS: list[tuple[str, str, dict]] = [
    ("高消费", "value", {"field": "total_spend_fen", "op": "gte", "value": 500_000}),
    ("复购客", "behaviour", {"field": "order_count", "op": "gte", "value": 3}),
    ("沉睡客", "behaviour", {"field": "days_since_last_order", "op": "gte", "value": 180}),
    ("新入会", "attribute", {"field": "days_since_joined", "op": "lte", "value": 30}),
    ("近30天活跃", "behaviour", {"field": "last_event_at", "op": "within_last_days", "value": 30}),
    ("运动鞋兴趣", "preference", _ev("product_viewed", 30, value=3, where=_cat("运动鞋"))),
    ("加购未买", "behaviour", {"all": [_ev("added_to_cart", 14), _ev("$order", 14, "eq", 0)]}),
    ("直播粉", "behaviour", _ev("live_attended", 90, value=3)),
    ("到店常客", "behaviour", _ev("store_visit", 90, value=4)),
    ("高价值", "value", {"field": "value_tier", "op": "eq", "value": "high"}),
    ("重要价值", "value", {"field": "rfm_class", "op": "eq", "value": "important_value"}),
    ("流失风险", "behaviour", {"field": "lifecycle_stage", "op": "in", "value": ["dormant", "declining"]}),
    ("美妆女性", "preference", {"all": [{"field": "gender", "op": "eq", "value": "female"},
                                      _ev("$order", 365, where=_cat("美妆"))]}),
    ("大额单", "value", _ev("$order", 180, where=[{"prop": "amount_fen", "op": "gte", "value": 40_000}])),
    ("多品类", "behaviour", _ev("$order", 365, value=3, measure="distinct", prop="category")),
    ("上海会员", "attribute", {"field": "region", "op": "eq", "value": "上海"}),
    ("本月生日", "attribute", {"field": "birthday_month", "op": "eq", "value": 11}),
    ("短信可达", "attribute", {"consent": "sms"}),
    ("低频高额", "value", {"all": [{"field": "f_score", "op": "lte", "value": 2},
                                  {"field": "m_score", "op": "gte", "value": 4}]}),
    ("免打扰", "attribute", {"field": "reduce_disturbance", "op": "eq", "value": True}),
]

#: Saved segments: (code, name, definition); the last one reads two others.
SEGMENTS: list[tuple[str, str, dict]] = [
    ("sneaker_no_buy", "看鞋未买", {"all": [_ev("product_viewed", 30, value=3, where=_cat("运动鞋")),
                                         _ev("$order", 30, "eq", 0, where=_cat("运动鞋"))]}),
    ("live_fans", "直播常客", _ev("live_attended", 90, value=3)),
    ("never_ordered", "注册未购", {"all": [{"field": "order_count", "op": "eq", "value": 0},
                                        {"field": "joined_at", "op": "older_than_days", "value": 7}]}),
    ("vip_sleepers", "高价值沉睡", {"all": [
        {"field": "rfm_class", "op": "in", "value": ["important_keep", "important_retain"]},
        {"field": "days_since_last_order", "op": "gte", "value": 90}, {"consent": "sms"},
        {"not": {"field": "reduce_disturbance", "op": "eq", "value": True}}]}),
    ("birthday_week", "本周生日", {"field": "birthday", "op": "within_next_days", "value": 6}),
    ("champions", "重要价值客户", {"field": "rfm_class", "op": "eq", "value": "important_value"}),
    ("new_members", "新会员", {"all": [{"field": "lifecycle_stage", "op": "eq", "value": "new"},
                                     {"field": "days_since_joined", "op": "lte", "value": 90}]}),
    ("dormant_sms", "沉睡可短信", {"all": [{"field": "lifecycle_stage", "op": "in", "value": ["dormant", "lost"]},
                                        {"consent": "sms"}]}),
    ("cart_abandon", "加购未下单", {"all": [_ev("added_to_cart", 7, value=2), _ev("$order", 7, "eq", 0)]}),
    ("store_regulars", "到店常客", {"all": [_ev("store_visit", 60, value=3),
                                         {"field": "home_store", "op": "in", "value": ["S1", "S2"]}]}),
    ("beauty_women", "美妆女性", {"all": [{"tag": "美妆女性"},
                                        {"field": "days_since_last_order", "op": "lte", "value": 180}]}),
    ("big_spenders", "高消费活跃", {"all": [{"tag": "高消费"},
                                         {"field": "last_event_at", "op": "within_last_days", "value": 30}]}),
    ("declining_value", "价值下滑", {"all": [{"field": "lifecycle_stage", "op": "eq", "value": "declining"},
                                          {"field": "value_tier", "op": "in", "value": ["high", "medium"]}]}),
    ("shanghai_active", "上海活跃", {"all": [{"field": "region", "op": "eq", "value": "上海"},
                                          {"field": "days_since_last_event", "op": "lte", "value": 14}]}),
    ("multi_category", "多品类买家", {"all": [{"tag": "多品类"}, {"field": "f_score", "op": "gte", "value": 4}]}),
    ("lapsed_viewers", "只看不买", {"all": [_ev("product_viewed", 30, value=5),
                                          {"field": "days_since_last_order", "op": "gte", "value": 120}]}),
    ("high_value_no_live", "高价值未看直播", {"all": [{"field": "value_tier", "op": "eq", "value": "high"},
                                                  _ev("live_attended", 180, "eq", 0)]}),
    ("repeat_female", "复购女性", {"all": [{"tag": "复购客"}, {"field": "gender", "op": "eq", "value": "female"},
                                        {"field": "avg_order_fen", "op": "gte", "value": 20_000}]}),
    ("weekend_shoppers", "近90天到店购买", _ev("$order", 90, value=2, where=[
        {"prop": "channel", "op": "eq", "value": "pos"}])),
    ("vip_sleepers_or_champions_sms", "重要客户可触达", {"all": [
        {"any": [{"segment": "vip_sleepers"}, {"segment": "champions"}]},
        {"not": {"tag": "免打扰"}}]}),
]

#: Typical live counts: 3–5 conditions, one behaviour window.
PREVIEWS: list[tuple[str, dict]] = [
    ("sneaker interest, recent buyer, SMS", {"all": [
        {"field": "gender", "op": "eq", "value": "female"},
        {"field": "days_since_last_order", "op": "lte", "value": 90},
        _ev("product_viewed", 30, value=3, where=_cat("运动鞋")), {"consent": "sms"}]}),
    ("slipping VIPs who watch live", {"all": [
        {"field": "rfm_class", "op": "in", "value": ["important_keep", "important_retain"]},
        {"field": "days_since_last_order", "op": "gte", "value": 60},
        _ev("live_attended", 90), {"not": {"field": "reduce_disturbance", "op": "eq", "value": True}}]}),
    ("repeat buyers with carts, two cities", {"all": [
        {"field": "order_count", "op": "gte", "value": 2},
        {"field": "region", "op": "in", "value": ["上海", "杭州"]},
        _ev("added_to_cart", 14, value=2),
        {"field": "total_spend_fen", "op": "gte", "value": 100_000},
        {"tag": "短信可达"}]}),
]


def define_all(log=print) -> None:
    from orchard import db
    from orchard.auth.roles import Role
    from orchard.auth.service import Principal
    from orchard.segments import service, tags

    admin = Principal("staff", 1, "bench", Role.admin, None, False)
    with db.transaction() as s:
        for name, kind, definition in TAGS:
            tags.define(s, principal=admin, name=name, kind=kind, definition=definition, apply_now=False)
    with db.transaction() as s:
        for code, name, definition in SEGMENTS:
            service.create(s, principal=admin, code=code, name=name, definition=definition, refresh_now=False)
    log(f"  defined {len(TAGS)} rule tags and {len(SEGMENTS)} segments")


def run_refresh(now: dt.datetime, label: str, log=print) -> dict:
    """`refresh.run()` with each step's seconds, each rule tag's and each segment's."""
    from orchard.segments import refresh, tags

    tag_times: dict[str, tuple[float, dict]] = {}
    original = tags.refresh_one

    def timed_tag(session, tag, *, now):
        t = time.perf_counter()
        result = original(session, tag, now=now)
        tag_times[tag.name] = (time.perf_counter() - t, result)
        return result

    tags.refresh_one = timed_tag
    try:
        t = time.perf_counter()
        steps = refresh.run(now=now)
        total = time.perf_counter() - t
    finally:
        tags.refresh_one = original
    log(f"\n{label}: total {total:.1f} s (load {points_seed.loadavg()})")
    log("| step | seconds | result |\n|---|---|---|")
    for s in steps:
        r = s["result"]
        if s["step"] == "lifecycle":
            note = f"{r['members']:,} members, {r['changed']:,} changed"
        elif s["step"] == "rfm":
            note = f"{r['scored']:,} scored of {r['members']:,}"
        elif s["step"] == "preferences":
            note = (f"{r['tags']} tags, +{r['added']:,} −{r['removed']:,}, "
                    + ("everyone" if r.get("full", True) else f"{r['members']:,} members recomputed"))
        elif s["step"] == "tags":
            note = f"{len(r)} rule tags"
        else:
            note = f"{len(r)} segments"
        log(f"| {s['step']} | {s['seconds']:.2f} | {note} |")
    # Per-tag seconds only where each tag is evaluated alone (`refresh_one`); the one-pass path
    # evaluates a batch of tags together, so only the step's total is meaningful there.
    log("\n| rule tag | seconds | size | added | removed |\n|---|---|---|---|---|")
    for r in next(s for s in steps if s["step"] == "tags")["result"]:
        sec = f"{tag_times[r['tag']][0]:.2f}" if r["tag"] in tag_times else "—"
        log(f"| {r['tag']} | {sec} | {r['size']:,} | {r['added']:,} | {r['removed']:,} |")
    seg = next(s for s in steps if s["step"] == "segments")["result"]
    log("\n| segment | seconds | size | entered | exited |\n|---|---|---|---|---|")
    for r in seg:
        log(f"| {r['segment']} | {r['ms'] / 1000:.2f} | {r['size']:,} | {r['entered']:,} | {r['exited']:,} |")
    return {"total": total, "steps": steps, "tags": tag_times, "segments": seg}


def add_day_of_orders(url: str, now: dt.datetime, n: int, log=print) -> None:
    """`n` new orders (one line each, ids above the seed's) paid in the 24 hours before `now`, for members
    drawn like the seed's: the day of business a nightly pass folds in besides the orders leaving the
    window."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    cats = _arr(CATEGORIES)
    t = time.perf_counter()
    with engine.connect() as c:
        c.execute(text(
            "INSERT INTO orders (id, source, external_id, body_hash, member_id, store_id, channel, status, currency, "
            "amount_fen, refunded_fen, paid_at, properties, created_at) "
            "SELECT b + g, 'bench', 'day' || (b + g), '', "
            "1 + floor(m * 0.85 * power(bench_u(b + g, 11), 2))::bigint, NULL, "
            "(ARRAY['pos','miniapp','shop'])[1 + g % 3], 'paid', 'CNY', 1000 + floor(bench_u(b + g, 13) * 50000), "
            "0, CAST(:now AS timestamptz) - bench_u(b + g, 12) * interval '1 day', '{}', now() "
            "FROM (SELECT MAX(id) AS b, (SELECT COUNT(*) FROM members) AS m FROM orders) x, generate_series(1, :n) g"),
            {"now": now, "n": n})
        c.execute(text(
            "INSERT INTO order_lines (order_id, line_no, sku, name, category, quantity, unit_price_fen, amount_fen, "
            "refunded_quantity, refunded_fen) "
            f"SELECT o.id, 1, 'SKU' || (c * 100 + floor(bench_u(o.id, 21) * 40)::int), '商品', ({cats})[1 + c], 1, "
            "o.amount_fen, o.amount_fen, 0, 0 FROM (SELECT id, amount_fen, floor(bench_u(id, 23) * 12)::int AS c "
            "FROM orders WHERE id > (SELECT COALESCE(MAX(order_id), 0) FROM order_lines)) o"))
        c.execute(text("SELECT setval('orders_id_seq', (SELECT MAX(id) FROM orders))"))
        c.execute(text("ANALYZE orders"))
    engine.dispose()
    log(f"\nadded {n:,} orders paid in the day before {now:%Y-%m-%d %H:%M} in {time.perf_counter() - t:.1f} s")


def compare_prefs(now: dt.datetime, log=print) -> None:
    """The preference step recomputing everyone at the state the next-day pass left (rolled back): what
    the step cost before it became incremental, and a check that it finds nothing to change."""
    from orchard import db
    from orchard.scoring import preferences

    s = db.new_session()
    try:
        t = time.perf_counter()
        r = preferences.refresh(s, now=now, full=True)
        log(f"\npreferences, everyone recomputed at the next-day state (rolled back): {time.perf_counter() - t:.1f} s, "
            f"+{r['added']:,} −{r['removed']:,} (load {points_seed.loadavg()})")
    finally:
        s.rollback()
        s.close()


def run_previews(now: dt.datetime, explain: bool, log=print) -> list[tuple[str, float, int]]:
    from orchard import db
    from orchard.auth.roles import Role
    from orchard.auth.service import Principal
    from orchard.segments import evaluate, preview

    admin = Principal("staff", 1, "bench", Role.admin, None, False)
    out = []
    log("\n| preview (median of 5) | ms | runs, ms | count | population |\n|---|---|---|---|---|")
    for label, definition in PREVIEWS:
        runs = []
        for _ in range(5):
            with db.transaction(readonly=True) as s:
                t = time.perf_counter()
                result = preview.preview(s, principal=admin, definition=definition, now=now)
                runs.append((time.perf_counter() - t) * 1000)
        med = statistics.median(runs)
        out.append((label, med, result["count"]))
        log(f"| {label} | {med:.0f} | {', '.join(f'{x:.0f}' for x in runs)} | {result['count']:,} | "
            f"{result['population']:,} |")
        if explain:
            with db.transaction(readonly=True) as s:
                compiled = evaluate.compile_definition(s, definition, now=now)
                db.batch_settings(s)  # the preview's settings and statement, in any version of the code
                stmt = preview.statement(compiled.tree, compiled.ctx, admin, 10)
                sql = str(stmt.compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
                plan = s.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql)).scalars().all()
                log("\n```\n" + "\n".join(plan) + "\n```")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--orders", type=int, default=10_000_000)
    ap.add_argument("--events", type=int, default=30_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the previews' counts")
    ap.add_argument("--database", help="reuse this kept, seeded database (no seeding, no drop)")
    ap.add_argument("--name", help="name of the fresh database (default orchard_bench_<random>)")
    ap.add_argument("--arrival", choices=("time", "random"), default="time",
                    help="orders and events stored in time order, as ingestion appends them (default), or with "
                         "times scattered over the ids (the earlier, pessimistic seed)")
    ap.add_argument("--previews-only", action="store_true", help="skip the two refresh passes")
    ap.add_argument("--days-later", type=int, default=0,
                    help="run the passes and previews this many days after the seed's now: a kept database "
                         "cannot be refreshed again at an earlier time than its last pass (spells would exit "
                         "before they entered); copy it first (CREATE DATABASE … TEMPLATE) to compare versions")
    ap.add_argument("--new-orders", type=int, default=0,
                    help="add this many orders paid in the day before the next-day pass (a day of business)")
    ap.add_argument("--compare-prefs", action="store_true",
                    help="after the next-day pass, time the preference step recomputing everyone (rolled back)")
    args = ap.parse_args()
    if args.database:
        name, url = args.database, points_seed.PG.rsplit("/", 1)[0] + "/" + args.database
    else:
        name, url, _ = points_seed.create_database(args.name)
    print(f"database {name}; {args.members:,} members, {args.orders:,} orders, {args.events:,} events; "
          f"load {points_seed.loadavg()}")
    try:
        t = time.perf_counter()
        if not args.database:
            seed(url, args.members, args.orders, args.events, arrival=args.arrival)
        print(f"seeded in {time.perf_counter() - t:.0f} s; load {points_seed.loadavg()}")
        os.environ["ORCHARD_DATABASE_URL"] = url
        from orchard import db

        db.reset_caches()
        if not args.database:
            define_all()
        first = second = {"total": float("nan")}
        now = NOW + dt.timedelta(days=args.days_later)
        if not args.previews_only:
            first = run_refresh(now, "refresh.run, first pass (everyone placed)")
            if args.new_orders:
                add_day_of_orders(url, now + dt.timedelta(days=1), args.new_orders)
            second = run_refresh(now + dt.timedelta(days=1), "refresh.run, next day (steady state)")
            if args.compare_prefs:
                compare_prefs(now + dt.timedelta(days=1))
        previews = run_previews(now + dt.timedelta(days=1), args.explain)
        print(f"\nsummary ({args.arrival} arrival): first refresh {first['total']:.1f} s, next-day refresh "
              f"{second['total']:.1f} s, previews " + ", ".join(f"{ms:.0f} ms" for _, ms, _ in previews)
              + f"; load {points_seed.loadavg()}")
        print("sizes: " + sizes(url))
    finally:
        from orchard import db

        db.reset_caches()
        if not args.keep and not args.database:
            points_seed.drop_database(name)
        elif not args.database:
            print(f"kept database {name}")


def sizes(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class WHERE relname IN "
            "('members', 'member_aggregates', 'orders', 'order_lines', 'events', 'segment_memberships', "
            "'segment_flips', 'member_tags', 'member_rfm') ORDER BY relname")).all()
        size = c.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
    engine.dispose()
    return ", ".join(f"{n} {s}" for n, s in rows) + f"; database {size}"


if __name__ == "__main__":
    main()
