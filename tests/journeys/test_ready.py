"""The shipped journeys install, publish and run end to end on demo-like data."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from orchard import db
from orchard.identity.models import Identity
from orchard.journeys import engine, ready
from orchard.journeys.models import Journey, JourneyRun
from orchard.members.consent import set_consent
from orchard.messaging.models import Message, MessageTemplate
from tests.segments.helpers import event, member

SH = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 24, 3, 0, tzinfo=dt.UTC)  # 11:00 in Shanghai


def test_ready_journeys_install_once_publish_and_run(clean_db):
    with db.transaction() as s:  # as the demo does: drafts for review
        created = ready.install(s, actor="t")
        assert set(s.scalars(select(Journey.status))) == {"draft"}
    assert len(created["journeys"]) == len(ready.journeys()) and len(created["templates"]) == len(ready.TEMPLATES)
    assert created["published"] == []
    with db.transaction() as s:  # `orchard journeys ready --publish` afterwards starts the drafts
        again = ready.install(s, actor="t", publish=True)
    assert again["journeys"] == [] and sorted(again["published"]) == sorted(j["code"] for j in ready.journeys())
    with db.transaction() as s:
        assert ready.install(s, actor="t", publish=True) == {"templates": [], "journeys": [], "published": []}
        assert set(s.scalars(select(Journey.status))) == {"live"}
    with db.transaction() as s:
        lapsed = member(s, "lapsed", joined=NOW - dt.timedelta(days=400),
                        orders=[(NOW - dt.timedelta(days=31), 5000)])
        newbie = member(s, "newbie", joined=NOW - dt.timedelta(days=4))
        birthday = member(s, "bday", birthday=(NOW + dt.timedelta(days=3)).date().replace(year=1992))
        carter = member(s, "cart")
        # Buys every 30 days: last order 28 days ago, so the next is due in 2 days (消费周期提醒).
        cycler = member(s, "cycle", joined=NOW - dt.timedelta(days=400),
                        orders=[(NOW - dt.timedelta(days=88), 3000), (NOW - dt.timedelta(days=58), 3000),
                                (NOW - dt.timedelta(days=28), 3000)])
        for i, mid in enumerate((lapsed, newbie, birthday, carter, cycler)):
            s.add(Identity(member_id=mid, kind="phone", value=f"+861380000{i:04d}"))
            set_consent(s, member_id=mid, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
        event(s, carter, "added_to_cart", NOW)
    with db.transaction() as s:
        out = engine.sweep(s, now=NOW)["journeys"]
    assert out["ready_winback"]["entered"] == 1 and out["ready_first_order"]["entered"] == 1
    assert out["ready_birthday"]["entered"] == 1 and out["ready_cart"]["entered"] == 1
    assert out["ready_cycle"]["entered"] == 1
    with db.transaction() as s:
        engine.advance(s, now=NOW)
    with db.transaction() as s:
        engine.advance(s, now=NOW + dt.timedelta(hours=25))
    with db.transaction(readonly=True) as s:
        queued = dict(s.execute(select(Message.member_id, func.count()).where(Message.status == "queued")
                                .group_by(Message.member_id)).all())
        runs = set(s.execute(select(Journey.code, JourneyRun.member_id)
                             .join(Journey, Journey.id == JourneyRun.journey_id)).all())
    # Each member got exactly one marketing message: the weekly cap holds across journeys. The lapsed
    # member's month-old order, though written after publishing, is too old to ask for a review.
    assert queued == {lapsed: 1, newbie: 1, birthday: 1, carter: 1, cycler: 1}
    assert runs == {("ready_winback", lapsed), ("ready_repurchase", lapsed), ("ready_first_order", newbie),
                    ("ready_birthday", birthday), ("ready_cart", carter), ("ready_cycle", cycler)}
    with db.transaction(readonly=True) as s:
        sent = s.scalar(select(MessageTemplate.code).join(Message, Message.template_id == MessageTemplate.id)
                        .where(Message.member_id == cycler))
    assert sent == "cycle_sms"


def test_the_shipped_journeys_run_end_to_end_on_the_demo_data(clean_db, tmp_path):
    """`orchard demo` installs the ready journeys as drafts; published, swept, advanced and dispatched
    (log provider) on the demo's own members: several journeys enter members, nothing fails, no member
    gets two marketing messages in the week, and marketing reaches only members with SMS marketing
    consent."""
    from orchard.channels.log import LogProvider
    from orchard.demo.generate import ANCHOR
    from orchard.demo.load import load_demo
    from orchard.members.models import Consent
    from orchard.messaging import outbox, sending

    load_demo(members=150, seed=11, directory=tmp_path)
    with db.transaction() as s:
        assert ready.install(s, actor="t", publish=True)["published"]
    now = dt.datetime.combine(ANCHOR, dt.time(10, 0), SH).astimezone(dt.UTC)
    with db.transaction() as s:
        entered = {code: r["entered"] for code, r in engine.sweep(s, now=now)["journeys"].items() if r["entered"]}
    assert len(entered) >= 3, entered
    log = {name: LogProvider(channel) for name, channel in sending.CHANNELS.items()}
    for at in (now, now + dt.timedelta(hours=25), now + dt.timedelta(days=16)):
        with db.transaction() as s:
            engine.advance(s, now=at)
        outbox.dispatch(log, now=at, to_outbound=sending.to_outbound, limit=1000)
    with db.transaction(readonly=True) as s:
        messages = list(s.scalars(select(Message)))
        consented = set(s.scalars(select(Consent.member_id).where(
            Consent.channel == "sms", Consent.purpose == "marketing", Consent.granted.is_(True))))
    assert messages and not [m for m in messages if m.status in ("failed", "dead", "queued", "sending")]
    sent = [m for m in messages if m.status == "sent"]
    assert sent and sum(len(p.sent) for p in log.values()) == len(sent)
    marketing = [m for m in sent if m.purpose == "marketing"]
    assert {m.member_id for m in marketing} <= consented
    week: dict[tuple[int, int], int] = {}
    for m in marketing:
        key = (m.member_id, (m.created_at - now).days // 7)
        week[key] = week.get(key, 0) + 1
    assert max(week.values()) == 1
    with db.transaction(readonly=True) as s:  # win-back level 2 (day 8): a call-back and a WeCom task each
        from orchard.journeys.models import StaffTask

        tasks = Counter(s.scalars(select(StaffTask.kind)))
        stored = s.scalar(select(func.count()).select_from(StaffTask).where(StaffTask.store_id.is_not(None)))
    assert tasks["callback"] == tasks["wecom"] > 0 and stored > 0
