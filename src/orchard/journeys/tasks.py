"""Staff tasks created by journeys: call-backs (回访) and WeCom one-to-one messages, assigned to the
member's home store; store staff see and close only their stores' tasks."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.audit.service import record
from orchard.auth.service import Principal
from orchard.errors import Conflict, NotFound
from orchard.journeys.models import StaffTask
from orchard.kit.clock import utcnow
from orchard.members.models import Member


def create(session: Session, *, key: str, member_id: int, kind: str, title: str, body: str | None,
           due_at: dt.datetime | None, journey_id: int | None = None, run_id: int | None = None) -> StaffTask:
    """Idempotent on `key`: a re-run step finds the task it made."""
    task = session.scalar(select(StaffTask).where(StaffTask.key == key))
    if task is not None:
        return task
    member = session.get(Member, member_id)
    task = StaffTask(key=key, member_id=member_id, store_id=member.home_store_id if member else None, kind=kind,
                     title=title, body=body, status="open", due_at=due_at, journey_id=journey_id, run_id=run_id,
                     created_at=utcnow())
    session.add(task)
    session.flush()
    return task


def visible(principal: Principal):
    return None if principal.store_ids is None else StaffTask.store_id.in_(sorted(principal.store_ids))


def listing(session: Session, principal: Principal, *, status: str | None = "open",
            limit: int = 100) -> list[StaffTask]:
    stmt = select(StaffTask).order_by(StaffTask.due_at, StaffTask.id).limit(limit)
    if status:
        stmt = stmt.where(StaffTask.status == status)
    if (cond := visible(principal)) is not None:
        stmt = stmt.where(cond)
    return list(session.scalars(stmt))


def close(session: Session, principal: Principal, *, task_id: int, status: str, outcome: str | None) -> StaffTask:
    stmt = select(StaffTask).where(StaffTask.id == task_id).with_for_update()
    if (cond := visible(principal)) is not None:
        stmt = stmt.where(cond)
    task = session.scalar(stmt)
    if task is None:
        raise NotFound("task not found", code="task.not_found")
    if task.status != "open":
        raise Conflict(f"the task is already {task.status}", code="task.closed")
    task.status, task.outcome, task.done_by, task.done_at = status, outcome, principal.actor, utcnow()
    record(session, actor=principal.actor, action=f"task.{status}", entity="staff_task", entity_id=task.id,
           data={"outcome": outcome})
    session.flush()
    return task
