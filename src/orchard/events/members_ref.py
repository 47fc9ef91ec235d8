"""Turn an ingestion item's `member` reference into a member id (resolving identities)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import InvalidInput
from orchard.events.schemas import MemberRef
from orchard.identity import resolve as identity_resolve
from orchard.identity.models import Identity
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.members import candidates, scope
from orchard.members.models import Member
from orchard.org import service as org


def resolve_ref(session: Session, *, principal: Principal, ref: MemberRef, source: str, at: dt.datetime,
                store_id: int | None = None, create_anonymous: bool = True) -> tuple[int | None, bool]:
    """(member_id, created). A new member's join time is the time of the event that created it, and
    its home store (归属门店), unless the profile names one, the store where that event happened."""
    keys = []
    for kind, value in ref.identities.items():
        try:
            keys.append(normalize(kind, value))
        except InvalidIdentity as exc:
            raise InvalidInput.field(f"member.identities.{kind}", exc.reason) from None
    if ref.anonymous_id is not None:
        keys.append(("anonymous_id", ref.anonymous_id))
    if ref.id is not None:
        member = scope.get_visible(session, principal, ref.id)
        if keys:
            res = identity_resolve.resolve(session, keys=keys, source=source, create=False)
            if res.member_id not in (None, member.id):
                candidates.record(session, a=member.id, b=res.member_id, reason="identity_conflict",
                                  evidence={"member_id": ref.id, **ref.identities})
            else:
                _link(session, member.id, keys, source)
        return member.id, False
    profile = new_member_profile(principal, at)
    if store_id is not None:
        profile["home_store_id"] = store_id
    if ref.profile is not None:
        p = ref.profile.model_dump(exclude_none=True)
        if "home_store_code" in p:
            profile["home_store_id"] = org.store_id_for_code(session, p.pop("home_store_code"),
                                                            field="member.profile.home_store_code")
        profile.update(p)
    create = create_anonymous or any(k != "anonymous_id" for k, _ in keys)
    res = identity_resolve.resolve(session, keys=keys, source=source, create=create, profile=profile)
    if res.member_id is not None and principal.store_ids is not None:  # an unscoped caller sees every member
        member = session.get_one(Member, res.member_id)
        if not scope.can_see(principal, member):
            raise InvalidInput.field("member", "this member belongs to a store outside your scope")
    return res.member_id, res.created


def new_member_profile(principal: Principal, at: dt.datetime) -> dict:
    """Defaults for a member created by ingestion: joined when the event happened, and, for a key
    bound to one store (a POS), enrolled in that store so the caller can still see it."""
    profile: dict = {"joined_at": at}
    if principal.store_ids is not None and len(principal.store_ids) == 1:
        profile["home_store_id"] = next(iter(principal.store_ids))
    return profile


def _link(session: Session, member_id: int, keys: list[tuple[str, str]], source: str) -> None:
    known = set(session.execute(select(Identity.kind, Identity.value)
                                .where(tuple_(Identity.kind, Identity.value).in_(keys))).tuples())
    for kind, value in keys:
        if (kind, value) not in known:
            session.add(Identity(member_id=member_id, kind=kind, value=value, source=source))
            session.flush()
            if kind == "anonymous_id":
                identity_resolve.attach_anonymous_events(session, member_id=member_id, anonymous_id=value)
