"""Apply mapped tracking messages, each in its own savepoint: a rejected message rolls back what it
wrote and never blocks the others.

Orders, refunds and events go through `orchard.events.ingest.ingest` ((source, external_id)
idempotency). Identify and alias resolve identities here: identify fills only the member's empty
profile fields and attribute keys not yet set, so a replayed (or an older) identify never overwrites
anything. A message without any time is stamped with the server clock; when an item with its key
already exists, the first receipt wins and the message is a duplicate (its body differs only by that
clock, so it must not be a 409).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import InvalidInput, OrchardError
from orchard.events import ingest
from orchard.events.members_ref import new_member_profile
from orchard.events.models import Event, Order, Refund
from orchard.events.schemas import Outcome
from orchard.identity import resolve as identity_resolve
from orchard.identity.models import Identity
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.kit.clock import utcnow
from orchard.members import scope
from orchard.members.models import Member
from orchard.members.service import fill_blanks
from orchard.tracking import mapping
from orchard.tracking.mapping import SOURCE, Alias, Identify, Ignore, Ingest, Mapped
from orchard.tracking.schemas import MessageResult, TrackingResult

log = logging.getLogger("orchard.tracking")
_MODELS: dict[str, type] = {"order": Order, "refund": Refund, "event": Event}
_INTERNAL = {"type": "https://orchard.dev/problems/internal", "title": "内部错误", "status": 500,
             "detail": "internal error while applying this message", "code": "internal"}


def process(session: Session, *, principal: Principal, messages: list[Any], context: dict[str, Any] | None = None,
            type_: str | None = None, raise_errors: bool = False) -> TrackingResult:
    """Map and apply every message. With `raise_errors` (single-message routes) a rejected message
    raises its error instead of being reported in the results."""
    now = utcnow()
    results = []
    for index, raw in enumerate(messages):
        try:
            mapped = mapping.map_message(raw, now=now, context=context, type_=type_)
            with session.begin_nested():
                results.append(apply(session, principal=principal, mapped=mapped, index=index))
        except OrchardError as exc:
            if raise_errors:
                raise
            results.append(_rejected(index, raw, type_, exc.to_problem()))
        except Exception:
            if raise_errors:
                raise
            log.exception("tracking message %d could not be applied", index)
            results.append(_rejected(index, raw, type_, dict(_INTERNAL)))
    accepted = sum(r.ok for r in results)
    return TrackingResult(accepted=accepted, rejected=len(results) - accepted, results=results)


def _rejected(index: int, raw: Any, type_: str | None, problem: dict[str, Any]) -> MessageResult:
    message_id = kind = None
    if isinstance(raw, dict):
        value = raw.get("messageId")
        message_id = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
        kind = type_ or (raw.get("type") if isinstance(raw.get("type"), str) else None)
    return MessageResult(index=index, messageId=message_id, type=kind, ok=False, error=problem)


def apply(session: Session, *, principal: Principal, mapped: Mapped, index: int = 0) -> MessageResult:
    action = mapped.action
    result = MessageResult(index=index, messageId=mapped.message_id, type=mapped.type, ok=True,
                           warnings=list(mapped.warnings))
    if isinstance(action, Ignore):
        result.status, result.detail = "ignored", action.reason
    elif isinstance(action, Ingest):
        outcome = ingest_item(session, principal=principal, item=action)
        result.status, result.kind, result.id = outcome.status, outcome.type, outcome.id
        result.member_id, result.member_created = outcome.member_id, outcome.member_created
    elif isinstance(action, Identify):
        member_id, status = identify(session, principal=principal, item=action, warnings=result.warnings)
        result.status, result.kind, result.id, result.member_id = status, "member", member_id, member_id
        result.member_created = status == "created"
        if member_id is None:
            result.detail = "no member: an anonymous id alone does not create one; send a userId, phone or email"
    elif isinstance(action, Alias):
        member_id, status = alias(session, principal=principal, item=action, warnings=result.warnings)
        result.status, result.kind, result.id, result.member_id = status, "member", member_id, member_id
        result.member_created = status == "created"
    return result


def ingest_item(session: Session, *, principal: Principal, item: Ingest) -> Outcome:
    data = item.data
    if item.kind == "order" and not data.member.identities and data.member.anonymous_id is not None:
        known = session.scalar(select(Identity.member_id).where(Identity.kind == "anonymous_id",
                                                                Identity.value == data.member.anonymous_id))
        if known is None:
            raise InvalidInput.field("userId", "an order needs a member: send a userId or context.traits phone or "
                                               "email, or identify this anonymousId first")
    if item.clock_time:
        model = _MODELS[item.kind]
        prior = session.scalar(select(model).where(model.source == data.source,
                                                   model.external_id == data.external_id))
        if prior is not None:
            return Outcome(type=item.kind, status="duplicate", id=prior.id, member_id=prior.member_id)
    return ingest.ingest(session, principal=principal, kind=item.kind, data=data)


def _keys(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    keys = []
    for kind, value in pairs:
        try:
            keys.append(normalize(kind, value))
        except InvalidIdentity as exc:
            raise InvalidInput.field(kind, exc.reason) from None
    return keys


def _visible_member(session: Session, principal: Principal, member_id: int) -> Member:
    member = session.get_one(Member, member_id)
    if not scope.can_see(principal, member):
        raise InvalidInput.field("userId", "this member belongs to a store outside your scope")
    return member


def _conflicts(principal: Principal, res: identity_resolve.Resolution, warnings: list[str]) -> None:
    """Called only after the scope check; store-scoped callers are not told other members' ids."""
    if res.conflicts:
        ids = f" {res.conflicts}" if principal.store_ids is None else ""
        warnings.append(f"some keys belong to other members{ids}: merge candidates recorded, nothing merged")


def identify(session: Session, *, principal: Principal, item: Identify,
             warnings: list[str]) -> tuple[int | None, str]:
    """(member id, created | updated | unchanged | no_member)."""
    keys = _keys(list(item.identities.items()))
    if item.anonymous_id is not None:
        keys.append(("anonymous_id", item.anonymous_id))
    joined = min(item.occurred_at, utcnow())
    res = identity_resolve.resolve(session, keys=keys, source=SOURCE, create=True,
                                   profile=new_member_profile(principal, joined))
    if res.member_id is None:
        return None, "no_member"
    member = _visible_member(session, principal, res.member_id)
    _conflicts(principal, res, warnings)
    changed = fill_blanks(member, item.profile, item.attributes, warnings)
    if changed:
        member.updated_at = utcnow()
        session.flush()
    if res.created:
        return member.id, "created"
    return member.id, "updated" if changed or res.linked else "unchanged"


def alias(session: Session, *, principal: Principal, item: Alias, warnings: list[str]) -> tuple[int, str]:
    """Link previousId (as external_id and as anonymous_id, which back-fills its anonymous events)
    to userId's member; (member id, created | linked | unchanged)."""
    keys = _keys([("external_id", item.user_id), ("external_id", item.previous_id)])
    keys.append(("anonymous_id", item.previous_id))
    joined = min(item.occurred_at, utcnow())
    res = identity_resolve.resolve(session, keys=keys, source=SOURCE, create=True,
                                   profile=new_member_profile(principal, joined))
    member = _visible_member(session, principal, res.member_id)
    _conflicts(principal, res, warnings)
    return member.id, "created" if res.created else "linked" if res.linked else "unchanged"
