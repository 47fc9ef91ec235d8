"""Staff notes and manual tags on a member (SPEC M6). Tags are created on first use."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import NotFound
from orchard.kit.clock import utcnow
from orchard.members import scope
from orchard.members.models import MemberNote, MemberTag, Tag, TagChange
from orchard.segments import dirty


def add_note(session: Session, *, principal: Principal, member_id: int, body: str) -> MemberNote:
    member = scope.get_visible(session, principal, member_id)
    note = MemberNote(member_id=member.id, author=principal.actor, body=body, created_at=utcnow())
    session.add(note)
    session.flush()
    return note


def list_notes(session: Session, *, principal: Principal, member_id: int) -> list[MemberNote]:
    member = scope.get_visible(session, principal, member_id)
    return list(session.scalars(select(MemberNote).where(MemberNote.member_id == member.id)
                                .order_by(MemberNote.id.desc())))


def tag_by_name(session: Session, name: str, *, create: bool, source: str = "manual") -> Tag | None:
    tag = session.scalar(select(Tag).where(Tag.name == name))
    if tag is None and create:
        try:
            with session.begin_nested():
                tag = Tag(name=name, source=source)
                session.add(tag)
                session.flush()
        except IntegrityError:
            tag = session.scalar(select(Tag).where(Tag.name == name))
    return tag


def add_tag(session: Session, *, principal: Principal, member_id: int, name: str) -> list[str]:
    member = scope.get_visible(session, principal, member_id)
    tag = tag_by_name(session, name, create=True)
    have = session.get(MemberTag, (member.id, tag.id))
    if have is not None and have.source == "rule":
        # Staff say the member has it, whatever the rule says later: a refresh must not take it away.
        have.source, have.added_by = "manual", principal.actor
        session.flush()
    elif have is None:
        now = utcnow()
        session.add(MemberTag(member_id=member.id, tag_id=tag.id, source="manual", added_by=principal.actor,
                              added_at=now))
        session.add(TagChange(member_id=member.id, tag_id=tag.id, change="added", source="manual",
                              actor=principal.actor, at=now))
        session.flush()
        dirty.mark(session, [member.id], at=now)
    return member_tags(session, member.id)


def remove_tag(session: Session, *, principal: Principal, member_id: int, name: str) -> list[str]:
    member = scope.get_visible(session, principal, member_id)
    tag = tag_by_name(session, name, create=False)
    if tag is None or session.get(MemberTag, (member.id, tag.id)) is None:
        raise NotFound("the member has no such tag", code="tag.not_on_member")
    session.execute(delete(MemberTag).where(MemberTag.member_id == member.id, MemberTag.tag_id == tag.id))
    session.add(TagChange(member_id=member.id, tag_id=tag.id, change="removed", source="manual",
                          actor=principal.actor, at=utcnow()))
    session.flush()
    dirty.mark(session, [member.id])
    return member_tags(session, member.id)


def member_tags(session: Session, member_id: int) -> list[str]:
    return list(session.scalars(select(Tag.name).join(MemberTag, MemberTag.tag_id == Tag.id)
                                .where(MemberTag.member_id == member_id).order_by(Tag.name)))
