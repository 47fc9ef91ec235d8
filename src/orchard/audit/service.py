from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchard.audit.models import AuditEntry


def record(session: Session, *, actor: str, action: str, entity: str, entity_id: Any,
           data: dict[str, Any] | None = None) -> None:
    """Append one audit row in the caller's transaction: the change and its record commit together."""
    session.add(AuditEntry(actor=actor, action=action, entity=entity, entity_id=str(entity_id), data=data or {}))
