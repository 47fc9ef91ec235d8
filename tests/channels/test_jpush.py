"""JPush REST v3 push against a loopback api.jpush.cn that checks Basic auth and the payload."""

import base64

import pytest

from orchard.channels.base import OutboundMessage, Reason
from orchard.channels.jpush import JPushProvider, sendno_for

from .loopback import Loopback, Request

APP_KEY, MASTER = "2743204aad6fe2572aa2d8de", "jpush-master-Do-Not-Log"
RATE = {"X-Rate-Limit-Limit": "600", "X-Rate-Limit-Remaining": "599", "X-Rate-Limit-Reset": "42"}


def fake_jpush(req: Request):
    expected = "Basic " + base64.b64encode(f"{APP_KEY}:{MASTER}".encode()).decode()
    if req.headers.get("authorization") != expected:
        return 401, {"error": {"code": 1004, "message": "Authen failed"}}, RATE
    if req.method != "POST" or req.path != "/v3/push":
        return 405, {"error": {"code": 1001, "message": "Only support HTTP Post method"}}
    body = req.json()
    for k in ("platform", "audience", "notification"):
        if k not in body:
            return 400, {"error": {"code": 1002, "message": f"Missing parameter {k}"}}
    regs = body["audience"].get("registration_id") or []
    opts = body.get("options", {})
    if not isinstance(opts.get("sendno"), int) or not 0 <= opts["sendno"] < 2**31:
        return 400, {"error": {"code": 1003, "message": "sendno invalid"}}
    if regs == ["throttle"]:
        return 429, {"error": {"code": 2002, "message": "Rate limit exceeded"}}, {**RATE, "X-Rate-Limit-Reset": "7"}
    if regs == ["boom"]:
        return 500, {"error": {"code": 1000, "message": "Server error"}}
    if regs != ["1a0018970ab49abe7e7"]:
        return 400, {"error": {"code": 1011, "message": "cannot find user by this audience"}}, RATE
    return 200, {"sendno": str(opts["sendno"]), "msg_id": "54043196880457870"}, RATE


@pytest.fixture
def jp():
    with Loopback(fake_jpush) as lb:
        yield lb


def _msg(reg="1a0018970ab49abe7e7", **kw):
    return OutboundMessage(**{**dict(message_id="msg-push-1", channel="app_push", recipient=reg, subject="会员日",
                                     body="本周六会员日，全场8折", url="orchard://member-day"), **kw})


def test_push_is_accepted_and_carries_the_documented_fields(jp):
    p = JPushProvider(APP_KEY, MASTER, endpoint=jp.url, apns_production=False)
    res = p.send(_msg())
    assert res.accepted and res.provider_message_id == "54043196880457870"
    body = jp.requests[0].json()
    assert body["audience"] == {"registration_id": ["1a0018970ab49abe7e7"]}
    assert body["options"]["sendno"] == sendno_for("msg-push-1") and body["options"]["apns_production"] is False
    assert body["notification"]["android"]["title"] == "会员日"
    assert body["notification"]["ios"]["extras"]["orchard_message_id"] == "msg-push-1"
    q = p.quota()
    assert (q.limit, q.remaining) == (600, 599)


def test_sendno_is_stable_and_int32():
    assert sendno_for("a") == sendno_for("a") != sendno_for("b")
    assert all(0 <= sendno_for(f"m{i}") < 2**31 for i in range(200))


@pytest.mark.parametrize(("reg", "master", "code", "reason", "permanent"), [
    ("unknown-reg", MASTER, "1011", Reason.invalid_recipient, True),
    ("1a0018970ab49abe7e7", "wrong", "1004", Reason.auth, True),
    ("throttle", MASTER, "2002", Reason.throttled, False),
    ("boom", MASTER, "1000", Reason.provider_unavailable, False),
])
def test_error_mapping(jp, reg, master, code, reason, permanent):
    res = JPushProvider(APP_KEY, master, endpoint=jp.url).send(_msg(reg=reg))
    assert (res.error_code, res.reason, res.permanent) == (code, reason, permanent)
    if code == "2002":
        assert res.retry_after == 7


def test_timeout_and_empty_body(jp):
    jp.delay = 0.5
    assert JPushProvider(APP_KEY, MASTER, endpoint=jp.url, timeout=0.1).send(_msg()).reason == Reason.timeout
    res = JPushProvider(APP_KEY, MASTER, endpoint=jp.url).send(_msg(body=None))
    assert res.permanent and res.reason == Reason.invalid_request
