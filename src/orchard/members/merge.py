"""Merging member B into member A (SPEC M3), in one transaction.

Moves identities, orders, refunds, events, notes, coupons, tags, consents and consent history to A with a
handful of set-based UPDATE/INSERT statements, and B's points as ledger transfers (lots keep their
expiry; B's history stays B's); fills A's empty profile fields from B; leaves a merge
record and an audit row; marks B merged with `merged_into_id = A` (and re-points anyone already
merged into B), so B's id resolves to A everywhere. Rows are locked in id order (deadlock-free).
"""

from __future__ import annotations

from sqlalchemy import and_, delete, insert, literal, select, update
from sqlalchemy.orm import Session, aliased

from orchard.audit import service as audit
from orchard.auth.service import Principal
from orchard.coupons.models import Coupon
from orchard.errors import Conflict, InvalidInput
from orchard.events import aggregates
from orchard.events.models import Event, Order, Refund
from orchard.identity.models import Identity
from orchard.kit.clock import utcnow
from orchard.loyalty import growth, ledger, tiers
from orchard.loyalty.models import PointsAward
from orchard.members import scope
from orchard.members.models import (
    Consent,
    ConsentChange,
    Member,
    MemberAggregate,
    MemberMerge,
    MemberNote,
    MemberTag,
    MergeCandidate,
)
from orchard.segments import dirty

_FILLABLE = ("name", "birthday", "region", "source_channel", "home_store_id")


def merge(session: Session, *, principal: Principal, survivor_id: int, merged_id: int, reason: str) -> MemberMerge:
    a = scope.get_visible(session, principal, survivor_id)
    b = scope.get_visible(session, principal, merged_id)
    if a.id == b.id:
        raise InvalidInput.field("merge_id", "cannot merge a member into itself (or it is already merged into it)")
    for m in sorted((a, b), key=lambda m: m.id):
        session.refresh(m, with_for_update=True)
    if a.status != "active" or b.status != "active":
        raise Conflict("one of the members is no longer active", code="member.not_active")

    moved = {}
    for model, label in ((Identity, "identities"), (Order, "orders"), (Refund, "refunds"), (Event, "events"),
                         (MemberNote, "notes"), (ConsentChange, "consent_changes"), (Coupon, "coupons")):
        moved[label] = session.execute(
            update(model).where(model.member_id == b.id).values(member_id=a.id)).rowcount or 0
    moved["tags"] = _move_tags(session, a.id, b.id)
    moved["consents"] = _move_consents(session, a.id, b.id)

    for col in _FILLABLE:
        if getattr(a, col) is None and getattr(b, col) is not None:
            setattr(a, col, getattr(b, col))
    if a.gender == "unknown" and b.gender != "unknown":
        a.gender = b.gender
    a.attributes = {**(b.attributes or {}), **(a.attributes or {})}
    a.joined_at = min(a.joined_at, b.joined_at)
    a.reduce_disturbance = a.reduce_disturbance or b.reduce_disturbance
    a.updated_at = utcnow()
    b.status, b.merged_into_id, b.updated_at = "merged", a.id, utcnow()
    session.execute(update(Member).where(Member.merged_into_id == b.id).values(merged_into_id=a.id))
    session.flush()

    moved["points"] = ledger.transfer_all(session, from_id=b.id, to_id=a.id, tag=f"{a.id}<-{b.id}",
                                          actor=principal.actor)
    session.execute(update(PointsAward).where(PointsAward.member_id == b.id).values(member_id=a.id))
    moved["growth"] = growth.move(session, from_id=b.id, to_id=a.id)
    _settle_candidates(session, a.id, b.id)
    dirty.mark(session, [a.id, b.id])  # the survivor's data changed; the merged one leaves every segment
    session.execute(delete(MemberAggregate).where(MemberAggregate.member_id == b.id))
    aggregates.recompute(session, member_id=a.id)
    tiers.on_activity(session, a.id)  # the survivor's metric now includes B's orders and growth

    record = MemberMerge(survivor_id=a.id, merged_id=b.id, actor=principal.actor, reason=reason, moved=moved)
    session.add(record)
    audit.record(session, actor=principal.actor, action="member.merged", entity="member", entity_id=a.id,
                 data={"merged_id": b.id, "reason": reason, "moved": moved})
    session.flush()
    return record


def _move_tags(session: Session, a: int, b: int) -> int:
    """B's tags move to A with their source: a rule's assignment stays the rule's (its refresh removes
    it when the survivor no longer qualifies), a manual or imported one stays protected from refreshes.
    A tag both carry keeps A's assignment, unless only B's is protected: then B's is kept."""
    theirs = aliased(MemberTag)
    protected = select(theirs.tag_id).where(theirs.member_id == b, theirs.tag_id == MemberTag.tag_id,
                                            theirs.source != "rule")
    session.execute(update(MemberTag).where(MemberTag.member_id == a, MemberTag.source == "rule",
                                            protected.exists()).values(
        {column: protected.with_only_columns(getattr(theirs, column)).scalar_subquery()
         for column in ("source", "added_by", "added_at")}))
    mine = select(MemberTag.tag_id).where(MemberTag.member_id == a)
    n = session.execute(insert(MemberTag).from_select(
        ["member_id", "tag_id", "source", "added_by", "added_at"],
        select(literal(a), MemberTag.tag_id, MemberTag.source, MemberTag.added_by, MemberTag.added_at)
        .where(MemberTag.member_id == b, MemberTag.tag_id.not_in(mine)))).rowcount or 0
    session.execute(delete(MemberTag).where(MemberTag.member_id == b))
    return n


def _move_consents(session: Session, a: int, b: int) -> int:
    """For each (channel, purpose) keep the most recently updated decision of the two members."""
    ca, cb = aliased(Consent), aliased(Consent)
    newer_in_b = select(cb.member_id).where(cb.member_id == b, cb.channel == Consent.channel,
                                            cb.purpose == Consent.purpose, cb.updated_at > Consent.updated_at).exists()
    session.execute(delete(Consent).where(Consent.member_id == a, newer_in_b))
    a_has = select(ca.member_id).where(ca.member_id == a, ca.channel == Consent.channel,
                                       ca.purpose == Consent.purpose).exists()
    n = session.execute(update(Consent).where(Consent.member_id == b, ~a_has).values(member_id=a)).rowcount or 0
    session.execute(delete(Consent).where(Consent.member_id == b))
    return n


def _settle_candidates(session: Session, a: int, b: int) -> None:
    """The A–B pair becomes 'merged'; B's pairs with third members are re-pointed at A."""
    lo, hi = sorted((a, b))
    session.execute(update(MergeCandidate).where(MergeCandidate.member_a_id == lo, MergeCandidate.member_b_id == hi)
                    .values(status="merged"))
    others = session.scalars(select(MergeCandidate).where(
        and_(MergeCandidate.status == "open",
             (MergeCandidate.member_a_id == b) | (MergeCandidate.member_b_id == b)))).all()
    from orchard.members import candidates

    for c in others:  # a member has a handful of candidate pairs, never a table's worth
        other = c.member_b_id if c.member_a_id == b else c.member_a_id
        c.status = "merged"
        if other != a:
            candidates.record(session, a=a, b=other, reason=c.reason, evidence=c.evidence or {})
    session.flush()
