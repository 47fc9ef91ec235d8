"""Onboarding tasks (SPEC L7): complete the profile, a first order, a first review, follow the
official account … each rewarded once per member (a unique key), as soon as the thing happens.

Hooks: an order that earns (`earning.on_order`), an event (`earning.on_event`), and a member
created or edited (`members.service`). A task defined after members already qualify rewards them
the next time one of those happens for them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.kit.clock import utcnow
from orchard.loyalty import growth, ledger, policy, tiers
from orchard.loyalty.models import LoyaltyTask, TaskCompletion
from orchard.members.models import Member

ACTOR = "system:tasks"
#: What "a complete profile" means.
PROFILE_FIELDS = ("name", "birthday", "region")


def active(session: Session, kind: str | None = None) -> list[LoyaltyTask]:
    q = select(LoyaltyTask).where(LoyaltyTask.active.is_(True)).order_by(LoyaltyTask.rank, LoyaltyTask.id)
    if kind:
        q = q.where(LoyaltyTask.kind == kind)
    return list(session.scalars(q))


def set_tasks(session: Session, bodies: list[Any]) -> list[LoyaltyTask]:
    """Create or update tasks by code; tasks left out are deactivated (completions stay)."""
    known = {t.code: t for t in session.scalars(select(LoyaltyTask))}
    for b in bodies:
        t = known.get(b.code) or LoyaltyTask(code=b.code)
        t.name, t.kind, t.event, t.points, t.growth, t.rank, t.active = (
            b.name, b.kind, b.event, b.points, b.growth, b.rank, True)
        session.add(t)
    for code, t in known.items():
        if code not in {b.code for b in bodies}:
            t.active = False
    session.flush()
    return active(session)


def complete(session: Session, task: LoyaltyTask, member_id: int, *, now: dt.datetime | None = None) -> bool:
    """Reward `task` for the member once; False if it was already done."""
    now = now or utcnow()
    try:
        with session.begin_nested():
            session.add(TaskCompletion(member_id=member_id, task_id=task.id, completed_at=now, points=task.points,
                                       growth=task.growth))
            session.flush()
    except IntegrityError:
        return False
    if task.points:
        ledger.post(session, ledger.Command(
            member_id=member_id, amount=task.points, kind="earn", reason=f"任务奖励 {task.name}"[:200], source="task",
            external_id=f"{task.id}:{member_id}", actor=ACTOR, expires_at=policy.expires_at(now),
            explanation={"task": {"code": task.code, "name": task.name}}, request={"task": task.id}), now=now)
    if task.growth:
        growth.post(session, member_id, [{"kind": "earn", "amount": task.growth, "rule_id": None, "order_id": None,
                                          "line_no": None, "refund_id": None, "source": "task",
                                          "reason": f"任务奖励 {task.name}"[:200], "actor": ACTOR,
                                          "explanation": {"task": task.code}, "occurred_at": now}], now=now)
        tiers.on_activity(session, member_id)
    return True


def _open(session: Session, member_id: int, tasks: list[LoyaltyTask]) -> list[LoyaltyTask]:
    if not tasks:
        return []
    done = set(session.scalars(select(TaskCompletion.task_id).where(
        TaskCompletion.member_id == member_id, TaskCompletion.task_id.in_([t.id for t in tasks]))))
    return [t for t in tasks if t.id not in done]


def on_order(session: Session, member_id: int) -> None:
    for task in _open(session, member_id, active(session, "first_order")):
        complete(session, task, member_id)


def on_event(session: Session, member_id: int, name: str) -> None:
    for task in _open(session, member_id, [t for t in active(session, "event") if t.event == name]):
        complete(session, task, member_id)


def on_profile(session: Session, member: Member) -> None:
    if all(getattr(member, f) for f in PROFILE_FIELDS) and member.gender != "unknown":
        for task in _open(session, member.id, active(session, "profile")):
            complete(session, task, member.id)


def for_member(session: Session, member_id: int) -> list[tuple[LoyaltyTask, TaskCompletion | None]]:
    tasks = active(session)
    done = {c.task_id: c for c in session.scalars(select(TaskCompletion).where(TaskCompletion.member_id == member_id))}
    return [(t, done.get(t.id)) for t in tasks]
