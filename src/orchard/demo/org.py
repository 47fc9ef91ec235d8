"""The demo brand's organisation and staff: HQ → five regions → stores in real cities, and one
account per role with the password `orchard-demo`. Creates only what is missing, so it is safe to
re-run and to run on a database an older demo filled."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.auth import service as auth
from orchard.auth.models import Staff
from orchard.org import service as org
from orchard.org.models import OrgUnit

DEMO_PASSWORD = "orchard-demo"
HQ = ("HQ", "果园品牌总部", "上海")
#: (region code, name, ((store code, name, city, share of the members), ...)). SH002 stays free: the
#: README's `orchard org add store SH002` example creates it.
REGIONS = (
    ("EAST", "华东大区", (("SH001", "上海南京西路店", "上海", 10), ("SH003", "上海徐家汇店", "上海", 7),
                         ("HZ001", "杭州湖滨店", "杭州", 6), ("NJ001", "南京新街口店", "南京", 5),
                         ("SU001", "苏州观前街店", "苏州", 4))),
    ("NORTH", "华北大区", (("BJ001", "北京三里屯店", "北京", 9), ("BJ002", "北京国贸店", "北京", 7),
                          ("TJ001", "天津滨江道店", "天津", 4))),
    ("SOUTH", "华南大区", (("GZ001", "广州天河店", "广州", 8), ("GZ002", "广州北京路店", "广州", 5),
                          ("SZ001", "深圳万象城店", "深圳", 8))),
    ("SOUTHWEST", "西南大区", (("CD001", "成都春熙路店", "成都", 7), ("CQ001", "重庆解放碑店", "重庆", 6))),
    ("CENTRAL", "华中大区", (("WH001", "武汉楚河汉街店", "武汉", 5), ("CS001", "长沙五一广场店", "长沙", 4))),
)
STORES = tuple((code, name, city, share) for _, _, stores in REGIONS for code, name, city, share in stores)
#: (username, role, scope)
ACCOUNTS = (("admin", "admin", ()), ("ops", "hq_ops", ()), ("manager_sh", "store_manager", ("SH001",)),
            ("clerk_sh", "clerk", ("SH001",)), ("clerk_gz", "clerk", ("GZ001",)), ("service", "service", ()))


def ensure_org_and_staff(session: Session) -> int:
    """Create the missing org units and staff accounts; returns how many units were created."""
    existing = set(session.scalars(select(OrgUnit.code)))
    wanted = [("hq", HQ[0], HQ[1], None, HQ[2])]
    for rcode, rname, stores in REGIONS:
        wanted.append(("region", rcode, rname, HQ[0], None))
        wanted += [("store", code, name, rcode, city) for code, name, city, _ in stores]
    created = 0
    for kind, code, name, parent, city in wanted:
        if code not in existing:
            org.create_unit(session, kind=kind, code=code, name=name, parent_code=parent, city=city)
            created += 1
    users = set(session.scalars(select(Staff.username)))
    for username, role, scope in ACCOUNTS:
        if username not in users:
            auth.create_staff(session, username=username, password=DEMO_PASSWORD, role=role,
                              store_codes=list(scope), actor="demo")
    return created
