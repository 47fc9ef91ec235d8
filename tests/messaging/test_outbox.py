"""The outbox and the respect rules on SQLite and PostgreSQL: consent, caps, priority, quiet hours
(over a simulated month), exclusions, idempotent decisions, consent withdrawn before the send, retries,
dead letters, and a worker that dies mid-batch."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from orchard import db
from orchard.errors import Conflict, InvalidInput
from orchard.identity.models import Identity
from orchard.members.consent import set_consent
from orchard.messaging import outbox, respect, templates
from orchard.messaging.models import Message
from tests.segments.helpers import member

SH = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 11, 24, 12, 0, tzinfo=SH).astimezone(dt.UTC)
PROMO = "尊敬的{{ member.name }}，您有{{ points.balance }}积分待使用。拒收请回复R"


class Recorder:
    """A provider that records what it was given and answers as told (accepted by default)."""

    name = "recorder"

    def __init__(self, answers=None):
        self.sent: list[Message] = []
        self.answers = list(answers or [])

    def send(self, message):
        self.sent.append((message.key, message.recipient, dict(message.payload)))
        return self.answers.pop(0) if self.answers else outbox.Outcome(True, provider_message_id=f"p-{message.id}")


@pytest.fixture
def world(clean_db):
    with db.transaction() as s:
        templates.create(s, code="promo", name="积分提醒", channel="sms", purpose="marketing", body=PROMO,
                         sign_name="果园", actor="t", publish=True)
        templates.create(s, code="receipt", name="订单通知", channel="sms", purpose="service",
                         body="{{ member.name }}，订单已支付。", sign_name="果园", actor="t", publish=True)
        a = member(s, "王芳")
        b = member(s, "李雷")
        for mid, phone in ((a, "+8613800000001"), (b, "+8613800000002")):
            s.add(Identity(member_id=mid, kind="phone", value=phone))
        set_consent(s, member_id=a, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
    return {"a": a, "b": b}


def decide(key, member_id, template="promo", now=NOON, **kw) -> Message:
    with db.transaction() as s:
        m = outbox.enqueue(s, key=key, member_id=member_id, template_code=template, now=now, **kw)
        s.expunge(m)
    return m


def test_publish_refuses_unknown_variables_and_sms_without_opt_out(clean_db):
    with db.transaction() as s:
        with pytest.raises(InvalidInput) as exc:
            templates.create(s, code="x", name="x", channel="sms", purpose="service", sign_name="果园",
                             body="{{ member.nmae }}您好", actor="t", publish=True)
        assert exc.value.errors[0]["field"] == "body" and "nmae" in exc.value.errors[0]["reason"]
        with pytest.raises(InvalidInput) as exc:
            templates.create(s, code="y", name="y", channel="sms", purpose="marketing", sign_name="果园",
                             body="{{ member.name }}，双11 五折！", actor="t", publish=True)
        assert "opt-out" in exc.value.errors[0]["reason"]


def test_consent_caps_and_idempotent_decisions(world):
    first = decide("k1", world["a"])
    assert (first.status, first.recipient) == ("queued", "+8613800000001")
    assert first.payload["body"] == "尊敬的王芳，您有0积分待使用。拒收请回复R"
    assert decide("k1", world["a"]).id == first.id  # a retried decision finds the first
    second = decide("k2", world["a"])
    assert (second.status, second.reason) == ("suppressed", "cap.all")
    no_consent = decide("k3", world["b"])
    assert (no_consent.status, no_consent.reason) == ("suppressed", "consent.sms")
    service = decide("k4", world["b"], template="receipt")  # service messages need no marketing consent
    assert service.status == "queued"
    eight_days = decide("k5", world["a"], now=NOON + dt.timedelta(days=8))
    assert eight_days.status == "queued"


def test_priority_preempts_a_queued_lower_priority_message(world):
    low = decide("low", world["a"], priority=1)
    high = decide("high", world["a"], priority=5)
    assert high.status == "queued"
    with db.transaction(readonly=True) as s:
        loser = s.get(Message, low.id)
        assert (loser.status, loser.reason, loser.detail) == ("cancelled", "priority", "preempted by high")
    lower = decide("lower", world["a"], priority=0)
    assert (lower.status, lower.reason) == ("suppressed", "cap.all")


def test_reduce_disturbance_and_excluded_tags(world):
    with db.transaction() as s:
        from tests.segments.helpers import tag

        tag(s, world["a"], "投诉")
    assert decide("k", world["a"]).reason == "excluded.tag"


def test_consent_withdrawn_between_decision_and_send_is_not_sent(world):
    m = decide("k", world["a"])
    with db.transaction() as s:
        set_consent(s, member_id=world["a"], channel="sms", purpose="marketing", granted=False, source="reply T",
                    actor="sms")
    rec = Recorder()
    stats = outbox.dispatch({"sms": rec}, now=NOON)
    assert rec.sent == [] and stats.suppressed == 1
    with db.transaction(readonly=True) as s:
        assert (s.get(Message, m.id).status, s.get(Message, m.id).reason) == ("suppressed", "consent.sms")


def test_quiet_hours_over_a_simulated_month(world):
    """Decisions every hour for 30 days; a worker runs every hour: nothing is ever sent outside 08–21."""
    rec = Recorder()
    start = dt.datetime(2026, 12, 1, 0, 30, tzinfo=SH)
    sent_at_local = []
    for hour in range(30 * 24):
        now = (start + dt.timedelta(hours=hour)).astimezone(dt.UTC)
        with db.transaction() as s:
            outbox.enqueue(s, key=f"h{hour}", member_id=world["a"], template_code="promo", now=now)
        before = len(rec.sent)
        outbox.dispatch({"sms": rec}, now=now)
        sent_at_local += [now.astimezone(SH)] * (len(rec.sent) - before)
    assert sent_at_local, "something was sent"
    assert all(dt.time(8, 0) <= t.time() < dt.time(21, 0) for t in sent_at_local)
    # One a week: the cap holds across the month too.
    assert 4 <= len(sent_at_local) <= 5


def test_transient_errors_retry_with_backoff_then_dead_and_resend(world):
    decide("k", world["a"])
    rec = Recorder([outbox.Outcome(False, permanent=False, error="throttled")] * outbox.MAX_ATTEMPTS)
    now = NOON
    for _ in range(outbox.MAX_ATTEMPTS):
        outbox.dispatch({"sms": rec}, now=now)
        with db.transaction(readonly=True) as s:
            m = s.scalar(select(Message))
        if m.status == "dead":
            break
        assert m.status == "queued" and m.next_attempt_at > now
        now = m.next_attempt_at
    assert (m.status, m.reason, m.attempts) == ("dead", "provider.retries_exhausted", outbox.MAX_ATTEMPTS)
    with db.transaction() as s:
        outbox.resend(s, message_id=m.id, actor="ops", now=now)
    outbox.dispatch({"sms": rec}, now=now)
    with db.transaction(readonly=True) as s:
        assert s.get(Message, m.id).status == "sent"


def test_permanent_errors_fail_at_once(world):
    decide("k", world["a"])
    outbox.dispatch({"sms": Recorder([outbox.Outcome(False, permanent=True, error="invalid number")])}, now=NOON)
    with db.transaction(readonly=True) as s:
        m = s.scalar(select(Message))
    assert (m.status, m.attempts, m.detail) == ("failed", 1, "invalid number")
    queued = decide("k2", world["b"], template="receipt")
    with db.transaction() as s, pytest.raises(InvalidInput):
        outbox.resend(s, message_id=queued.id, actor="ops")  # only failed or dead messages are resent


def test_a_worker_dying_mid_batch_loses_nothing_and_resends_the_same_key(world):
    decide("k1", world["a"])
    decide("k2", world["b"], template="receipt")
    with db.transaction() as s:
        assert len(outbox.claim(s, limit=10, now=NOON, me="dead-worker")) == 2
    rec = Recorder()
    assert outbox.dispatch({"sms": rec}, now=NOON + dt.timedelta(seconds=60)).claimed == 0  # claim still held
    outbox.dispatch({"sms": rec}, now=NOON + dt.timedelta(seconds=outbox.CLAIM_SECONDS + 1))
    assert sorted(k for k, _, _ in rec.sent) == ["k1", "k2"]
    with db.transaction(readonly=True) as s:
        assert {m.status for m in s.scalars(select(Message))} == {"sent"}


def test_unpublished_template_is_refused(world):
    with db.transaction() as s:
        templates.create(s, code="draft", name="d", channel="sms", purpose="service", body="x", sign_name="果园",
                         actor="t")
    with pytest.raises(Conflict):
        decide("k", world["a"], template="draft")


def test_quiet_until():
    p = respect.Policy()
    assert respect.quiet_until(p, dt.datetime(2026, 1, 1, 7, 59, tzinfo=SH)) == dt.datetime(2026, 1, 1, 8, 0,
                                                                                           tzinfo=SH)
    assert respect.quiet_until(p, dt.datetime(2026, 1, 1, 8, 0, tzinfo=SH)) is None
    assert respect.quiet_until(p, dt.datetime(2026, 1, 1, 21, 0, tzinfo=SH)) == dt.datetime(2026, 1, 2, 8, 0,
                                                                                           tzinfo=SH)


def test_tracked_links_record_the_click_and_redirect(client, world):
    with db.transaction() as s:
        templates.create(s, code="linky", name="l", channel="sms", purpose="service", sign_name="果园",
                         body="查看订单 {{ link('https://shop.example.com/o/1') }}", actor="t", publish=True)
    m = decide("lk", world["b"], template="linky")
    url = m.payload["body"].split()[-1]
    assert url.startswith("http://127.0.0.1:8000/t/")
    assert decide("lk", world["b"], template="linky").payload["body"] == m.payload["body"]  # stable per key
    r = client.get(url.replace("http://127.0.0.1:8000", ""), follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example.com/o/1"
    client.get(url.replace("http://127.0.0.1:8000", ""), follow_redirects=False)
    with db.transaction(readonly=True) as s:
        from orchard.messaging.models import ShortLink

        link = s.scalar(select(ShortLink))
        assert link.clicks == 2 and s.get(Message, m.id).clicked_at is not None
    assert client.get("/t/nope", follow_redirects=False).status_code == 404


def test_an_opt_out_reply_withdraws_sms_marketing_consent_at_once(client, world):
    from tests.factories import headers, make_org, token_for

    make_org()
    admin = headers(token_for(client, "admin"))
    queued = decide("k", world["a"])
    r = client.post("/api/v1/channels/sms/replies", headers=admin,
                    json={"phone": "138 0000 0001", "text": " ｔｄ ", "provider": "aliyun"})
    assert r.status_code == 200 and r.json() == {"phone": "+8613800000001", "opt_out": True, "members": [world["a"]]}
    not_opt_out = client.post("/api/v1/channels/sms/replies", headers=admin,
                              json={"phone": "13800000002", "text": "谢谢"}).json()
    assert not_opt_out["opt_out"] is False
    outbox.dispatch({"sms": Recorder()}, now=NOON)
    with db.transaction(readonly=True) as s:
        assert s.get(Message, queued.id).reason == "consent.sms"
    assert client.post("/api/v1/channels/sms/replies", headers=admin,
                       json={"phone": "abc", "text": "T"}).status_code == 422


def test_contact_policy_api_validates_and_audits(client):
    from tests.factories import headers, make_org, token_for

    make_org()
    admin = headers(token_for(client, "admin"))
    assert client.get("/api/v1/contact-policy", headers=admin).json()["quiet_hours"] == {"start": "08:00:00",
                                                                                      "end": "21:00:00"}
    bad = client.put("/api/v1/contact-policy", headers=admin, json={"quiet_hours": {"end": "00:01:39Z"}})
    assert bad.status_code == 422 and "offset" in bad.text
    bad = client.put("/api/v1/contact-policy", headers=admin, json={"quiet_hours": {"start": "22:00", "end": "09:00"}})
    assert bad.status_code == 422
    bad = client.put("/api/v1/contact-policy", headers=admin, json={"caps": {"fax": {"max": 1, "days": 7}}})
    assert bad.status_code == 422
    ok = client.put("/api/v1/contact-policy", headers=admin, json={"caps": {"all": {"max": 2, "days": 7},
                                                                            "sms": {"max": 1, "days": 30}}})
    assert ok.status_code == 200 and ok.json()["caps"]["sms"] == {"max": 1, "days": 30}


NIGHT = dt.datetime(2026, 11, 24, 22, 0, tzinfo=SH).astimezone(dt.UTC)


class Keyed:
    """A provider answering by message key (a batch is sent concurrently: the order says nothing)."""

    name = "keyed"

    def __init__(self, answers):
        self.answers, self.sent = answers, []

    def send(self, message):
        self.sent.append(message.key)
        answer = self.answers.get(message.key, outbox.Outcome(True, provider_message_id=f"p-{message.key}"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_batch_mixing_every_outcome_is_recorded_row_by_row(world):
    decide("promo", world["a"])  # marketing decided at noon, dispatched at night: deferred
    for key in ("ok", "transient", "permanent", "boom"):
        decide(key, world["a"], template="receipt")
    decide("withdrawn", world["b"], template="receipt")
    with db.transaction() as s:
        set_consent(s, member_id=world["b"], channel="sms", purpose="service", granted=False, source="t", actor="t")
    provider = Keyed({"transient": outbox.Outcome(False, error="throttled"), "boom": RuntimeError("adapter bug"),
                      "permanent": outbox.Outcome(False, permanent=True, error="invalid number")})
    stats = outbox.dispatch({"sms": provider}, now=NIGHT)
    assert sorted(provider.sent) == ["boom", "ok", "permanent", "transient"]
    assert (stats.claimed, stats.sent, stats.retried, stats.failed, stats.suppressed, stats.deferred) == \
        (6, 1, 2, 1, 1, 1)
    with db.transaction(readonly=True) as s:
        rows = {m.key: m for m in s.scalars(select(Message))}
    assert {k: (m.status, m.reason, m.attempts) for k, m in rows.items()} == {
        "promo": ("queued", None, 0), "ok": ("sent", None, 1), "transient": ("queued", "provider.transient", 1),
        "boom": ("queued", "provider.transient", 1), "permanent": ("failed", "provider.permanent", 1),
        "withdrawn": ("suppressed", "consent.sms", 1)}
    assert all(m.locked_by is None and m.locked_until is None for m in rows.values())
    assert rows["promo"].next_attempt_at == dt.datetime(2026, 11, 25, 8, 0, tzinfo=SH)
    assert (rows["ok"].provider, rows["ok"].provider_message_id) == ("keyed", "p-ok")
    for key in ("transient", "boom"):  # backoff: 30 s ± 20 % after the record
        assert rows[key].next_attempt_at - rows["ok"].sent_at >= dt.timedelta(seconds=24)
    assert (rows["boom"].detail, rows["permanent"].detail) == ("RuntimeError: adapter bug", "invalid number")
    assert rows["withdrawn"].detail == "sms service consent withdrawn"


def test_a_claim_taken_over_during_the_send_is_not_overwritten(world):
    decide("k", world["b"], template="receipt")

    class Slow:  # the send outlives the claim, and another worker takes the message over meanwhile
        name = "slow"

        def send(self, message):
            later = NOON + dt.timedelta(seconds=outbox.CLAIM_SECONDS + 1)
            with db.transaction() as s:  # (would wait forever on SQLite if dispatch held a transaction)
                assert outbox.claim(s, limit=10, now=later, me="other") == [message.id]
            return outbox.Outcome(True)

    assert outbox.dispatch({"sms": Slow()}, now=NOON).sent == 0
    with db.transaction(readonly=True) as s:
        m = s.scalar(select(Message))
    assert (m.status, m.locked_by, m.attempts, m.sent_at) == ("sending", "other", 2, None)


def test_the_batch_check_at_send_gives_the_verdicts_of_check(world):
    """`respect.check_at_send` (the outbox's re-check of a whole batch) against `respect.check(at_send=True)`,
    one message per rule, in and out of quiet hours."""
    from orchard.members.models import Member
    from tests.segments.helpers import tag

    with db.transaction() as s:
        merged = member(s, "合并", status="merged", merged_into_id=world["a"])
        quiet = member(s, "安静", reduce_disturbance=True)
        tagged = member(s, "投诉者")
        tag(s, tagged, "投诉")
        fine = member(s, "张三")
        no_phone = member(s, "无号")
        for n, mid in enumerate((merged, quiet, tagged, fine)):
            s.add(Identity(member_id=mid, kind="phone", value=f"+861390000000{n}"))
        for mid in (merged, quiet, tagged, fine, no_phone):
            set_consent(s, member_id=mid, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
        set_consent(s, member_id=world["b"], channel="sms", purpose="service", granted=False, source="t", actor="t")
        s.add(Message(key="earlier", member_id=world["a"], channel="sms", purpose="service", status="sent",
                      recipient="+8613800000001", created_at=NOON - dt.timedelta(hours=1), payload={}))
        cases = [(merged, "sms", "marketing"), (tagged, "sms", "marketing"), (quiet, "sms", "marketing"),
                 (world["b"], "sms", "marketing"), (world["b"], "sms", "service"), (no_phone, "sms", "service"),
                 (world["a"], "sms", "service"), (fine, "sms", "marketing"), (fine, "app_push", "service"),
                 (quiet, "webhook", "marketing"), (quiet, "webhook", "service"), (fine, "email", "marketing")]
        batch = [Message(key=f"c{i}", member_id=mid, channel=channel, purpose=purpose, status="sending",
                         created_at=NOON, payload={}) for i, (mid, channel, purpose) in enumerate(cases)]
        s.add_all(batch)
        s.flush()
        policy = respect.Policy(sms_per_number_per_day=1)
        for now in (NOON, NIGHT):
            verdicts = respect.check_at_send(s, batch, policy=policy, now=now)
            for m in batch:
                one = respect.check(s, member=s.get(Member, m.member_id), channel=m.channel, purpose=m.purpose,
                                    policy=policy, now=now, at_send=True, exclude_message_id=m.id)
                assert verdicts[m.id] == one, (m.key, m.channel, m.purpose)
        assert {verdicts[m.id].reason for m in batch} == {
            None, "member.inactive", "excluded.tag", "reduce_disturbance", "consent.sms", "no_recipient",
            "cap.number", "consent.email"}
