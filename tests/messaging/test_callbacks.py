"""Provider status callbacks through `POST /api/v1/channels/{provider}/callbacks`, on SQLite and PostgreSQL:
each vendor's report as the vendor builds it (Aliyun SmsReport, Tencent status report, a Standard Webhooks signed
event, WeChat TEMPLATESENDJOBFINISH with its token signature, JPush Basic credentials), applied to the messages
it names by Orchard's id or the provider's; repeated and out-of-order reports, unknown ids, bad signatures, unknown
providers; and a receipt that beats the worker's own record of the send."""

from __future__ import annotations

import datetime as dt
import json
import time
from zoneinfo import ZoneInfo

import pytest

from orchard import db
from orchard.identity.models import Identity
from orchard.messaging import outbox, templates
from orchard.messaging.models import Message
from tests.messaging.vendors import (  # noqa: F401 — `vendors` is a fixture
    aliyun_report,
    jpush_auth,
    sent,
    standard_webhook,
    vendors,
    wechat_query,
)
from tests.segments.helpers import member

SH = ZoneInfo("Asia/Shanghai")
T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=SH)
URL = "/api/v1/channels/{}/callbacks"
pytestmark = pytest.mark.usefixtures("vendors")


def state(mid: int) -> tuple:
    with db.transaction(readonly=True) as s:
        m = s.get(Message, mid)
        return m.status, m.reason, m.detail, m.delivered_at, m.opened_at, m.clicked_at


def counts(r) -> dict:
    return json.loads(r.headers["orchard-callback-result"])


@pytest.fixture
def member_id(clean_db) -> int:
    with db.transaction() as s:
        mid = member(s, "王芳")
        s.add(Identity(member_id=mid, kind="phone", value="+8613800000001"))
    return mid


def test_sms_reports_match_by_orchard_or_vendor_id_idempotent_and_forward_only(client, member_id):
    with db.transaction() as s:
        m1 = sent(s, member_id, channel="sms", provider="aliyun_sms", pmid="900619746936498440^0", at=T0, key="a1")
        m2 = sent(s, member_id, channel="sms", provider="aliyun_sms", pmid="900619746936498441^0", at=T0, key="a2")
        m3 = sent(s, member_id, channel="sms", provider="tencent_sms", pmid="5000:104130", at=T0, key="t1")
    report = [aliyun_report("900619746936498440^0", f"orchard-{m1}", success=True, at="2026-11-24 10:00:05"),
              # no out_id: matched by biz_id
              aliyun_report("900619746936498441^0", "", success=False, at="2026-11-24 10:00:09", code="MK:0001"),
              # another system's traffic on the same account
              aliyun_report("111111111111111111^0", "crm-42", success=True, at="2026-11-24 10:00:07")]
    r = client.post(URL.format("aliyun"), content=json.dumps(report, ensure_ascii=False).encode(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {"code": 0, "msg": "成功"}  # what Aliyun wants, or it retries
    assert counts(r) == {"received": 3, "matched": 2, "changed": 2, "unknown": 1}
    delivered_at = dt.datetime(2026, 11, 24, 2, 0, 5, tzinfo=dt.UTC)
    assert state(m1) == ("delivered", None, None, delivered_at, None, None)
    assert state(m2)[:3] == ("failed", "provider.undelivered", "MK:0001")

    # The vendor retries the whole batch, now with a contradicting late failure for m1: nothing moves.
    late = [*report, aliyun_report("900619746936498440^0", f"orchard-{m1}", success=False, at="2026-11-24 11:00:00",
                                   code="MK:0005")]
    r = client.post(URL.format("aliyun"), content=json.dumps(late).encode())
    assert counts(r) == {"received": 4, "matched": 3, "changed": 0, "unknown": 1}
    assert state(m1) == ("delivered", None, None, delivered_at, None, None)

    # Tencent's status report names the SerialNo (sid); an Aliyun id is not a Tencent one.
    tencent = [{"user_receive_time": "2026-11-24 10:01:00", "nationcode": "86", "mobile": "13800000001",
                "report_status": "SUCCESS", "errmsg": "DELIVRD", "description": "用户短信送达成功",
                "sid": "5000:104130"},
               {"user_receive_time": "2026-11-24 10:01:00", "nationcode": "86", "mobile": "13800000001",
                "report_status": "SUCCESS", "errmsg": "DELIVRD", "description": "用户短信送达成功",
                "sid": "900619746936498441^0"}]
    r = client.post(URL.format("tencent"), content=json.dumps(tencent, ensure_ascii=False).encode())
    assert r.status_code == 200 and r.json() == {"result": 0, "errmsg": "OK"}
    assert counts(r)["unknown"] == 1 and state(m3)[0] == "delivered" and state(m2)[0] == "failed"

    bad = client.post(URL.format("aliyun"), content=b"<xml>not a report</xml>")
    assert bad.status_code == 401 and bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["code"] == "callback.rejected"
    for name in ("fax", "wechat_mp", "smtp"):  # unknown, or not configured: no way to verify
        r = client.post(URL.format(name), content=b"[]")
        assert r.status_code == 404 and r.json()["code"] == "callback.unknown_provider", name


def test_signed_callbacks_clicks_before_receipts_and_a_receipt_before_the_record(client, member_id):
    with db.transaction() as s:
        hook = sent(s, member_id, channel="webhook", provider="webhook", pmid=None, at=T0, key="w1")
        oa = sent(s, member_id, channel="wechat_template", provider="wechat_template", pmid="200163836", at=T0,
                  key="o1")

    def event(status: str, at: str, **kw):
        return standard_webhook({"type": "orchard.message.status",
                                 "data": {"message_id": f"orchard-{hook}", "status": status, "at": at}}, **kw)

    # A click comes first: it proves delivery, and a later delivery receipt (earlier time) refines, never undoes.
    body, h = event("clicked", "2026-11-24T10:05:00+08:00")
    r = client.post(URL.format("webhook"), content=body, headers=h)
    assert r.status_code == 200 and r.json() == {"received": 1, "matched": 1, "changed": 1, "unknown": 0}
    clicked = dt.datetime(2026, 11, 24, 2, 5, tzinfo=dt.UTC)
    assert state(hook) == ("delivered", None, None, clicked, None, clicked)
    body, h = event("delivered", "2026-11-24T10:02:00+08:00", msg_id="evt_2")
    client.post(URL.format("webhook"), content=body, headers=h)
    assert state(hook)[3] == dt.datetime(2026, 11, 24, 2, 2, tzinfo=dt.UTC) and state(hook)[5] == clicked
    body, h = event("failed", "2026-11-24T10:06:00+08:00", msg_id="evt_3")
    assert client.post(URL.format("webhook"), content=body, headers=h).json()["changed"] == 0
    body, h = event("read", "2026-11-24T10:04:00+08:00", msg_id="evt_4")
    client.post(URL.format("webhook"), content=body, headers=h)
    assert state(hook)[:2] == ("delivered", None) and state(hook)[4] == dt.datetime(2026, 11, 24, 2, 4, tzinfo=dt.UTC)
    for forged in (event("failed", "2026-11-24T10:06:00+08:00", secret="whsec_" + "A" * 44),  # wrong key
                   event("failed", "2026-11-24T10:06:00+08:00", ts=int(time.time()) - 3600)):  # replayed
        r = client.post(URL.format("webhook"), content=forged[0], headers=forged[1])
        assert r.status_code == 401 and r.json()["code"] == "callback.rejected"
    assert state(hook)[0] == "delivered"

    # WeChat: the push is signed in the query string with the account's token; the answer is "success".
    xml = (b"<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QE]]>"
           b"</FromUserName><CreateTime>1732413900</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           b"<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>200163836</MsgID>"
           b"<Status><![CDATA[success]]></Status></xml>")
    assert client.post(URL.format("wechat_oa"), params=wechat_query(token="guessed"), content=xml).status_code == 401
    r = client.post(URL.format("wechat_oa"), params=wechat_query(), content=xml)
    assert (r.status_code, r.text) == (200, "success")
    assert state(oa)[0] == "delivered" and state(oa)[3] == dt.datetime.fromtimestamp(1732413900, dt.UTC)
    # Saving the URL in the consoles: a signed GET echoed back (WeChat), Basic credentials (JPush).
    r = client.get(URL.format("wechat_oa"), params={**wechat_query(), "echostr": "5837397520"})
    assert (r.status_code, r.text) == (200, "5837397520")
    r = client.get(URL.format("jpush"), params={"echostr": "571fd1bf"}, headers=jpush_auth())
    assert (r.status_code, r.text) == (200, "571fd1bf")
    assert client.post(URL.format("jpush"), content=b"[]", headers=jpush_auth(master="nope")).status_code == 401
    assert client.post(URL.format("jpush"), content=b"[]", headers=jpush_auth()).json()["received"] == 0

    # The provider's receipt arrives while the worker is still in its send call, which then times out: the
    # message stays delivered and is not retried (it would reach the member twice).
    with db.transaction() as s:
        templates.create(s, code="notice", name="通知", channel="sms", purpose="service", sign_name="果园",
                         body="订单已发货", actor="t", publish=True)
        queued = outbox.enqueue(s, key="race", member_id=member_id, template_code="notice").id

    class RacedByItsReceipt:
        name = "aliyun_sms"

        def send(self, message):
            report = [aliyun_report("900619746936498499^0", f"orchard-{message.id}", success=True,
                                    at="2026-11-24 10:00:03")]
            assert counts(client.post(URL.format("aliyun"), content=json.dumps(report).encode()))["changed"] == 1
            return outbox.Outcome(False, permanent=False, error="ReadTimeout")

    stats = outbox.dispatch({"sms": RacedByItsReceipt()})
    assert (stats.claimed, stats.retried) == (1, 0)
    with db.transaction(readonly=True) as s:
        m = s.get(Message, queued)
        assert (m.status, m.reason, m.locked_by, m.attempts) == ("delivered", None, None, 1) and m.sent_at
