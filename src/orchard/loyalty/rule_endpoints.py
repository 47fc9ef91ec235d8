"""Earning-rule routes: list, create, replace, and the dry run that explains what a cart earns."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path

from orchard.auth.roles import Perm
from orchard.config import get_settings
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.kit.clock import as_utc, utcnow
from orchard.loyalty import earning, policy, rulebook, tiers
from orchard.loyalty.rules import Cart, Line, evaluate_order
from orchard.loyalty.schemas import CartIn, DryRunRead, RuleIn, RuleOutcome, RuleRead
from orchard.members import scope

router = APIRouter(tags=["points rules"])
RuleId = Annotated[int, Path(ge=1, le=2**62)]


@router.get("/points/rules", response_model=list[RuleRead], operation_id="listEarningRules")
def list_rules(session: SessionDep, principal: Actor(Perm.members_read)) -> list[RuleRead]:
    return [RuleRead.model_validate(r) for r in rulebook.listing(session)]


@router.post("/points/rules", response_model=RuleRead, status_code=201, operation_id="createEarningRule")
def create_rule(body: RuleIn, session: SessionDep, principal: Actor(Perm.points_rules)) -> RuleRead:
    return RuleRead.model_validate(rulebook.create(session, body, actor=principal.actor))


@router.get("/points/rules/{rule_id}", response_model=RuleRead, operation_id="getEarningRule")
def get_rule(rule_id: RuleId, session: SessionDep, principal: Actor(Perm.members_read)) -> RuleRead:
    return RuleRead.model_validate(rulebook.get(session, rule_id))


@router.put("/points/rules/{rule_id}", response_model=RuleRead, operation_id="replaceEarningRule")
def replace_rule(rule_id: RuleId, body: RuleIn, session: SessionDep, principal: Actor(Perm.points_rules)) -> RuleRead:
    """Replace a rule (its kind stays). Earning from now on uses the new version; to retire a rule,
    set `status` to inactive or give `ends_at`."""
    return RuleRead.model_validate(rulebook.replace(session, rule_id, body, actor=principal.actor))


@router.post("/points/rules/dry-run", response_model=DryRunRead, operation_id="dryRunEarningRules")
def dry_run(body: CartIn, session: SessionDep, principal: Actor(Perm.members_read)) -> DryRunRead:
    """What this cart would earn now (or at `paid_at`), rule by rule, with each rule's arithmetic.
    Nothing is written."""
    if not body.lines and body.amount_fen is None:
        raise InvalidInput.field("amount_fen", "give amount_fen or lines")
    numbers = [ln.line_no for ln in body.lines if ln.line_no is not None]
    if len(set(numbers)) != len(numbers) or (numbers and len(numbers) != len(body.lines)):
        raise InvalidInput.field("lines", "give every line a distinct line_no, or none")
    lines = [Line(ln.line_no or i, ln.amount_fen, ln.category, ln.sku) for i, ln in enumerate(body.lines, start=1)]
    amount = body.amount_fen if body.amount_fen is not None else sum(ln.amount_fen for ln in lines)
    paid_at = as_utc(body.paid_at) if body.paid_at else utcnow()
    birthday, tier, caps, growth_caps = body.birthday, body.tier, None, None
    if body.member_id is not None:
        member = scope.get_visible(session, principal, body.member_id)
        birthday = birthday or member.birthday
        tier = tier or tiers.effective_code(session, member.id)
        caps, growth_caps = earning.caps_used(session, member.id), earning.caps_used(session, member.id, "growth")
    cart = Cart(paid_at=paid_at, amount_fen=amount, lines=lines, store=body.store_code, channel=body.channel,
                birthday=birthday, tier=tier)
    rules = earning.load_rules(session)
    outcomes = evaluate_order(cart, [r for r in rules if r.target == "points"], caps)
    grown = evaluate_order(cart, [r for r in rules if r.target == "growth"], growth_caps)
    days = get_settings().points_order_pending_days
    return DryRunRead(total=sum(o.points for o in outcomes), paid_at=paid_at, amount_fen=amount,
                      expires_at=policy.expires_at(paid_at),
                      pending_until=paid_at + dt.timedelta(days=days) if days else None,
                      rules=[RuleOutcome(**o.as_json()) for o in outcomes],
                      growth_total=sum(o.points for o in grown),
                      growth_rules=[RuleOutcome(**o.as_json()) for o in grown],
                      tier=tier)
