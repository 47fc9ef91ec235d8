"""Consent per channel and purpose (SPEC M4). Absent means not granted. Every change appends to
`consent_changes` (the member-facing history) and to the audit log, in the same transaction."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.auth.service import Principal
from orchard.kit.clock import utcnow
from orchard.members import scope
from orchard.members.models import CHANNELS, PURPOSES, Consent, ConsentChange
from orchard.members.schemas import ConsentRead
from orchard.segments import dirty


def list_consents(session: Session, *, principal: Principal, member_id: int) -> list[ConsentRead]:
    member = scope.get_visible(session, principal, member_id)
    rows = {(c.channel, c.purpose): c for c in session.scalars(select(Consent).where(Consent.member_id == member.id))}
    out = []
    for channel in CHANNELS:
        for purpose in PURPOSES:
            c = rows.get((channel, purpose))
            out.append(ConsentRead(channel=channel, purpose=purpose, granted=bool(c and c.granted),
                                   granted_at=c.granted_at if c else None, withdrawn_at=c.withdrawn_at if c else None,
                                   source=c.source if c else None, updated_at=c.updated_at if c else None))
    return out


def set_consent(session: Session, *, member_id: int, channel: str, purpose: str, granted: bool, source: str,
                actor: str) -> Consent:
    """Grant or withdraw; idempotent (setting the current value again changes nothing)."""
    now = utcnow()
    row = session.get(Consent, (member_id, channel, purpose), with_for_update=True)
    if row is None:
        row = Consent(member_id=member_id, channel=channel, purpose=purpose, granted=False)
        session.add(row)
    elif row.granted == granted:
        return row
    row.granted = granted
    row.source = source
    row.updated_at = now
    if granted:
        row.granted_at = now
    else:
        row.withdrawn_at = now
    session.add(ConsentChange(member_id=member_id, channel=channel, purpose=purpose, granted=granted,
                              source=source, actor=actor, at=now))
    audit.record(session, actor=actor, action="consent.granted" if granted else "consent.withdrawn",
                 entity="member", entity_id=member_id, data={"channel": channel, "purpose": purpose, "source": source})
    session.flush()
    dirty.mark(session, [member_id], at=now)
    return row


def set_for(session: Session, *, principal: Principal, member_id: int, channel: str, purpose: str,
            granted: bool, source: str) -> ConsentRead:
    member = scope.get_visible(session, principal, member_id)
    set_consent(session, member_id=member.id, channel=channel, purpose=purpose, granted=granted, source=source,
                actor=principal.actor)
    return next(c for c in list_consents(session, principal=principal, member_id=member.id)
                if c.channel == channel and c.purpose == purpose)
