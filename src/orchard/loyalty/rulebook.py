"""Managing earning rules: validated configs, known store codes, audited edits.

Rules are never deleted (awards point at them and explanations name them): an operator sets a rule
inactive or ends it with `ends_at`. An edit applies to earning from then on; what was earned keeps
the explanation it was computed with.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.errors import InvalidInput, NotFound, validation_errors
from orchard.kit.clock import as_utc, utcnow
from orchard.loyalty.models import EarningRule
from orchard.loyalty.rules import CONFIGS
from orchard.loyalty.schemas import RuleIn
from orchard.org.models import OrgUnit


def checked_config(session: Session, body: RuleIn) -> dict[str, Any]:
    """The rule's config, validated for its kind (errors name `config.<path>`), in canonical JSON."""
    try:
        config = CONFIGS[body.kind].model_validate(body.config)
    except ValidationError as exc:
        errors = validation_errors([{**e, "loc": ("body", "config", *e["loc"])} for e in exc.errors()])
        raise InvalidInput("; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]), errors=errors) from None
    for key in ("stores", "exclude_stores"):
        codes = getattr(config, key, None) or []
        known = set(session.scalars(select(OrgUnit.code).where(OrgUnit.code.in_(codes)))) if codes else set()
        for i, code in enumerate(codes):
            if code not in known:
                raise InvalidInput.field(f"config.{key}[{i}]", f"unknown store code {code!r}")
    if body.starts_at and body.ends_at and as_utc(body.starts_at) >= as_utc(body.ends_at):
        raise InvalidInput.field("ends_at", "must be after starts_at")
    return config.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def create(session: Session, body: RuleIn, *, actor: str) -> EarningRule:
    config = checked_config(session, body)
    now = utcnow()
    rule = EarningRule(name=body.name, kind=body.kind, target=body.target, status=body.status,
                       priority=body.priority,
                       stop_further=body.stop_further, starts_at=as_utc(body.starts_at) if body.starts_at else None,
                       ends_at=as_utc(body.ends_at) if body.ends_at else None, config=config, created_by=actor,
                       created_at=now, updated_at=now)
    session.add(rule)
    session.flush()
    audit.record(session, actor=actor, action="points_rule.created", entity="earning_rule", entity_id=rule.id,
                 data={"rule": _snapshot(rule)})
    return rule


def replace(session: Session, rule_id: int, body: RuleIn, *, actor: str) -> EarningRule:
    rule = get(session, rule_id, lock=True)
    if body.kind != rule.kind:
        raise InvalidInput.field("kind", f"a rule keeps its kind ({rule.kind}); create a new rule instead")
    config = checked_config(session, body)
    before = _snapshot(rule)
    rule.name, rule.status, rule.priority, rule.stop_further = body.name, body.status, body.priority, body.stop_further
    rule.target = body.target
    rule.starts_at = as_utc(body.starts_at) if body.starts_at else None
    rule.ends_at = as_utc(body.ends_at) if body.ends_at else None
    rule.config, rule.updated_at = config, utcnow()
    session.flush()
    audit.record(session, actor=actor, action="points_rule.updated", entity="earning_rule", entity_id=rule.id,
                 data={"before": before, "after": _snapshot(rule)})
    return rule


def get(session: Session, rule_id: int, *, lock: bool = False) -> EarningRule:
    stmt = select(EarningRule).where(EarningRule.id == rule_id)
    rule = session.scalar(stmt.with_for_update() if lock else stmt)
    if rule is None:
        raise NotFound(f"no earning rule {rule_id}")
    return rule


def by_name(session: Session, name: str) -> EarningRule | None:
    return session.scalar(select(EarningRule).where(EarningRule.name == name).order_by(EarningRule.id).limit(1))


def listing(session: Session) -> list[EarningRule]:
    return list(session.scalars(select(EarningRule).order_by(EarningRule.kind, EarningRule.priority.desc(),
                                                             EarningRule.id)))


def _snapshot(rule: EarningRule) -> dict[str, Any]:
    return {"name": rule.name, "kind": rule.kind, "target": rule.target, "status": rule.status,
            "priority": rule.priority,
            "stop_further": rule.stop_further, "starts_at": rule.starts_at.isoformat() if rule.starts_at else None,
            "ends_at": rule.ends_at.isoformat() if rule.ends_at else None, "config": rule.config}
