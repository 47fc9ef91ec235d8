"""Ledger test helpers: a member to hold points, and commands in one line."""

from __future__ import annotations

import datetime as dt
import itertools

from sqlalchemy import select

from orchard import db
from orchard.loyalty import ledger
from orchard.loyalty.models import PointsAccount, PointsAllocation, PointsEntry, PointsLot
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


def expire_as_before_0017(now: dt.datetime) -> None:
    """What the pass wrote before migration 0017: an expire entry per member and one allocation row
    per due lot, the lots emptied and nothing recorded on them."""
    with db.transaction() as s:
        due = s.scalars(select(PointsLot).where(PointsLot.expires_at <= now, PointsLot.remaining > 0)
                        .order_by(PointsLot.member_id, PointsLot.id)).all()
        members = sorted({lot.member_id for lot in due})
        for m in members:
            lots = [lot for lot in due if lot.member_id == m]
            total = sum(lot.remaining for lot in lots)
            account = s.get(PointsAccount, m, with_for_update=True)
            account.balance -= total
            entry = PointsEntry(member_id=m, kind="expire", amount=-total, balance_after=account.balance,
                                reason="积分过期 points expired", source="expiry",
                                external_id=f"expire-{m}-old-{now.isoformat()}", body_hash="", actor="system:expiry",
                                explanation={}, created_at=now)
            s.add(entry)
            s.flush()
            for lot in lots:
                s.add(PointsAllocation(entry_id=entry.id, lot_id=lot.id, amount=lot.remaining))
                lot.remaining = 0
        s.flush()
