"""The benefit library (SPEC B3, B4): HQ defines benefits; a store may add its own, up to a share of
what a member sees that HQ sets (e.g. 20 %), so local perks never crowd out the brand's.

The share is checked per tier when a store benefit is added or re-activated: for every tier it is
for, the store's active benefits for that tier, this one included, may be at most
`store_share_max_pct` % of all the benefits a member of that tier at that store would see (HQ's and
the store's). A member sees HQ's benefits and their home store's, for their effective tier.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.loyalty import tiers
from orchard.loyalty.models import Benefit, BenefitPolicy, TierLevel
from orchard.members.models import Member

DEFAULT_SHARE_PCT = 20


def share_pct(session: Session) -> int:
    policy = session.get(BenefitPolicy, 1)
    return policy.store_share_max_pct if policy else DEFAULT_SHARE_PCT


def set_share(session: Session, pct: int, *, actor: str) -> int:
    policy = session.get(BenefitPolicy, 1, with_for_update=True)
    before = policy.store_share_max_pct if policy else None
    if policy is None:
        policy = BenefitPolicy(id=1)
        session.add(policy)
    policy.store_share_max_pct, policy.updated_by, policy.updated_at = pct, actor, utcnow()
    session.flush()
    audit.record(session, actor=actor, action="benefits.policy_set", entity="benefit_policy", entity_id=1,
                 data={"before": before, "after": pct})
    return pct


def _visible(session: Session, store_id: int | None, tier: str | None) -> list[Benefit]:
    q = select(Benefit).where(Benefit.active.is_(True))
    q = q.where(Benefit.owner_store_id.is_(None) | (Benefit.owner_store_id == store_id)) if store_id else \
        q.where(Benefit.owner_store_id.is_(None))
    return [b for b in session.scalars(q.order_by(Benefit.owner_store_id.is_(None).desc(), Benefit.id))
            if not b.tier_codes or tier is None or tier in b.tier_codes]


def _check_share(session: Session, benefit: Benefit) -> None:
    if benefit.owner_store_id is None:
        return
    pct = share_pct(session)
    codes = benefit.tier_codes or [lv.code for lv in tiers.levels(session)] or [None]
    for code in codes:
        seen = [b for b in _visible(session, benefit.owner_store_id, code) if b.id != benefit.id] + [benefit]
        own = sum(1 for b in seen if b.owner_store_id == benefit.owner_store_id)
        if own * 100 > pct * len(seen):
            raise Conflict(f"store benefits for tier {code or 'all'} would be {own} of {len(seen)}, above the "
                           f"{pct}% HQ allows", code="benefit.store_share", tier=code, allowed_pct=pct)


def create(session: Session, body: Any, *, store_id: int | None, actor: str) -> Benefit:
    if session.scalar(select(Benefit.id).where(Benefit.code == body.code)) is not None:
        raise Conflict(f"benefit code {body.code!r} is taken", code="benefit.code_taken")
    known = {lv.code for lv in session.scalars(select(TierLevel))}
    for i, code in enumerate(body.tier_codes):
        if code not in known:
            raise InvalidInput.field(f"tier_codes[{i}]", f"unknown tier level {code!r}")
    b = Benefit(code=body.code, name=body.name, kind=body.kind, monetary=body.monetary, description=body.description,
                owner_store_id=store_id, tier_codes=list(body.tier_codes), active=True, created_by=actor,
                created_at=utcnow())
    session.add(b)
    session.flush()
    _check_share(session, b)
    audit.record(session, actor=actor, action="benefit.created", entity="benefit", entity_id=b.id,
                 data={"code": b.code, "store_id": store_id, "tiers": b.tier_codes})
    return b


def set_active(session: Session, benefit_id: int, active: bool, *, store_ids: set[int] | None,
               actor: str) -> Benefit:
    b = session.get(Benefit, benefit_id, with_for_update=True)
    if b is None or (store_ids is not None and b.owner_store_id not in store_ids):
        raise NotFound(f"no benefit {benefit_id}")
    b.active = active
    session.flush()
    if active:
        _check_share(session, b)
    audit.record(session, actor=actor, action="benefit.activated" if active else "benefit.deactivated",
                 entity="benefit", entity_id=b.id, data={})
    return b


def listing(session: Session, *, store_ids: set[int] | None) -> list[Benefit]:
    q = select(Benefit).order_by(Benefit.owner_store_id.is_(None).desc(), Benefit.id)
    rows = list(session.scalars(q))
    return rows if store_ids is None else [b for b in rows if b.owner_store_id is None or b.owner_store_id in store_ids]


def for_member(session: Session, member: Member) -> tuple[str | None, list[Benefit]]:
    tier = tiers.effective_code(session, member.id) if tiers.program(session) else None
    return tier, _visible(session, member.home_store_id, tier)
