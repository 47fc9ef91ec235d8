"""The trigger kinds beyond the first ones, on SQLite and PostgreSQL with a controllable clock:
tier changed and points earned (event cursors), segment exit (a time cursor with an overlap, driven
by real segment refreshes), schedule (once per occurrence, never late), and the coupon-expiring,
anniversary and repurchase-due dates; plus the validation of what applies to which trigger."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from orchard import db
from orchard.coupons.models import Coupon, CouponTemplate
from orchard.errors import InvalidInput
from orchard.imports.pg_bulk import SYSTEM
from orchard.journeys import engine, service, triggers
from orchard.journeys import graph as G
from orchard.journeys.models import Journey, JourneyLog, JourneyRun
from orchard.loyalty.ledger import Command, post
from orchard.loyalty.models import TierChange, TierLevel
from orchard.members.models import Member, MemberAggregate
from orchard.messaging import templates
from orchard.segments import service as segments
from tests.segments.helpers import member

SH = ZoneInfo("Asia/Shanghai")
SEND = {"s": {"type": "send", "template": "hello"}}


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=SH).astimezone(dt.UTC)


def make(code: str, trigger: dict, now: dt.datetime, **kw) -> None:
    with db.transaction() as s:
        service.create(s, code=code, name=code, graph={"trigger": trigger, "entry": "s", "steps": SEND}, actor="t",
                       **kw)
        service.publish(s, code=code, actor="t", now=now)


def sweep(now: dt.datetime, kinds=None) -> dict[str, dict]:
    with db.transaction() as s:
        return engine.sweep(s, now=now, kinds=kinds)["journeys"]


def entered(code: str) -> dict[int, str]:
    """member → trigger key of the journey's runs."""
    with db.transaction(readonly=True) as s:
        return dict(s.execute(select(JourneyRun.member_id, JourneyRun.trigger_key).join(
            Journey, Journey.id == JourneyRun.journey_id).where(Journey.code == code)).all())


@pytest.fixture
def hello(clean_db):
    with db.transaction() as s:
        templates.create(s, code="hello", name="hi", channel="log", purpose="service", body="hi", actor="t",
                         publish=True)


def test_tier_changed_and_points_earned_follow_their_tables(hello):
    now = local(2026, 11, 24, 10, 0)
    with db.transaction() as s:
        levels = [TierLevel(code=c, name=c, rank=r, threshold=r * 1000)
                  for r, c in enumerate(("BASE", "SILVER", "GOLD", "PLATINUM"))]
        s.add_all(levels)
        gold = levels[2]
        a, b, c, d, old = (member(s, n) for n in ("a", "b", "c", "d", "old"))
        s.add(TierChange(member_id=old, from_level_id=None, to_level_id=gold.id, reason="upgrade", actor="t",
                         at=now))  # before publishing: not a trigger
    with db.transaction() as s, pytest.raises(InvalidInput) as exc:
        service.create(s, code="x", name="x", actor="t", graph={
            "trigger": {"type": "event", "event": "$tier_changed", "to_level": "DIAMOND"}, "entry": "s",
            "steps": SEND})
        service.publish(s, code="x", actor="t")
    assert exc.value.errors[0]["field"] == "$.trigger.to_level"
    make("to_gold", {"type": "event", "event": "$tier_changed", "direction": "up", "to_level": "GOLD"}, now)
    make("down", {"type": "event", "event": "$tier_changed", "direction": "down"}, now)
    make("big_earn", {"type": "event", "event": "$points_earned", "min_points": 100}, now)
    with db.transaction() as s:
        ids = {lv.code: lv.id for lv in s.scalars(select(TierLevel))}
        for mid, frm, to, at in ((a, None, "GOLD", now), (b, "GOLD", "SILVER", now), (c, "BASE", "SILVER", now),
                                 (c, "SILVER", "GOLD", now - dt.timedelta(hours=30)),  # too old: max_age 24 h
                                 (d, "PLATINUM", "GOLD", now)):  # to GOLD, but down
            s.add(TierChange(member_id=mid, from_level_id=ids.get(frm), to_level_id=ids[to], reason="t", actor="t",
                             at=at))
        for mid, kind, amount in ((a, "earn", 150), (b, "earn", 99), (c, "adjust", 500)):
            post(s, Command(member_id=mid, amount=amount, kind=kind, reason="t", source="t", external_id=f"{mid}{kind}",
                            actor="t"), now=now)
    out = sweep(now, triggers.CURSOR_KINDS)
    assert {k: v["entered"] for k, v in out.items()} == {"to_gold": 1, "down": 2, "big_earn": 1}
    assert [k[:3] for k in entered("to_gold").values()] == ["tc:"] and set(entered("to_gold")) == {a}
    assert set(entered("down")) == {b, d}
    assert set(entered("big_earn")) == {a} and entered("big_earn")[a].startswith("pe:")
    assert all(v["entered"] == 0 for v in sweep(now + dt.timedelta(seconds=5)).values())  # the cursors moved on


@pytest.mark.parametrize("trigger, path", [
    ({"type": "event", "event": "$order", "min_points": 10}, "$.trigger.min_points"),
    ({"type": "event", "event": "sign_up", "direction": "up"}, "$.trigger.direction"),
    ({"type": "event", "event": "$tier_changed", "where": [{"prop": "x", "op": "eq", "value": 1}]},
     "$.trigger.where"),
    ({"type": "event", "event": "$refund"}, "$.trigger.event"),
    ({"type": "schedule", "every": "week", "at": "10:00"}, "$.trigger.weekday"),
    ({"type": "schedule", "every": "day", "day": 8, "at": "10:00"}, "$.trigger.day"),
    ({"type": "schedule", "every": "month", "day": 32, "at": "10:00"}, "$.trigger.day"),
    ({"type": "date", "field": "name_day", "days_before": 1}, "$.trigger.field"),
])
def test_fields_that_do_not_apply_are_refused_with_their_path(trigger, path):
    with pytest.raises(InvalidInput) as exc:
        G.parse({"trigger": trigger, "entry": "s", "steps": SEND})
    assert exc.value.errors[0]["field"] == path, exc.value.errors


def test_segment_exit_reads_late_commits_and_enters_nobody_twice(hello):
    t0 = local(2026, 11, 24, 10, 0)
    with db.transaction() as s:
        segments.create(s, principal=SYSTEM, code="sh", name="上海", refresh_now=False,
                        definition={"field": "region", "op": "eq", "value": "上海"})
        a, b = member(s, "a", region="上海"), member(s, "b", region="上海")
    refresh = _refresher()
    refresh(t0 - dt.timedelta(hours=2), {})
    make("left_sh", {"type": "segment_exit", "segment": "sh"}, t0 - dt.timedelta(hours=1))
    refresh(t0, {a: "北京"})  # a leaves
    assert sweep(t0 + dt.timedelta(seconds=5), triggers.CURSOR_KINDS)["left_sh"]["entered"] == 1
    assert set(entered("left_sh")) == {a} and entered("left_sh")[a].startswith("x:")
    assert sweep(t0 + dt.timedelta(seconds=10), triggers.CURSOR_KINDS)["left_sh"]["entered"] == 0
    # A refresh that started before the exit already read, and committed after it: its exit is
    # stamped behind the cursor, and the overlap still finds it.
    refresh(t0 - dt.timedelta(minutes=10), {b: "北京"})
    assert sweep(t0 + dt.timedelta(seconds=15), triggers.CURSOR_KINDS)["left_sh"]["entered"] == 1
    assert set(entered("left_sh")) == {a, b}
    # a comes back and leaves again: re-entry "once" turns it away — logged once, not at every sweep.
    refresh(t0 + dt.timedelta(minutes=1), {a: "上海"})
    refresh(t0 + dt.timedelta(minutes=2), {a: "北京"})
    outs = [sweep(t0 + dt.timedelta(minutes=3, seconds=5 * i), triggers.CURSOR_KINDS)["left_sh"] for i in range(2)]
    assert [(o["entered"], o["turned_away"]) for o in outs] == [(0, 1), (0, 0)]
    with db.transaction(readonly=True) as s:
        refusals = list(s.scalars(select(JourneyLog).where(JourneyLog.kind == "not_entered")))
    assert [(r.member_id, r.reason, r.detail["key"][:2]) for r in refusals] == [(a, "reentry", "x:")]


def _refresher():
    def refresh(now: dt.datetime, regions: dict[int, str]) -> None:
        with db.transaction() as s:
            for mid, region in regions.items():
                s.execute(update(Member).where(Member.id == mid).values(region=region))
            segments.refresh(s, codes=["sh"], now=now)
    return refresh


def test_schedule_fires_once_per_occurrence_and_never_late(hello):
    with db.transaction() as s:
        segments.create(s, principal=SYSTEM, code="vip", name="VIP", refresh_now=False,
                        definition={"field": "region", "op": "eq", "value": "上海"})
        vips = {member(s, "v1", region="上海"), member(s, "v2", region="上海")}
        other = member(s, "o", region="北京")
        segments.refresh(s, codes=["vip"], now=local(2026, 12, 1, 3, 0))
    published = local(2026, 12, 8, 10, 30)  # after today's 10:00: the first occurrences are tomorrow's / next month's
    make("member_day", {"type": "schedule", "segment": "vip", "every": "month", "day": 8, "at": "10:00"}, published,
         reentry="always")
    make("daily", {"type": "schedule", "every": "day", "at": "09:00"}, published, reentry="always")
    assert sweep(local(2026, 12, 8, 11, 0))["member_day"]["entered"] == 0
    out = sweep(local(2026, 12, 9, 9, 0), triggers.SWEEP_KINDS)
    assert (out["member_day"]["entered"], out["daily"]["entered"]) == (0, 3)
    assert set(entered("daily").values()) == {"t:2026-12-09"}
    assert sweep(local(2027, 1, 8, 9, 59))["member_day"]["entered"] == 0
    assert sweep(local(2027, 1, 8, 10, 0))["member_day"]["entered"] == 2
    assert sweep(local(2027, 1, 8, 16, 0))["member_day"]["entered"] == 0  # a second sweep the same day
    with db.transaction() as s:  # … nor would a re-run that forgot the occurrence: the key holds
        s.execute(update(Journey).where(Journey.code == "member_day").values(cursor_at=None))
    assert sweep(local(2027, 1, 8, 16, 0))["member_day"]["entered"] == 0
    assert set(entered("member_day")) == vips and other not in entered("member_day")
    assert sweep(local(2027, 2, 9, 10, 1))["member_day"]["entered"] == 0  # missed 8 Feb by more than a day


def test_schedule_occurrences():
    month_end = G.ScheduleTrigger(type="schedule", every="month", day=31, at="10:00")
    assert triggers.occurrence(month_end, local(2027, 3, 1, 9, 0)) == local(2027, 2, 28, 10, 0)  # Feb: its last day
    assert triggers.occurrence(month_end, local(2027, 1, 15, 9, 0)) == local(2026, 12, 31, 10, 0)
    sunday = G.ScheduleTrigger(type="schedule", every="week", weekday=7, at="20:00")
    assert triggers.occurrence(sunday, local(2026, 11, 29, 19, 59)) == local(2026, 11, 22, 20, 0)
    assert triggers.occurrence(sunday, local(2026, 11, 29, 20, 0)) == local(2026, 11, 29, 20, 0)


def test_coupon_expiring_anniversary_and_repurchase_due(hello):
    now = local(2027, 2, 25, 10, 0)  # days_before 3 → 28 February 2027, not a leap year
    with db.transaction() as s:
        leap = member(s, "joined 29 Feb", joined=local(2024, 2, 29, 12, 0))
        year = member(s, "joined a year before", joined=local(2026, 2, 28, 8, 0))
        member(s, "joined 1 Mar local, 28 Feb UTC", joined=local(2026, 3, 1, 0, 30))
        first = member(s, "joined a year ago today", joined=local(2026, 2, 25, 8, 0))
        member(s, "joined today", joined=local(2027, 2, 25, 8, 0))
        cycle = member(s, "every 15 days", orders=[(local(2027, 1, 29, 12, 0), 100), (local(2027, 2, 13, 12, 0), 100)])
        member(s, "due 2 March", orders=[(local(2027, 1, 29, 12, 0), 100), (local(2027, 2, 14, 12, 0), 100)])
        member(s, "one order", orders=[(local(2027, 2, 13, 12, 0), 100)])
        busy = member(s, "200 orders", orders=[(local(2026, 5, 1, 12, 0), 100), (local(2027, 2, 13, 12, 0), 100)])
        # A frequent buyer: seconds × (orders − 1) no longer fits a 32-bit integer (it did overflow).
        s.execute(update(MemberAggregate).where(MemberAggregate.member_id == busy).values(order_count=200))
        holder, other = member(s, "coupon"), member(s, "coupon used up earlier")
        tpl = CouponTemplate(name="t", kind="amount_off", off_fen=100, validity="relative", valid_days=7,
                             created_by="t")
        s.add(tpl)
        s.flush()
        for i, (mid, last_day, status) in enumerate(((holder, 28, "issued"), (other, 27, "issued"),
                                                     (other, 28, "voided"))):
            s.add(Coupon(code=f"C{i}", template_id=tpl.id, member_id=mid, status=status, issued_at=now,
                         valid_from=now - dt.timedelta(days=3), valid_to=local(2027, 2, last_day, 0, 0)
                         + dt.timedelta(days=1), issued_by="t", voided_at=now if status == "voided" else None))
    for field in ("anniversary", "coupon_expiring", "repurchase_due"):
        make(field, {"type": "date", "field": field, "days_before": 3}, now)
    make("anniversary_today", {"type": "date", "field": "anniversary", "days_before": 0}, now)
    assert all(v["entered"] == 0 for v in sweep(now, triggers.CURSOR_KINDS).values())  # not theirs to run
    out = sweep(now, triggers.SWEEP_KINDS)
    assert entered("anniversary") == {leap: "n:2027-02-28", year: "n:2027-02-28"}
    assert entered("anniversary_today") == {first: "n:2027-02-25"}
    assert entered("coupon_expiring") == {holder: "c:2027-02-28"}
    assert entered("repurchase_due") == {cycle: "r:2027-02-28"}
    assert sum(v["entered"] for v in out.values()) == 5
    assert all(v["entered"] == 0 for v in sweep(now + dt.timedelta(minutes=10), triggers.SWEEP_KINDS).values())
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(JourneyLog).where(JourneyLog.kind == "not_entered")) == 0


def test_id_cursors_read_rows_that_commit_after_a_later_id(hello, clean_db):
    """Event 1 takes its id first and commits last; sweeps in between read event 2 and move the
    cursor past event 1's id. The sweep after the commit still enters event 1's member (PostgreSQL
    keeps the snapshot it read under, and the settled mark waits for the open transaction), each
    member once, and the settled mark then moves up behind them."""
    if not clean_db.startswith("postgresql"):
        pytest.skip("SQLite writes one transaction at a time: its ids commit in order")
    from orchard.events.models import Event

    now = local(2026, 11, 24, 10, 0)
    with db.transaction() as s:
        a, b, c = (member(s, n) for n in ("a", "b", "c"))
    make("viewed", {"type": "event", "event": "product_viewed"}, now)
    make("viewed_too", {"type": "event", "event": "product_viewed"}, now)

    def event(s, mid: int, n: int) -> int:
        e = Event(source="t", external_id=f"e{n}", body_hash="h", member_id=mid, name="product_viewed",
                  occurred_at=now, received_at=now, properties={})
        s.add(e)
        s.flush()
        return e.id

    first = db.new_session()
    try:
        first_id = event(first, a, 1)  # id taken, not committed
        with db.transaction() as s:
            second_id = event(s, b, 2)
        assert second_id > first_id
        out = sweep(now, triggers.CURSOR_KINDS)
        assert out["viewed"]["entered"] == 1 and set(entered("viewed")) == {b}
        # Still open a sweep later: the settled mark must not pass its id yet.
        assert sweep(now + dt.timedelta(seconds=1), triggers.CURSOR_KINDS)["viewed"]["entered"] == 0
        with db.transaction(readonly=True) as s:
            assert service.get(s, "viewed").cursor_settled < first_id
        first.commit()
    finally:
        first.close()
    with db.transaction() as s:
        event(s, c, 3)
    out = sweep(now + dt.timedelta(seconds=5), triggers.CURSOR_KINDS)
    assert out["viewed"]["entered"] == 2 and entered("viewed") == {a: f"e:{first_id}", b: f"e:{second_id}",
                                                                     c: entered("viewed")[c]}
    assert set(entered("viewed_too")) == {a, b, c}
    for later in (10, 15):  # nobody twice; the settled mark catches up with the cursor
        out = sweep(now + dt.timedelta(seconds=later), triggers.CURSOR_KINDS)
        assert out["viewed"]["entered"] == 0 and out["viewed"]["turned_away"] == 0
    with db.transaction(readonly=True) as s:
        journey = service.get(s, "viewed")
        assert journey.cursor_settled == journey.cursor > second_id
        assert s.scalar(select(func.count()).select_from(JourneyLog).where(
            JourneyLog.kind == "not_entered")) == 0
