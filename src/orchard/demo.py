"""A small deterministic zh-CN demo data set, written through the same ingestion service as the API
(so re-running it changes nothing). The full generator with seasonality and million-row output is
issue #3's; this one only makes the README's first command show something real."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import select

from orchard.auth import service as auth
from orchard.auth.models import Staff
from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.db import transaction
from orchard.events import ingest
from orchard.events.schemas import EventIn, OrderIn, RefundIn
from orchard.members import consent
from orchard.org import service as org
from orchard.org.models import OrgUnit

DEMO_PASSWORD = "orchard-demo"
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红"
STORES = [("EAST", "华东大区", [("SH001", "上海南京西路店", "上海"), ("HZ001", "杭州湖滨店", "杭州")]),
          ("SOUTH", "华南大区", [("GZ001", "广州天河店", "广州"), ("SZ001", "深圳万象城店", "深圳")])]
PRODUCTS = [("SKU-TEA-01", "明前龙井 250g", "茶叶", 16800), ("SKU-CUP-02", "骨瓷茶杯", "茶具", 8900),
            ("SKU-SNK-03", "坚果礼盒", "零食", 12800), ("SKU-SHO-04", "轻跑运动鞋", "运动鞋", 39900),
            ("SKU-BAG-05", "帆布托特包", "箱包", 15900)]
PHONE_PREFIXES = ["130", "131", "132", "135", "136", "137", "138", "139", "150", "151", "152", "158", "159",
                  "186", "187", "188", "189"]
EVENTS = ["login", "store_visit", "product_viewed", "added_to_cart", "checked_in", "shared", "reviewed"]


def load_demo(*, members: int = 200, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    system = Principal("system", 0, "demo", Role.admin, None, False)
    with transaction() as session:
        if session.scalar(select(OrgUnit.id).where(OrgUnit.code == "HQ")) is None:
            org.create_unit(session, kind="hq", code="HQ", name="果园品牌总部", city="上海")
            for rcode, rname, stores in STORES:
                org.create_unit(session, kind="region", code=rcode, name=rname, parent_code="HQ")
                for scode, sname, city in stores:
                    org.create_unit(session, kind="store", code=scode, name=sname, parent_code=rcode, city=city)
        accounts = [("admin", "admin", []), ("ops", "hq_ops", []), ("manager_sh", "store_manager", ["SH001"]),
                    ("clerk_sh", "clerk", ["SH001"]), ("clerk_gz", "clerk", ["GZ001"]), ("service", "service", [])]
        for username, role, stores in accounts:
            if session.scalar(select(Staff.id).where(Staff.username == username)) is None:
                auth.create_staff(session, username=username, password=DEMO_PASSWORD, role=role,
                                  store_codes=stores, actor="demo")

    store_codes = [s[0] for _, _, stores in STORES for s in stores]
    end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    created = 0
    with transaction() as session:
        for i in range(members):
            phone = f"{rng.choice(PHONE_PREFIXES)}{rng.randint(10_000_000, 99_999_999)}"
            name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
            store = rng.choice(store_codes)
            joined = end - dt.timedelta(days=rng.randint(1, 540), minutes=rng.randint(0, 1440))
            ref = {"identities": {"phone": phone, "card_no": f"C{seed:02d}{i:06d}"},
                   "profile": {"name": name, "gender": rng.choice(("male", "female")),
                               "birthday": dt.date(rng.randint(1965, 2004), rng.randint(1, 12), rng.randint(1, 28)),
                               "home_store_code": store}}
            out = ingest.ingest(session, principal=system, kind="event", data=EventIn(
                source="demo", external_id=f"signup-{seed}-{i}", name="sign_up", member=ref, occurred_at=joined,
                store_code=store))
            created += out.member_created
            wants_sms = rng.random() < 0.6  # drawn every time so a re-run replays the same sequence
            if out.status == "created" and wants_sms:
                consent.set_consent(session, member_id=out.member_id, channel="sms", purpose="marketing",
                                    granted=True, source="demo", actor="demo")
            # Most members buy once or never; a few buy often.
            n_orders = min(int(rng.paretovariate(1.6)) - 1 + (rng.random() < 0.45), 12)
            for k in range(n_orders):
                paid = joined + dt.timedelta(days=rng.randint(0, max((end - joined).days, 1)), hours=rng.randint(9, 21))
                picked = rng.sample(PRODUCTS, rng.randint(1, 3))
                lines = [{"sku": sku, "name": pname, "category": cat, "quantity": rng.randint(1, 2),
                          "unit_price_fen": price} for sku, pname, cat, price in picked]
                oid = f"DEMO-{seed}-{i}-{k}"
                ingest.ingest(session, principal=system, kind="order", data=OrderIn(
                    source="demo", external_id=oid, member={"identities": {"phone": phone}}, store_code=store,
                    channel=rng.choice(("pos", "mini_program")), paid_at=paid, lines=lines))
                if rng.random() < 0.08:
                    ingest.ingest(session, principal=system, kind="refund", data=RefundIn(
                        source="demo", external_id=f"R-{oid}", order_external_id=oid,
                        refunded_at=paid + dt.timedelta(days=2), lines=[{"line_no": 1}], reason="七天无理由退货"))
            for k in range(rng.randint(0, 6)):
                at = joined + dt.timedelta(days=rng.randint(0, max((end - joined).days, 1)))
                ingest.ingest(session, principal=system, kind="event", data=EventIn(
                    source="demo", external_id=f"ev-{seed}-{i}-{k}", name=rng.choice(EVENTS),
                    member={"identities": {"phone": phone}}, occurred_at=at, store_code=store,
                    properties={"category": rng.choice(PRODUCTS)[2]}))
    return [f"演示数据已就绪 / demo data ready: {created} new members (of {members})",
            f"登录 / log in: admin / {DEMO_PASSWORD} (also ops, manager_sh, clerk_sh, clerk_gz, service)"]
