"""Merge candidates (possible duplicates): recorded by identity resolution and by the set-based
duplicate scan, listed for review, merged or dismissed by staff."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, insert, literal, select
from sqlalchemy.orm import Session, aliased

from orchard.members.models import Member, MergeCandidate


def record(session: Session, *, a: int, b: int, reason: str, evidence: dict[str, Any]) -> None:
    """Insert the pair once (ordered a < b); a pair already recorded for this reason is left alone."""
    lo, hi = sorted((a, b))
    exists = session.scalar(select(MergeCandidate.id).where(
        MergeCandidate.member_a_id == lo, MergeCandidate.member_b_id == hi, MergeCandidate.reason == reason))
    if exists is None:
        session.add(MergeCandidate(member_a_id=lo, member_b_id=hi, reason=reason, evidence=evidence))
        session.flush()


def scan_name_birthday(session: Session) -> int:
    """One INSERT … SELECT: every pair of active members with the same name and birthday, not yet
    recorded. Runs in the database; no Python loop over members."""
    m1, m2 = aliased(Member), aliased(Member)
    existing = select(MergeCandidate.id).where(
        MergeCandidate.member_a_id == m1.id, MergeCandidate.member_b_id == m2.id,
        MergeCandidate.reason == "same_name_birthday").exists()
    pairs = (
        select(m1.id, m2.id, literal("same_name_birthday"), literal("open"), func.current_timestamp())
        .join(m2, and_(m1.name == m2.name, m1.birthday == m2.birthday, m1.id < m2.id))
        .where(m1.status == "active", m2.status == "active", m1.name.is_not(None), m1.birthday.is_not(None),
               ~existing)
    )
    stmt = insert(MergeCandidate).from_select(
        ["member_a_id", "member_b_id", "reason", "status", "created_at"], pairs)
    return len(session.execute(stmt.returning(MergeCandidate.id)).all())
