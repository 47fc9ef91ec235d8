"""Points routes (member-scoped through `members.scope`: another store's member is a 404)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.auth.service import Principal
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput, NotFound
from orchard.kit.clock import as_utc, utcnow
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.loyalty import ledger, policy
from orchard.loyalty.models import PointsEntry
from orchard.loyalty.schemas import AdjustIn, CancelIn, EntryPage, EntryRead, Expiring, PointsRead, SpendIn
from orchard.members import scope
from orchard.org.service import store_id_for_code

router = APIRouter(tags=["points"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]


@router.get("/members/{member_id}/points", response_model=PointsRead, operation_id="getMemberPoints")
def get_points(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read),
               expiring_within_days: Annotated[int, Query(ge=1, le=3660, description="how far ahead `expiring` "
                                                                                   "looks (reminders)")] = 90,
               ) -> PointsRead:
    member = scope.get_visible(session, principal, member_id)
    s = ledger.summary(session, member.id, within=dt.timedelta(days=expiring_within_days))
    return PointsRead(member_id=member.id, balance=s.balance, available=s.available, pending=s.pending,
                      expiring=[Expiring(amount=n, expires_at=at) for at, n in s.expiring], debt=s.debt)


@router.get("/members/{member_id}/points/entries", response_model=EntryPage, operation_id="listMemberPointsEntries")
def list_entries(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read),
                 limit: Annotated[int, Query(ge=1, le=200)] = 50,
                 cursor: Annotated[str | None, Query(max_length=200)] = None) -> EntryPage:
    """The member's points history, newest first, each entry with its reason and explanation."""
    member = scope.get_visible(session, principal, member_id)
    q = select(PointsEntry).where(PointsEntry.member_id == member.id)
    if (after := decode_cursor(cursor)) is not None:
        q = q.where(PointsEntry.id < after)
    rows = list(session.scalars(q.order_by(PointsEntry.id.desc()).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return EntryPage(items=[EntryRead.model_validate(r) for r in rows[:limit]], next_cursor=nxt)


def store_for(session, principal: Principal, code: str | None) -> int | None:
    """The store a points command names (org.service.store_id_for_code), which store staff may only
    name among their own stores."""
    store_id = store_id_for_code(session, code)
    if store_id is not None and principal.store_ids is not None and store_id not in principal.store_ids:
        raise InvalidInput.field("store_code", f"store {code!r} is outside your stores")
    return store_id


@router.post("/members/{member_id}/points/spend", response_model=EntryRead, operation_id="spendMemberPoints",
             responses={409: {"description": "points.insufficient (available too low) or points.id_reused"}})
def spend(member_id: MemberId, body: SpendIn, session: SessionDep, principal: Actor(Perm.points_spend)) -> EntryRead:
    """Spend points (redeem at a POS or online). A repeated `external_id` returns the first entry."""
    member = scope.get_visible(session, principal, member_id)
    entry, _ = ledger.post(session, ledger.Command(
        member_id=member.id, amount=-body.amount, kind="spend", reason=body.reason, source=body.source,
        external_id=body.external_id, actor=principal.actor, store_id=store_for(session, principal, body.store_code),
        request=body.model_dump(mode="json")))
    return EntryRead.model_validate(entry)


@router.post("/members/{member_id}/points/adjust", response_model=EntryRead, operation_id="adjustMemberPoints",
             responses={409: {"description": "points.insufficient (a debit beyond the available points) or "
                                             "points.id_reused"}})
def adjust(member_id: MemberId, body: AdjustIn, session: SessionDep,
           principal: Actor(Perm.points_adjust)) -> EntryRead:
    """A manual correction with a required reason (audited). A repeated `external_id` returns the
    first entry."""
    if body.amount == 0:
        raise InvalidInput.field("amount", "must not be 0")
    if body.amount < 0 and (body.expires_at or body.pending_until):
        raise InvalidInput.field("expires_at", "only a credit (a positive amount) has an expiry or pending time")
    member = scope.get_visible(session, principal, member_id)
    now = utcnow()
    expires = as_utc(body.expires_at) if body.expires_at else policy.expires_at(now) if body.amount > 0 else None
    entry, _ = ledger.post(session, ledger.Command(
        member_id=member.id, amount=body.amount, kind="adjust", reason=body.reason, source=body.source,
        external_id=body.external_id, actor=principal.actor, store_id=store_for(session, principal, body.store_code),
        expires_at=expires, pending_until=as_utc(body.pending_until) if body.pending_until else None,
        explanation={"expiry": "given" if body.expires_at else policy.describe() if body.amount > 0 else None},
        request=body.model_dump(mode="json")), now=now)
    return EntryRead.model_validate(entry)


@router.post("/members/{member_id}/points/spends/{external_id}/cancel", response_model=EntryRead,
             operation_id="cancelMemberPointsSpend",
             responses={404: {"description": "no such spend for this member"}})
def cancel_spend(member_id: MemberId, external_id: Annotated[str, Path(min_length=1, max_length=128)],
                 body: CancelIn, session: SessionDep, principal: Actor(Perm.points_spend),
                 source: Annotated[str, Query(min_length=1, max_length=64)] = "api") -> EntryRead:
    """Cancel a redemption (the order was cancelled, the gift not handed over): its points go back
    to the lots they came from, with their own expiry. Once per spend; a repeat returns the first
    restore."""
    member = scope.get_visible(session, principal, member_id)
    spend = session.scalar(select(PointsEntry).where(PointsEntry.source == source,
                                                     PointsEntry.external_id == external_id,
                                                     PointsEntry.member_id == member.id))
    if spend is None:
        raise NotFound(f"member {member.id} has no points spend {source}/{external_id}")
    entry, _ = ledger.restore(session, spend=spend, reason=body.reason, actor=principal.actor)
    return EntryRead.model_validate(entry)
