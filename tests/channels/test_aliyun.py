"""Aliyun SMS SendSms against a loopback Dysms that recomputes the POP v1 (HMAC-SHA1) signature itself."""

import base64
import hashlib
import hmac
import json
import re
import urllib.parse
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from orchard.channels import aliyun
from orchard.channels.aliyun import AliyunSmsProvider
from orchard.channels.base import CallbackRejected, OutboundMessage, Reason

from .loopback import Loopback, Request

KEY_ID, SECRET = "LTAI5tTestKeyId", "test-secret-Do-Not-Log"
TEMPLATES = {"SMS_100": ["name", "points"], "SMS_NOVAR": []}
SIGNS = {"果园会员"}


# ---- Aliyun's published worked examples --------------------------------------------------------------------------

def test_signature_matches_the_rpc_signature_doc_example():
    """'RPC 风格签名' doc: DescribeRegions, AccessKeySecret testsecret."""
    params = {"Timestamp": "2016-02-23T12:46:24Z", "Format": "XML", "AccessKeyId": "testid",
              "Action": "DescribeRegions", "SignatureMethod": "HMAC-SHA1",
              "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "Version": "2014-05-26",
              "SignatureVersion": "1.0"}
    assert aliyun.string_to_sign(params) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1"
        "%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0"
        "%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26")
    assert aliyun.sign(params, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_signature_matches_the_sms_http_protocol_doc_example():
    """短信服务 'HTTP 协议及签名' doc: SendSms with a Chinese SignName and a JSON TemplateParam, secret testSecret."""
    params = {"AccessKeyId": "testId", "Action": "SendSms", "Format": "XML", "OutId": "123",
              "PhoneNumbers": "15300000001", "RegionId": "cn-hangzhou", "SignName": "阿里云短信测试专用",
              "SignatureMethod": "HMAC-SHA1", "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
              "SignatureVersion": "1.0", "TemplateCode": "SMS_71390007", "TemplateParam": '{"customer":"test"}',
              "Timestamp": "2017-07-12T02:42:19Z", "Version": "2017-05-25"}
    assert aliyun.sign(params, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    assert aliyun.sign({**params, "Signature": "ignored"}, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


def test_percent_encoding_rules():
    assert aliyun.percent_encode("a b*c~d/+") == "a%20b%2Ac~d%2F%2B"
    assert aliyun.percent_encode("派") == "%E6%B4%BE"


# ---- the fake Dysms ----------------------------------------------------------------------------------------------

def _server_signature(params: dict[str, str], secret: str) -> str:
    """Written from the doc, separately from the adapter: RFC 3986 unreserved kept, the rest %XX (UTF-8)."""
    enc = lambda s: urllib.parse.quote(s, safe="-_.~")  # noqa: E731
    canonical = "&".join(f"{enc(k)}={enc(params[k])}" for k in sorted(params))
    sts = "GET&" + enc("/") + "&" + enc(canonical)
    return base64.b64encode(hmac.new(f"{secret}&".encode(), sts.encode(), hashlib.sha1).digest()).decode()


class FakeDysms:
    def __init__(self) -> None:
        self.nonces: set[str] = set()
        self.sent: list[dict[str, str]] = []

    def __call__(self, req: Request):
        rid = {"RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990"}
        if req.method != "GET" or req.path != "/":
            return 404, {**rid, "Code": "InvalidAction.NotFound", "Message": "not found"}
        q = dict(urllib.parse.parse_qsl(req.raw_query, keep_blank_values=True))
        sig = q.pop("Signature", None)
        for k in ("AccessKeyId", "Action", "Format", "SignatureMethod", "SignatureNonce", "SignatureVersion",
                  "Timestamp", "Version"):
            if k not in q:
                return 400, {**rid, "Code": "MissingParameter", "Message": f"{k} is mandatory"}
        if q["AccessKeyId"] != KEY_ID:
            return 404, {**rid, "Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found."}
        if (q["SignatureMethod"], q["SignatureVersion"], q["Version"]) != ("HMAC-SHA1", "1.0", "2017-05-25"):
            return 400, {**rid, "Code": "InvalidParameter", "Message": "bad signature method or version"}
        if sig != _server_signature(q, SECRET):
            return 400, {**rid, "Code": "SignatureDoesNotMatch",
                         "Message": "Specified signature is not matched with our calculation."}
        ts = datetime.strptime(q["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - ts) > timedelta(minutes=15):
            return 400, {**rid, "Code": "InvalidTimeStamp.Expired", "Message": "Specified time stamp is expired"}
        if q["SignatureNonce"] in self.nonces:
            return 400, {**rid, "Code": "SignatureNonceUsed", "Message": "nonce has been used"}
        self.nonces.add(q["SignatureNonce"])
        if q["Action"] != "SendSms" or q["Format"] != "JSON":
            return 400, {**rid, "Code": "InvalidParameter", "Message": "Action/Format"}
        for k in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not q.get(k):
                return 400, {**rid, "Code": "MissingParameter", "Message": f"{k} is mandatory"}
        phone = q["PhoneNumbers"]
        if phone == "13900000500":
            return 500, {**rid, "Code": "isp.SYSTEM_ERROR", "Message": "isp.SYSTEM_ERROR"}
        if phone == "13900000429":
            return 200, {**rid, "Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发号码天级流控Permits:10"}
        if not re.fullmatch(r"1[3-9]\d{9}|852\d{8}", phone):
            return 200, {**rid, "Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "非法手机号"}
        if q["SignName"] not in SIGNS:
            return 200, {**rid, "Code": "isv.SMS_SIGNATURE_ILLEGAL", "Message": "签名不合法"}
        if q["TemplateCode"] not in TEMPLATES:
            return 200, {**rid, "Code": "isv.SMS_TEMPLATE_ILLEGAL", "Message": "模板不合法"}
        try:
            params = json.loads(q.get("TemplateParam") or "{}")
        except ValueError:
            return 200, {**rid, "Code": "isv.INVALID_JSON_PARAM", "Message": "JSON参数不合法"}
        if sorted(params) != sorted(TEMPLATES[q["TemplateCode"]]):
            return 200, {**rid, "Code": "isv.TEMPLATE_MISSING_PARAMETERS", "Message": "模板变量缺少对应参数值"}
        self.sent.append(q)
        return 200, {**rid, "Code": "OK", "Message": "OK", "BizId": f"9006197469364984{len(self.sent):02d}^0"}


@pytest.fixture
def dysms():
    fake = FakeDysms()
    with Loopback(fake) as lb:
        lb.fake = fake
        yield lb


def _provider(lb, secret=SECRET, **kw):
    return AliyunSmsProvider(KEY_ID, secret, endpoint=lb.url, sign_name="果园会员", **kw)


def _msg(phone="+8613800138000", template="SMS_100", variables=None, **kw):
    return OutboundMessage(message_id="msg-0001", channel="sms", recipient=phone, template=template,
                           variables={"name": "李雷", "points": "120"} if variables is None else variables, **kw)


def test_send_is_accepted_with_biz_id_and_carries_the_message_id_as_out_id(dysms):
    res = _provider(dysms).send(_msg())
    assert res.accepted and res.provider_message_id == "900619746936498401^0"
    sent = dysms.fake.sent[0]
    assert sent["OutId"] == "msg-0001"
    assert sent["PhoneNumbers"] == "13800138000"  # mainland numbers without +86
    assert json.loads(sent["TemplateParam"]) == {"name": "李雷", "points": "120"}
    assert sent["SignName"] == "果园会员"


def test_retry_of_the_same_message_uses_a_fresh_nonce_and_the_same_out_id(dysms):
    p = _provider(dysms)
    assert p.send(_msg()).accepted and p.send(_msg()).accepted
    a, b = dysms.fake.sent
    assert a["OutId"] == b["OutId"] == "msg-0001" and a["SignatureNonce"] != b["SignatureNonce"]


def test_international_number_and_no_variables(dysms):
    res = _provider(dysms).send(_msg(phone="+85261234567", template="SMS_NOVAR", variables={}))
    assert res.accepted
    assert dysms.fake.sent[0]["PhoneNumbers"] == "85261234567" and "TemplateParam" not in dysms.fake.sent[0]


def test_wrong_secret_is_a_permanent_auth_failure(dysms):
    res = _provider(dysms, secret="not-the-secret").send(_msg())
    assert (res.status, res.permanent, res.reason, res.error_code) == ("failed", True, "auth", "SignatureDoesNotMatch")


@pytest.mark.parametrize(("kw", "code", "reason"), [
    ({"variables": {"name": "李雷"}}, "isv.TEMPLATE_MISSING_PARAMETERS", Reason.template_rejected),
    ({"template": "SMS_404"}, "isv.SMS_TEMPLATE_ILLEGAL", Reason.template_rejected),
    ({"sign_name": "别家"}, "isv.SMS_SIGNATURE_ILLEGAL", Reason.sign_rejected),
    ({"phone": "+8612345678901"}, "isv.MOBILE_NUMBER_ILLEGAL", Reason.invalid_recipient),
])
def test_permanent_refusals(dysms, kw, code, reason):
    res = _provider(dysms).send(_msg(**kw))
    assert not res.accepted and res.permanent and res.error_code == code and res.reason == reason


def test_flow_control_and_system_error_are_transient(dysms):
    p = _provider(dysms)
    limited = p.send(_msg(phone="+8613900000429"))
    assert limited.retryable and limited.reason == Reason.throttled
    assert limited.error_code == "isv.BUSINESS_LIMIT_CONTROL"
    boom = p.send(_msg(phone="+8613900000500"))
    assert boom.retryable and boom.reason == Reason.provider_unavailable


def test_timeout_is_transient(dysms):
    dysms.delay = 0.5
    res = _provider(dysms, timeout=0.1).send(_msg())
    assert res.retryable and res.reason == Reason.timeout


def test_unreachable_endpoint_is_transient():
    with Loopback(lambda r: (200, {})) as lb:
        url = lb.url
    res = AliyunSmsProvider(KEY_ID, SECRET, endpoint=url, sign_name="果园会员", timeout=1).send(_msg())
    assert res.retryable and res.reason == Reason.network


def test_missing_sign_name_or_template_never_reaches_aliyun(dysms):
    p = AliyunSmsProvider(KEY_ID, SECRET, endpoint=dysms.url)
    assert p.send(_msg()).permanent
    assert _provider(dysms).send(_msg(template="")).permanent
    assert dysms.requests == []


def test_http_error_without_json_is_classified_by_status():
    def handler(req):
        return 503, "Service Unavailable"

    with Loopback(handler) as lb:
        res = _provider(lb).send(_msg())
    assert res.retryable and res.error_code == "503"


def test_delivery_reports_and_replies():
    p = AliyunSmsProvider(KEY_ID, SECRET)
    body = json.dumps([
        {"phone_number": "13800138000", "send_time": "2024-05-01 10:00:00", "report_time": "2024-05-01 10:00:05",
         "success": True, "err_code": "DELIVERED", "err_msg": "用户接收成功", "sms_size": "1",
         "biz_id": "900619746936498401^0", "out_id": "msg-0001"},
        {"phone_number": "13800138001", "send_time": "2024-05-01 10:00:00", "report_time": "2024-05-01 10:00:09",
         "success": False, "err_code": "MK:0001", "err_msg": "空号", "sms_size": "1", "biz_id": "x^0", "out_id": ""},
    ]).encode()
    ok, bad = p.parse_callback({}, body)
    assert (ok.status, ok.message_id, ok.provider_message_id) == ("delivered", "msg-0001", "900619746936498401^0")
    assert ok.at == datetime(2024, 5, 1, 2, 0, 5, tzinfo=UTC)
    assert (bad.status, bad.error_code, bad.message_id) == ("failed", "MK:0001", None)
    replies = p.parse_inbound({}, json.dumps([
        {"phone_number": "13800138000", "send_time": "2024-05-01 10:01:00", "content": "ｔｄ", "sign_name": "果园会员",
         "dest_code": "1234", "sequence_id": 1},
        {"phone_number": "13800138000", "send_time": "2024-05-01 10:02:00", "content": "谢谢", "sign_name": "果园会员",
         "dest_code": "1234", "sequence_id": 2}]).encode())
    assert [(r.sender, r.opt_out) for r in replies] == [("+8613800138000", True), ("+8613800138000", False)]
    with pytest.raises(CallbackRejected):
        p.parse_callback({}, b"not json")
    with pytest.raises(CallbackRejected):
        p.parse_callback({}, b'[{"hello": 1}]')


def test_secret_not_in_repr():
    p = AliyunSmsProvider(KEY_ID, SECRET)
    assert SECRET not in repr(p) and SECRET not in str(vars(p).get("endpoint"))
    assert isinstance(p._http, httpx.Client)
