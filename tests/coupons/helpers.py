"""Coupon test helpers: templates through the API, coupons through the services."""

from __future__ import annotations

import datetime as dt
import itertools

from orchard import db
from orchard.coupons import issuing
from orchard.coupons.models import Coupon
from orchard.members.models import Member, MemberAggregate

API = "/api/v1"
_ids = itertools.count(1)


def template(client, token_headers, **overrides) -> dict:
    body = {"name": "满100减20", "kind": "amount_off", "off_fen": 2000, "threshold_fen": 10000,
            "validity": "relative", "valid_days": 30, **overrides}
    r = client.post(f"{API}/coupon-templates", headers=token_headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def issue(template_id: int, member_id: int, *, now: dt.datetime | None = None) -> str:
    with db.transaction() as s:
        coupon, _ = issuing.issue_one(s, template_id=template_id, member_id=member_id, source="test",
                                      external_id=f"T{next(_ids)}", reason=None, actor="test", now=now)
        return coupon.code


def coupons_of(template_id: int) -> list[Coupon]:
    with db.transaction(readonly=True) as s:
        return list(s.query(Coupon).filter(Coupon.template_id == template_id).order_by(Coupon.member_id))


def redeem_body(order: str, amount_fen: int = 12000, **extra) -> dict:
    return {"order_external_id": order, "amount_fen": amount_fen, **extra}


def members(n: int) -> list[int]:
    """n bare members in one transaction."""
    with db.transaction() as s:
        rows = [Member(name=f"券会员{i}") for i in range(n)]
        s.add_all(rows)
        s.flush()
        s.add_all([MemberAggregate(member_id=m.id) for m in rows])
        return [m.id for m in rows]
