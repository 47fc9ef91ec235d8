"""Lifecycle stages (SPEC S2) for every live member in one set-based pass.

Stages, first match wins (days are tenant-zone calendar days, thresholds from the policy):

    registered  no counted order (member_aggregates.first_order_at is null)
    new         first order fewer than new_days ago
    declining   last order fewer than active_days ago, but the orders of the last active_days are
                fewer than declining_ratio × those of the active_days before (a falling frequency);
                also: no order for active_days but not yet dormant_days, when the policy has a gap
    active      last order fewer than active_days ago
    dormant     last order dormant_days … lost_days − 1 ago
    lost        last order lost_days or more ago

Precedence: "new" beats "declining" and "active" (a first-time buyer is onboarded, not judged on a
trend it cannot have yet; with new_days <= active_days its previous window is empty anyway);
"declining" beats "active" because it is the sharper signal (an active member whose rhythm halved).

`since` is the moment the member entered the stage where the data says it: registered = joined_at,
new = the first order, dormant/lost = local midnight of (last order's date + dormant_days/lost_days),
active after new = local midnight of (first order's date + new_days), the declining gap = last
order's date + active_days; otherwise (e.g. back to active from dormant) the pass time. A member
whose stage did not change keeps its `since` and its row is not rewritten (`computed_at` is the pass
that set the stage: a steady-state pass writes nothing, which keeps it cheap). A transition is
recorded in lifecycle_changes with `at` = the pass time (when the system saw it, so a consumer
polling `at` never misses one).

First and last order come from member_aggregates (kept at ingestion, lifetime); only the
declining test reads orders, over the last 2 × active_days via the paid_at index. Merged members are
skipped and their rows removed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard import db
from orchard.scoring import days
from orchard.scoring.models import STAGES
from orchard.scoring.policy import LifecyclePolicy, get_policy

_COUNTED = "('paid','partially_refunded')"


def _calc_sql(sql: days.Sql, p: LifecyclePolicy) -> str:
    mid = sql.midnight_after
    return f"""
CREATE TEMP TABLE scoring_lc AS
WITH win AS (
    SELECT member_id,
           SUM(CASE WHEN paid_at >= :cut_active THEN 1 ELSE 0 END) AS recent,
           SUM(CASE WHEN paid_at < :cut_active THEN 1 ELSE 0 END) AS previous
    FROM orders
    WHERE paid_at >= :cut_prev AND paid_at <= :now AND status IN {_COUNTED}
    GROUP BY member_id
), calc AS (
    SELECT m.id AS member_id, m.joined_at, a.first_order_at, a.last_order_at,
           CASE
               WHEN a.first_order_at IS NULL THEN 'registered'
               WHEN a.first_order_at >= :cut_new THEN 'new'
               WHEN a.last_order_at >= :cut_active
                    AND COALESCE(w.recent, 0) < :ratio * COALESCE(w.previous, 0) THEN 'declining'
               WHEN a.last_order_at >= :cut_active THEN 'active'
               WHEN a.last_order_at >= :cut_dormant THEN 'declining'
               WHEN a.last_order_at >= :cut_lost THEN 'dormant'
               ELSE 'lost'
           END AS stage
    FROM members m
    LEFT JOIN member_aggregates a ON a.member_id = m.id
    LEFT JOIN win w ON w.member_id = m.id
    WHERE m.status = 'active'
)
SELECT c.member_id, c.stage, l.stage AS old_stage,
       CASE
           WHEN l.stage = c.stage THEN l.since
           WHEN c.stage = 'registered' THEN c.joined_at
           WHEN c.stage = 'new' THEN c.first_order_at
           WHEN c.stage = 'active' AND l.stage = 'new' THEN {mid('c.first_order_at', p.new_days)}
           WHEN c.stage = 'declining' AND c.last_order_at < :cut_active
               THEN {mid('c.last_order_at', p.active_days)}
           WHEN c.stage = 'dormant' THEN {mid('c.last_order_at', p.dormant_days)}
           WHEN c.stage = 'lost' THEN {mid('c.last_order_at', p.lost_days)}
           ELSE :now
       END AS since
FROM calc c
LEFT JOIN member_lifecycle l ON l.member_id = c.member_id
"""


def refresh(session: Session, *, now: dt.datetime) -> dict[str, Any]:
    """Recompute every live member's stage; record the changes. Returns counts:
    {"members", "changed", "by_stage": {stage: n}, "changes": {"from→to": n}}."""
    p = get_policy(session).lifecycle
    sql = days.Sql(session, now)
    params = {**sql.params(), "now": now, "ratio": float(p.declining_ratio),
              "cut_new": days.cut(now, p.new_days), "cut_active": days.cut(now, p.active_days),
              "cut_prev": days.cut(now, 2 * p.active_days), "cut_dormant": days.cut(now, p.dormant_days),
              "cut_lost": days.cut(now, p.lost_days)}
    session.flush()
    db.batch_settings(session)
    session.execute(text("DROP TABLE IF EXISTS scoring_lc"))
    days.run(session, _calc_sql(sql, p), params)
    if sql.pg:
        session.execute(text("ANALYZE scoring_lc"))
    changed = "(t.old_stage IS NULL OR t.old_stage <> t.stage)"
    transitions = session.execute(text(
        f"SELECT t.old_stage, t.stage, COUNT(*) FROM scoring_lc t WHERE {changed} GROUP BY t.old_stage, t.stage"
    )).all()
    days.run(session, f"INSERT INTO lifecycle_changes (member_id, from_stage, to_stage, at) "
                   f"SELECT t.member_id, t.old_stage, t.stage, :now FROM scoring_lc t WHERE {changed}", params)
    days.run(session, "UPDATE member_lifecycle SET stage = t.stage, since = t.since, computed_at = :now "
                   "FROM scoring_lc t WHERE t.member_id = member_lifecycle.member_id "
                   "AND t.old_stage IS NOT NULL AND t.old_stage <> t.stage", params)
    days.run(session, "INSERT INTO member_lifecycle (member_id, stage, since, computed_at) "
                   "SELECT t.member_id, t.stage, t.since, :now FROM scoring_lc t WHERE t.old_stage IS NULL", params)
    session.execute(text("DELETE FROM member_lifecycle WHERE member_id IN "
                         "(SELECT id FROM members WHERE status = 'merged')"))
    by_stage = dict.fromkeys(STAGES, 0)
    for stage, n in session.execute(text("SELECT stage, COUNT(*) FROM scoring_lc GROUP BY stage")):
        by_stage[stage] = n
    session.execute(text("DROP TABLE scoring_lc"))
    session.expire_all()
    return {"members": sum(by_stage.values()), "changed": sum(n for _, _, n in transitions),
            "by_stage": by_stage, "changes": {f"{a or '-'}→{b}": n for a, b, n in transitions}}
