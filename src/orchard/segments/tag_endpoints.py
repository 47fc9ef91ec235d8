"""Tag catalog routes: kinds and sources, rule tags defined by a segment definition, and history."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import Conflict
from orchard.members import scope
from orchard.members.models import Member, MemberTag, Tag, TagChange
from orchard.segments import tags

router = APIRouter(tags=["tags"])
TagName = Annotated[str, Path(min_length=1, max_length=64)]


class TagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=64)]
    kind: Literal["attribute", "behaviour", "value", "preference"] = "behaviour"
    description: Annotated[str, Field(max_length=2000)] | None = None
    #: A segment definition: members matching it carry the tag (a rule tag). Omit for a manual tag.
    definition: Any = None


class TagRead(BaseModel):
    name: str
    kind: str
    source: str
    description: str | None
    definition: dict[str, Any] | None
    refreshed_at: dt.datetime | None
    members: int


class TagChangeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    member_id: int
    change: str
    source: str
    actor: str
    at: dt.datetime


def _counts(session, principal, tag_ids: list[int]) -> dict[int, int]:
    """Members (that the caller can see) per tag, for all the listed tags in one grouped query."""
    if not tag_ids:
        return {}
    return dict(session.execute(select(MemberTag.tag_id, func.count()).join(Member, Member.id == MemberTag.member_id)
                                .where(MemberTag.tag_id.in_(tag_ids), scope.visible(principal))
                                .group_by(MemberTag.tag_id)).all())


def _read(session, tag: Tag, principal, count: int | None = None) -> TagRead:
    if count is None:
        count = _counts(session, principal, [tag.id]).get(tag.id, 0)
    return TagRead(name=tag.name, kind=tag.kind, source=tag.source, description=tag.description,
                   definition=tag.definition, refreshed_at=tag.refreshed_at, members=count or 0)


@router.get("/tags", response_model=list[TagRead], operation_id="listTags")
def list_tags(session: SessionDep, principal: Actor(Perm.members_read),
              kind: Literal["attribute", "behaviour", "value", "preference"] | None = None,
              source: Literal["manual", "rule", "import"] | None = None) -> list[TagRead]:
    """The catalog, with how many members (that the caller can see) carry each tag."""
    stmt = select(Tag).order_by(Tag.name)
    if kind:
        stmt = stmt.where(Tag.kind == kind)
    if source:
        stmt = stmt.where(Tag.source == source)
    catalog = list(session.scalars(stmt))
    counts = _counts(session, principal, [t.id for t in catalog])
    return [_read(session, t, principal, counts.get(t.id, 0)) for t in catalog]


@router.post("/tags", response_model=TagRead, status_code=201, operation_id="defineTag")
def define(body: TagIn, session: SessionDep, principal: Actor(Perm.segments_manage)) -> TagRead:
    """Add a tag to the catalog; with a definition it is a rule tag, applied now and at every refresh."""
    tag = tags.define(session, principal=principal, name=body.name, kind=body.kind, description=body.description,
                      definition=body.definition)
    return _read(session, tag, principal)


@router.post("/tags/{name}/refresh", operation_id="refreshTag")
def refresh(name: TagName, session: SessionDep, principal: Actor(Perm.segments_manage)) -> dict:
    tag = tags.get(session, name)
    if tag.source != "rule" or tags.is_builtin(tag):
        raise Conflict("only rule tags with a definition are refreshed here", code="tag.not_rule")
    return tags.refresh_one(session, tag, now=dt.datetime.now(dt.UTC))


@router.get("/tags/{name}/changes", response_model=list[TagChangeRead], operation_id="listTagChanges")
def changes(name: TagName, session: SessionDep, principal: Actor(Perm.members_read),
            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[TagChangeRead]:
    """Who got or lost the tag, when, and by which rule or person (newest first)."""
    tag = tags.get(session, name)
    stmt = (select(TagChange).join(Member, Member.id == TagChange.member_id)
            .where(TagChange.tag_id == tag.id, scope.visible(principal))
            .order_by(TagChange.id.desc()).limit(limit))
    return [TagChangeRead.model_validate(c) for c in session.scalars(stmt)]
