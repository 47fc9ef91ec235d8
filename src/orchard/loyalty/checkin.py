"""Daily check-in (签到, SPEC L7): a reward ladder by streak day, and make-up check-ins (补签) for
missed days of the current month, up to a monthly limit and optionally at a points cost.

A make-up may fill a missed day of the last 30 days; the monthly limit counts the make-ups made in
the current month. Days are the tenant zone's dates. A day can be checked in once (a unique key, so a double tap or a
retry returns the first result). The streak of a day is the streak of the day before plus one; a
make-up fills a gap so that the *current* streak (consecutive days ending today or yesterday) runs
through it, but days already rewarded keep their reward. Rewards post to the points ledger (source
"checkin", one entry per member and day) and to growth value.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import tenant_zone, utcnow
from orchard.loyalty import growth, ledger, policy, tiers
from orchard.loyalty.models import Checkin, CheckinProgram

ACTOR = "system:checkin"
#: How far back a make-up may reach (the monthly limit counts make-ups by the month they are made in).
MAKEUP_WINDOW_DAYS = 30


def program(session: Session) -> CheckinProgram:
    prog = session.get(CheckinProgram, 1)
    if prog is None:
        raise NotFound("no check-in program is set up", code="checkin.none")
    return prog


def set_program(session: Session, *, ladder: list[dict[str, int]], cycle: bool, makeup_per_month: int,
                makeup_cost_points: int, actor: str) -> CheckinProgram:
    prog = session.get(CheckinProgram, 1, with_for_update=True)
    before = None if prog is None else {"ladder": prog.ladder, "cycle": prog.cycle,
                                        "makeup_per_month": prog.makeup_per_month,
                                        "makeup_cost_points": prog.makeup_cost_points}
    if prog is None:
        prog = CheckinProgram(id=1)
        session.add(prog)
    prog.ladder, prog.cycle, prog.makeup_per_month = ladder, cycle, makeup_per_month
    prog.makeup_cost_points, prog.updated_by, prog.updated_at = makeup_cost_points, actor, utcnow()
    session.flush()
    audit.record(session, actor=actor, action="checkin.program_set", entity="checkin_program", entity_id=1,
                 data={"before": before, "after": {"ladder": ladder, "cycle": cycle,
                                                   "makeup_per_month": makeup_per_month,
                                                   "makeup_cost_points": makeup_cost_points}})
    return prog


def local_day(now: dt.datetime) -> dt.date:
    return now.astimezone(tenant_zone()).date()


def reward(prog: CheckinProgram, streak: int) -> dict[str, int]:
    ladder = prog.ladder or [{}]
    step = (streak - 1) % len(ladder) if prog.cycle else min(streak, len(ladder)) - 1
    return {"points": int(ladder[step].get("points", 0)), "growth": int(ladder[step].get("growth", 0)),
            "step": step + 1}


def _streak_before(session: Session, member_id: int, day: dt.date) -> int:
    prev = session.scalar(select(Checkin.streak).where(Checkin.member_id == member_id,
                                                       Checkin.day == day - dt.timedelta(days=1)))
    return int(prev or 0)


def check_in(session: Session, *, member_id: int, now: dt.datetime | None = None) -> tuple[Checkin, bool]:
    now = now or utcnow()
    return _record(session, member_id=member_id, day=local_day(now), kind="checkin", now=now)


def makeup(session: Session, *, member_id: int, day: dt.date, actor: str,
           now: dt.datetime | None = None) -> tuple[Checkin, bool]:
    """补签 a missed day of the last 30 days, within the monthly limit (make-ups made this month);
    costs points if the program says so (409 points.insufficient when the member has too few)."""
    now = now or utcnow()
    today = local_day(now)
    prior = session.scalar(select(Checkin).where(Checkin.member_id == member_id, Checkin.day == day))
    if prior is not None:
        if prior.kind == "makeup":
            return prior, False  # a retry
        raise Conflict(f"{day} is already checked in", code="checkin.already")
    if not (today - dt.timedelta(days=MAKEUP_WINDOW_DAYS) <= day < today):
        raise InvalidInput.field("day", f"only a missed day of the last {MAKEUP_WINDOW_DAYS} days can be made up")
    prog = program(session)
    used = _makeups_this_month(session, member_id, now)
    if used >= prog.makeup_per_month:
        raise Conflict(f"no make-up check-ins left this month ({prog.makeup_per_month} allowed)",
                       code="checkin.makeup_limit", allowed=prog.makeup_per_month)
    if prog.makeup_cost_points:
        ledger.post(session, ledger.Command(
            member_id=member_id, amount=-prog.makeup_cost_points, kind="spend", reason=f"补签 {day}",
            source="checkin-makeup", external_id=f"{member_id}:{day}", actor=actor,
            request={"day": day.isoformat()}), now=now)
    return _record(session, member_id=member_id, day=day, kind="makeup", now=now)


def _makeups_this_month(session: Session, member_id: int, now: dt.datetime) -> int:
    local = now.astimezone(tenant_zone())
    start = dt.datetime(local.year, local.month, 1, tzinfo=local.tzinfo).astimezone(dt.UTC)
    return int(session.scalar(select(func.count()).select_from(Checkin).where(
        Checkin.member_id == member_id, Checkin.kind == "makeup", Checkin.created_at >= start)) or 0)


def _record(session: Session, *, member_id: int, day: dt.date, kind: str, now: dt.datetime) -> tuple[Checkin, bool]:
    prog = program(session)
    prior = session.scalar(select(Checkin).where(Checkin.member_id == member_id, Checkin.day == day))
    if prior is not None:
        return prior, False
    streak = _streak_before(session, member_id, day) + 1
    got = reward(prog, streak)
    try:
        with session.begin_nested():
            row = Checkin(member_id=member_id, day=day, kind=kind, streak=streak, points=got["points"],
                          growth=got["growth"], created_at=now)
            session.add(row)
            session.flush()
    except IntegrityError:  # the same day checked in concurrently: theirs stands
        return session.scalar(select(Checkin).where(Checkin.member_id == member_id, Checkin.day == day)), False
    text = f"签到 第{streak}天 day {streak} of the streak (ladder step {got['step']})"
    if got["points"]:
        ledger.post(session, ledger.Command(
            member_id=member_id, amount=got["points"], kind="earn", reason=("补签 " if kind == "makeup" else "") + text,
            source="checkin", external_id=f"{member_id}:{day}", actor=ACTOR, expires_at=policy.expires_at(now),
            explanation={"checkin": {"day": day.isoformat(), "streak": streak, "step": got["step"], "kind": kind}},
            request={"day": day.isoformat()}), now=now)
    if got["growth"]:
        growth.post(session, member_id, [{"kind": "earn", "amount": got["growth"], "rule_id": None, "order_id": None,
                                          "line_no": None, "refund_id": None, "source": "checkin", "reason": text,
                                          "actor": ACTOR, "explanation": {"day": day.isoformat()},
                                          "occurred_at": now}], now=now)
        tiers.on_activity(session, member_id)
    return row, True


@dataclass
class Status:
    today: dt.date
    checked_in_today: bool
    streak: int
    next_reward: dict[str, int]
    makeups_left: int
    days_this_month: list[dt.date]


def status(session: Session, member_id: int, now: dt.datetime | None = None) -> Status:
    prog = program(session)
    today = local_day(now or utcnow())
    first = today.replace(day=1)
    recent = list(session.scalars(select(Checkin.day).where(
        Checkin.member_id == member_id, Checkin.day >= min(first, today - dt.timedelta(days=400)))
        .order_by(Checkin.day.desc())))
    days = set(recent)
    cursor = today if today in days else today - dt.timedelta(days=1)
    streak = 0
    while cursor in days:
        streak += 1
        cursor -= dt.timedelta(days=1)
    used = _makeups_this_month(session, member_id, now or utcnow())
    # Checked in today: tomorrow continues the streak; not yet: today does (the streak runs to yesterday).
    upcoming: dict[str, Any] = reward(prog, streak + 1)
    return Status(today=today, checked_in_today=today in days, streak=streak, next_reward=upcoming,
                  makeups_left=max(0, prog.makeup_per_month - used),
                  days_this_month=sorted(d for d in days if d >= first))
