"""Journeys on SQLite and PostgreSQL with a controllable clock: triggers (event, absence, date,
segment entry), steps (wait, condition, split with control, send with fallback, tag, points),
re-entry, exit on conversion, the decision log, validation, and the report."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from orchard import db
from orchard.errors import InvalidInput
from orchard.identity.models import Identity
from orchard.journeys import engine, reporting, service
from orchard.journeys.models import JourneyLog, JourneyRun
from orchard.members.consent import set_consent
from orchard.members.models import MemberAggregate
from orchard.messaging import templates
from orchard.messaging.models import Message
from tests.segments.helpers import event, member, order_line

SH = ZoneInfo("Asia/Shanghai")
T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=SH).astimezone(dt.UTC)

NUDGE = {"trigger": {"type": "event", "event": "sign_up"}, "entry": "wait", "exit_on": {"event": "$order"},
         "steps": {"wait": {"type": "wait", "days": 3, "next": "check"},
                   "check": {"type": "condition", "if": {"field": "order_count", "op": "eq", "value": 0},
                             "then": "nudge", "else": None},
                   "nudge": {"type": "send", "template": "first_order_push", "fallback": ["first_order_sms"],
                             "next": "tag"},
                   "tag": {"type": "tag", "add": ["首单引导"], "next": None}}}


@pytest.fixture
def shop(clean_db):
    with db.transaction() as s:
        templates.create(s, code="first_order_sms", name="首单", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ member.name }}，首单立减20元，回T退订", actor="t", publish=True)
        templates.create(s, code="first_order_push", name="首单推送", channel="app_push", purpose="marketing",
                         body="{{ member.name }}，首单立减20元", actor="t", publish=True)
        ids = [member(s, f"m{i}", joined=T0 - dt.timedelta(days=30)) for i in range(4)]
        for i, mid in enumerate(ids):
            s.add(Identity(member_id=mid, kind="phone", value=f"+86138000000{i:02d}"))
            set_consent(s, member_id=mid, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
    return ids


def run(fn, **kw):
    with db.transaction() as s:
        return fn(s, **kw)


def runs(status=None) -> list[JourneyRun]:
    with db.transaction(readonly=True) as s:
        stmt = select(JourneyRun).order_by(JourneyRun.member_id)
        if status:
            stmt = stmt.where(JourneyRun.status == status)
        return list(s.scalars(stmt))


def make(code, graph, **kw):
    with db.transaction() as s:
        service.create(s, code=code, name=code, graph=graph, actor="t", **kw)
        service.publish(s, code=code, actor="t")


def test_event_trigger_wait_condition_send_with_fallback_and_conversion_exit(shop):
    make("nudge", NUDGE)
    a, b, c, _ = shop
    with db.transaction() as s:
        for mid in (a, b, c):
            event(s, mid, "sign_up", T0)
    out = run(engine.sweep, now=T0)
    assert out["journeys"]["nudge"]["entered"] == 3
    assert run(engine.advance, now=T0).runs == 3
    assert {r.status for r in runs()} == {"waiting"}
    with db.transaction() as s:  # b buys on day 1: converted, exits
        order_line(s, b, T0 + dt.timedelta(days=1), "茶叶")
    assert run(engine.sweep, now=T0 + dt.timedelta(days=1))["journeys"]["nudge"]["converted"] == 1
    # c orders without the journey noticing before its wait ends? No: c stays, and a and c wake on day 3.
    stats = run(engine.advance, now=T0 + dt.timedelta(days=3))
    assert stats.runs == 2 and stats.sent == 2 and stats.suppressed == 2  # push: no recipient → SMS fallback
    with db.transaction(readonly=True) as s:
        msgs = list(s.scalars(select(Message).order_by(Message.member_id, Message.id)))
        assert [(m.channel, m.status, m.reason) for m in msgs] == [
            ("app_push", "suppressed", "consent.app_push"), ("sms", "queued", None),
            ("app_push", "suppressed", "consent.app_push"), ("sms", "queued", None)]
        tagged = s.scalar(select(func.count()).select_from(JourneyLog).where(JourneyLog.reason == "tag"))
        assert tagged == 2
    assert [r.status for r in runs()] == ["completed", "exited", "completed"]
    assert runs("exited")[0].end_reason == "converted"
    # A second sign_up for a: re-entry "once" turns it away, and says so.
    with db.transaction() as s:
        event(s, a, "sign_up", T0 + dt.timedelta(days=4))
    assert run(engine.sweep, now=T0 + dt.timedelta(days=4))["journeys"]["nudge"]["entered"] == 0
    with db.transaction(readonly=True) as s:
        why = engine.explain(s, member_id=a)
    assert [d["kind"] for d in why][:1] == ["entered"] and why[-1]["kind"] == "not_entered"
    assert why[-1]["reason"] == "reentry"
    assert run(engine.sweep, now=T0 + dt.timedelta(days=4))["journeys"]["nudge"]["entered"] == 0  # idempotent


def test_split_with_control_group_and_report(clean_db):
    with db.transaction() as s:
        templates.create(s, code="hello", name="hi", channel="log", purpose="service", body="hi {{ member.name }}",
                         actor="t", publish=True)
        ids = [member(s, f"m{i}") for i in range(40)]
        for mid in ids:
            event(s, mid, "x", T0)
    graph = {"trigger": {"type": "event", "event": "x"}, "entry": "split",
             "steps": {"split": {"type": "split", "control_percent": 20,
                                 "variants": [{"name": "A", "percent": 40, "next": "send"},
                                              {"name": "B", "percent": 40, "next": "send"}]},
                       "send": {"type": "send", "template": "hello"}}}
    with db.transaction() as s:
        service.create(s, code="ab", name="ab", graph=graph, actor="t")
        journey = service.get(s, "ab")
        journey.cursor = 0
        service.publish(s, code="ab", actor="t")
        service.get(s, "ab").cursor = 0  # count the events written before publishing (test setup)
    run(engine.sweep, now=T0)
    run(engine.advance, now=T0)
    variants = {r.variant for r in runs()}
    assert variants == {"A", "B", "control"}
    control = [r for r in runs() if r.variant == "control"]
    with db.transaction(readonly=True) as s:
        sent_to = set(s.scalars(select(Message.member_id)))
        rep = reporting.report(s, service.get(s, "ab"))
    assert not sent_to & {r.member_id for r in control}
    assert sum(v["entered"] for v in rep["variants"].values()) == rep["totals"]["entered"] == 40
    assert rep["variants"]["control"]["entered"] == len(control)
    assert rep["totals"]["messages"] == {"queued": 40 - len(control)}
    # Per step, as the engine logged it: everyone passed the split; only the treated reached the send step.
    by_step = {row["step"]: row for row in rep["steps"]}
    assert by_step["split"]["entered"] == 40 and by_step["send"]["entered"] == 40 - len(control)
    assert set(by_step["send"]["variants"]) == {"A", "B"} and by_step["send"]["pending"] == 40 - len(control)
    assert rep["control_comparison"]["control"]["entered"] == len(control)


def test_absence_and_date_triggers_enter_once(clean_db):
    now = T0
    with db.transaction() as s:
        templates.create(s, code="hello", name="hi", channel="log", purpose="service", body="hi", actor="t",
                         publish=True)
        late = member(s, "joined4d", joined=now - dt.timedelta(days=4))
        late2 = member(s, "joined4d-too", joined=now - dt.timedelta(days=4))  # the same second: an import
        member(s, "joined2d", joined=now - dt.timedelta(days=2))
        bought = member(s, "bought", joined=now - dt.timedelta(days=4), orders=[(now - dt.timedelta(days=1), 100)])
        bday = member(s, "bday", birthday=dt.date(1990, 11, 27))
        bday2 = member(s, "bday-too", birthday=dt.date(1985, 11, 27))
        away, seen = member(s, "last login 31 days ago"), member(s, "last login 10 days ago")
        for mid, days in ((away, 31), (seen, 10)):
            s.execute(update(MemberAggregate).where(MemberAggregate.member_id == mid).values(
                last_login_at=now - dt.timedelta(days=days)))
    make("no_login", {"trigger": {"type": "absence", "after": "last_login", "absent": "login", "days": 30},
                      "entry": "s", "steps": {"s": {"type": "send", "template": "hello"}}})
    make("no_first_order", {"trigger": {"type": "absence", "after": "joined", "absent": "$order", "days": 3},
                            "entry": "s", "steps": {"s": {"type": "send", "template": "hello"}}})
    make("birthday", {"trigger": {"type": "date", "field": "birthday", "days_before": 3},
                      "entry": "s", "steps": {"s": {"type": "send", "template": "hello"}}})
    out = run(engine.sweep, now=now)["journeys"]
    assert out["no_first_order"]["entered"] == 2 and out["birthday"]["entered"] == 2
    assert out["no_login"]["entered"] == 1
    again = run(engine.sweep, now=now + dt.timedelta(hours=1))["journeys"]
    assert again["no_first_order"]["entered"] == 0 and again["birthday"]["entered"] == 0
    assert {(r.member_id) for r in runs()} == {late, late2, bday, bday2, away}
    del bought


def test_segment_entry_trigger(clean_db):
    from orchard.imports.pg_bulk import SYSTEM
    from orchard.segments import service as segments

    with db.transaction() as s:
        templates.create(s, code="hello", name="hi", channel="log", purpose="service", body="hi", actor="t",
                         publish=True)
        segments.create(s, principal=SYSTEM, code="buyers", name="b",
                        definition={"field": "order_count", "op": "gte", "value": 1})
    make("welcome_buyers", {"trigger": {"type": "segment_entry", "segment": "buyers"}, "entry": "s",
                            "steps": {"s": {"type": "send", "template": "hello"}}})
    with db.transaction() as s:
        mid = member(s, "x", orders=[(T0, 100)])
    with db.transaction() as s:
        segments.refresh(s)
    assert run(engine.sweep, now=T0)["journeys"]["welcome_buyers"]["entered"] == 1
    assert runs()[0].member_id == mid


@pytest.mark.parametrize("graph, field", [
    ({**NUDGE, "entry": "nope"}, "$.entry"),
    ({**NUDGE, "steps": {**NUDGE["steps"], "wait": {"type": "wait", "days": 3, "next": "ghost"}}},
     "$.steps.wait.next"),
    ({"trigger": {"type": "event", "event": "x"}, "entry": "a",
      "steps": {"a": {"type": "tag", "add": ["t"], "next": "b"}, "b": {"type": "tag", "add": ["u"], "next": "a"}}},
     "$.steps.a"),
    ({"trigger": {"type": "event", "event": "x"}, "entry": "a", "steps": {"a": {"type": "teleport"}}},
     "$.steps.a"),
])
def test_invalid_graphs_name_the_path(clean_db, graph, field):
    with db.transaction() as s, pytest.raises(InvalidInput) as exc:
        service.create(s, code="bad", name="bad", graph=graph, actor="t")
    assert exc.value.errors[0]["field"].startswith(field), exc.value.errors


def test_publish_checks_templates_and_versions_are_immutable(shop):
    graph = {**NUDGE, "steps": {**NUDGE["steps"], "nudge": {"type": "send", "template": "ghost", "next": None}}}
    graph["steps"].pop("tag")
    with db.transaction() as s:
        service.create(s, code="j", name="j", graph=graph, actor="t")
    with db.transaction() as s, pytest.raises(InvalidInput) as exc:
        service.publish(s, code="j", actor="t")
    assert exc.value.errors[0]["field"] == "$.steps.nudge.template"
    with db.transaction() as s:
        service.edit(s, code="j", graph=NUDGE, actor="t")
        v1 = service.publish(s, code="j", actor="t")
        v2 = service.edit(s, code="j", graph={**NUDGE, "exit_on": None}, actor="t")
        assert (v1.version, v1.status, v2.version, v2.status) == (1, "published", 2, "draft")


def test_task_step_creates_a_store_task_and_subscribe_sends_need_grants(client):
    from orchard.messaging import outbox
    from tests.factories import headers, make_org, token_for

    make_org()
    admin = headers(token_for(client, "admin"))
    with db.transaction() as s:
        from orchard.org.models import OrgUnit

        sh = s.scalar(select(OrgUnit.id).where(OrgUnit.code == "SH001"))
        mid = member(s, "x", home_store_id=sh)
        s.add(Identity(member_id=mid, kind="wechat_mp_openid", value="o-mp-1"))
        set_consent(s, member_id=mid, channel="wechat", purpose="service", granted=True, source="t", actor="t")
        templates.create(s, code="mp_notice", name="n", channel="wechat_subscribe", purpose="service",
                         provider_template="TPL-1", body="{{ member.name }} 订单已发货", actor="t", publish=True)
        event(s, mid, "x", T0)
    graph = {"trigger": {"type": "event", "event": "x"}, "entry": "call",
             "steps": {"call": {"type": "task", "kind": "callback", "title": "回访新会员", "next": "mp"},
                       "mp": {"type": "send", "template": "mp_notice", "next": "mp2"},
                       "mp2": {"type": "send", "template": "mp_notice"}}}
    with db.transaction() as s:
        service.create(s, code="tasky", name="t", graph=graph, actor="t")
        service.publish(s, code="tasky", actor="t")
        service.get(s, "tasky").cursor = 0
    r = client.post(f"/api/v1/members/{mid}/subscribe-grants", headers=admin, json={"template": "TPL-1"})
    assert r.json()["remaining"] == 1
    run(engine.sweep, now=T0)
    run(engine.advance, now=T0)
    with db.transaction(readonly=True) as s:
        msgs = [(m.status, m.reason) for m in s.scalars(select(Message).order_by(Message.id))]
    assert msgs == [("queued", None), ("suppressed", "no_grant")]  # one grant, one send
    manager = headers(token_for(client, "store_manager", ["SH001"]))
    other = headers(token_for(client, "store_manager", ["GZ001"], username="gz_mgr"))
    tasks = client.get("/api/v1/staff-tasks", headers=manager).json()
    assert [(t["kind"], t["title"], t["member_id"]) for t in tasks] == [("callback", "回访新会员", mid)]
    assert client.get("/api/v1/staff-tasks", headers=other).json() == []
    assert client.post(f"/api/v1/staff-tasks/{tasks[0]['id']}/close", headers=other, json={}).status_code == 404
    done = client.post(f"/api/v1/staff-tasks/{tasks[0]['id']}/close", headers=manager,
                       json={"outcome": "已回访"}).json()
    assert done["status"] == "done" and done["outcome"] == "已回访"
    # a permanent failure of the sent one gives its grant back
    outbox.dispatch({"wechat_subscribe": type("P", (), {"name": "p", "send": lambda self, m: outbox.Outcome(
        False, permanent=True, error="43101")})()}, now=T0)
    with db.transaction(readonly=True) as s:
        from orchard.journeys.models import SubscribeGrant

        assert s.get(SubscribeGrant, (mid, "TPL-1")).remaining == 1


def test_concurrent_workers_advancing_shared_members_neither_deadlock_nor_break_the_cap(clean_db):
    """Two journeys send to the same 30 members; two workers advance small batches at once (on
    PostgreSQL their claims interleave). Members are locked in id order, so no deadlock, and the weekly
    cap of one marketing message holds across journeys and workers."""
    from concurrent.futures import ThreadPoolExecutor

    with db.transaction() as s:
        templates.create(s, code="hi_sms", name="hi", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ member.name }}，会员日到了，回T退订", actor="t", publish=True)
    graph = {"trigger": {"type": "event", "event": "visit"}, "entry": "s",
             "steps": {"s": {"type": "send", "template": "hi_sms"}}}
    make("one", graph)
    make("two", graph)
    with db.transaction() as s:
        ids = [member(s, f"c{i}") for i in range(30)]
        for i, mid in enumerate(ids):
            s.add(Identity(member_id=mid, kind="phone", value=f"+86139000000{i:02d}"))
            set_consent(s, member_id=mid, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
            event(s, mid, "visit", T0)
    assert {r["entered"] for r in run(engine.sweep, now=T0)["journeys"].values()} == {30}

    def work() -> int:
        done = 0
        while True:
            stats = run(engine.advance, now=T0, limit=7)
            done += stats.runs
            if not stats.runs:
                return done

    with ThreadPoolExecutor(2) as pool:
        assert sum(pool.map(lambda _: work(), range(2))) == 60
    with db.transaction(readonly=True) as s:
        queued = dict(s.execute(select(Message.member_id, func.count()).where(Message.status == "queued")
                                .group_by(Message.member_id)).tuples().all())
        capped = s.scalar(select(func.count()).select_from(Message).where(Message.reason == "cap.all"))
    assert queued == {mid: 1 for mid in ids} and capped == 30
    assert {r.status for r in runs()} == {"completed"}


def test_a_journey_that_no_longer_parses_is_skipped_not_fatal(shop):
    """A live journey whose stored graph fails today's validation (saved under older rules) is reported by
    the sweep and its runs fail; every other journey goes on."""
    from orchard.journeys.models import Journey, JourneyVersion

    graph = {"trigger": {"type": "event", "event": "visit"}, "entry": "w",
             "steps": {"w": {"type": "wait", "hours": 1}}}
    make("broken", graph)
    make("fine", graph)
    a, b, *_ = shop
    with db.transaction() as s:
        for mid in (a, b):
            event(s, mid, "visit", T0)
    run(engine.sweep, now=T0)  # both enter
    with db.transaction() as s:
        version = s.scalar(select(JourneyVersion).join(Journey, Journey.live_version_id == JourneyVersion.id)
                           .where(Journey.code == "broken"))
        version.graph = {**graph, "trigger": {"type": "event", "event": "$order", "where": [
            {"prop": "sku", "op": "eq", "value": "X"}]}}  # `where` on $order is refused since
        event(s, a, "visit", T0 + dt.timedelta(minutes=1))
    out = run(engine.sweep, now=T0 + dt.timedelta(minutes=2))["journeys"]
    assert "error" in out["broken"] and "where" in out["broken"]["error"]
    assert "error" not in out["fine"]
    stats = run(engine.advance, now=T0 + dt.timedelta(hours=2))
    assert stats.runs == 4 and stats.exited == 2
    with db.transaction(readonly=True) as s:
        ends = dict(s.execute(select(Journey.code, JourneyRun.end_reason).join(
            Journey, Journey.id == JourneyRun.journey_id).where(JourneyRun.status == "failed")).tuples().all())
    assert ends == {"broken": "graph.invalid"}


def test_messages_name_the_coupon_a_step_issued_and_the_members_tier(shop):
    """Templates may use every variable publishing checks them against: the coupon an earlier step of
    the run issued, the member's tier and what the next one needs — filled at send, not left to fail."""
    from orchard.coupons.models import CouponTemplate
    from orchard.loyalty.models import MemberTier, TierLevel

    a, b, *_ = shop
    with db.transaction() as s:
        tpl = CouponTemplate(name="满100减20", kind="amount_off", off_fen=2000, threshold_fen=10000,
                             validity="relative", valid_days=7, created_by="t")
        s.add_all([tpl, TierLevel(code="SILVER", name="银卡", rank=1, threshold=0),
                   TierLevel(code="GOLD", name="金卡", rank=2, threshold=5000)])
        s.flush()
        silver = s.scalar(select(TierLevel.id).where(TierLevel.code == "SILVER"))
        s.add(MemberTier(member_id=a, level_id=silver, since=T0, metric_value=1200))
        templates.create(s, code="gift_sms", name="礼券", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ member.name }}，{{ tier.name }}专享{{ coupon.name }}（{{ coupon.code }}，"
                              "{{ coupon.valid_to }}前有效），再消费{{ tier.next_needs }}升级{{ tier.next_name }}。"
                              "回T退订",
                         actor="t", publish=True)
        tpl_id = tpl.id
    make("gift", {"trigger": {"type": "event", "event": "visit"}, "entry": "c",
                  "steps": {"c": {"type": "coupon", "template_id": tpl_id, "next": "s"},
                            "s": {"type": "send", "template": "gift_sms"}}})
    with db.transaction() as s:
        for mid in (a, b):
            event(s, mid, "visit", T0)
    run(engine.sweep, now=T0)
    assert run(engine.advance, now=T0).sent == 2
    with db.transaction(readonly=True) as s:
        bodies = dict(s.execute(select(Message.member_id, Message.payload)).tuples().all())
    assert "银卡专享满100减20" in bodies[a]["body"] and "再消费3800升级金卡" in bodies[a]["body"]
    assert "银卡专享" in bodies[b]["body"] and "再消费5000升级金卡" in bodies[b]["body"]  # never placed: base level
    assert "2026-11-30前有效" in bodies[a]["body"]  # issued 24 Nov, 7 days: last usable day 30 Nov


def test_messages_carry_points_expiring_and_a_recommended_category(shop):
    from orchard.loyalty.models import PointsAccount, PointsEntry, PointsLot

    a, *_ = shop
    with db.transaction() as s:
        for i, (amount, expires, pending) in enumerate(((300, 10, None), (500, 200, None), (200, 300, 5))):
            entry = PointsEntry(member_id=a, kind="earn", amount=amount, balance_after=0, reason="t", source="t",
                                external_id=f"lot{i}", body_hash="", actor="t", explanation={})
            s.add(entry)
            s.flush()
            s.add(PointsLot(member_id=a, entry_id=entry.id, amount=amount, remaining=amount, earned_at=T0,
                            expires_at=T0 + dt.timedelta(days=expires),
                            pending_until=T0 + dt.timedelta(days=pending) if pending else None))
        s.add(PointsAccount(member_id=a, balance=1000, debt=0))
        for day, category in ((3, "茶叶"), (2, "茶叶"), (1, "茶具")):
            order_line(s, a, T0 - dt.timedelta(days=day), category)
        templates.create(s, code="expiry_sms", name="到期", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ points.expiring }}分将于{{ points.expiring_at }}到期，可用{{ points.available }}，"
                              "待入账{{ points.pending }}；{{ recommend.category }}上新。回T退订",
                         actor="t", publish=True)
    make("expiry", {"trigger": {"type": "event", "event": "visit"}, "entry": "s",
                    "steps": {"s": {"type": "send", "template": "expiry_sms"}}})
    with db.transaction() as s:
        event(s, a, "visit", T0)
    run(engine.sweep, now=T0)
    assert run(engine.advance, now=T0).sent == 1
    with db.transaction(readonly=True) as s:
        body = s.scalar(select(Message.payload)).get("body")
    local_expiry = (T0 + dt.timedelta(days=10)).astimezone(SH).date().isoformat()
    assert body.startswith(f"300分将于{local_expiry}到期，可用800，待入账200；茶叶上新"), body
