"""Journey reporting (J5) on SQLite and PostgreSQL, through `GET /api/v1/journeys/{code}/report`, over hand-built
runs, decisions, messages and orders whose numbers are worked out by hand below; the delivery receipts and the
click arrive through the providers' callback endpoint. Plus the two-proportion z-test against a textbook case."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from orchard import db
from orchard.events.models import Order
from orchard.journeys import service
from orchard.journeys.models import JourneyLog, JourneyRun
from orchard.journeys.reporting import two_proportion_test
from orchard.messaging import templates
from orchard.messaging.models import Message
from tests.factories import headers, token_for
from tests.messaging.vendors import aliyun_report, sent, standard_webhook, vendors  # noqa: F401 — a fixture
from tests.segments.helpers import event, member

SH = ZoneInfo("Asia/Shanghai")
T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=SH).astimezone(dt.UTC)
H, D = dt.timedelta(hours=1), dt.timedelta(days=1)

WINBACK = {"trigger": {"type": "event", "event": "lapsed"}, "entry": "split",
           "steps": {"split": {"type": "split", "control_percent": 40,
                               "variants": [{"name": "A", "percent": 30, "next": "sms"},
                                            {"name": "B", "percent": 30, "next": "hook"}]},
                     "sms": {"type": "send", "template": "t_sms", "next": "wait"},
                     "hook": {"type": "send", "template": "t_hook", "next": "wait"},
                     "wait": {"type": "wait", "days": 7}}}
COUPON = {"trigger": {"type": "event", "event": "lapsed"}, "entry": "note", "exit_on": {"event": "coupon_used"},
          "steps": {"note": {"type": "send", "template": "t_hook"}}}


def _order(s, member_id: int, at: dt.datetime, amount: int, *, refunded: int = 0) -> None:
    status = "refunded" if refunded == amount else "partially_refunded" if refunded else "paid"
    s.add(Order(source="t", external_id=f"o{member_id}-{at.timestamp()}", body_hash="x", member_id=member_id,
                amount_fen=amount, refunded_fen=refunded, paid_at=at, status=status))


def _run(s, journey, member_id: int, variant: str | None, status: str, step: str, logs: list[tuple[str, str]],
         entry: str = "split") -> int:
    """A run as the engine leaves it, with the decisions it logged: entered at `entry`, then [(step, kind)]."""
    run = JourneyRun(journey_id=journey.id, version_id=journey.live_version_id, member_id=member_id,
                     trigger_key=f"e:{member_id}", status=status, step=step, variant=variant, context={},
                     entered_at=T0, wake_at=T0 + 7 * D if status in ("active", "waiting") else None)
    s.add(run)
    s.flush()
    for sid, kind in [(entry, "entered"), *logs]:
        s.add(JourneyLog(journey_id=journey.id, run_id=run.id, member_id=member_id, step=sid, kind=kind, detail={},
                         at=T0))
    return run.id


@pytest.fixture
def shop(clean_db, vendors):  # noqa: F811
    with db.transaction() as s:
        templates.create(s, code="t_sms", name="召回短信", channel="sms", purpose="service", sign_name="果园",
                         body="{{ member.name }}，好久不见", actor="t", publish=True)
        templates.create(s, code="t_hook", name="召回推送", channel="webhook", purpose="service",
                         body="{{ member.name }}，好久不见", actor="t", publish=True)
        for code, graph in (("winback", WINBACK), ("coupon", COUPON)):
            service.create(s, code=code, name=code, graph=graph, actor="t")
            service.publish(s, code=code, actor="t")
        ids = {name: member(s, name) for name in ("c1", "c2", "c3", "c4", "a1", "a2", "a3", "b1", "b2", "b3", "n1")}
        j = service.get(s, "winback")
        split = [("split", "branch")]
        for c in ("c1", "c2", "c3", "c4"):  # held out at the split: completed, nothing sent
            _run(s, j, ids[c], "control", "completed", "split", [*split, ("split", "completed")])
        runs = {}
        for v, send in (("A", "sms"), ("B", "hook")):
            for x in (f"{v.lower()}1", f"{v.lower()}2", f"{v.lower()}3"):
                runs[x] = _run(s, j, ids[x], v, "waiting", "wait", [*split, (send, "sent"), ("wait", "step")])
        _run(s, j, ids["n1"], None, "active", "split", [])  # entered, not through the split yet

        def msg(x, step, **kw):
            return sent(s, ids[x], key=f"w:{x}", journey_id=j.id, run_id=runs[x], step=step, **kw)

        out = {"a1": msg("a1", "sms", channel="sms", provider="aliyun_sms", pmid="BIZ-A1", at=T0 + H),
               "a2": msg("a2", "sms", channel="sms", provider="aliyun_sms", pmid="BIZ-A2", at=T0 + H),
               "b1": msg("b1", "hook", channel="webhook", provider="webhook", pmid=None, at=T0 + 2 * H),
               "b2": msg("b2", "hook", channel="webhook", provider="webhook", pmid=None, at=T0 + 2 * H)}
        for x, step, channel, status, reason in (("a3", "sms", "sms", "suppressed", "cap.all"),
                                                 ("b3", "hook", "webhook", "queued", None)):
            s.add(Message(key=f"w:{x}", member_id=ids[x], channel=channel, purpose="service", payload={}, status=status,
                          reason=reason, priority=0, attempts=0, created_at=T0, journey_id=j.id, run_id=runs[x],
                          step=step))
        for x, at, amount, refunded in (
                ("c1", T0 + 2 * D, 5000, 0),      # control: converts 2 days after entering
                ("c2", T0 + 10 * D, 7000, 0),     # control: 10 days after: outside 7, inside 14
                ("c3", T0 - D, 9000, 0),          # before entering
                ("a1", T0 + D, 8000, 0), ("a1", T0 + 2 * D, 2000, 0),  # after the SMS: 10000
                ("a2", T0 + H / 2, 6000, 0),      # after entering but before the touch (SMS at T0 + 1 h)
                ("a3", T0 + D, 4000, 0),          # never touched (suppressed)
                ("b1", T0 + 3 * D, 3000, 1000),   # partly refunded: 2000
                ("b2", T0 + D, 5000, 5000),       # fully refunded: no conversion, no revenue
                ("n1", T0 + D, 4000, 0)):         # not through the split in winback; touched in coupon
            _order(s, ids[x], at, amount, refunded=refunded)
        # The second journey converts on an event, not an order.
        cj = service.get(s, "coupon")
        for x in ("c4", "n1"):
            rid = _run(s, cj, ids[x], None, "completed", "note", [("note", "sent"), ("note", "completed")], "note")
            sent(s, ids[x], key=f"c:{x}", journey_id=cj.id, run_id=rid, step="note", channel="webhook",
                 provider="webhook", pmid=None, at=T0 + H)
        event(s, ids["c4"], "coupon_used", T0 + D)
    return out


def test_report_per_variant_and_step_with_receipts_from_the_callbacks_and_the_control_comparison(client, shop):
    # The vendors report: SMS a1 delivered, a2 undelivered (Aliyun, by out_id and by biz_id); b1's link clicked,
    # b2 read (signed webhook events).
    r = client.post("/api/v1/channels/aliyun/callbacks", content=json.dumps([
        aliyun_report("BIZ-A1", f"orchard-{shop['a1']}", success=True, at="2026-11-24 11:00:05"),
        aliyun_report("BIZ-A2", "", success=False, at="2026-11-24 11:00:09", code="MK:0001")]).encode())
    assert r.json() == {"code": 0, "msg": "成功"}
    for n, (x, status, at) in enumerate((("b1", "clicked", "13:00"), ("b2", "read", "12:30"))):
        body, h = standard_webhook({"type": "orchard.message.status", "data": {
            "message_id": f"orchard-{shop[x]}", "status": status, "at": f"2026-11-24T{at}:00+08:00"}}, msg_id=f"e{n}")
        assert client.post("/api/v1/channels/webhook/callbacks", content=body, headers=h).status_code == 200

    admin = headers(token_for(client, "admin"))
    rep = client.get("/api/v1/journeys/winback/report", headers=admin).json()  # 7 days by default
    zero = {"entered": 0, "waiting": 0, "sent": 0, "pending": 0, "failed": 0, "suppressed": {}, "delivered": 0,
            "opened": 0, "clicked": 0, "converted": 0, "revenue_fen": 0}
    assert rep["variants"] == {
        # a1 bought 8000 + 2000 after its SMS; a2 only before its SMS; a3 was never touched.
        "A": {**zero, "entered": 3, "waiting": 3, "completed": 0, "exited": 0, "sent": 2, "failed": 1,
              "suppressed": {"cap.all": 1}, "delivered": 1, "converted": 1, "revenue_fen": 10000,
              "conversion_rate": 0.3333},
        # b1 clicked (so delivered) and bought 3000 − 1000 refunded; b2 read, bought and got it all refunded.
        "B": {**zero, "entered": 3, "waiting": 3, "completed": 0, "exited": 0, "sent": 2, "pending": 1,
              "delivered": 2, "opened": 1, "clicked": 1, "converted": 1, "revenue_fen": 2000,
              "conversion_rate": 0.3333},
        # c1 within 7 days of entering; c2 after 10; c3 before entering.
        "control": {**zero, "entered": 4, "completed": 4, "exited": 0, "converted": 1, "revenue_fen": 5000,
                    "conversion_rate": 0.25},
        "none": {**zero, "entered": 1, "waiting": 1, "completed": 0, "exited": 0, "conversion_rate": 0.0}}
    totals = rep["totals"]
    assert (totals["entered"], totals["waiting"], totals["sent"], totals["delivered"], totals["converted"],
            totals["revenue_fen"], totals["conversion_rate"]) == (11, 7, 4, 3, 3, 17000, 0.2727)
    assert totals["messages"] == {"delivered": 3, "failed": 1, "suppressed": 1, "queued": 1}

    steps = {row["step"]: row for row in rep["steps"]}
    assert [row["step"] for row in rep["steps"]] == ["split", "sms", "hook", "wait"]  # graph order
    assert (steps["split"]["entered"], steps["split"]["waiting"]) == (11, 1)
    assert {v: c["entered"] for v, c in steps["split"]["variants"].items()} == {"A": 3, "B": 3, "control": 4,
                                                                                "none": 1}
    assert {k: steps["sms"][k] for k in ("type", "entered", "sent", "failed", "suppressed", "delivered",
                                         "converted", "revenue_fen")} == {
        "type": "send", "entered": 3, "sent": 2, "failed": 1, "suppressed": {"cap.all": 1}, "delivered": 1,
        "converted": 1, "revenue_fen": 10000}
    assert list(steps["sms"]["variants"]) == ["A"]
    assert {k: steps["hook"][k] for k in ("entered", "sent", "pending", "delivered", "opened", "clicked",
                                          "converted", "revenue_fen")} == {
        "entered": 3, "sent": 2, "pending": 1, "delivered": 2, "opened": 1, "clicked": 1, "converted": 1,
        "revenue_fen": 2000}
    assert (steps["wait"]["entered"], steps["wait"]["waiting"], steps["wait"]["type"]) == (6, 6, "wait")

    # Treated 2 of 6 against control 1 of 4: lift 1/3 − 1/4; pooled p = 3/10, SE0 = √(0.3·0.7·(1/6 + 1/4)) =
    # 0.295804, z = 0.083333 / 0.295804 = 0.281718, p = erfc(z/√2) = 0.778160; unpooled SE = 0.289676.
    cmp = rep["control_comparison"]
    assert cmp["treated"] == {"entered": 6, "converted": 2, "conversion_rate": 0.333333, "revenue_fen": 12000}
    assert cmp["control"] == {"entered": 4, "converted": 1, "conversion_rate": 0.25, "revenue_fen": 5000}
    assert (cmp["absolute_lift"], cmp["relative_lift"], cmp["z"], cmp["significant"]) == (0.083333, 0.333333,
                                                                                           0.281718, False)
    assert cmp["p_value"] == pytest.approx(0.778160, abs=1e-6)
    assert cmp["lift_ci95"] == pytest.approx([-0.484421, 0.651087], abs=1e-6)

    # A 14-day window takes c2 in: control 2 of 4 (12000 fen), treated unchanged.
    wide = client.get("/api/v1/journeys/winback/report?attribution_days=14", headers=admin).json()
    assert (wide["variants"]["control"]["converted"], wide["variants"]["control"]["revenue_fen"]) == (2, 12000)
    assert (wide["control_comparison"]["absolute_lift"], wide["control_comparison"]["p_value"]) == (-0.166667,
                                                                                                   0.598161)
    assert client.get("/api/v1/journeys/winback/report?attribution_days=0", headers=admin).status_code == 422

    # Converting on an event: c4 used the coupon a day after the message; n1 only bought (revenue, no conversion).
    ev = client.get("/api/v1/journeys/coupon/report", headers=admin).json()
    assert ev["conversion"]["event"] == "coupon_used" and ev["control_comparison"] is None
    assert {k: ev["totals"][k] for k in ("entered", "completed", "sent", "converted", "revenue_fen")} == {
        "entered": 2, "completed": 2, "sent": 2, "converted": 1, "revenue_fen": 4000}


def test_two_proportion_z_test():
    # 60/100 against 45/100: pooled 0.525, SE0 = √(0.525·0.475·0.02) = 0.0706222, z = 2.12398, p = 0.03367.
    t = two_proportion_test(60, 100, 45, 100)
    assert t["z"] == pytest.approx(2.123977, abs=1e-6) and t["p_value"] == pytest.approx(0.033672, abs=1e-6)
    assert t["lift_ci95"] == pytest.approx((0.013153, 0.286847), abs=1e-6)
    assert two_proportion_test(0, 10, 0, 10)["p_value"] == 1.0  # no variation: nothing to test
    assert two_proportion_test(1, 0, 1, 10) is None
