"""Tencent Cloud SMS SendSms 2021-01-11 against a loopback server that recomputes TC3-HMAC-SHA256 itself. The
official Tencent Cloud signer (tencentcloud-sdk-python-common) is run against the same server, so the server's
check is proven against Tencent's own implementation, not only against ours."""

import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime

import pytest
from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from orchard.channels.base import OutboundMessage, Reason
from orchard.channels.tencent import TencentSmsProvider, tc3_authorization

from .loopback import Loopback, Request

SECRET_ID, SECRET_KEY, APP_ID = "AKIDtestSecretId0000", "tc-secret-key-Do-Not-Log", "1400006666"
TEMPLATES = {"449739": 2, "449740": 0}  # id → number of {n} parameters
SIGNS = {"果园会员"}
AUTH_RE = re.compile(r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/([a-z]+)/tc3_request, "
                     r"SignedHeaders=([a-z;-]+), Signature=([0-9a-f]{64})$")


def server_tc3_check(req: Request, secret_key: str) -> str | None:
    """Recompute the signature from the request as received (Tencent's 签名方法 v3 doc); None if it verifies,
    else Tencent's error code."""
    m = AUTH_RE.match(req.headers.get("authorization", ""))
    if not m:
        return "AuthFailure.InvalidAuthorization"
    secret_id, date, service, signed_headers, signature = m.groups()
    if secret_id != SECRET_ID:
        return "AuthFailure.SecretIdNotFound"
    ts = int(req.headers.get("x-tc-timestamp", "0"))
    if abs(time.time() - ts) > 300:
        return "AuthFailure.SignatureExpire"
    if date != datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d") or service != "sms":
        return "AuthFailure.SignatureFailure"
    names = signed_headers.split(";")
    if "content-type" not in names or "host" not in names:
        return "AuthFailure.SignatureFailure"
    canonical_headers = "".join(f"{h}:{req.headers[h].strip().lower()}\n" for h in names)
    canonical = f"POST\n/\n\n{canonical_headers}\n{signed_headers}\n{hashlib.sha256(req.body).hexdigest()}"
    scope = f"{date}/{service}/tc3_request"
    string_to_sign = f"TC3-HMAC-SHA256\n{ts}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"

    def h(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()

    k = h(h(h(("TC3" + secret_key).encode(), date), service), "tc3_request")
    if not hmac.compare_digest(hmac.new(k, string_to_sign.encode(), hashlib.sha256).hexdigest(), signature):
        return "AuthFailure.SignatureFailure"
    return None


class FakeTencentSms:
    def __init__(self) -> None:
        self.accepted: list[dict] = []

    def __call__(self, req: Request):
        rid = "a0aabda6-cf91-4f3e-a81f-9198114a2279"

        def error(code, message="error"):
            return 200, {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": rid}}

        if err := server_tc3_check(req, SECRET_KEY):
            return error(err)
        if req.headers.get("x-tc-action") != "SendSms" or req.headers.get("x-tc-version") != "2021-01-11":
            return error("InvalidAction")
        body = req.json()
        for k in ("PhoneNumberSet", "SmsSdkAppId", "TemplateId"):
            if k not in body:
                return error("MissingParameter", k)
        if body["SmsSdkAppId"] != APP_ID:
            return error("UnauthorizedOperation.SmsSdkAppIdVerifyFail")
        if body.get("SignName") not in SIGNS:
            return error("FailedOperation.SignatureIncorrectOrUnapproved")
        if body["TemplateId"] not in TEMPLATES:
            return error("FailedOperation.TemplateIncorrectOrUnapproved")
        if len(body.get("TemplateParamSet", [])) != TEMPLATES[body["TemplateId"]]:
            return error("FailedOperation.TemplateParamSetNotMatchApprovedTemplate")
        if any(p == "+8613900000500" for p in body["PhoneNumberSet"]):
            return error("InternalError.SendAndRecvFail")
        statuses = []
        for phone in body["PhoneNumberSet"]:
            st = {"SerialNo": f"5000:10413{len(self.accepted)}", "PhoneNumber": phone, "Fee": 1,
                  "SessionContext": body.get("SessionContext", ""), "Code": "Ok", "Message": "send success",
                  "IsoCode": "CN"}
            if phone == "+8613900000429":
                st.update(SerialNo="", Fee=0, Code="LimitExceeded.PhoneNumberDailyLimit",
                          Message="the number of sms messages sent from a single mobile number every day exceeds")
            elif not re.fullmatch(r"\+861[3-9]\d{9}", phone):
                st.update(SerialNo="", Fee=0, Code="InvalidParameterValue.IncorrectPhoneNumber",
                          Message="incorrect phone number")
            else:
                self.accepted.append(body)
            statuses.append(st)
        return 200, {"Response": {"SendStatusSet": statuses, "RequestId": rid}}


@pytest.fixture
def tsms():
    fake = FakeTencentSms()
    with Loopback(fake) as lb:
        lb.fake = fake
        yield lb


def _provider(lb, key=SECRET_KEY, **kw):
    return TencentSmsProvider(SECRET_ID, key, APP_ID, endpoint=lb.url, sign_name="果园会员", **kw)


def _msg(phone="+8613800138000", template="449739", variables=None, **kw):
    return OutboundMessage(message_id="msg-tc-1", channel="sms", recipient=phone, template=template,
                           variables={"2": "120", "1": "李雷"} if variables is None else variables, **kw)


def _sdk(lb, key):
    hp = HttpProfile(endpoint=f"127.0.0.1:{lb.port}", protocol="http", reqTimeout=5)
    cp = ClientProfile(signMethod="TC3-HMAC-SHA256", httpProfile=hp)
    return CommonClient("sms", "2021-01-11", credential.Credential(SECRET_ID, key), "ap-guangzhou", profile=cp)


def test_the_official_sdk_signature_passes_the_servers_check_and_a_wrong_key_fails(tsms):
    body = {"PhoneNumberSet": ["+8613800138000"], "SmsSdkAppId": APP_ID, "SignName": "果园会员",
            "TemplateId": "449739", "TemplateParamSet": ["a", "b"], "SessionContext": "sdk"}
    resp = _sdk(tsms, SECRET_KEY).call_json("SendSms", body)
    assert resp["Response"]["SendStatusSet"][0]["Code"] == "Ok"
    with pytest.raises(TencentCloudSDKException) as ei:
        _sdk(tsms, "wrong-key").call_json("SendSms", body)
    assert ei.value.code == "AuthFailure.SignatureFailure"


def test_adapter_signature_matches_the_official_sdk_signer():
    """Same inputs through the SDK's TC3 primitive (Sign.sign_tc3) and through ours."""
    from tencentcloud.common.sign import Sign

    payload = b'{"a":1}'
    ts = 1_700_000_000
    ours = tc3_authorization(secret_id=SECRET_ID, secret_key=SECRET_KEY, host="sms.tencentcloudapi.com",
                             payload=payload, timestamp=ts)
    canonical = ("POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:sms.tencentcloudapi.com\n\n"
                 f"content-type;host\n{hashlib.sha256(payload).hexdigest()}")
    s2s = f"TC3-HMAC-SHA256\n{ts}\n2023-11-14/sms/tc3_request\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    theirs = Sign.sign_tc3(SECRET_KEY, "2023-11-14", "sms", s2s)
    assert ours.endswith(f"Signature={theirs}")
    assert f"Credential={SECRET_ID}/2023-11-14/sms/tc3_request" in ours


def test_send_is_accepted_with_serial_no_and_ordered_params(tsms):
    res = _provider(tsms).send(_msg())
    assert res.accepted and res.provider_message_id == "5000:104130"
    body = tsms.fake.accepted[0]
    assert body["TemplateParamSet"] == ["李雷", "120"]  # {1}, {2} in order whatever the dict order
    assert body["SessionContext"] == "msg-tc-1" and body["PhoneNumberSet"] == ["+8613800138000"]
    assert tsms.requests[0].headers["x-tc-region"] == "ap-guangzhou"


def test_wrong_key_is_a_permanent_auth_failure(tsms):
    res = _provider(tsms, key="nope").send(_msg())
    assert res.permanent and res.reason == Reason.auth and res.error_code == "AuthFailure.SignatureFailure"


def test_expired_clock_is_refused_by_the_server(tsms):
    res = _provider(tsms, clock=lambda: datetime(2020, 1, 1, tzinfo=UTC)).send(_msg())
    assert res.permanent and res.error_code == "AuthFailure.SignatureExpire"


@pytest.mark.parametrize(("kw", "code", "reason", "permanent"), [
    ({"template": "999"}, "FailedOperation.TemplateIncorrectOrUnapproved", Reason.template_rejected, True),
    ({"variables": {"1": "x"}}, "FailedOperation.TemplateParamSetNotMatchApprovedTemplate",
     Reason.template_rejected, True),
    ({"sign_name": "别家"}, "FailedOperation.SignatureIncorrectOrUnapproved", Reason.sign_rejected, True),
    ({"phone": "+8612000000000"}, "InvalidParameterValue.IncorrectPhoneNumber", Reason.invalid_recipient, True),
    ({"phone": "+8613900000429"}, "LimitExceeded.PhoneNumberDailyLimit", Reason.throttled, False),
    ({"phone": "+8613900000500"}, "InternalError.SendAndRecvFail", Reason.provider_unavailable, False),
])
def test_error_mapping(tsms, kw, code, reason, permanent):
    res = _provider(tsms).send(_msg(**kw))
    assert (res.status, res.error_code, res.reason, res.permanent) == ("failed", code, reason, permanent)


def test_bad_variables_never_reach_tencent(tsms):
    res = _provider(tsms).send(_msg(variables={"name": "x"}))
    assert res.permanent and res.reason == Reason.invalid_request
    assert tsms.requests == []


def test_timeout_is_transient(tsms):
    tsms.delay = 0.5
    res = _provider(tsms, timeout=0.1).send(_msg())
    assert res.retryable and res.reason == Reason.timeout


def test_status_reports_and_replies():
    p = TencentSmsProvider(SECRET_ID, SECRET_KEY, APP_ID)
    body = json.dumps([
        {"user_receive_time": "2024-05-01 10:00:05", "nationcode": "86", "mobile": "13800138000",
         "report_status": "SUCCESS", "errmsg": "DELIVRD", "description": "用户短信送达成功", "sid": "5000:104130"},
        {"user_receive_time": "2024-05-01 10:00:06", "nationcode": "86", "mobile": "13800138001",
         "report_status": "FAIL", "errmsg": "MK:0001", "description": "空号", "sid": "5000:104131"}]).encode()
    ok, bad = p.parse_callback({}, body)
    assert (ok.provider_message_id, ok.status) == ("5000:104130", "delivered")
    assert (bad.status, bad.error_code) == ("failed", "MK:0001")
    (reply,) = p.parse_inbound({}, json.dumps({"extend": "", "mobile": "13800138000", "nationcode": "86",
                                                "sign": "果园会员", "text": "退订", "time": 1714528800}).encode())
    assert reply.opt_out and reply.sender == "+8613800138000"
    assert reply.at == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
