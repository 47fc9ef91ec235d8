"""Check-in and onboarding-task routes (SPEC L7)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.errors import InvalidInput
from orchard.loyalty import checkin, tasks
from orchard.loyalty.schemas import (
    CheckinProgramIn,
    CheckinProgramRead,
    CheckinRead,
    CheckinStatusRead,
    MakeupIn,
    MemberTaskRead,
    TaskIn,
    TaskRead,
)
from orchard.members import scope

router = APIRouter(tags=["check-in and tasks"])
MemberId = Annotated[int, Path(ge=1, le=2**62)]


def _program_read(prog) -> CheckinProgramRead:
    return CheckinProgramRead(ladder=prog.ladder, cycle=prog.cycle, makeup_per_month=prog.makeup_per_month,
                              makeup_cost_points=prog.makeup_cost_points)


@router.get("/checkin", response_model=CheckinProgramRead, operation_id="getCheckinProgram")
def get_checkin_program(session: SessionDep, principal: Actor(Perm.members_read)) -> CheckinProgramRead:
    return _program_read(checkin.program(session))


@router.put("/checkin", response_model=CheckinProgramRead, operation_id="setCheckinProgram")
def set_checkin_program(body: CheckinProgramIn, session: SessionDep,
                        principal: Actor(Perm.points_rules)) -> CheckinProgramRead:
    return _program_read(checkin.set_program(
        session, ladder=[s.model_dump() for s in body.ladder], cycle=body.cycle,
        makeup_per_month=body.makeup_per_month, makeup_cost_points=body.makeup_cost_points, actor=principal.actor))


def _checkin_read(row, created: bool) -> CheckinRead:
    return CheckinRead(day=row.day, kind=row.kind, streak=row.streak, points=row.points, growth=row.growth,
                       created=created)


@router.post("/members/{member_id}/checkin", response_model=CheckinRead, operation_id="checkInMember")
def check_in(member_id: MemberId, session: SessionDep, principal: Actor(Perm.events_ingest)) -> CheckinRead:
    """Today's check-in (tenant zone) with its streak reward; a second call the same day returns the
    first result with `created: false`."""
    member = scope.get_visible(session, principal, member_id)
    return _checkin_read(*checkin.check_in(session, member_id=member.id))


@router.post("/members/{member_id}/checkin/makeup", response_model=CheckinRead, operation_id="makeUpCheckin",
             responses={409: {"description": "checkin.makeup_limit, checkin.already or points.insufficient"}})
def makeup(member_id: MemberId, body: MakeupIn, session: SessionDep,
           principal: Actor(Perm.events_ingest)) -> CheckinRead:
    """补签: check in a missed day of this month, within the monthly limit (and its points cost)."""
    member = scope.get_visible(session, principal, member_id)
    return _checkin_read(*checkin.makeup(session, member_id=member.id, day=body.day, actor=principal.actor))


@router.get("/members/{member_id}/checkin", response_model=CheckinStatusRead, operation_id="getMemberCheckin")
def checkin_status(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> CheckinStatusRead:
    member = scope.get_visible(session, principal, member_id)
    s = checkin.status(session, member.id)
    return CheckinStatusRead(today=s.today, checked_in_today=s.checked_in_today, streak=s.streak,
                             next_reward=s.next_reward, makeups_left=s.makeups_left, days_this_month=s.days_this_month)


@router.get("/tasks", response_model=list[TaskRead], operation_id="listTasks")
def list_tasks(session: SessionDep, principal: Actor(Perm.members_read)) -> list[TaskRead]:
    return [TaskRead.model_validate(t) for t in tasks.active(session)]


@router.put("/tasks", response_model=list[TaskRead], operation_id="setTasks")
def set_tasks(body: list[TaskIn], session: SessionDep, principal: Actor(Perm.points_rules)) -> list[TaskRead]:
    """The onboarding task series, replaced whole (matched by code; a task left out is retired)."""
    if len({t.code for t in body}) != len(body):
        raise InvalidInput.field("body", "task codes must be distinct")
    for i, t in enumerate(body):
        if (t.kind == "event") != (t.event is not None):
            raise InvalidInput.field(f"body[{i}].event", "an event task names its event; other kinds do not")
    return [TaskRead.model_validate(t) for t in tasks.set_tasks(session, body)]


@router.get("/members/{member_id}/tasks", response_model=list[MemberTaskRead], operation_id="listMemberTasks")
def member_tasks(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read)) -> list[MemberTaskRead]:
    member = scope.get_visible(session, principal, member_id)
    return [MemberTaskRead(**TaskRead.model_validate(t).model_dump(), done=c is not None,
                           completed_at=c.completed_at if c else None) for t, c in tasks.for_member(session, member.id)]
