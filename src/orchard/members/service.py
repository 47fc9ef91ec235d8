"""Member profile operations: create, read (batched for lists), update, list with filters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.auth.service import Principal
from orchard.errors import Conflict, InvalidInput
from orchard.identity import resolve as identity_resolve
from orchard.identity.models import Identity
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.kit.clock import as_utc, utcnow
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.kit.phone import mask_phone
from orchard.loyalty import tasks
from orchard.members import scope
from orchard.members.attributes import validate_attributes
from orchard.members.models import Consent, Member, MemberAggregate, MemberTag, Tag
from orchard.members.schemas import (
    Aggregates,
    IdentityIn,
    IdentityRead,
    MemberCreate,
    MemberRead,
    MemberUpdate,
    StoreRef,
)
from orchard.org import service as org
from orchard.org.models import OrgUnit
from orchard.segments import dirty

_MASKED_KINDS = {"phone", "email", "wechat_openid", "wechat_unionid", "card_no"}


def normalize_keys(identities: list[IdentityIn] | list[tuple[str, str]], *, field: str = "identities"
                   ) -> list[tuple[str, str]]:
    keys = []
    for i, item in enumerate(identities):
        kind, value = (item.kind, item.value) if isinstance(item, IdentityIn) else item
        try:
            keys.append(normalize(kind, value))
        except InvalidIdentity as exc:
            raise InvalidInput.field(f"{field}[{i}].value", f"{exc.kind}: {exc.reason}") from None
    return keys


def create(session: Session, *, principal: Principal, data: MemberCreate) -> Member:
    keys = normalize_keys(data.identities)
    store_id = org.store_id_for_code(session, data.home_store_code, field="home_store_code")
    scope.check_store_assignable(principal, store_id)
    if keys:
        taken = session.execute(select(Identity.kind, Identity.member_id)
                                .where(tuple_(Identity.kind, Identity.value).in_(keys))).first()
        if taken:
            member = session.get(Member, taken.member_id)
            extra = {"member_id": member.id} if member and scope.can_see(principal, member) else {}
            raise Conflict(f"identity {taken.kind} already belongs to a member",
                           code="member.identity_taken", **extra)
    profile = data.model_dump(exclude={"identities", "home_store_code", "joined_at"})
    profile["home_store_id"] = store_id
    profile["joined_at"] = as_utc(data.joined_at) if data.joined_at else utcnow()
    if keys:
        res = identity_resolve.resolve(session, keys=keys, source=data.source_channel or "api", profile=profile)
        if not res.created:  # lost a race with another writer of the same key
            raise Conflict("identity already belongs to a member", code="member.identity_taken")
        member = session.get(Member, res.member_id)
    else:
        member = Member(**profile)
        session.add(member)
        session.flush()
        session.add(MemberAggregate(member_id=member.id))
        session.flush()
    tasks.on_profile(session, member)
    dirty.mark(session, [member.id])
    return member


def update(session: Session, *, principal: Principal, member_id: int, data: MemberUpdate) -> Member:
    member = scope.get_visible(session, principal, member_id)
    changes = data.model_dump(exclude_unset=True)
    if "home_store_code" in changes:
        code = changes.pop("home_store_code")
        store_id = org.store_id_for_code(session, code, field="home_store_code")
        scope.check_store_assignable(principal, store_id)
        member.home_store_id = store_id
    for key in ("gender", "attributes", "reduce_disturbance"):
        if key in changes and changes[key] is None:
            raise InvalidInput.field(key, "may not be null")
    if "reduce_disturbance" in changes and changes["reduce_disturbance"] != member.reduce_disturbance:
        audit.record(session, actor=principal.actor, action="contact_preference.changed", entity="member",
                     entity_id=member.id, data={"reduce_disturbance": changes["reduce_disturbance"]})
    if "preferred_channel" in changes and changes["preferred_channel"] != member.preferred_channel:
        audit.record(session, actor=principal.actor, action="contact_preference.changed", entity="member",
                     entity_id=member.id, data={"preferred_channel": changes["preferred_channel"],
                                                "before": member.preferred_channel})
    for key, value in changes.items():
        setattr(member, key, value)
    member.updated_at = utcnow()
    session.flush()
    tasks.on_profile(session, member)
    dirty.mark(session, [member.id])
    return member


def add_identity(session: Session, *, principal: Principal, member_id: int, data: IdentityIn) -> Identity:
    member = scope.get_visible(session, principal, member_id)
    kind, value = normalize_keys([data], field="identity")[0]
    owner = session.scalar(select(Identity).where(Identity.kind == kind, Identity.value == value))
    if owner is not None:
        if owner.member_id == member.id:
            return owner
        raise Conflict(f"this {kind} belongs to another member", code="identity.taken")
    identity = Identity(member_id=member.id, kind=kind, value=value, source=f"staff:{principal.actor}")
    session.add(identity)
    session.flush()
    if kind == "anonymous_id":
        identity_resolve.attach_anonymous_events(session, member_id=member.id, anonymous_id=value)
    return identity


PUSH_KIND = "push_registration_id"


def register_push(session: Session, *, principal: Principal, member_id: int, registration_id: str
                  ) -> tuple[Identity, bool, int]:
    """Make `registration_id` the member's app-push address (what app_push messages are sent to).

    Idempotent. A registration id names a device, so one that belongs to another member moves here
    (the phone changed hands, someone else logged in), audited; a store-scoped caller may only move it
    from a member it can see (else 409, naming nobody). The member's older registration ids are removed:
    only the newest is sent to, and a reinstalled app's old id is dead. Returns the identity, whether it
    moved, and how many it replaced."""
    member = scope.get_visible(session, principal, member_id)
    kind, value = normalize_keys([(PUSH_KIND, registration_id)], field="registration_id")[0]
    identity = session.scalar(select(Identity).where(Identity.kind == kind, Identity.value == value)
                              .with_for_update())
    moved = False
    if identity is not None and identity.member_id != member.id:
        owner = session.get(Member, identity.member_id)
        if owner is None or not scope.can_see(principal, owner):
            raise Conflict(f"this {kind} belongs to another member", code="identity.taken")
        audit.record(session, actor=principal.actor, action="identity.moved", entity="member", entity_id=member.id,
                     data={"kind": kind, "from_member_id": owner.id})
        identity.member_id, identity.source, moved = member.id, f"staff:{principal.actor}"[:64], True
    elif identity is None:
        identity = Identity(member_id=member.id, kind=kind, value=value, source=f"staff:{principal.actor}"[:64])
        try:
            with session.begin_nested():
                session.add(identity)
                session.flush()
        except IntegrityError:  # registered concurrently for another member
            raise Conflict(f"this {kind} belongs to another member", code="identity.taken") from None
    older = list(session.scalars(select(Identity).where(Identity.member_id == member.id, Identity.kind == kind,
                                                        Identity.id != identity.id)))
    for old in older:
        session.delete(old)
    session.flush()
    return identity, moved, len(older)


def remove_identity(session: Session, *, principal: Principal, member_id: int, identity_id: int) -> None:
    member = scope.get_visible(session, principal, member_id)
    identity = session.get(Identity, identity_id)
    if identity is None or identity.member_id != member.id:
        from orchard.errors import NotFound

        raise NotFound("identity not found", code="identity.not_found")
    session.delete(identity)
    session.flush()


def fill_blanks(member: Member, profile: dict[str, Any], attributes: dict[str, Any], warnings: list[str]) -> bool:
    """Set only what the member does not have yet (identify calls, imports); returns whether anything
    changed, so a replayed or older source never overwrites what staff or the member entered."""
    changed = False
    for name in ("name", "birthday", "region", "home_store_id", "source_channel"):
        if profile.get(name) not in (None, "") and getattr(member, name) in (None, ""):
            setattr(member, name, profile[name])
            changed = True
    if profile.get("gender") not in (None, "unknown") and member.gender in (None, "unknown"):
        member.gender = profile["gender"]
        changed = True
    current = dict(member.attributes or {})
    new = {k: v for k, v in attributes.items() if k not in current}
    if new:
        try:
            member.attributes = validate_attributes({**current, **new})
            changed = True
        except ValueError as exc:
            warnings.append(f"traits not kept as attributes: {exc}")
    return changed


# ---- reading -------------------------------------------------------------------------------

def _mask_identity(kind: str, value: str) -> str:
    if kind == "phone":
        return mask_phone(value) or value
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    return value[:3] + "***" + value[-2:] if len(value) > 6 else "***"


def read_many(session: Session, principal: Principal, members: list[Member],
              resolved_from: dict[int, int] | None = None) -> list[MemberRead]:
    """Serialise members with their identities, tags, aggregates and store in four queries."""
    ids = [m.id for m in members]
    if not ids:
        return []
    idents: dict[int, list[Identity]] = {i: [] for i in ids}
    for ident in session.scalars(select(Identity).where(Identity.member_id.in_(ids)).order_by(Identity.id)):
        idents[ident.member_id].append(ident)
    tags: dict[int, list[str]] = {i: [] for i in ids}
    for mid, name in session.execute(select(MemberTag.member_id, Tag.name).join(Tag, Tag.id == MemberTag.tag_id)
                                     .where(MemberTag.member_id.in_(ids)).order_by(Tag.name)):
        tags[mid].append(name)
    aggs = {a.member_id: a for a in session.scalars(select(MemberAggregate).where(MemberAggregate.member_id.in_(ids)))}
    store_ids = {m.home_store_id for m in members if m.home_store_id}
    stores = {s.id: s for s in session.scalars(select(OrgUnit).where(OrgUnit.id.in_(store_ids)))} if store_ids else {}
    out = []
    for m in members:
        ids_read = []
        phone = None
        for ident in idents[m.id]:
            value = _mask_identity(ident.kind, ident.value) if principal.masked and ident.kind in _MASKED_KINDS \
                else ident.value
            if ident.kind == "phone" and phone is None:
                phone = value
            ids_read.append(IdentityRead(id=ident.id, kind=ident.kind, value=value, source=ident.source,
                                         created_at=ident.created_at))
        agg = aggs.get(m.id)
        store = stores.get(m.home_store_id)
        out.append(MemberRead(
            id=m.id, status=m.status, name=m.name, gender=m.gender, birthday=m.birthday, region=m.region,
            source_channel=m.source_channel,
            home_store=StoreRef(id=store.id, code=store.code, name=store.name) if store else None,
            joined_at=m.joined_at, attributes=m.attributes or {}, reduce_disturbance=m.reduce_disturbance,
            preferred_channel=m.preferred_channel,
            phone=phone, identities=ids_read, tags=tags[m.id],
            aggregates=Aggregates.model_validate(agg, from_attributes=True) if agg else Aggregates(),
            resolved_from=(resolved_from or {}).get(m.id), created_at=m.created_at, updated_at=m.updated_at,
        ))
    return out


def read_one(session: Session, principal: Principal, member_id: int) -> MemberRead:
    member = scope.get_visible(session, principal, member_id)
    return read_many(session, principal, [member], {member.id: member_id} if member.id != member_id else None)[0]


@dataclass(frozen=True)
class MemberFilters:
    """The filters of `GET /api/v1/members` (and of member exports), with one meaning everywhere."""

    phone: str | None = None
    identity: str | None = None
    store: str | None = None
    tag: str | None = None
    consent: str | None = None
    joined_from: dt.datetime | None = None
    joined_to: dt.datetime | None = None
    q: str | None = None
    #: Current members of a saved segment (by code).
    segment: str | None = None


def apply_filters(session: Session, stmt: Select, *, principal: Principal, filters: MemberFilters) -> Select:
    """Narrow a select over `Member` to the live members the principal may see that match the filters."""
    f = filters
    stmt = stmt.where(Member.status == "active", scope.visible(principal))
    if f.phone is not None:
        _, value = normalize_keys([("phone", f.phone)], field="phone")[0]
        stmt = stmt.where(Member.id.in_(select(Identity.member_id).where(Identity.kind == "phone",
                                                                          Identity.value == value)))
    if f.identity is not None:
        kind, sep, raw = f.identity.partition(":")
        if not sep:
            raise InvalidInput.field("identity", "use kind:value, e.g. card_no:A001")
        kind, value = normalize_keys([(kind, raw)], field="identity")[0]
        stmt = stmt.where(Member.id.in_(select(Identity.member_id).where(Identity.kind == kind,
                                                                          Identity.value == value)))
    if f.store is not None:
        unit = org.get_by_code(session, f.store, field="store")
        stmt = stmt.where(Member.home_store_id.in_(sorted(org.stores_under(session, [unit.id]))))
    if f.tag is not None:
        stmt = stmt.where(Member.id.in_(select(MemberTag.member_id).join(Tag, Tag.id == MemberTag.tag_id)
                                        .where(Tag.name == f.tag)))
    if f.consent is not None:
        channel, _, purpose = f.consent.partition(":")
        if channel not in ("sms", "wechat", "app_push", "email", "wecom") or purpose not in ("marketing", "service"):
            raise InvalidInput.field("consent", "use channel:purpose, e.g. sms:marketing")
        stmt = stmt.where(Member.id.in_(select(Consent.member_id).where(
            and_(Consent.channel == channel, Consent.purpose == purpose, Consent.granted.is_(True)))))
    for name, value in (("joined_from", f.joined_from), ("joined_to", f.joined_to)):
        if value is not None:
            try:
                bound = as_utc(value)
            except OverflowError:
                raise InvalidInput.field(name, "out of the supported date range") from None
            stmt = stmt.where(Member.joined_at >= bound if name == "joined_from" else Member.joined_at < bound)
    if f.q:
        stmt = stmt.where(Member.name.contains(f.q, autoescape=True))
    if f.segment is not None:
        from orchard.segments.models import Segment, SegmentMembership  # segments build on members

        seg_id = session.scalar(select(Segment.id).where(Segment.code == f.segment))
        if seg_id is None:
            raise InvalidInput.field("segment", f"no segment with code {f.segment!r}")
        stmt = stmt.where(Member.id.in_(select(SegmentMembership.member_id).where(
            SegmentMembership.segment_id == seg_id, SegmentMembership.exited_at.is_(None))))
    return stmt


def list_members(session: Session, *, principal: Principal, phone: str | None = None,
                 identity: str | None = None, store: str | None = None, tag: str | None = None,
                 consent: str | None = None, joined_from: dt.datetime | None = None,
                 joined_to: dt.datetime | None = None, q: str | None = None, limit: int = 50,
                 cursor: str | None = None, segment: str | None = None) -> tuple[list[MemberRead], str | None]:
    filters = MemberFilters(phone=phone, identity=identity, store=store, tag=tag, consent=consent,
                            joined_from=joined_from, joined_to=joined_to, q=q, segment=segment)
    stmt = apply_filters(session, select(Member), principal=principal, filters=filters)
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(Member.id > after)
    rows = list(session.scalars(stmt.order_by(Member.id).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return read_many(session, principal, rows[:limit]), nxt
