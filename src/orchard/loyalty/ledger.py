"""Posting to the points ledger: credits create lots, debits draw on lots soonest-expiring first.

Every command carries (source, external_id): a retry with the same body returns the first entry, the
same id with another body is a 409 (`points.id_reused`). A debit locks the member's account row
(`SELECT … FOR UPDATE` on PostgreSQL; SQLite writers are already serial under BEGIN IMMEDIATE) before
it reads the lots, so concurrent spends never see the same points; the CHECK constraints on lots
and the account are the last line. Points past their expiry are never spendable, even before the
expiry pass (`loyalty.expiry`) has written their expire entry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.errors import Conflict, InvalidInput
from orchard.kit.clock import utcnow
from orchard.kit.hashing import fingerprint
from orchard.loyalty.models import PointsAccount, PointsAllocation, PointsEntry, PointsLot

MAX_POINTS = 10**12


class Insufficient(Conflict):
    def __init__(self, available: int, asked: int) -> None:
        super().__init__(f"only {available} points are available, {asked} asked", code="points.insufficient",
                         available=available, requested=asked)


@dataclass(frozen=True)
class Command:
    """One ledger command as the caller sent it; its fingerprint recognises a retry."""

    member_id: int
    amount: int  # signed
    kind: str  # earn | spend | adjust
    reason: str
    source: str
    external_id: str
    actor: str
    store_id: int | None = None
    expires_at: dt.datetime | None = None
    pending_until: dt.datetime | None = None
    explanation: dict[str, Any] | None = None
    #: What the caller sent, when it is not the command itself (an expiry derived from "now" must not
    #: make a retry look like another command).
    request: dict[str, Any] | None = None

    def body_hash(self) -> str:
        if self.request is not None:
            return fingerprint({"member_id": self.member_id, "kind": self.kind, **self.request})
        return fingerprint({"member_id": self.member_id, "amount": self.amount, "kind": self.kind,
                            "reason": self.reason, "store_id": self.store_id,
                            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                            "pending_until": self.pending_until.isoformat() if self.pending_until else None})


def post(session: Session, cmd: Command, *, now: dt.datetime | None = None) -> tuple[PointsEntry, bool]:
    """Apply `cmd` once. Returns (entry, created): created is False for a replay."""
    if cmd.amount == 0 or abs(cmd.amount) > MAX_POINTS:
        raise InvalidInput.field("amount", f"a non-zero whole number of points up to {MAX_POINTS}")
    body_hash = cmd.body_hash()
    prior = _replay(session, cmd, body_hash)
    if prior is not None:
        return prior, False
    now = now or utcnow()
    try:
        with session.begin_nested():
            account = lock_account(session, cmd.member_id)
            prior = _replay(session, cmd, body_hash)  # a concurrent retry may have won while we waited
            if prior is not None:
                return prior, False
            entry = _credit(session, account, cmd, body_hash, now) if cmd.amount > 0 else \
                _debit(session, account, cmd, body_hash, now)
    except IntegrityError:
        prior = _replay(session, cmd, body_hash)
        if prior is None:
            raise
        return prior, False
    audit.record(session, actor=cmd.actor, action=f"points.{cmd.kind}", entity="member", entity_id=cmd.member_id,
                 data={"entry_id": entry.id, "amount": cmd.amount, "reason": cmd.reason, "source": cmd.source,
                       "external_id": cmd.external_id})
    return entry, True


def _replay(session: Session, cmd: Command, body_hash: str) -> PointsEntry | None:
    entry = session.scalar(select(PointsEntry).where(PointsEntry.source == cmd.source,
                                                     PointsEntry.external_id == cmd.external_id))
    if entry is not None and entry.body_hash != body_hash:
        raise Conflict(f"points command {cmd.source}/{cmd.external_id} was already received with another body",
                       code="points.id_reused", source=cmd.source, external_id=cmd.external_id)
    return entry


def lock_account(session: Session, member_id: int) -> PointsAccount:
    """The member's account row, created if need be, locked until the transaction ends."""
    account = session.get(PointsAccount, member_id, with_for_update=True, populate_existing=True)
    if account is None:
        try:
            with session.begin_nested():
                session.add(PointsAccount(member_id=member_id, balance=0))
                session.flush()
        except IntegrityError:
            pass  # created concurrently: lock theirs
        account = session.get(PointsAccount, member_id, with_for_update=True, populate_existing=True)
    return account


def _entry(session: Session, account: PointsAccount, cmd: Command, body_hash: str, now: dt.datetime,
           kind: str | None = None) -> PointsEntry:
    account.balance += cmd.amount
    account.updated_at = now
    entry = PointsEntry(member_id=cmd.member_id, kind=kind or cmd.kind, amount=cmd.amount,
                        balance_after=account.balance, reason=cmd.reason, source=cmd.source,
                        external_id=cmd.external_id, body_hash=body_hash, actor=cmd.actor,
                        explanation=cmd.explanation or {}, store_id=cmd.store_id, created_at=now)
    session.add(entry)
    session.flush()
    return entry


def _credit(session: Session, account: PointsAccount, cmd: Command, body_hash: str, now: dt.datetime) -> PointsEntry:
    if cmd.expires_at is not None and cmd.expires_at <= now:
        raise InvalidInput.field("expires_at", "lies in the past: the points would expire before they are credited")
    entry = _entry(session, account, cmd, body_hash, now)
    session.add(PointsLot(member_id=cmd.member_id, entry_id=entry.id, amount=cmd.amount, remaining=cmd.amount,
                          earned_at=now, expires_at=cmd.expires_at, pending_until=cmd.pending_until,
                          store_id=cmd.store_id))
    session.flush()
    return entry


def spendable(member_id: int, now: dt.datetime):
    """The lots a debit may draw on, in the order it draws: soonest-expiring first, never-expiring
    last, oldest first among equals."""
    return (select(PointsLot.id, PointsLot.remaining)
            .where(PointsLot.member_id == member_id, PointsLot.remaining > 0,
                   (PointsLot.expires_at.is_(None)) | (PointsLot.expires_at > now),
                   (PointsLot.pending_until.is_(None)) | (PointsLot.pending_until <= now))
            .order_by(PointsLot.expires_at.is_(None), PointsLot.expires_at, PointsLot.id))


def _debit(session: Session, account: PointsAccount, cmd: Command, body_hash: str, now: dt.datetime) -> PointsEntry:
    need = -cmd.amount
    plan, covered = [], 0
    for lot_id, remaining in session.execute(spendable(cmd.member_id, now)):
        take = min(remaining, need - covered)
        plan.append((lot_id, take))
        covered += take
        if covered == need:
            break
    if covered < need:
        raise Insufficient(covered, need)
    entry = _entry(session, account, cmd, body_hash, now)
    for lot_id, take in plan:
        # Relative and guarded: even a writer that skipped the account lock could not overdraw a lot.
        done = session.execute(update(PointsLot).where(PointsLot.id == lot_id, PointsLot.remaining >= take)
                               .values(remaining=PointsLot.remaining - take))
        if done.rowcount != 1:
            raise Conflict("a points lot changed underneath this debit; retry", code="points.retry")
    session.execute(insert(PointsAllocation), [{"entry_id": entry.id, "lot_id": lot_id, "amount": take}
                                               for lot_id, take in plan])
    return entry


@dataclass
class Summary:
    balance: int
    available: int
    pending: int
    expiring: list[tuple[dt.datetime, int]]


def summary(session: Session, member_id: int, *, now: dt.datetime | None = None,
            within: dt.timedelta = dt.timedelta(days=90)) -> Summary:
    """Balance (Σ entries), available (spendable now), pending (not yet usable) and what expires
    within `within`, grouped by expiry time."""
    now = now or utcnow()
    balance = session.scalar(select(PointsAccount.balance).where(PointsAccount.member_id == member_id)) or 0
    available = session.scalar(select(func.coalesce(func.sum(spendable(member_id, now).subquery().c.remaining), 0)))
    pending = session.scalar(select(func.coalesce(func.sum(PointsLot.remaining), 0)).where(
        PointsLot.member_id == member_id, PointsLot.remaining > 0, PointsLot.pending_until > now,
        (PointsLot.expires_at.is_(None)) | (PointsLot.expires_at > now)))
    expiring = session.execute(
        select(PointsLot.expires_at, func.sum(PointsLot.remaining))
        .where(PointsLot.member_id == member_id, PointsLot.remaining > 0, PointsLot.expires_at > now,
               PointsLot.expires_at <= now + within)
        .group_by(PointsLot.expires_at).order_by(PointsLot.expires_at)).all()
    return Summary(int(balance), int(available), int(pending), [(at, int(n)) for at, n in expiring])
