"""Journey reporting (J5): per journey, per step and per variant, what happened to the members who entered, what
the messages did, and whether the journey moved anyone to buy.

Counts (all grouped SQL over the journey's runs, messages and decision log; nothing per member in Python):

* **entered** — runs that reached the step (any recorded decision at it; for the journey: runs started);
  **waiting** — runs in flight at the step now (active or waiting).
* **sent** — messages the provider accepted (`sent_at`); **pending** — queued or being sent; **failed** —
  refused by the provider, dead after retries, or reported undelivered; **suppressed** — by reason (caps,
  consent, quiet days, exclusions, priority …) — never decided to send.
* **delivered / opened / clicked** — where the channel reports them (messaging.receipts; a tracked link click
  counts as a click). A read or a click also counts as delivered.
* **converted** — the member did the journey's conversion (its `exit_on` event, an order by default) within
  `attribution_days` **after the touch**: after a message of the run was sent. Control members get no message,
  so for them the window starts when they entered. Per step, the touch is that step's message.
* **revenue_fen** — paid orders (less refunds) in the same windows, each order once per run, whatever the
  conversion event is.

Control comparison: runs assigned to a variant (treated) against held-out runs (control), both counted from
assignment (intent to treat): a treated member whose every message was suppressed stays in the denominator and
cannot convert, so suppression shows as lost lift rather than being hidden. Absolute lift, a 95 % interval
(unpooled standard error) and a two-sided two-proportion z-test (pooled), computed with `math.erfc`: neither
scipy nor statsmodels is a dependency.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import and_, case, distinct, func, literal, literal_column, null, select, union_all
from sqlalchemy.orm import Session

from orchard.errors import InvalidInput
from orchard.events.models import Event, Order
from orchard.journeys import graph as G
from orchard.journeys.models import OPEN, Journey, JourneyLog, JourneyRun, JourneyVersion
from orchard.messaging.models import Message

#: The variant of runs that have not been through a split (every run of a journey without one).
NO_VARIANT = "none"
CONTROL = "control"
#: Two-sided 95 %.
Z_95 = 1.959963984540054


def _within(pg: bool, ts, anchor, days: int):
    """`ts` falls in [anchor, anchor + days]. Day arithmetic differs: an interval on PostgreSQL, Julian days on
    SQLite (where times are stored as ISO text)."""
    if pg:
        return and_(ts >= anchor, ts <= anchor + literal_column(f"INTERVAL '{int(days)} days'"))
    return and_(ts >= anchor, func.julianday(ts) <= func.julianday(anchor) + int(days))


def _graphs(session: Session, journey: Journey) -> list[dict[str, Any]]:
    """The journey's graphs, the live (else newest) version first: step order and types, and the conversion."""
    versions = list(session.scalars(select(JourneyVersion).where(JourneyVersion.journey_id == journey.id)
                                    .order_by(JourneyVersion.version.desc())))
    versions.sort(key=lambda v: v.id != journey.live_version_id)
    return [v.graph or {} for v in versions]


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> dict[str, float] | None:
    """Group 1 (treated) converted x1 of n1, group 2 (control) x2 of n2: absolute lift p1 − p2 with its 95 %
    interval (unpooled SE), z (pooled SE under H0: p1 = p2) and the two-sided p-value erfc(|z| / √2).
    None when a group is empty. With no variation at all (both 0 % or both 100 %) z is 0 and p is 1."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    lift = p1 - p2
    pooled = (x1 + x2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = lift / se0 if se0 > 0 else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2)) if se0 > 0 else 1.0
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return {"treated_rate": p1, "control_rate": p2, "absolute_lift": lift,
            "relative_lift": lift / p2 if p2 > 0 else None,
            "lift_ci95": (lift - Z_95 * se, lift + Z_95 * se), "z": z, "p_value": p_value}


def _metrics() -> dict[str, Any]:
    return {"entered": 0, "waiting": 0, "sent": 0, "pending": 0, "failed": 0, "suppressed": {}, "delivered": 0,
            "opened": 0, "clicked": 0, "converted": 0, "revenue_fen": 0}


def _add_messages(into: dict[str, Any], status: str, reason: str | None, row, *, outcomes: bool = True) -> None:
    """Fold one (status, reason) group of messages into a cell; `outcomes`: also its conversions and revenue
    (per step; a variant takes them from its runs, where a run with two touches counts once)."""
    n = int(row.n)
    if status in ("suppressed", "cancelled"):
        key = reason or status
        into["suppressed"][key] = into["suppressed"].get(key, 0) + n
    elif status in ("queued", "sending"):
        into["pending"] += n
    elif status in ("failed", "dead"):
        into["failed"] += n
    for k in ("sent", "delivered", "opened", "clicked") + (("converted", "revenue_fen") if outcomes else ()):
        into[k] += int(getattr(row, k) or 0)


def report(session: Session, journey: Journey, *, attribution_days: int = 7) -> dict[str, Any]:
    """The journey's report: totals, per variant, per step (and variant within it), control comparison."""
    pg = session.get_bind().dialect.name == "postgresql"
    jid = journey.id
    R, M, L = JourneyRun.__table__, Message.__table__, JourneyLog.__table__
    OT, ET = Order.__table__, Event.__table__
    graphs = _graphs(session, journey)
    exit_on = ((graphs[0].get("exit_on") or {}).get("event") if graphs else None) or "$order"

    # What counts as converting, as (member_id, at) rows.
    if exit_on == "$order":
        conv = select(OT.c.member_id, OT.c.paid_at.label("at")).where(OT.c.status != "refunded").subquery("conv")
    else:
        conv = select(ET.c.member_id, ET.c.occurred_at.label("at")).where(ET.c.name == exit_on).subquery("conv")
    # Touches: every message of the journey the provider accepted; anchors: touches plus control runs' entry.
    touches = select(M.c.run_id, M.c.member_id, M.c.id.label("message_id"), M.c.sent_at.label("at")).where(
        M.c.journey_id == jid, M.c.sent_at.is_not(None), M.c.run_id.is_not(None))
    held_out = select(R.c.id.label("run_id"), R.c.member_id, null().label("message_id"),
                      R.c.entered_at.label("at")).where(R.c.journey_id == jid, R.c.variant == CONTROL)
    anchors = union_all(touches, held_out).subquery("anchor")
    touched = touches.subquery("touch")

    def converting(a):
        return a.join(conv, and_(conv.c.member_id == a.c.member_id,
                                 _within(pg, conv.c.at, a.c.at, attribution_days)))

    def buying(a):
        return a.join(OT, and_(OT.c.member_id == a.c.member_id, OT.c.status != "refunded",
                               _within(pg, OT.c.paid_at, a.c.at, attribution_days)))

    amount = (OT.c.amount_fen - OT.c.refunded_fen).label("amount")
    conv_runs = select(anchors.c.run_id).select_from(converting(anchors)).distinct().subquery("conv_runs")
    run_orders = select(anchors.c.run_id, OT.c.id.label("order_id"), amount).select_from(buying(anchors)) \
        .distinct().subquery("run_orders")
    rev_runs = select(run_orders.c.run_id, func.sum(run_orders.c.amount).label("revenue")) \
        .group_by(run_orders.c.run_id).subquery("rev_runs")
    conv_msgs = select(touched.c.message_id).select_from(converting(touched)).distinct().subquery("conv_msgs")
    rev_msgs = select(touched.c.message_id, func.sum(amount).label("revenue")).select_from(buying(touched)) \
        .group_by(touched.c.message_id).subquery("rev_msgs")

    variant = func.coalesce(R.c.variant, literal(NO_VARIANT))

    def flag(cond):
        return func.sum(case((cond, 1), else_=0))

    runs = session.execute(select(
        variant.label("variant"), func.count().label("entered"), flag(R.c.status.in_(OPEN)).label("waiting"),
        flag(R.c.status == "completed").label("completed"), flag(R.c.status == "exited").label("exited"),
        func.count(conv_runs.c.run_id).label("converted"),
        func.coalesce(func.sum(rev_runs.c.revenue), 0).label("revenue_fen"),
    ).select_from(R.outerjoin(conv_runs, conv_runs.c.run_id == R.c.id).outerjoin(rev_runs, rev_runs.c.run_id == R.c.id))
        .where(R.c.journey_id == jid).group_by(variant)).all()

    messages = session.execute(select(
        M.c.step, variant.label("variant"), M.c.status, M.c.reason, func.count().label("n"),
        func.count(M.c.sent_at).label("sent"), func.count(M.c.delivered_at).label("delivered"),
        func.count(M.c.opened_at).label("opened"), func.count(M.c.clicked_at).label("clicked"),
        func.count(conv_msgs.c.message_id).label("converted"),
        func.coalesce(func.sum(rev_msgs.c.revenue), 0).label("revenue_fen"),
    ).select_from(M.outerjoin(R, R.c.id == M.c.run_id).outerjoin(conv_msgs, conv_msgs.c.message_id == M.c.id)
                  .outerjoin(rev_msgs, rev_msgs.c.message_id == M.c.id))
        .where(M.c.journey_id == jid).group_by(M.c.step, variant, M.c.status, M.c.reason)).all()

    reached = session.execute(select(
        L.c.step, variant.label("variant"), func.count(distinct(L.c.run_id)).label("n"),
    ).select_from(L.join(R, R.c.id == L.c.run_id)).where(
        L.c.journey_id == jid, L.c.step.is_not(None), L.c.kind != "not_entered").group_by(L.c.step, variant)).all()

    waiting = session.execute(select(R.c.step, variant.label("variant"), func.count().label("n")).where(
        R.c.journey_id == jid, R.c.status.in_(OPEN)).group_by(R.c.step, variant)).all()

    # -- assemble (a handful of grouped rows, not members) --
    variants: dict[str, dict[str, Any]] = {}
    for r in runs:
        v = variants.setdefault(r.variant, {**_metrics(), "completed": 0, "exited": 0})
        v.update(entered=int(r.entered), waiting=int(r.waiting or 0), completed=int(r.completed or 0),
                 exited=int(r.exited or 0), converted=int(r.converted or 0), revenue_fen=int(r.revenue_fen or 0))
    by_status: dict[str, int] = {}
    steps: dict[str, dict[str, Any]] = {}

    def step_cell(sid: str | None, var: str) -> dict[str, Any]:
        s = steps.setdefault(sid or "?", {"variants": {}})
        return s["variants"].setdefault(var, _metrics())

    for r in messages:
        by_status[r.status] = by_status.get(r.status, 0) + int(r.n)
        _add_messages(step_cell(r.step, r.variant), r.status, r.reason, r)
        _add_messages(variants.setdefault(r.variant, {**_metrics(), "completed": 0, "exited": 0}), r.status, r.reason,
                      r, outcomes=False)
    for r in reached:
        step_cell(r.step, r.variant)["entered"] = int(r.n)
    for r in waiting:
        step_cell(r.step, r.variant)["waiting"] = int(r.n)

    for v in variants.values():
        v["conversion_rate"] = round(v["converted"] / v["entered"], 4) if v["entered"] else 0.0
    totals = {**_metrics(), "completed": 0, "exited": 0}
    for v in variants.values():
        _merge(totals, v)
    totals["conversion_rate"] = round(totals["converted"] / totals["entered"], 4) if totals["entered"] else 0.0
    totals["messages"] = by_status

    # Steps in path order from the entry (live version first, then steps only older versions had).
    order: list[str] = []
    types: dict[str, str] = {}
    for g in graphs:
        for sid in _path_order(g):
            types.setdefault(sid, g["steps"][sid].get("type"))
            if sid not in order:
                order.append(sid)
    order += sorted(set(steps) - set(order))
    step_rows = []
    for sid in order:
        cells = steps.get(sid, {"variants": {}})["variants"]
        total = _metrics()
        for cell in cells.values():
            _merge(total, cell)
        step_rows.append({"step": sid, "type": types.get(sid), **total,
                          "variants": {k: cells[k] for k in sorted(cells)}})

    return {"journey": journey.code, "attribution_days": attribution_days,
            "conversion": {"event": exit_on, "window_days": attribution_days,
                           "from": "the touch (message sent); control members: entering"},
            "totals": totals, "variants": {k: variants[k] for k in sorted(variants)}, "steps": step_rows,
            "control_comparison": _comparison(variants)}


def _path_order(graph: dict[str, Any]) -> list[str]:
    """Step ids breadth-first from the entry along each step's links (JSONB does not keep the keys' order)."""
    try:
        parsed = G.parse(graph)
    except InvalidInput:  # a version saved under older rules: its steps come last, by name
        return []
    seen, queue = [], [parsed.entry]
    while queue:
        sid = queue.pop(0)
        if sid in seen:
            continue
        seen.append(sid)
        queue += [t for _, t in G.targets(parsed.steps[sid]) if t]
    return seen


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for k, val in part.items():
        if k == "suppressed":
            for reason, n in val.items():
                into["suppressed"][reason] = into["suppressed"].get(reason, 0) + n
        elif k in into and isinstance(val, int) and not isinstance(val, bool):
            into[k] += val


def _comparison(variants: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Treated (every variant) against the held-out control group; None without both."""
    control = variants.get(CONTROL)
    treated = [v for k, v in variants.items() if k not in (CONTROL, NO_VARIANT)]
    n1, x1 = sum(v["entered"] for v in treated), sum(v["converted"] for v in treated)
    if control is None or not n1:
        return None
    test = two_proportion_test(x1, n1, control["converted"], control["entered"])
    if test is None:
        return None
    r6 = lambda x: None if x is None else round(x, 6)  # noqa: E731
    return {"treated": {"entered": n1, "converted": x1, "conversion_rate": r6(test["treated_rate"]),
                        "revenue_fen": sum(v["revenue_fen"] for v in treated)},
            "control": {"entered": control["entered"], "converted": control["converted"],
                        "conversion_rate": r6(test["control_rate"]), "revenue_fen": control["revenue_fen"]},
            "absolute_lift": r6(test["absolute_lift"]), "relative_lift": r6(test["relative_lift"]),
            "lift_ci95": [r6(x) for x in test["lift_ci95"]], "z": r6(test["z"]), "p_value": r6(test["p_value"]),
            "significant": test["p_value"] < 0.05}

