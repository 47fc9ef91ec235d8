"""Resolve a set of identity keys to one member.

Rules (documented in docs/architecture.md):
1. Every key is normalised first; a malformed key fails the whole call (nothing written).
2. Keys already known point at members. None → create a member (unless the only key is an
   anonymous id and the caller asked not to create one) and link every key.
3. One member → link the keys not yet known to it.
4. Several members → no guessing: the event lands on the member of the highest-priority key
   (external_id > wechat_unionid > phone > card_no > email > wechat_openid > others > anonymous_id),
   the keys owned by others stay where they are, and a merge candidate is recorded for each pair.
Two concurrent calls that both try to create the same key are settled by the unique constraint:
the loser retries and finds the winner's member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.identity.models import Identity
from orchard.identity.normalize import priority
from orchard.members import candidates
from orchard.members.models import Member, MemberAggregate


@dataclass
class Resolution:
    member_id: int | None
    created: bool = False
    linked: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)


def resolve(session: Session, *, keys: list[tuple[str, str]], source: str | None,
            create: bool = True, profile: dict | None = None) -> Resolution:
    keys = list(dict.fromkeys(keys))
    if not keys:
        return Resolution(None)
    for attempt in range(3):
        try:
            with session.begin_nested():
                return _resolve_once(session, keys=keys, source=source, create=create, profile=profile or {})
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _resolve_once(session: Session, *, keys, source, create, profile) -> Resolution:
    rows = session.execute(
        select(Identity.kind, Identity.value, Identity.member_id).where(tuple_(Identity.kind, Identity.value).in_(keys))
    ).all()
    owner = {(r.kind, r.value): r.member_id for r in rows}
    members = {r.member_id for r in rows}
    res = Resolution(None)
    if not members:
        if not create or all(k == "anonymous_id" for k, _ in keys):
            return res
        member = Member(**{**profile, "source_channel": profile.get("source_channel") or source})
        session.add(member)
        session.flush()
        session.add(MemberAggregate(member_id=member.id))
        res.member_id, res.created = member.id, True
    else:
        best = min(rows, key=lambda r: (priority(r.kind), r.member_id))
        res.member_id = best.member_id
        res.conflicts = sorted(members - {best.member_id})
        for other in res.conflicts:
            evidence = {f"{k}": v for (k, v), m in owner.items() if m in (other, best.member_id)}
            candidates.record(session, a=res.member_id, b=other, reason="identity_conflict", evidence=evidence)
    for kind, value in keys:
        if (kind, value) not in owner:
            session.add(Identity(member_id=res.member_id, kind=kind, value=value, source=source))
            res.linked.append((kind, value))
    session.flush()
    for kind, value in res.linked:
        if kind == "anonymous_id":
            attach_anonymous_events(session, member_id=res.member_id, anonymous_id=value)
    return res


def attach_anonymous_events(session: Session, *, member_id: int, anonymous_id: str) -> int:
    """Give a newly linked anonymous id's earlier events to the member, and refresh its aggregates."""
    from orchard.events import aggregates
    from orchard.events.models import Event

    result = session.execute(
        update(Event).where(Event.anonymous_id == anonymous_id, Event.member_id.is_(None)).values(member_id=member_id)
    )
    if result.rowcount:
        aggregates.recompute(session, member_id=member_id)
    return result.rowcount


def owners_of(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The member each already-known (kind, value) key belongs to, in one query, for the set-based import
    and ingestion paths. PostgreSQL: the keys go as two arrays; SQLite: as one JSON array of pairs, read
    with `json_each` in the outer loop (CROSS JOIN fixes the order) so each key probes the unique index."""
    if not keys:
        return {}
    ordered = sorted(keys)
    if session.get_bind().dialect.name == "sqlite":
        rows = session.execute(text(
            "SELECT i.kind, i.value, i.member_id FROM json_each(:keys) AS k CROSS JOIN identities i "
            "ON i.kind = json_extract(k.value, '$[0]') AND i.value = json_extract(k.value, '$[1]')"),
            {"keys": json.dumps(ordered)})
        return {(r.kind, r.value): r.member_id for r in rows}
    rows = session.execute(text(
        "SELECT i.kind, i.value, i.member_id FROM identities i "
        "JOIN unnest(CAST(:kinds AS text[]), CAST(:vals AS text[])) AS k(kind, value) "
        "ON i.kind = k.kind AND i.value = k.value"),
        {"kinds": [k for k, _ in ordered], "vals": [v for _, v in ordered]})
    return {(r.kind, r.value): r.member_id for r in rows}
