"""WeChat OA template message and mini-program subscribe message against a loopback api.weixin.qq.com that issues
access tokens, expires them on demand and checks the template data like WeChat does."""

import hashlib
import itertools
import json

import pytest

from orchard.channels.base import CallbackRejected, OutboundMessage, Reason
from orchard.channels.wechat import WeChatSubscribeProvider, WeChatTemplateProvider

from .loopback import Loopback, Request

APPID, SECRET = "wx1234567890abcdef", "wechat-secret-Do-Not-Log"
OA_TEMPLATES = {"TPL_POINTS": {"first", "keyword1", "keyword2"}}
MP_TEMPLATES = {"SUB_COUPON": {"thing1", "time2"}}


class FakeWeChat:
    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.valid: set[str] = set()
        self.expired: set[str] = set()
        self.grants: dict[tuple[str, str], int] = {("o-member-1", "SUB_COUPON"): 1}
        self.sent: list[dict] = []
        self.token_fetches = 0

    def expire_all(self) -> None:
        self.expired |= self.valid
        self.valid.clear()

    def __call__(self, req: Request):
        if req.path == "/cgi-bin/token":
            q = req.query
            if q.get("grant_type") != "client_credential" or q.get("appid") != APPID:
                return 200, {"errcode": 40013, "errmsg": "invalid appid"}
            if q.get("secret") != SECRET:
                return 200, {"errcode": 40125, "errmsg": "invalid appsecret"}
            self.token_fetches += 1
            token = f"ACCESS_TOKEN_{next(self.counter)}"
            self.valid.add(token)
            return 200, {"access_token": token, "expires_in": 7200}
        token = req.query.get("access_token")
        if token in self.expired:
            return 200, {"errcode": 42001, "errmsg": "access_token expired"}
        if token not in self.valid:
            return 200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        try:
            body = req.json()
        except ValueError:
            return 200, {"errcode": 47001, "errmsg": "data format error"}
        if req.path == "/cgi-bin/openapi/quota/get":
            return 200, {"errcode": 0, "errmsg": "ok", "quota": {"daily_limit": 100000, "used": 7, "remain": 99993}}
        if req.path == "/cgi-bin/message/template/send":
            return self._template(body)
        if req.path == "/cgi-bin/message/subscribe/send":
            return self._subscribe(body)
        return 404, "not found"

    def _check_data(self, body, templates):
        if not body.get("touser", "").startswith("o-"):
            return {"errcode": 40003, "errmsg": "invalid openid"}
        if body.get("template_id") not in templates:
            return {"errcode": 40037, "errmsg": "invalid template_id"}
        data = body.get("data")
        if (not isinstance(data, dict) or set(data) != templates[body["template_id"]]
                or not all(isinstance(v, dict) and isinstance(v.get("value"), str) for v in data.values())):
            return {"errcode": 47003, "errmsg": "argument invalid! data.keyword1.value invalid"}
        return None

    def _template(self, body):
        if err := self._check_data(body, OA_TEMPLATES):
            return 200, err
        if body["touser"] == "o-busy":
            return 200, {"errcode": -1, "errmsg": "system error"}
        self.sent.append(body)
        return 200, {"errcode": 0, "errmsg": "ok", "msgid": 200228332 + len(self.sent)}

    def _subscribe(self, body):
        if err := self._check_data(body, MP_TEMPLATES):
            return 200, err
        if body.get("miniprogram_state") not in (None, "formal", "trial", "developer"):
            return 200, {"errcode": 47003, "errmsg": "miniprogram_state invalid"}
        key = (body["touser"], body["template_id"])
        if self.grants.get(key, 0) <= 0:
            return 200, {"errcode": 43101, "errmsg": "user refuse to accept the msg"}
        self.grants[key] -= 1
        self.sent.append(body)
        return 200, {"errcode": 0, "errmsg": "ok", "msgid": 1700827132819554304}


@pytest.fixture
def wx():
    fake = FakeWeChat()
    with Loopback(fake) as lb:
        lb.fake = fake
        yield lb


def _oa(lb, secret=SECRET, **kw):
    return WeChatTemplateProvider(APPID, secret, endpoint=lb.url, callback_token="cbtoken", **kw)


def _oa_msg(openid="o-member-1", **kw):
    base = dict(message_id="msg-wx-1", channel="wechat_oa", recipient=openid, template="TPL_POINTS",
                variables={"first": "积分变动", "keyword1": "+120", "keyword2": "2024-05-01"},
                url="https://m.orchard.example/points")
    return OutboundMessage(**{**base, **kw})


def test_template_message_is_sent_with_the_documented_body(wx):
    p = _oa(wx)
    res = p.send(_oa_msg(extra={"miniprogram_appid": "wxmini", "miniprogram_pagepath": "pages/points"}))
    assert res.accepted and res.provider_message_id == "200228333"
    body = wx.fake.sent[0]
    assert body["data"]["keyword1"] == {"value": "+120"}
    assert body["client_msg_id"] == "msg-wx-1" and body["url"] == "https://m.orchard.example/points"
    assert body["miniprogram"] == {"appid": "wxmini", "pagepath": "pages/points"}


def test_token_is_cached_across_sends(wx):
    p = _oa(wx)
    assert p.send(_oa_msg()).accepted and p.send(_oa_msg()).accepted
    assert wx.fake.token_fetches == 1


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_token_refreshed_once_on_40001_or_42001(wx, how):
    p = _oa(wx)
    assert p.send(_oa_msg()).accepted
    if how == "expired":
        wx.fake.expire_all()  # → 42001
    else:
        wx.fake.valid.clear()  # another process fetched a new token → 40001
    res = p.send(_oa_msg())
    assert res.accepted and wx.fake.token_fetches == 2
    codes = [r.query.get("access_token") for r in wx.requests if r.path.endswith("/send")]
    assert codes == ["ACCESS_TOKEN_1", "ACCESS_TOKEN_1", "ACCESS_TOKEN_2"]


def test_token_refresh_is_tried_once_only(wx):
    p = _oa(wx)

    def always_invalid(req):
        if req.path == "/cgi-bin/token":
            return wx.fake(req)
        return 200, {"errcode": 40001, "errmsg": "invalid credential"}

    wx.handler = always_invalid
    res = p.send(_oa_msg())
    assert not res.accepted and res.error_code == "40001"
    assert sum(r.path.endswith("/send") for r in wx.requests) == 2


def test_bad_secret_is_permanent(wx):
    res = _oa(wx, secret="wrong").send(_oa_msg())
    assert res.permanent and res.reason == Reason.auth and res.error_code == "40125"


@pytest.mark.parametrize(("kw", "code", "reason", "permanent"), [
    ({"openid": "bad-openid"}, "40003", Reason.invalid_recipient, True),
    ({"template": "TPL_NONE"}, "40037", Reason.template_rejected, True),
    ({"variables": {"first": "x"}}, "47003", Reason.template_rejected, True),
    ({"openid": "o-busy"}, "-1", Reason.provider_unavailable, False),
])
def test_template_error_mapping(wx, kw, code, reason, permanent):
    res = _oa(wx).send(_oa_msg(**kw))
    assert (res.error_code, res.reason, res.permanent) == (code, reason, permanent)


def test_marketing_is_refused_before_calling_wechat(wx):
    res = _oa(wx).send(_oa_msg(purpose="marketing"))
    assert res.permanent and res.reason == Reason.content_rejected
    assert wx.requests == []


def test_timeout_is_transient(wx):
    wx.delay = 0.5
    res = _oa(wx, timeout=0.1).send(_oa_msg())
    assert res.retryable and res.reason == Reason.timeout


def test_quota(wx):
    q = _oa(wx).quota()
    assert (q.limit, q.used, q.remaining) == (100000, 7, 99993)
    assert wx.requests[-1].json() == {"cgi_path": "/cgi-bin/message/template/send"}


def test_subscribe_message_one_send_per_grant(wx):
    p = WeChatSubscribeProvider(APPID, SECRET, endpoint=wx.url, miniprogram_state="trial")
    msg = OutboundMessage(message_id="msg-sub-1", channel="wechat_mp", recipient="o-member-1",
                          template="SUB_COUPON", variables={"thing1": "满100减20券", "time2": "2024-05-31"},
                          url="pages/coupon/index", purpose="marketing")
    first = p.send(msg)
    assert first.accepted
    body = wx.fake.sent[0]
    assert body["page"] == "pages/coupon/index" and body["miniprogram_state"] == "trial"
    assert body["data"]["thing1"] == {"value": "满100减20券"}
    second = p.send(msg)
    assert (second.permanent, second.reason, second.error_code) == (True, "no_grant", "43101")


def _signed(token="cbtoken", timestamp="1714528800", nonce="8765"):
    sig = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()
    return {"signature": sig, "timestamp": timestamp, "nonce": nonce}


def test_template_delivery_event_with_signature():
    p = WeChatTemplateProvider(APPID, SECRET, callback_token="cbtoken")
    xml = (b"<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>"
           b"<FromUserName><![CDATA[o-member-1]]></FromUserName><CreateTime>1714528800</CreateTime>"
           b"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>"
           b"<MsgID>200228333</MsgID><Status><![CDATA[failed:user block]]></Status></xml>")
    (u,) = p.parse_callback({}, xml, _signed())
    assert (u.provider_message_id, u.status, u.error_code) == ("200228333", "failed", "failed:user block")
    ok = xml.replace(b"failed:user block", b"success")
    assert p.parse_callback({}, ok, _signed())[0].status == "delivered"
    with pytest.raises(CallbackRejected):
        p.parse_callback({}, xml, _signed(token="other"))
    with pytest.raises(CallbackRejected):
        p.parse_callback({}, xml, {**_signed(), "nonce": "1"})
    with pytest.raises(CallbackRejected):
        WeChatTemplateProvider(APPID, SECRET).parse_callback({}, xml, _signed())  # no token configured


def test_subscribe_sent_event_json_and_xml():
    p = WeChatSubscribeProvider(APPID, SECRET, callback_token="cbtoken")
    ev = {"ToUserName": "gh_123", "FromUserName": "o-member-1", "CreateTime": 1714528800, "MsgType": "event",
          "Event": "subscribe_msg_sent_event", "SubscribeMsgSentEvent": {"List": {
              "TemplateId": "SUB_COUPON", "MsgID": "1700827132819554304", "ErrorCode": "0",
              "ErrorStatus": "success"}}}
    (u,) = p.parse_callback({}, json.dumps(ev).encode(), _signed())
    assert (u.provider_message_id, u.status) == ("1700827132819554304", "delivered")
    xml = (b"<xml><ToUserName>gh_123</ToUserName><FromUserName>o-member-1</FromUserName>"
           b"<CreateTime>1714528800</CreateTime><MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event>"
           b"<SubscribeMsgSentEvent><List><TemplateId>SUB_COUPON</TemplateId><MsgID>1</MsgID>"
           b"<ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List><List><TemplateId>SUB_COUPON"
           b"</TemplateId><MsgID>2</MsgID><ErrorCode>10005</ErrorCode><ErrorStatus>fail</ErrorStatus></List>"
           b"</SubscribeMsgSentEvent></xml>")
    a, b = p.parse_callback({}, xml, _signed())
    assert (a.status, b.status, b.error_code) == ("delivered", "failed", "10005")
