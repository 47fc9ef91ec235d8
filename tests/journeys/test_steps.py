"""Journey steps and per-member choices on SQLite and PostgreSQL: the webhook step end to end through
the outbox and the real Standard Webhooks adapter to a loopback receiver, per-journey message caps,
a member's preferred channel, and app push registration ids registered (and moved) through the API."""

from __future__ import annotations

import base64
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from orchard import db
from orchard.audit.models import AuditEntry
from orchard.channels import webhook
from orchard.channels.webhook import WebhookProvider, WebhookVerificationError
from orchard.errors import InvalidInput
from orchard.identity.models import Identity
from orchard.journeys import engine, service
from orchard.journeys import graph as G
from orchard.members.consent import set_consent
from orchard.messaging import outbox, sending, templates
from orchard.messaging.models import Message
from tests.channels.loopback import Loopback, Request
from tests.segments.helpers import event, member

SH = ZoneInfo("Asia/Shanghai")
T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=SH).astimezone(dt.UTC)
SECRET = "whsec_" + base64.b64encode(b"orchard-journey-webhook-key-0001").decode()


def make(code: str, graph: dict) -> None:
    """Create and publish; the trigger cursor starts at 0 so events written in setup count."""
    with db.transaction() as s:
        service.create(s, code=code, name=code, graph=graph, actor="t")
        service.publish(s, code=code, actor="t")
        service.get(s, code).cursor = 0


def sweep_and_advance(now: dt.datetime) -> engine.AdvanceStats:
    with db.transaction() as s:
        engine.sweep(s, now=now)
    with db.transaction() as s:
        return engine.advance(s, now=now)


def messages() -> list[Message]:
    with db.transaction(readonly=True) as s:
        return list(s.scalars(select(Message).order_by(Message.id)))


def test_webhook_urls_and_payloads_are_checked_with_their_path():
    def errors(step: dict) -> list[dict]:
        with pytest.raises(InvalidInput) as exc:
            G.parse({"trigger": {"type": "event", "event": "x"}, "entry": "webhook",
                     "steps": {"webhook": {"type": "webhook", **step}}})
        return exc.value.errors

    assert errors({"url": "https://user:pw@crm.example.com/hook"})[0]["field"] == "$.steps.webhook.url"
    assert "credentials" in errors({"url": "https://user:pw@crm.example.com/hook"})[0]["reason"]
    assert errors({"url": "ftp://crm.example.com/hook"})[0]["field"] == "$.steps.webhook.url"
    assert errors({"url": "https://"})[0]["field"] == "$.steps.webhook.url"
    assert errors({"url": "https://crm.example.com/" + "x" * 300})[0]["field"] == "$.steps.webhook.url"
    reserved = errors({"url": "https://crm.example.com/hook", "payload": {"member_id": 1}})[0]
    assert reserved["field"] == "$.steps.webhook.payload" and "member_id" in reserved["reason"]


def test_webhook_step_goes_through_the_outbox_signed_and_counts_toward_no_cap(clean_db):
    with db.transaction() as s:
        templates.create(s, code="promo", name="促销", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ member.name }}，新品上市，回T退订", actor="t", publish=True)
        mid = member(s, "王芳")
        s.add(Identity(member_id=mid, kind="phone", value="+8613800000001"))
        set_consent(s, member_id=mid, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
        event(s, mid, "sign_up", T0 - dt.timedelta(minutes=5), channel="小程序")
    got: list[tuple[Request, dict]] = []

    def receiver(req: Request):
        try:  # what an integrator does: verify the Standard Webhooks signature before trusting the body
            got.append((req, webhook.verify(SECRET, req.headers, req.body)))
        except WebhookVerificationError:
            return 401, "bad signature"
        return 204, ""

    with Loopback(receiver) as lb:
        make("crm_sync", {"trigger": {"type": "event", "event": "sign_up"}, "entry": "hook",
                          "steps": {"hook": {"type": "webhook", "url": f"{lb.url}/orchard/hook",
                                             "payload": {"campaign": "双11", "score": 3}, "next": "promo"},
                                    "promo": {"type": "send", "template": "promo"}}})
        sweep_and_advance(T0)
        hook, promo = messages()
        # The call is a service message to the URL (no consent asked), and the marketing SMS after it
        # still fits the 1-per-7-days cap: the webhook did not count.
        assert (hook.channel, hook.purpose, hook.status, hook.recipient, hook.template_id) == (
            "webhook", "service", "queued", f"{lb.url}/orchard/hook", None)
        assert (promo.channel, promo.status) == ("sms", "queued")
        stats = outbox.dispatch({"webhook": WebhookProvider(SECRET)}, now=T0, to_outbound=sending.to_outbound)
    assert stats.sent == 1
    (req, body), = got
    assert req.path == "/orchard/hook" and req.headers["webhook-id"] == f"orchard-{hook.id}"
    data = body["data"]
    assert body["type"] == "orchard.journey.webhook"
    assert {k: data[k] for k in ("message_id", "member_id", "journey", "run_id", "step", "campaign", "score")} == {
        "message_id": f"orchard-{hook.id}", "member_id": mid, "journey": "crm_sync", "run_id": hook.run_id,
        "step": "hook", "campaign": "双11", "score": 3}
    assert data["trigger"]["event"]["name"] == "sign_up"
    assert data["trigger"]["event"]["properties"] == {"channel": "小程序"}
    assert messages()[0].status == "sent"


def test_journey_message_cap_suppresses_with_its_reason(clean_db):
    with db.transaction() as s:
        templates.create(s, code="tip", name="小贴士", channel="log", purpose="service", body="第{{ 1 }}条",
                         actor="t", publish=True)
        mid = member(s, "李雷")
        event(s, mid, "sign_up", T0)
    day = {"type": "wait", "days": 1}
    make("tips", {"trigger": {"type": "event", "event": "sign_up"}, "entry": "s1",
                  "message_cap": {"max": 2, "days": 30},
                  "steps": {"s1": {"type": "send", "template": "tip", "next": "w1"}, "w1": {**day, "next": "s2"},
                            "s2": {"type": "send", "template": "tip", "next": "w2"}, "w2": {**day, "next": "s3"},
                            "s3": {"type": "send", "template": "tip"}}})
    for d in range(3):
        sweep_and_advance(T0 + dt.timedelta(days=d))
    assert [(m.status, m.reason) for m in messages()] == [("queued", None), ("queued", None),
                                                          ("suppressed", "cap.journey")]
    with db.transaction(readonly=True) as s:
        why = engine.explain(s, member_id=mid)
    assert [(d["step"], d["reason"]) for d in why if d["kind"] == "suppressed"] == [("s3", "cap.journey")]


def test_preferred_channel_and_push_registration_through_the_api(client):
    from orchard.org.models import OrgUnit
    from tests.factories import api_key, headers

    admin = headers(api_key("admin", name="ops"))
    with db.transaction() as s:
        stores = {code: id_ for code, id_ in s.execute(select(OrgUnit.code, OrgUnit.id))}
        templates.create(s, code="sms_promo", name="短信", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ member.name }}，会员日双倍积分，回T退订", actor="t", publish=True)
        templates.create(s, code="push_promo", name="推送", channel="app_push", purpose="marketing",
                         body="{{ member.name }}，会员日双倍积分", actor="t", publish=True)
        a, b = member(s, "甲", home_store_id=stores["SH001"]), member(s, "乙", home_store_id=stores["GZ001"])
        for mid, phone in ((a, "+8613800000011"), (b, "+8613800000012")):
            s.add(Identity(member_id=mid, kind="phone", value=phone))
            for channel in ("sms", "app_push"):
                set_consent(s, member_id=mid, channel=channel, purpose="marketing", granted=True, source="t",
                            actor="t")
            event(s, mid, "member_day", T0)
    url = f"/api/v1/members/{a}/push-registration"
    first = client.put(url, headers=admin, json={"registration_id": "1a0018970af7"})
    assert first.status_code == 200 and first.json() == {"member_id": a, "registration_id": "1a0018970af7",
                                                         "moved": False, "replaced": 0}
    assert client.put(url, headers=admin, json={"registration_id": "1a0018970af7"}).json() == first.json()
    assert client.put(url, headers=admin, json={"registration_id": "1a0018970b00"}).json()["replaced"] == 1
    assert client.put(url, headers=admin, json={"registration_id": "bad id!"}).status_code == 422

    r = client.patch(f"/api/v1/members/{a}", headers=admin, json={"preferred_channel": "app_push"})
    assert r.status_code == 200 and r.json()["preferred_channel"] == "app_push"
    assert client.patch(f"/api/v1/members/{a}", headers=admin, json={"preferred_channel": "fax"}).status_code == 422
    with db.transaction(readonly=True) as s:
        audited = s.scalars(select(AuditEntry.data).where(AuditEntry.action == "contact_preference.changed")).all()
    assert audited == [{"preferred_channel": "app_push", "before": None}]

    make("member_day", {"trigger": {"type": "event", "event": "member_day"}, "entry": "s",
                        "steps": {"s": {"type": "send", "template": "sms_promo", "fallback": ["push_promo"],
                                        "prefer_member_channel": True}}})
    sweep_and_advance(T0)
    sent = {m.member_id: (m.channel, m.recipient) for m in messages() if m.status == "queued"}
    # a prefers app push (sent to the registration id registered above); b has no preference: SMS first.
    assert sent == {a: ("app_push", "1a0018970b00"), b: ("sms", "+8613800000012")}

    # The device moves to b: the id goes with it. A GZ001 clerk cannot take it from an SH001 member.
    clerk = headers(api_key("clerk", name="gz-clerk", store="GZ001"))
    taken = client.put(f"/api/v1/members/{b}/push-registration", headers=clerk,
                       json={"registration_id": "1a0018970b00"})
    assert taken.status_code == 409 and str(a) not in taken.text
    moved = client.put(f"/api/v1/members/{b}/push-registration", headers=admin,
                       json={"registration_id": "1a0018970b00"}).json()
    assert moved["moved"] is True
    kinds = {i["kind"] for i in client.get(f"/api/v1/members/{a}", headers=admin).json()["identities"]}
    assert "push_registration_id" not in kinds
    with db.transaction() as s:
        m = outbox.enqueue(s, key="after-move", member_id=b, template_code="push_promo",
                           now=T0 + dt.timedelta(days=8))
        assert (m.status, m.recipient) == ("queued", "1a0018970b00")
