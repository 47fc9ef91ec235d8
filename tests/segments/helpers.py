"""Members, orders and events written straight into the tables, at chosen times, for segment tests."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from orchard.auth.roles import Role
from orchard.auth.service import Principal
from orchard.events.models import Event, Order, OrderLine
from orchard.members.models import Consent, Member, MemberAggregate, MemberTag, Tag

SH = ZoneInfo("Asia/Shanghai")
ADMIN = Principal("staff", 1, "tester", Role.admin, None, False)
#: "Now" of these tests: Tuesday 2026-11-24 10:00 in Shanghai.
NOW = dt.datetime(2026, 11, 24, 10, 0, tzinfo=SH).astimezone(dt.UTC)


def local(y: int, mo: int, d: int, h: int = 12, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, tzinfo=SH).astimezone(dt.UTC)


def member(s, name: str, *, joined: dt.datetime | None = None, orders: list[tuple[dt.datetime, int]] = (),
           **profile) -> int:
    """A member with its aggregates computed from `orders` ([(paid_at, amount_fen)])."""
    m = Member(name=name, joined_at=joined or local(2025, 1, 1), **profile)
    s.add(m)
    s.flush()
    times = [t for t, _ in orders]
    s.add(MemberAggregate(member_id=m.id, order_count=len(orders), total_spend_fen=sum(a for _, a in orders),
                          refund_fen=0, first_order_at=min(times) if times else None,
                          last_order_at=max(times) if times else None))
    for i, (t, amount) in enumerate(orders):
        o = Order(source="t", external_id=f"{m.id}-{i}", body_hash="x", member_id=m.id, amount_fen=amount,
                  paid_at=t, status="paid")
        s.add(o)
        s.flush()
        s.add(OrderLine(order_id=o.id, line_no=1, category=profile.get("region") or "服装", quantity=1,
                        unit_price_fen=amount, amount_fen=amount))
    s.flush()
    return m.id


def order_line(s, member_id: int, at: dt.datetime, category: str, amount: int = 1000, ext: str = "") -> None:
    o = Order(source="t", external_id=f"{member_id}-{category}-{at.isoformat()}{ext}", body_hash="x",
              member_id=member_id, amount_fen=amount, paid_at=at, status="paid")
    s.add(o)
    s.flush()
    s.add(OrderLine(order_id=o.id, line_no=1, category=category, quantity=1, unit_price_fen=amount,
                    amount_fen=amount))
    s.flush()


def event(s, member_id: int | None, name: str, at: dt.datetime, **props) -> None:
    n = s.query(Event).count()
    s.add(Event(source="t", external_id=f"e{n}", body_hash="x", member_id=member_id, name=name, occurred_at=at,
                properties=props))
    s.flush()


def tag(s, member_id: int, name: str) -> None:
    t = s.query(Tag).filter_by(name=name).one_or_none()
    if t is None:
        t = Tag(name=name)
        s.add(t)
        s.flush()
    s.add(MemberTag(member_id=member_id, tag_id=t.id, added_by="t"))
    s.flush()


def consent(s, member_id: int, channel: str, purpose: str = "marketing", granted: bool = True) -> None:
    s.add(Consent(member_id=member_id, channel=channel, purpose=purpose, granted=granted))
    s.flush()


def two_stores(s) -> tuple[int, int]:
    """HQ with stores S1 (一店) and S2 (二店): their ids."""
    from orchard.org.models import OrgUnit

    hq = OrgUnit(kind="hq", code="HQ", name="总部")
    s.add(hq)
    s.flush()
    s1, s2 = OrgUnit(kind="store", code="S1", name="一店", parent_id=hq.id), \
        OrgUnit(kind="store", code="S2", name="二店", parent_id=hq.id)
    s.add_all([s1, s2])
    s.flush()
    return s1.id, s2.id
