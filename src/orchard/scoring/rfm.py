"""RFM scores, the 8 classic classes and value tiers (SPEC S3), one set-based pass.

At the snapshot (today in the tenant's zone), over the orders of the policy's window (the last
`window_days` tenant-zone days up to `now`; counted orders: paid or partially refunded):

    R  whole days from the last order's local date to today (0 = bought today)
    F  number of orders in the window
    M  spend net of refunds in the window, fen (amount_fen − refunded_fen)

With no window (`window_days` null) the lifetime figures of member_aggregates are read instead of
scanning orders. Scores 1–5: quintiles (`ntile(5)`; ties fall in member-id order, the lower id
getting the lower tile; R = 5 the most recent) or the policy's fixed cut points.

Classes compare raw values with their mean over the scored members: R is "recent" (近) when the days
since the last order are below the mean, F and M are "high" when strictly above their mean. The
comparisons are done in integers (x · n against Σx), so no rounding decides a class. Members with no
order in the window keep a row with null R, scores, class and tier: they did not buy, which is not
the same as "一般挽留".

Value tier (Pareto on M): members ranked by M (ties by id); high while the spend ranked above them is
below high_pct % of the total, medium below high_pct + medium_pct %, then low.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard import db
from orchard.scoring import days
from orchard.scoring.models import VALUE_TIERS
from orchard.scoring.policy import Policy, get_policy

#: (code, zh-CN name, English name, recommended action). Actions follow the seeds' RFM table (001:
#: 高价值客户 重点维护, 潜力客户 引导复购, 流失风险客户 发送唤醒优惠, 新客户 促进二次转化 …).
CLASSES: tuple[tuple[str, str, str, str], ...] = (
    ("important_value", "重要价值客户", "Champions", "重点维护，提供 VIP 服务与专属关怀"),
    ("important_develop", "重要发展客户", "Big spenders to develop", "引导复购，培养购买习惯"),
    ("important_keep", "重要保持客户", "Loyal but slipping", "主动联系，发送唤醒优惠"),
    ("important_retain", "重要挽留客户", "High value at risk", "重点挽回，客服回访并给予召回权益"),
    ("general_value", "一般价值客户", "Loyal low spenders", "激励升级，提升客单价"),
    ("general_develop", "一般发展客户", "New or occasional", "加强引导，促进二次转化"),
    ("general_keep", "一般保持客户", "Frequent but drifting", "提升活跃度"),
    ("general_retain", "一般挽留客户", "Low value, lapsed", "尝试召回，成本可控，可适度减少资源投入"),
)
ACTIONS_EN = {
    "important_value": "Keep them close: VIP service and exclusive care",
    "important_develop": "Drive repeat purchases and build the habit",
    "important_keep": "Reach out with a win-back offer",
    "important_retain": "Win them back: service call-back and a recall benefit",
    "general_value": "Encourage upgrades to raise the basket size",
    "general_develop": "Guide them to a second purchase",
    "general_keep": "Raise engagement",
    "general_retain": "Low-cost recall; spend little",
}
#: (recent, high F, high M) → class.
_KEYS = {(1, 1, 1): "important_value", (1, 0, 1): "important_develop", (0, 1, 1): "important_keep",
         (0, 0, 1): "important_retain", (1, 1, 0): "general_value", (1, 0, 0): "general_develop",
         (0, 1, 0): "general_keep", (0, 0, 0): "general_retain"}
BY_CODE = {c[0]: c for c in CLASSES}

_COUNTED = "('paid','partially_refunded')"


def describe(code: str | None, english: bool = False) -> dict[str, Any] | None:
    """The class as users read it: code, name and recommended action (zh-CN unless `english`)."""
    if code is None:
        return None
    c = BY_CODE[code]
    return {"code": c[0], "name": c[2] if english else c[1], "name_zh": c[1], "name_en": c[2],
            "action": ACTIONS_EN[code] if english else c[3]}


def _base_sql(sql: days.Sql, policy: Policy) -> str:
    """Per live member: r (null = no order in the window), f, m."""
    if policy.rfm.window_days is None:
        source = ("SELECT member_id, last_order_at AS last_at, order_count AS f, total_spend_fen AS m "
                  "FROM member_aggregates WHERE order_count > 0 AND last_order_at IS NOT NULL")
    else:
        source = ("SELECT member_id, MAX(paid_at) AS last_at, COUNT(*) AS f, SUM(amount_fen - refunded_fen) AS m "
                  f"FROM orders WHERE paid_at >= :cut_window AND paid_at <= :now AND status IN {_COUNTED} "
                  "GROUP BY member_id")
    return f"""
CREATE TEMP TABLE scoring_rfm AS
WITH o AS ({source})
SELECT m.id AS member_id,
       CASE WHEN o.member_id IS NULL THEN NULL ELSE {sql.days_ago('o.last_at')} END AS r,
       COALESCE(o.f, 0) AS f, COALESCE(o.m, 0) AS m
FROM members m LEFT JOIN o ON o.member_id = m.id
WHERE m.status = 'active'
"""


def _score_exprs(policy: Policy) -> tuple[str, str, str]:
    cuts = policy.rfm.cuts if policy.rfm.scoring == "cuts" else None
    if cuts is None:
        return ("ntile(5) OVER (ORDER BY s.r DESC, s.member_id)",
                "ntile(5) OVER (ORDER BY s.f, s.member_id)",
                "ntile(5) OVER (ORDER BY s.m, s.member_id)")
    r = "CASE " + " ".join(f"WHEN s.r <= {int(c)} THEN {5 - i}" for i, c in enumerate(cuts.r)) + " ELSE 1 END"

    def up(col: str, values: list[int]) -> str:
        return "CASE " + " ".join(f"WHEN s.{col} < {int(c)} THEN {i + 1}" for i, c in enumerate(values)) + " ELSE 5 END"

    return r, up("f", cuts.f), up("m", cuts.m)


_OUT = ("recency_days", "frequency", "monetary_fen", "r_score", "f_score", "m_score", "rfm_class", "value_tier")


def _scores_sql(policy: Policy) -> str:
    """The new row of every live member (scoring_rfm_out), from scoring_rfm."""
    r_score, f_score, m_score = _score_exprs(policy)
    klass = "CASE " + " ".join(
        f"WHEN sc.recent = {k[0]} AND sc.high_f = {k[1]} AND sc.high_m = {k[2]} THEN '{code}'"
        for k, code in _KEYS.items()) + " END"
    high, medium = policy.value.high_pct, policy.value.high_pct + policy.value.medium_pct
    return f"""
CREATE TEMP TABLE scoring_rfm_out AS
WITH s AS (SELECT member_id, r, f, m FROM scoring_rfm WHERE r IS NOT NULL),
st AS (SELECT COUNT(*) AS n, SUM(r) AS sr, SUM(f) AS sf, SUM(m) AS sm FROM s),
sc AS (
    SELECT s.member_id, {r_score} AS r_score, {f_score} AS f_score, {m_score} AS m_score,
           CASE WHEN s.r * st.n < st.sr THEN 1 ELSE 0 END AS recent,
           CASE WHEN s.f * st.n > st.sf THEN 1 ELSE 0 END AS high_f,
           CASE WHEN s.m * st.n > st.sm THEN 1 ELSE 0 END AS high_m,
           COALESCE(SUM(s.m) OVER (ORDER BY s.m DESC, s.member_id
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS above,
           st.sm AS total
    FROM s CROSS JOIN st
)
SELECT t.member_id, t.r AS recency_days, t.f AS frequency, t.m AS monetary_fen, sc.r_score, sc.f_score,
       sc.m_score,
       CASE WHEN sc.member_id IS NULL THEN NULL ELSE {klass} END AS rfm_class,
       CASE WHEN sc.member_id IS NULL THEN NULL
            WHEN sc.total <= 0 THEN 'low'
            WHEN sc.above * 100 < {high} * sc.total THEN 'high'
            WHEN sc.above * 100 < {medium} * sc.total THEN 'medium'
            ELSE 'low' END AS value_tier
FROM scoring_rfm t LEFT JOIN sc ON sc.member_id = t.member_id
"""


def refresh(session: Session, *, now: dt.datetime) -> dict[str, Any]:
    """Set every live member's RFM row to the snapshot at `now` (and drop merged members' rows). Returns counts:
    {"members", "scored", "computed_on", "by_class": {code: n}, "by_tier": {tier: n}}."""
    policy = get_policy(session)
    sql = days.Sql(session, now)
    params: dict[str, Any] = {**sql.params(), "now": now, "today": sql.today}
    if policy.rfm.window_days is not None:
        params["cut_window"] = days.cut(now, policy.rfm.window_days)
    session.flush()
    db.batch_settings(session)
    for table in ("scoring_rfm", "scoring_rfm_out"):
        session.execute(text(f"DROP TABLE IF EXISTS {table}"))
    days.run(session, _base_sql(sql, policy), params)
    if sql.pg:
        session.execute(text("ANALYZE scoring_rfm"))
    days.run(session, _scores_sql(policy), params)
    if sql.pg:
        session.execute(text("ANALYZE scoring_rfm_out"))
    # Every row changes (R moves with the date), but rows are updated in place rather than deleted and
    # re-inserted: an UPDATE that keeps member_id fires no foreign-key check (the INSERT of every row
    # did, one per member). Merged members' rows go; new members' rows come.
    days.run(session, "DELETE FROM member_rfm WHERE NOT EXISTS "
                      "(SELECT 1 FROM scoring_rfm_out o WHERE o.member_id = member_rfm.member_id)", params)
    days.run(session, "UPDATE member_rfm SET " + ", ".join(f"{c} = o.{c}" for c in _OUT)
             + ", computed_on = :today, computed_at = :now FROM scoring_rfm_out o "
               "WHERE o.member_id = member_rfm.member_id", params)
    days.run(session, "INSERT INTO member_rfm (member_id, " + ", ".join(_OUT) + ", computed_on, computed_at) "
             "SELECT o.member_id, " + ", ".join(f"o.{c}" for c in _OUT) + ", :today, :now FROM scoring_rfm_out o "
             "WHERE NOT EXISTS (SELECT 1 FROM member_rfm r WHERE r.member_id = o.member_id)", params)
    for table in ("scoring_rfm", "scoring_rfm_out"):
        session.execute(text(f"DROP TABLE {table}"))
    by_class = {c[0]: 0 for c in CLASSES}
    by_tier = dict.fromkeys(VALUE_TIERS, 0)
    members = 0
    for klass, tier, n in session.execute(text(
            "SELECT rfm_class, value_tier, COUNT(*) FROM member_rfm GROUP BY rfm_class, value_tier")):
        members += n
        if klass is not None:
            by_class[klass] += n
        if tier is not None:
            by_tier[tier] += n
    session.expire_all()
    return {"members": members, "scored": sum(by_class.values()), "computed_on": sql.today.isoformat(),
            "by_class": by_class, "by_tier": by_tier}
