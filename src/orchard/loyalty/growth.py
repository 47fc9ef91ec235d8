"""成长值 growth value (SPEC L5): fed by its own earning rules (target "growth"), reversed by
refunds, never spent; tiers read it over their period.

Growth is posted as one `growth_entries` row per rule and order line (the award itself; rows are
never changed, except that a merge hands the merged member's rows to the survivor), dated at
the order's paid_at — a reversal too — so "growth in the last 12 months" sums exactly the orders
paid in those months, net of their refunds. The account row caches Σ entries.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.errors import Conflict, InvalidInput
from orchard.kit.clock import utcnow
from orchard.loyalty.models import GrowthAccount, GrowthEntry


def post(session: Session, member_id: int, rows: list[dict[str, Any]], *, now: dt.datetime | None = None) -> int:
    """Append growth rows (each with kind, amount, rule_id, order_id, line_no, refund_id, source,
    reason, actor, explanation, occurred_at) and move the balance by their sum."""
    rows = [r for r in rows if r["amount"]]
    if not rows:
        return 0
    now = now or utcnow()
    total = sum(r["amount"] for r in rows)
    _bump(session, member_id, total, now)
    session.execute(insert(GrowthEntry), [{"external_id": None, "created_at": now, **r, "member_id": member_id}
                                         for r in rows])
    audit.record(session, actor=rows[0]["actor"], action="growth.post", entity="member", entity_id=member_id,
                 data={"amount": total, "source": rows[0]["source"], "order_id": rows[0].get("order_id")})
    return total


def _bump(session: Session, member_id: int, amount: int, now: dt.datetime) -> None:
    done = session.execute(update(GrowthAccount).where(GrowthAccount.member_id == member_id)
                           .values(balance=GrowthAccount.balance + amount, updated_at=now))
    if done.rowcount:
        return
    try:
        with session.begin_nested():
            session.add(GrowthAccount(member_id=member_id, balance=amount, updated_at=now))
            session.flush()
    except IntegrityError:  # created concurrently (or a negative first posting: the CHECK refuses it)
        done = session.execute(update(GrowthAccount).where(GrowthAccount.member_id == member_id)
                               .values(balance=GrowthAccount.balance + amount, updated_at=now))
        if not done.rowcount:
            raise


def adjust(session: Session, *, member_id: int, amount: int, reason: str, source: str, external_id: str,
           actor: str, now: dt.datetime | None = None) -> tuple[GrowthEntry, bool]:
    """A manual correction, idempotent on (source, external_id); never below zero."""
    if amount == 0:
        raise InvalidInput.field("amount", "must not be 0")
    prior = session.scalar(select(GrowthEntry).where(GrowthEntry.source == source,
                                                     GrowthEntry.external_id == external_id))
    if prior is not None:
        if (prior.member_id, prior.amount, prior.reason) != (member_id, amount, reason):
            raise Conflict(f"growth adjustment {source}/{external_id} was already received with another body",
                           code="growth.id_reused")
        return prior, False
    now = now or utcnow()
    balance = session.scalar(select(GrowthAccount.balance).where(GrowthAccount.member_id == member_id)
                             .with_for_update()) or 0
    if balance + amount < 0:
        raise Conflict(f"growth value is {balance}; it cannot go below zero", code="growth.insufficient",
                       balance=balance)
    _bump(session, member_id, amount, now)
    entry = GrowthEntry(member_id=member_id, kind="adjust", amount=amount, source=source, external_id=external_id,
                        reason=reason, actor=actor, explanation={}, occurred_at=now, created_at=now)
    session.add(entry)
    session.flush()
    audit.record(session, actor=actor, action="growth.adjust", entity="member", entity_id=member_id,
                 data={"entry_id": entry.id, "amount": amount, "reason": reason})
    return entry, True


def move(session: Session, *, from_id: int, to_id: int) -> int:
    """A merge: the merged member's growth rows become the survivor's, keeping their dates (so tier
    windows count them where they happened); both balances are recomputed from the rows."""
    moved = session.execute(update(GrowthEntry).where(GrowthEntry.member_id == from_id)
                            .values(member_id=to_id)).rowcount or 0
    if moved:
        now = utcnow()
        for member_id in sorted((from_id, to_id)):
            total = session.scalar(select(func.coalesce(func.sum(GrowthEntry.amount), 0))
                                   .where(GrowthEntry.member_id == member_id))
            done = session.execute(update(GrowthAccount).where(GrowthAccount.member_id == member_id)
                                   .values(balance=total, updated_at=now))
            if not done.rowcount and total:
                session.add(GrowthAccount(member_id=member_id, balance=total, updated_at=now))
        session.flush()
    return moved


def balance(session: Session, member_id: int) -> int:
    return int(session.scalar(select(GrowthAccount.balance).where(GrowthAccount.member_id == member_id)) or 0)
