"""Ledger test helpers: a member to hold points, and commands in one line."""

from __future__ import annotations

import datetime as dt
import itertools

from orchard import db
from orchard.loyalty import ledger
from orchard.members.models import Member, MemberAggregate
from orchard.org.models import OrgUnit

_ids = itertools.count(1)
T0 = dt.datetime(2026, 6, 1, 4, tzinfo=dt.UTC)


def member(store: str | None = None) -> int:
    with db.transaction() as s:
        store_id = s.query(OrgUnit.id).filter(OrgUnit.code == store).scalar() if store else None
        m = Member(name="积分会员", home_store_id=store_id)
        s.add(m)
        s.flush()
        s.add(MemberAggregate(member_id=m.id))
        return m.id


def post(member_id: int, amount: int, *, kind: str | None = None, external_id: str | None = None,
         now: dt.datetime = T0, expires_at: dt.datetime | None = None, pending_until: dt.datetime | None = None,
         reason: str = "测试 test"):
    with db.transaction() as s:
        entry, created = ledger.post(s, ledger.Command(
            member_id=member_id, amount=amount, kind=kind or ("earn" if amount > 0 else "spend"), reason=reason,
            source="test", external_id=external_id or f"T{next(_ids)}", actor="test", expires_at=expires_at,
            pending_until=pending_until), now=now)
        return entry.id, entry.amount, entry.balance_after, created


def summary(member_id: int, now: dt.datetime = T0) -> ledger.Summary:
    with db.transaction(readonly=True) as s:
        return ledger.summary(s, member_id, now=now)


def violations() -> dict[str, int]:
    from orchard.loyalty.verify import verify

    with db.transaction(readonly=True) as s:
        return {c.name: c.violations for c in verify(s) if c.violations}
