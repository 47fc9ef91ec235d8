"""Tiers (会员等级, SPEC L6): levels by a metric over a period, upgrades at once, downgrades on a
schedule after a hold, manual overrides with an end, and every change recorded with its reason.

The metric is growth value, spend (fen, net of refunds), order count, or a score (weights × growth,
spend in yuan, orders), over a rolling 12 months, the calendar year (tenant zone) or a lifetime. A
member's target level is the highest active level whose threshold the metric reaches.

`evaluate` is set-based: one temporary table holds every member's metric, current and target rank,
and a handful of INSERT/UPDATE … SELECT statements apply it — never a loop over members. Passing
`member_ids` runs the same statements for those members only (an order crossing a threshold
upgrades its member in the order's transaction). Rules, in order:

* an active override whose end has passed ends (recorded `override_ended`);
* target above current → upgrade now, held for `hold_days` (`upgrade`);
* target at or above current → the hold is renewed (scheduled runs only);
* target below current and the hold has run out → `downgrade`, one level at a time or straight to
  the target (`recompute`), held again for `hold_days` at the new level.

Members without a `member_tiers` row are at the base (lowest-rank) level.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.db import UTCDateTime
from orchard.errors import InvalidInput, NotFound
from orchard.kit.clock import tenant_zone, utcnow
from orchard.loyalty.models import MemberTier, TierChange, TierLevel, TierProgram

ACTOR = "system:tiers"


def program(session: Session) -> TierProgram | None:
    return session.get(TierProgram, 1)


def levels(session: Session, *, active_only: bool = True) -> list[TierLevel]:
    q = select(TierLevel).order_by(TierLevel.rank)
    if active_only:
        q = q.where(TierLevel.active.is_(True))
    return list(session.scalars(q))


def period_start(prog: TierProgram, now: dt.datetime) -> dt.datetime | None:
    if prog.period == "lifetime":
        return None
    local = now.astimezone(tenant_zone())
    if prog.period == "calendar_year":
        return dt.datetime(local.year, 1, 1, tzinfo=local.tzinfo).astimezone(dt.UTC)
    try:
        start = local.replace(year=local.year - 1)
    except ValueError:  # 29 February
        start = local.replace(year=local.year - 1, day=28)
    return start.astimezone(dt.UTC)


def period_end(prog: TierProgram, now: dt.datetime) -> dt.datetime | None:
    """When the current period closes (calendar year only: a rolling window never closes)."""
    if prog.period != "calendar_year":
        return None
    local = now.astimezone(tenant_zone())
    return dt.datetime(local.year + 1, 1, 1, tzinfo=local.tzinfo).astimezone(dt.UTC)


def _metric_sql(prog: TierProgram, since: dt.datetime | None, members_filter: str) -> str:
    """SELECT member_id, value for active members (the filter narrows to some)."""
    growth_since = "AND g.occurred_at >= :since" if since else ""
    orders_since = "AND o.paid_at >= :since" if since else ""
    growth = (f"SELECT g.member_id, sum(g.amount) AS v FROM growth_entries g WHERE 1=1 {growth_since} "
              f"{members_filter.replace('m.id', 'g.member_id')} GROUP BY g.member_id")
    orders = ("SELECT o.member_id, sum(o.amount_fen - o.refunded_fen) AS spend, count(*) AS n FROM orders o "
              f"WHERE o.status IN ('paid', 'partially_refunded') {orders_since} "
              f"{members_filter.replace('m.id', 'o.member_id')} GROUP BY o.member_id")
    w = prog.weights or {}
    value = {
        "growth": "coalesce(g.v, 0)",
        "spend": "coalesce(o.spend, 0)",
        "orders": "coalesce(o.n, 0)",
        "score": (f"{int(w.get('growth', 1))} * coalesce(g.v, 0) + {int(w.get('spend_yuan', 1))} * "
                  f"(coalesce(o.spend, 0) / 100) + {int(w.get('orders', 0))} * coalesce(o.n, 0)"),
    }[prog.metric]
    return (f"SELECT m.id AS member_id, {value} AS value FROM members m "
            f"LEFT JOIN ({growth}) g ON g.member_id = m.id LEFT JOIN ({orders}) o ON o.member_id = m.id "
            f"WHERE m.status = 'active' {members_filter}")


@dataclass
class EvaluationResult:
    members: int
    upgraded: int
    downgraded: int
    overrides_ended: int


def _sql(statement: str):
    binds = [bindparam(n, type_=UTCDateTime) for n in ("now", "since", "hold_until") if f":{n}" in statement]
    return text(statement).bindparams(*binds)


def evaluate(session: Session, *, member_ids: list[int] | None = None, now: dt.datetime | None = None,
             upgrade_only: bool = False, actor: str = ACTOR) -> EvaluationResult:
    prog = program(session)
    active = levels(session)
    if prog is None or not active:
        return EvaluationResult(0, 0, 0, 0)
    now = now or utcnow()
    since = period_start(prog, now)
    params: dict[str, Any] = {"now": now, "since": since, "hold_until": now + dt.timedelta(days=prog.hold_days),
                              "actor": actor, "base": active[0].id}
    members_filter = ""
    if member_ids is not None:
        if not member_ids:
            return EvaluationResult(0, 0, 0, 0)
        members_filter = f"AND m.id IN ({', '.join(str(int(i)) for i in member_ids)})"
    session.execute(_sql("DROP TABLE IF EXISTS _tier_eval"))
    # One statement decides every member: current (stored level, base when none), target (the highest
    # active level reached) and the change, if any — a separate UPDATE of the temporary table per rule
    # rewrote its 1M rows three times. The downgrade step's subquery runs only for members going down.
    below = ("(SELECT l.id FROM tier_levels l WHERE l.active AND l.rank < y.cur_rank "
             "ORDER BY l.rank DESC LIMIT 1)")
    step = below if prog.downgrade == "one_level" else "y.target_id"
    down = "1 = 0" if upgrade_only else (
        "tl.rank < y.cur_rank AND y.has_row AND (y.keep_until IS NULL OR y.keep_until <= :now)")
    # MATERIALIZED: inlined, the target's subquery would be copied into the join and each CASE and run
    # up to four times per member (the nightly pass got slower than the three UPDATEs it replaced).
    session.execute(_sql(
        "CREATE TEMP TABLE _tier_eval AS WITH y AS MATERIALIZED ("
        "SELECT x.member_id, x.value, t.level_id AS cur_id, coalesce(cl.rank, bl.rank) AS cur_rank, "
        "t.keep_until, t.member_id IS NOT NULL AS has_row, "
        "coalesce((SELECT l.id FROM tier_levels l WHERE l.active AND l.threshold <= x.value "
        " ORDER BY l.rank DESC LIMIT 1), :base) AS target_id "
        f"FROM ({_metric_sql(prog, since, members_filter)}) x "
        "LEFT JOIN member_tiers t ON t.member_id = x.member_id "
        "LEFT JOIN tier_levels cl ON cl.id = t.level_id "
        "JOIN tier_levels bl ON bl.id = :base) "
        "SELECT y.member_id, y.value, y.cur_id, y.cur_rank, y.keep_until, y.has_row, y.target_id, "
        "tl.rank AS target_rank, "
        f"CASE WHEN tl.rank > y.cur_rank THEN y.target_id WHEN {down} THEN {step} END AS new_id, "
        f"CASE WHEN tl.rank > y.cur_rank THEN 'upgrade' WHEN {down} THEN 'downgrade' END AS why "
        "FROM y JOIN tier_levels tl ON tl.id = y.target_id"), params)
    session.execute(_sql("CREATE INDEX _tier_eval_member ON _tier_eval (member_id)"))
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_sql("ANALYZE _tier_eval"))
    counts = dict(session.execute(_sql("SELECT why, count(*) FROM _tier_eval WHERE why IS NOT NULL GROUP BY why"))
                  .all())
    session.execute(_sql(
        "INSERT INTO tier_changes (member_id, from_level_id, to_level_id, reason, metric_value, actor, details, at) "
        "SELECT member_id, coalesce(cur_id, :base), new_id, why, value, :actor, '{}', :now FROM _tier_eval "
        "WHERE why IS NOT NULL"), params)
    session.execute(_sql(
        "UPDATE member_tiers SET level_id = e.new_id, since = :now, keep_until = :hold_until, metric_value = e.value, "
        "evaluated_at = :now FROM _tier_eval e WHERE e.member_id = member_tiers.member_id AND e.why IS NOT NULL"),
        params)
    session.execute(_sql(
        "INSERT INTO member_tiers (member_id, level_id, since, keep_until, metric_value, evaluated_at) "
        "SELECT member_id, new_id, :now, :hold_until, value, :now FROM _tier_eval "
        "WHERE why = 'upgrade' AND NOT has_row"), params)
    if not upgrade_only:
        # Everyone evaluated gets the metric stored; qualified again, the hold starts over. Members changed
        # above already have both (and those placed for the first time were just written): rewriting
        # them doubled the first pass's writes for nothing.
        session.execute(_sql(
            "UPDATE member_tiers SET metric_value = e.value, evaluated_at = :now, keep_until = CASE WHEN "
            "e.target_rank >= e.cur_rank THEN :hold_until ELSE member_tiers.keep_until END "
            "FROM _tier_eval e WHERE e.member_id = member_tiers.member_id AND e.why IS NULL"), params)
    ended = 0
    if not upgrade_only:
        where = "override_until <= :now" + (f" AND member_id IN ({', '.join(str(int(i)) for i in member_ids)})"
                                             if member_ids else "")
        session.execute(_sql(
            "INSERT INTO tier_changes (member_id, from_level_id, to_level_id, reason, metric_value, actor, details, "
            "at) SELECT member_id, override_level_id, level_id, 'override_ended', metric_value, :actor, '{}', :now "
            f"FROM member_tiers WHERE {where}"), params)
        ended = session.execute(_sql(
            "UPDATE member_tiers SET override_level_id = NULL, override_until = NULL, override_reason = NULL "
            f"WHERE {where}"), params).rowcount or 0
    evaluated = session.execute(_sql("SELECT count(*) FROM _tier_eval")).scalar_one()
    if counts or ended:
        session.execute(_sql(
            "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) "
            "SELECT :now, :actor, 'tier.' || why, 'member', CAST(member_id AS varchar), '{}' FROM _tier_eval "
            "WHERE why IS NOT NULL"), params)
    session.execute(_sql("DROP TABLE _tier_eval"))
    return EvaluationResult(int(evaluated), int(counts.get("upgrade", 0)), int(counts.get("downgrade", 0)), ended)


def on_activity(session: Session, member_id: int) -> None:
    """An order or event changed what the member has done: upgrade at once if a threshold is crossed."""
    if session.get(TierProgram, 1) is not None:
        evaluate(session, member_ids=[member_id], upgrade_only=True)


def effective_code(session: Session, member_id: int, now: dt.datetime | None = None) -> str | None:
    """The member's tier as the other modules see it: an active override wins."""
    now = now or utcnow()
    row = session.get(MemberTier, member_id)
    if row is not None:
        level_id = row.override_level_id if row.override_until and row.override_until > now else row.level_id
        return session.scalar(select(TierLevel.code).where(TierLevel.id == level_id))
    base = session.scalar(select(TierLevel.code).where(TierLevel.active.is_(True)).order_by(TierLevel.rank).limit(1))
    return base


def override(session: Session, *, member_id: int, level_code: str, until: dt.datetime, reason: str,
             actor: str, now: dt.datetime | None = None) -> MemberTier:
    """Set a member's tier by hand until a date (a VIP gesture, a complaint settled); it ends by
    itself at the next evaluation after `until`."""
    now = now or utcnow()
    if until <= now:
        raise InvalidInput.field("until", "must be in the future")
    level = session.scalar(select(TierLevel).where(TierLevel.code == level_code, TierLevel.active.is_(True)))
    if level is None:
        raise InvalidInput.field("level", f"unknown tier level {level_code!r}")
    active = levels(session)
    row = session.get(MemberTier, member_id, with_for_update=True)
    if row is None:
        row = MemberTier(member_id=member_id, level_id=active[0].id, since=now, keep_until=None, metric_value=0,
                         evaluated_at=now)
        session.add(row)
    before = row.override_level_id if row.override_until and row.override_until > now else row.level_id
    row.override_level_id, row.override_until, row.override_reason = level.id, until, reason
    session.add(TierChange(member_id=member_id, from_level_id=before, to_level_id=level.id, reason="override",
                           metric_value=row.metric_value, actor=actor,
                           details={"until": until.isoformat(), "reason": reason}, at=now))
    session.flush()
    audit.record(session, actor=actor, action="tier.override", entity="member", entity_id=member_id,
                 data={"level": level_code, "until": until.isoformat(), "reason": reason})
    return row


@dataclass
class Standing:
    level: TierLevel
    effective: TierLevel
    since: dt.datetime | None
    keep_until: dt.datetime | None
    override_until: dt.datetime | None
    metric: str
    period: str
    value: int
    next_level: TierLevel | None
    next_needs: int | None
    keep_needs: int
    period_ends: dt.datetime | None


def standing(session: Session, member_id: int, now: dt.datetime | None = None) -> Standing:
    """Where the member stands: the tier, the metric now, what the next tier needs and what keeping
    this one needs, by when."""
    prog = program(session)
    active = levels(session)
    if prog is None or not active:
        raise NotFound("no tier program is set up", code="tiers.none")
    now = now or utcnow()
    one = f"AND m.id = {int(member_id)}"
    value = session.execute(_sql(f"SELECT value FROM ({_metric_sql(prog, period_start(prog, now), one)}) x"),
                            {"since": period_start(prog, now)}).scalar()
    value = int(value or 0)
    row = session.get(MemberTier, member_id)
    by_id = {lv.id: lv for lv in levels(session, active_only=False)}
    level = by_id[row.level_id] if row else active[0]
    eff = by_id[row.override_level_id] if row and row.override_until and row.override_until > now else level
    higher = [lv for lv in active if lv.rank > level.rank]
    nxt = higher[0] if higher else None
    return Standing(level=level, effective=eff, since=row.since if row else None,
                    keep_until=row.keep_until if row else None,
                    override_until=row.override_until if eff is not level else None, metric=prog.metric,
                    period=prog.period, value=value, next_level=nxt,
                    next_needs=max(0, nxt.threshold - value) if nxt else None,
                    keep_needs=max(0, level.threshold - value), period_ends=period_end(prog, now))


def set_program(session: Session, body: Any, *, actor: str, now: dt.datetime | None = None) -> TierProgram:
    """Replace the program (body: schemas.TierProgramIn). Levels match by code; a level left out is
    retired. Ranks and thresholds must rise together and the lowest level starts at 0, so every
    member has exactly one level. Takes effect at the next evaluation (upgrades at once on activity)."""
    now = now or utcnow()
    wanted = sorted(body.levels, key=lambda lv: lv.rank)
    if len({lv.code for lv in wanted}) != len(wanted) or len({lv.rank for lv in wanted}) != len(wanted):
        raise InvalidInput.field("levels", "level codes and ranks must be distinct")
    if wanted[0].threshold != 0:
        raise InvalidInput.field("levels", "the lowest level's threshold must be 0 (every member starts there)")
    for lower, higher in zip(wanted, wanted[1:], strict=False):
        if higher.threshold <= lower.threshold:
            raise InvalidInput.field("levels", f"{higher.code}: a higher rank needs a higher threshold than "
                                               f"{lower.code}")
    prog = session.get(TierProgram, 1, with_for_update=True)
    before = _program_snapshot(session, prog) if prog else None
    if prog is None:
        prog = TierProgram(id=1)
        session.add(prog)
    prog.metric, prog.period, prog.downgrade, prog.hold_days = body.metric, body.period, body.downgrade, body.hold_days
    prog.weights, prog.updated_by, prog.updated_at = dict(body.weights), actor, now
    known = {lv.code: lv for lv in levels(session, active_only=False)}
    # Ranks move freely between levels: park the old ranks out of the way first.
    for lv in known.values():
        lv.rank = -1000 - lv.id if lv.code not in {w.code for w in wanted} else lv.rank
    for w in wanted:
        lv = known.get(w.code)
        if lv is None:
            session.add(TierLevel(code=w.code, name=w.name, rank=w.rank, threshold=w.threshold,
                                  benefits=dict(w.benefits), active=True))
        else:
            lv.name, lv.rank, lv.threshold, lv.benefits, lv.active = w.name, w.rank, w.threshold, dict(w.benefits), True
    for code, lv in known.items():
        if code not in {w.code for w in wanted}:
            lv.active = False
    session.flush()
    audit.record(session, actor=actor, action="tier.program_set", entity="tier_program", entity_id=1,
                 data={"before": before, "after": _program_snapshot(session, prog)})
    return prog


def _program_snapshot(session: Session, prog: TierProgram) -> dict[str, Any]:
    return {"metric": prog.metric, "period": prog.period, "downgrade": prog.downgrade, "hold_days": prog.hold_days,
            "weights": prog.weights, "levels": [{"code": lv.code, "rank": lv.rank, "threshold": lv.threshold,
                                                  "benefits": lv.benefits} for lv in levels(session)]}


def history(session: Session, member_id: int, limit: int = 100) -> list[tuple[TierChange, str | None, str | None]]:
    codes = {lv.id: lv.code for lv in levels(session, active_only=False)}
    rows = session.scalars(select(TierChange).where(TierChange.member_id == member_id)
                           .order_by(TierChange.at.desc(), TierChange.id.desc()).limit(limit))
    return [(c, codes.get(c.from_level_id), codes.get(c.to_level_id)) for c in rows]
