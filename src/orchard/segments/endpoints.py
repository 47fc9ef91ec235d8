"""Segment routes: the language's schema, live previews, saved segments and their history.

Members of a saved segment are listed and exported through the member routes (`GET /members?segment=`,
`GET /exports/members?segment=`), so scoping and masking are the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import or_, select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.kit.clock import as_utc
from orchard.kit.pagination import decode_cursor, encode_cursor
from orchard.members import scope
from orchard.members.models import Member
from orchard.segments import fields, language, service
from orchard.segments import preview as P
from orchard.segments.models import SegmentMembership, SegmentSize
from orchard.segments.schemas import (
    PreviewIn,
    PreviewOut,
    RefreshOut,
    SegmentIn,
    SegmentPatch,
    SegmentRead,
    SizeRead,
    SpellPage,
    SpellRead,
)

router = APIRouter(tags=["segments"])
SegmentCode = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/segments/schema", operation_id="getSegmentSchema")
def schema(request: Request, principal: Actor(Perm.segments_read)) -> dict:
    """The JSON Schema of a definition, with the field catalog (`x-fields`: names, types, operators,
    labels in the request's language) for editors."""
    out = language.json_schema()
    out["x-fields"] = fields.catalog_json(request.headers.get("accept-language", "zh-CN"))
    out["x-limits"] = {"max_depth": language.MAX_DEPTH, "max_conditions": language.MAX_CONDITIONS,
                       "max_window_days": language.MAX_WINDOW_DAYS}
    return out


@router.post("/segments/preview", response_model=PreviewOut, operation_id="previewSegment")
def preview(body: PreviewIn, session: SessionDep, principal: Actor(Perm.segments_read)) -> PreviewOut:
    """Live count of a definition being edited, each condition's own count, and a sample (masked as
    the caller's member reads are). Store staff count only their stores' members."""
    return PreviewOut(**P.preview(session, principal=principal, definition=body.definition,
                                  sample_size=body.sample_size))


@router.get("/segments", response_model=list[SegmentRead], operation_id="listSegments")
def list_segments(session: SessionDep, principal: Actor(Perm.segments_read),
                  status: Literal["active", "archived", "all"] = "active") -> list[SegmentRead]:
    return [SegmentRead.model_validate(s) for s in
            service.list_segments(session, principal, status=None if status == "all" else status)]


@router.post("/segments", response_model=SegmentRead, status_code=201, operation_id="createSegment")
def create(body: SegmentIn, session: SessionDep, principal: Actor(Perm.segments_manage)) -> SegmentRead:
    """Save a segment and compute its members at once (audited)."""
    seg = service.create(session, principal=principal, code=body.code, name=body.name, definition=body.definition,
                         description=body.description, owner_unit_code=body.owner_unit_code,
                         realtime=body.realtime, refresh_minutes=body.refresh_minutes)
    return SegmentRead.model_validate(seg)


@router.get("/segments/{segment_code}", response_model=SegmentRead, operation_id="getSegment")
def get(segment_code: SegmentCode, session: SessionDep, principal: Actor(Perm.segments_read)) -> SegmentRead:
    return SegmentRead.model_validate(service.get(session, principal, segment_code))


@router.patch("/segments/{segment_code}", response_model=SegmentRead, operation_id="changeSegment")
def change(segment_code: SegmentCode, body: SegmentPatch, session: SessionDep,
           principal: Actor(Perm.segments_manage)) -> SegmentRead:
    """A new definition makes a new version and is applied at once; members' spells record the change."""
    changes = body.model_dump(exclude_unset=True)
    if "definition" in changes and changes["definition"] is None:
        raise InvalidInput.field("definition", "a segment needs a definition")
    return SegmentRead.model_validate(service.change(session, principal=principal, code=segment_code, fields=changes))


@router.post("/segments/{segment_code}/archive", response_model=SegmentRead, operation_id="archiveSegment")
def archive(segment_code: SegmentCode, session: SessionDep, principal: Actor(Perm.segments_manage)) -> SegmentRead:
    """Every current member exits now; the history stays. Refused while another segment uses it."""
    return SegmentRead.model_validate(service.archive(session, principal=principal, code=segment_code))


@router.post("/segments/{segment_code}/refresh", response_model=RefreshOut, operation_id="refreshSegment")
def refresh(segment_code: SegmentCode, session: SessionDep, principal: Actor(Perm.segments_manage)) -> RefreshOut:
    seg = service.get(session, principal, segment_code)
    return RefreshOut(**service.refresh(session, codes=[seg.code])[0])


@router.get("/segments/{segment_code}/sizes", response_model=list[SizeRead], operation_id="listSegmentSizes")
def sizes(segment_code: SegmentCode, session: SessionDep, principal: Actor(Perm.segments_read),
          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[SizeRead]:
    """Size over time, newest first: one row per refresh and per real-time change."""
    seg = service.get(session, principal, segment_code)
    rows = session.scalars(select(SegmentSize).where(SegmentSize.segment_id == seg.id)
                           .order_by(SegmentSize.at.desc(), SegmentSize.id.desc()).limit(limit))
    return [SizeRead.model_validate(r) for r in rows]


@router.get("/segments/{segment_code}/changes", response_model=SpellPage, operation_id="listSegmentChanges")
def changes(segment_code: SegmentCode, session: SessionDep, principal: Actor(Perm.segments_read),
            since: dt.datetime | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
            cursor: Annotated[str | None, Query(max_length=200)] = None) -> SpellPage:
    """Membership spells that began or ended at or after `since` (entries and exits), oldest id first:
    what journeys trigger on. Store staff see only their stores' members."""
    seg = service.get(session, principal, segment_code)
    S = SegmentMembership
    stmt = (select(S).join(Member, Member.id == S.member_id)
            .where(S.segment_id == seg.id, scope.visible(principal)))
    if since is not None:
        try:
            bound = as_utc(since)
        except OverflowError:
            raise InvalidInput.field("since", "out of the supported date range") from None
        stmt = stmt.where(or_(S.entered_at >= bound, S.exited_at >= bound))
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(S.id > after)
    rows = list(session.scalars(stmt.order_by(S.id).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return SpellPage(items=[SpellRead.model_validate(r) for r in rows[:limit]], next_cursor=nxt)
