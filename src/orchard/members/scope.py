"""What a principal may read: the one place member visibility is decided.

Store-scoped staff see members whose home store is one of theirs; for anyone else, a member out of
scope does not exist (404, never 403, so ids cannot be probed). A merged member's id resolves to
the survivor before the scope check.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.errors import InvalidInput, NotFound
from orchard.members.models import Member


def visible(principal: Principal) -> ColumnElement[bool]:
    if principal.store_ids is None:
        return true()
    return Member.home_store_id.in_(sorted(principal.store_ids))


def get_visible(session: Session, principal: Principal, member_id: int) -> Member:
    """The live member behind `member_id` (following a merge), if the principal may see it."""
    member = session.get(Member, member_id)
    if member is not None and member.merged_into_id is not None:
        member = session.get(Member, member.merged_into_id)
    if member is None or not can_see(principal, member):
        raise NotFound("member not found", code="member.not_found")
    return member


def can_see(principal: Principal, member: Member) -> bool:
    return principal.store_ids is None or member.home_store_id in principal.store_ids


def check_store_assignable(principal: Principal, store_id: int | None) -> None:
    """Store staff may only place members in their own stores."""
    if principal.store_ids is not None and store_id not in principal.store_ids:
        raise InvalidInput.field("home_store_code", "you can only assign members to your own stores")
