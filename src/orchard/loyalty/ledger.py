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
from orchard.segments import dirty

MAX_POINTS = 10**12
#: A lot waiting for an event is pending "until then": far enough to never come by itself.
PENDING_EVENT_UNTIL = dt.datetime(2999, 12, 31, tzinfo=dt.UTC)


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
    order_id: int | None = None
    #: When the points were earned (an order's paid_at); default: now.
    earned_at: dt.datetime | None = None
    #: The credit's lot waits for this event of its order (loyalty.earning).
    pending_event: str | None = None
    #: A debit the lots cannot cover: "refuse" (409 points.insufficient), "debt" (the rest becomes
    #: debt the next credits repay) or "cap" (move what there is; the caller records the shortfall).
    on_short: str = "refuse"
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


def post(session: Session, cmd: Command, *, now: dt.datetime | None = None) -> tuple[PointsEntry | None, bool]:
    """Apply `cmd` once. Returns (entry, created): created is False for a replay. The entry is None
    only for a "cap" debit that found nothing to take."""
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
    if entry is None:
        return None, True
    audit.record(session, actor=cmd.actor, action=f"points.{cmd.kind}", entity="member", entity_id=cmd.member_id,
                 data={"entry_id": entry.id, "amount": entry.amount, "reason": cmd.reason, "source": cmd.source,
                       "external_id": cmd.external_id})
    dirty.mark(session, [cmd.member_id], at=now)  # segments on points balance re-check in real time
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
           amount: int | None = None, explanation: dict[str, Any] | None = None) -> PointsEntry:
    amount = cmd.amount if amount is None else amount
    account.balance += amount
    account.updated_at = now
    entry = PointsEntry(member_id=cmd.member_id, kind=cmd.kind, amount=amount,
                        balance_after=account.balance, reason=cmd.reason, source=cmd.source,
                        external_id=cmd.external_id, body_hash=body_hash, actor=cmd.actor,
                        explanation=explanation if explanation is not None else cmd.explanation or {},
                        store_id=cmd.store_id, order_id=cmd.order_id, created_at=now)
    session.add(entry)
    session.flush()
    return entry


def _credit(session: Session, account: PointsAccount, cmd: Command, body_hash: str, now: dt.datetime) -> PointsEntry:
    if cmd.expires_at is not None and cmd.expires_at <= now:
        raise InvalidInput.field("expires_at", "lies in the past: the points would expire before they are credited")
    entry = _entry(session, account, cmd, body_hash, now)
    lot = PointsLot(member_id=cmd.member_id, entry_id=entry.id, amount=cmd.amount, remaining=cmd.amount,
                    earned_at=cmd.earned_at or now, expires_at=cmd.expires_at,
                    pending_until=PENDING_EVENT_UNTIL if cmd.pending_event else cmd.pending_until,
                    pending_event=cmd.pending_event, store_id=cmd.store_id)
    session.add(lot)
    session.flush()
    if account.debt > 0:
        _repay(session, account, lot)
    return entry


def _repay(session: Session, account: PointsAccount, lot: PointsLot) -> None:
    """A credit repays debt first: the new lot pays the oldest debits that no lot paid yet, as late
    allocations of those debits, so every debit ends fully allocated. An expiry never owes (it takes
    only what lots hold) and is paid by the lots that name it, not by allocations: left out."""
    left = min(lot.remaining, account.debt)
    alloc = select(PointsAllocation.entry_id, func.sum(PointsAllocation.amount).label("paid")) \
        .group_by(PointsAllocation.entry_id).subquery()
    owed = session.execute(
        select(PointsEntry.id, -PointsEntry.amount - func.coalesce(alloc.c.paid, 0))
        .outerjoin(alloc, alloc.c.entry_id == PointsEntry.id)
        .where(PointsEntry.member_id == account.member_id, PointsEntry.amount < 0, PointsEntry.kind != "expire",
               -PointsEntry.amount > func.coalesce(alloc.c.paid, 0))
        .order_by(PointsEntry.id)).all()
    rows = []
    for entry_id, unpaid in owed:
        take = min(int(unpaid), left)
        if take <= 0:
            break
        rows.append({"entry_id": entry_id, "lot_id": lot.id, "amount": take})
        left -= take
    repaid = sum(r["amount"] for r in rows)
    if rows:
        session.execute(insert(PointsAllocation), rows)
        lot.remaining -= repaid
        account.debt -= repaid
        session.flush()


def spendable(member_id: int, now: dt.datetime):
    """The lots a debit may draw on, in the order it draws: soonest-expiring first, never-expiring
    last, oldest first among equals."""
    return (select(PointsLot.id, PointsLot.remaining)
            .where(PointsLot.member_id == member_id, PointsLot.remaining > 0,
                   (PointsLot.expires_at.is_(None)) | (PointsLot.expires_at > now),
                   (PointsLot.pending_until.is_(None)) | (PointsLot.pending_until <= now))
            .order_by(PointsLot.expires_at.is_(None), PointsLot.expires_at, PointsLot.id))


def _reversal_order(member_id: int, order_id: int | None, now: dt.datetime):
    """The lots a reversal takes back from: the order's own lot first, whatever its state (those are
    the very points being reversed), then the member's other unexpired lots, pending ones included,
    soonest-expiring first."""
    unexpired = PointsLot.expires_at.is_(None) | (PointsLot.expires_at > now)
    soonest = (PointsLot.expires_at.is_(None), PointsLot.expires_at, PointsLot.id)
    q = select(PointsLot.id, PointsLot.remaining).where(PointsLot.member_id == member_id, PointsLot.remaining > 0)
    if order_id is None:
        return q.where(unexpired).order_by(*soonest)
    is_own = PointsLot.entry_id.in_(select(PointsEntry.id).where(PointsEntry.order_id == order_id,
                                                                 PointsEntry.kind == "earn"))
    return q.where(is_own | unexpired).order_by(~is_own, *soonest)


def _debit(session: Session, account: PointsAccount, cmd: Command, body_hash: str,
           now: dt.datetime) -> PointsEntry | None:
    need = -cmd.amount
    plan, covered = [], 0
    lots = _reversal_order(cmd.member_id, cmd.order_id, now) if cmd.kind in ("reverse", "transfer") else \
        spendable(cmd.member_id, now)
    for lot_id, remaining in session.execute(lots):
        take = min(remaining, need - covered)
        plan.append((lot_id, take))
        covered += take
        if covered == need:
            break
    short = need - covered
    explanation = dict(cmd.explanation or {})
    if short and cmd.on_short == "refuse":
        raise Insufficient(covered, need)
    if short:
        explanation["shortfall"] = short
        explanation["on_short"] = cmd.on_short
    if short and cmd.on_short == "cap" and covered == 0:
        return None
    if short and cmd.on_short == "debt":
        account.debt += short  # before the entry flushes the balance: balance + debt ≥ 0 holds throughout
    entry = _entry(session, account, cmd, body_hash, now, amount=-covered if cmd.on_short == "cap" else cmd.amount,
                   explanation=explanation)
    for lot_id, take in plan:
        # Relative and guarded: even a writer that skipped the account lock could not overdraw a lot.
        done = session.execute(update(PointsLot).where(PointsLot.id == lot_id, PointsLot.remaining >= take)
                               .values(remaining=PointsLot.remaining - take))
        if done.rowcount != 1:
            raise Conflict("a points lot changed underneath this debit; retry", code="points.retry")
    if plan:
        session.execute(insert(PointsAllocation), [{"entry_id": entry.id, "lot_id": lot_id, "amount": take}
                                                   for lot_id, take in plan])
    return entry


def restore(session: Session, *, spend: PointsEntry, reason: str, actor: str,
            now: dt.datetime | None = None) -> tuple[PointsEntry, bool]:
    """Cancel a redemption: its points go back to the lots they came from (with those lots' own
    expiry: points restored into a lot that has expired meanwhile are expired by the next pass).
    Once per spend: a repeat returns the first restore."""
    if spend.kind != "spend":
        raise InvalidInput.field("external_id", f"entry {spend.id} is a {spend.kind}, only a spend can be cancelled")
    now = now or utcnow()
    cmd = Command(member_id=spend.member_id, amount=-spend.amount, kind="restore", reason=reason,
                  source="restore", external_id=str(spend.id), actor=actor, store_id=spend.store_id,
                  explanation={"spend_entry_id": spend.id, "spend_external_id": spend.external_id,
                               "spend_source": spend.source}, request={"spend": spend.id})
    body_hash = cmd.body_hash()
    if (prior := _replay(session, cmd, body_hash)) is not None:
        return prior, False
    with session.begin_nested():
        account = lock_account(session, spend.member_id)
        if (prior := _replay(session, cmd, body_hash)) is not None:
            return prior, False
        paid = session.execute(select(PointsAllocation.lot_id, PointsAllocation.amount)
                               .where(PointsAllocation.entry_id == spend.id)).all()
        entry = _entry(session, account, cmd, body_hash, now)
        for lot_id, amount in paid:
            done = session.execute(update(PointsLot).where(PointsLot.id == lot_id,
                                                           PointsLot.remaining + amount <= PointsLot.amount)
                                   .values(remaining=PointsLot.remaining + amount))
            if done.rowcount != 1:
                raise Conflict("a points lot would exceed its amount; the ledger needs `orchard points verify`",
                               code="points.inconsistent")
        session.execute(insert(PointsAllocation), [{"entry_id": entry.id, "lot_id": lot_id, "amount": -amount}
                                                   for lot_id, amount in paid])
        for lot_id, _ in paid:  # like any credit, a restore repays debt first
            if account.debt == 0:
                break
            lot = session.get(PointsLot, lot_id, populate_existing=True)
            _repay(session, account, lot)
    audit.record(session, actor=actor, action="points.restore", entity="member", entity_id=spend.member_id,
                 data={"entry_id": entry.id, "amount": entry.amount, "reason": reason, "spend_entry_id": spend.id})
    return entry, True


def debit_lots(session: Session, cmd: Command, lots: list[tuple[int, int]], *,
               now: dt.datetime | None = None) -> PointsEntry:
    """Debit exactly these (lot, points) — forfeiting held points, say — whatever their state."""
    now = now or utcnow()
    account = lock_account(session, cmd.member_id)
    entry = _entry(session, account, cmd, cmd.body_hash(), now)
    for lot_id, take in lots:
        done = session.execute(update(PointsLot).where(PointsLot.id == lot_id, PointsLot.member_id == cmd.member_id,
                                                       PointsLot.remaining >= take)
                               .values(remaining=PointsLot.remaining - take))
        if done.rowcount != 1:
            raise Conflict("a points lot changed underneath this debit; retry", code="points.retry")
    session.execute(insert(PointsAllocation), [{"entry_id": entry.id, "lot_id": lot_id, "amount": take}
                                               for lot_id, take in lots])
    audit.record(session, actor=cmd.actor, action=f"points.{cmd.kind}", entity="member", entity_id=cmd.member_id,
                 data={"entry_id": entry.id, "amount": entry.amount, "reason": cmd.reason, "source": cmd.source,
                       "external_id": cmd.external_id})
    return entry


def transfer_all(session: Session, *, from_id: int, to_id: int, tag: str, actor: str,
                 now: dt.datetime | None = None) -> int:
    """Move a member's points to another (a merge): each unexpired lot with points left becomes a lot
    of the survivor with the same expiry, pending time, store and earning time (a `transfer` out of
    one, a `transfer` in to the other), and any debt moves too. Lots already past expiry stay for the
    expiry pass. Returns the points moved."""
    if session.get(PointsAccount, from_id) is None:
        return 0
    now = now or utcnow()
    first, second = sorted((from_id, to_id))
    locked = {first: lock_account(session, first), second: lock_account(session, second)}
    src, dst = locked[from_id], locked[to_id]
    lots = session.scalars(select(PointsLot).where(
        PointsLot.member_id == from_id, PointsLot.remaining > 0,
        PointsLot.expires_at.is_(None) | (PointsLot.expires_at > now)).order_by(PointsLot.id)).all()
    moved = 0
    for lot in lots:
        n = lot.remaining
        out = Command(member_id=from_id, amount=-n, kind="transfer", reason=f"会员合并 转出至会员 {to_id}",
                      source="merge", external_id=f"{tag}:out:{lot.id}", actor=actor, store_id=lot.store_id,
                      explanation={"to_member_id": to_id, "lot_id": lot.id})
        entry = _entry(session, src, out, out.body_hash(), now)
        done = session.execute(update(PointsLot).where(PointsLot.id == lot.id, PointsLot.remaining == n)
                               .values(remaining=0))
        if done.rowcount != 1:
            raise Conflict("a points lot changed underneath a merge; retry", code="points.retry")
        session.execute(insert(PointsAllocation), [{"entry_id": entry.id, "lot_id": lot.id, "amount": n}])
        into = Command(member_id=to_id, amount=n, kind="transfer", reason=f"会员合并 转入自会员 {from_id}",
                       source="merge", external_id=f"{tag}:in:{lot.id}", actor=actor, store_id=lot.store_id,
                       expires_at=lot.expires_at, pending_until=lot.pending_until, earned_at=lot.earned_at,
                       pending_event=lot.pending_event,
                       explanation={"from_member_id": from_id, "lot_id": lot.id})
        _credit(session, dst, into, into.body_hash(), now)
        moved += n
    if src.debt:
        owed = src.debt
        # The merged member's debt is settled by a transfer credit (which repays it at once) and
        # becomes the survivor's: taken from its lots, the rest owed.
        settle = Command(member_id=from_id, amount=owed, kind="transfer", reason=f"会员合并 欠分转至会员 {to_id}",
                         source="merge", external_id=f"{tag}:debt-out", actor=actor,
                         explanation={"to_member_id": to_id, "debt": owed})
        _credit(session, src, settle, settle.body_hash(), now)
        take = Command(member_id=to_id, amount=-owed, kind="transfer", reason=f"会员合并 承接会员 {from_id} 欠分",
                       source="merge", external_id=f"{tag}:debt-in", actor=actor, on_short="debt",
                       explanation={"from_member_id": from_id, "debt": owed})
        _debit(session, dst, take, take.body_hash(), now)
    session.flush()
    return moved


@dataclass
class Summary:
    balance: int
    available: int
    pending: int
    expiring: list[tuple[dt.datetime, int]]
    debt: int = 0


def summary(session: Session, member_id: int, *, now: dt.datetime | None = None,
            within: dt.timedelta = dt.timedelta(days=90)) -> Summary:
    """Balance (Σ entries), available (spendable now), pending (not yet usable) and what expires
    within `within`, grouped by expiry time."""
    now = now or utcnow()
    account = session.execute(select(PointsAccount.balance, PointsAccount.debt)
                              .where(PointsAccount.member_id == member_id)).first()
    balance, debt = account if account is not None else (0, 0)
    available = session.scalar(select(func.coalesce(func.sum(spendable(member_id, now).subquery().c.remaining), 0)))
    pending = session.scalar(select(func.coalesce(func.sum(PointsLot.remaining), 0)).where(
        PointsLot.member_id == member_id, PointsLot.remaining > 0, PointsLot.pending_until > now,
        (PointsLot.expires_at.is_(None)) | (PointsLot.expires_at > now)))
    expiring = session.execute(
        select(PointsLot.expires_at, func.sum(PointsLot.remaining))
        .where(PointsLot.member_id == member_id, PointsLot.remaining > 0, PointsLot.expires_at > now,
               PointsLot.expires_at <= now + within)
        .group_by(PointsLot.expires_at).order_by(PointsLot.expires_at)).all()
    return Summary(int(balance), int(available), int(pending), [(at, int(n)) for at, n in expiring], int(debt))
