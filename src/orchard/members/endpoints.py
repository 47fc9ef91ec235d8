"""Member routes. Thin: parse, call a service, return. Every route is member-scoped through
`members.scope` (a member outside the caller's stores is a 404)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import NotFound
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.members import candidates, consent, merge, notes_tags, scope, service
from orchard.members.models import MemberMerge, MergeCandidate
from orchard.members.schemas import (
    CandidatePage,
    CandidateRead,
    Channel,
    ConsentIn,
    ConsentRead,
    IdentityIn,
    IdentityRead,
    MemberCreate,
    MemberPage,
    MemberRead,
    MemberUpdate,
    MergeIn,
    MergeRead,
    NoteIn,
    NoteRead,
    Purpose,
    PushRegistrationIn,
    PushRegistrationRead,
    TagIn,
)

router = APIRouter(tags=["members"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("/members", response_model=MemberPage, operation_id="listMembers")
def list_members(
    session: SessionDep, principal: Actor(Perm.members_read),
    phone: Annotated[str | None, Query(max_length=40, description="any format; normalised to E.164")] = None,
    identity: Annotated[str | None, Query(max_length=300, description="kind:value, e.g. card_no:A001")] = None,
    store: Annotated[str | None, Query(max_length=64, description="store or region code")] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    consent_: Annotated[str | None, Query(alias="consent", max_length=40,
                                          description="channel:purpose granted, e.g. sms:marketing")] = None,
    joined_from: dt.datetime | None = None, joined_to: dt.datetime | None = None,
    q: Annotated[str | None, Query(max_length=100, description="name contains")] = None,
    segment: Annotated[str | None, Query(max_length=64, description="current members of a saved segment")] = None,
    limit: Limit = 50, cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> MemberPage:
    items, nxt = service.list_members(session, principal=principal, phone=phone, identity=identity, store=store,
                                      tag=tag, consent=consent_, joined_from=joined_from, joined_to=joined_to, q=q,
                                      limit=limit, cursor=cursor, segment=segment)
    return MemberPage(items=items, next_cursor=nxt)


@router.post("/members", response_model=MemberRead, status_code=201, operation_id="createMember")
def create_member(body: MemberCreate, session: SessionDep, principal: Actor(Perm.members_write)) -> MemberRead:
    member = service.create(session, principal=principal, data=body)
    return service.read_one(session, principal, member.id)


@router.get("/members/duplicates", response_model=CandidatePage, operation_id="listDuplicateCandidates")
def list_candidates(session: SessionDep, principal: Actor(Perm.members_merge),
                    status: Annotated[str, Query(pattern="^(open|merged|dismissed)$")] = "open",
                    limit: Limit = 50, cursor: Annotated[str | None, Query(max_length=200)] = None) -> CandidatePage:
    stmt = select(MergeCandidate).where(MergeCandidate.status == status)
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(MergeCandidate.id > after)
    rows = list(session.scalars(stmt.order_by(MergeCandidate.id).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return CandidatePage(items=[CandidateRead.model_validate(r, from_attributes=True) for r in rows[:limit]],
                         next_cursor=nxt)


@router.post("/members/duplicates/scan", response_model=dict[str, int], operation_id="scanDuplicates")
def scan_duplicates(session: SessionDep, principal: Actor(Perm.members_merge)) -> dict[str, int]:
    return {"recorded": candidates.scan_name_birthday(session)}


@router.post("/members/duplicates/{candidate_id}/dismiss", response_model=CandidateRead,
             operation_id="dismissDuplicateCandidate")
def dismiss_candidate(candidate_id: MemberId, session: SessionDep, principal: Actor(Perm.members_merge)
                      ) -> CandidateRead:
    row = session.get(MergeCandidate, candidate_id)
    if row is None:
        raise NotFound("candidate not found", code="candidate.not_found")
    if row.status == "open":
        row.status = "dismissed"
        session.flush()
    return CandidateRead.model_validate(row, from_attributes=True)


@router.get("/members/{member_id}", response_model=MemberRead, operation_id="getMember")
def get_member(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> MemberRead:
    return service.read_one(session, principal, member_id)


@router.patch("/members/{member_id}", response_model=MemberRead, operation_id="updateMember")
def update_member(member_id: MemberId, body: MemberUpdate, session: SessionDep,
                  principal: Actor(Perm.members_write)) -> MemberRead:
    member = service.update(session, principal=principal, member_id=member_id, data=body)
    return service.read_one(session, principal, member.id)


@router.post("/members/{member_id}/identities", response_model=IdentityRead, status_code=201,
             operation_id="addMemberIdentity")
def add_identity(member_id: MemberId, body: IdentityIn, session: SessionDep,
                 principal: Actor(Perm.members_write)) -> IdentityRead:
    identity = service.add_identity(session, principal=principal, member_id=member_id, data=body)
    read = service.read_one(session, principal, member_id)
    return next(i for i in read.identities if i.id == identity.id)


@router.put("/members/{member_id}/push-registration", response_model=PushRegistrationRead,
            operation_id="setMemberPushRegistration")
def set_push_registration(member_id: MemberId, body: PushRegistrationIn, session: SessionDep,
                          principal: Actor(Perm.members_write)) -> PushRegistrationRead:
    """The app registers (or replaces) the member's JPush registration id, where app pushes go.
    Idempotent; a device that moves to another member takes its registration id with it."""
    identity, moved, replaced = service.register_push(session, principal=principal, member_id=member_id,
                                                      registration_id=body.registration_id)
    return PushRegistrationRead(member_id=identity.member_id, registration_id=identity.value, moved=moved,
                                replaced=replaced)


@router.delete("/members/{member_id}/identities/{identity_id}", status_code=204, operation_id="removeMemberIdentity")
def remove_identity(member_id: MemberId, identity_id: MemberId, session: SessionDep,
                    principal: Actor(Perm.members_write)) -> None:
    service.remove_identity(session, principal=principal, member_id=member_id, identity_id=identity_id)


@router.get("/members/{member_id}/consents", response_model=list[ConsentRead], operation_id="listMemberConsents")
def list_consents(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> list[ConsentRead]:
    return consent.list_consents(session, principal=principal, member_id=member_id)


@router.put("/members/{member_id}/consents/{channel}/{purpose}", response_model=ConsentRead,
            operation_id="setMemberConsent")
def set_consent(member_id: MemberId, channel: Channel, purpose: Purpose, body: ConsentIn, session: SessionDep,
                principal: Actor(Perm.members_consent)) -> ConsentRead:
    return consent.set_for(session, principal=principal, member_id=member_id, channel=channel, purpose=purpose,
                           granted=body.granted, source=body.source)


@router.get("/members/{member_id}/notes", response_model=list[NoteRead], operation_id="listMemberNotes")
def list_notes(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_notes)) -> list[NoteRead]:
    return [NoteRead.model_validate(n, from_attributes=True)
            for n in notes_tags.list_notes(session, principal=principal, member_id=member_id)]


@router.post("/members/{member_id}/notes", response_model=NoteRead, status_code=201, operation_id="addMemberNote")
def add_note(member_id: MemberId, body: NoteIn, session: SessionDep, principal: Actor(Perm.members_notes)) -> NoteRead:
    note = notes_tags.add_note(session, principal=principal, member_id=member_id, body=body.body)
    return NoteRead.model_validate(note, from_attributes=True)


@router.get("/members/{member_id}/tags", response_model=list[str], operation_id="listMemberTags")
def list_tags(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> list[str]:
    member = scope.get_visible(session, principal, member_id)
    return notes_tags.member_tags(session, member.id)


@router.post("/members/{member_id}/tags", response_model=list[str], operation_id="addMemberTag")
def add_tag(member_id: MemberId, body: TagIn, session: SessionDep, principal: Actor(Perm.members_tags)) -> list[str]:
    return notes_tags.add_tag(session, principal=principal, member_id=member_id, name=body.name)


@router.delete("/members/{member_id}/tags/{name}", response_model=list[str], operation_id="removeMemberTag")
def remove_tag(member_id: MemberId, name: Annotated[str, Path(min_length=1, max_length=64)], session: SessionDep,
               principal: Actor(Perm.members_tags)) -> list[str]:
    return notes_tags.remove_tag(session, principal=principal, member_id=member_id, name=name)


@router.post("/members/{member_id}/merge", response_model=MergeRead, operation_id="mergeMember")
def merge_member(member_id: MemberId, body: MergeIn, session: SessionDep,
                 principal: Actor(Perm.members_merge)) -> MergeRead:
    record = merge.merge(session, principal=principal, survivor_id=member_id, merged_id=body.merge_id,
                         reason=body.reason)
    return MergeRead.model_validate(record, from_attributes=True)


@router.get("/members/{member_id}/merges", response_model=list[MergeRead], operation_id="listMemberMerges")
def list_merges(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> list[MergeRead]:
    member = scope.get_visible(session, principal, member_id)
    rows = session.scalars(select(MemberMerge).where(MemberMerge.survivor_id == member.id).order_by(MemberMerge.id))
    return [MergeRead.model_validate(r, from_attributes=True) for r in rows]
