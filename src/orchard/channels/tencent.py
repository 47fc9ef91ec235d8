"""Tencent Cloud SMS `SendSms` (API version 2021-01-11) signed with TC3-HMAC-SHA256, as Tencent Cloud's
"签名方法 v3" documents:

    CanonicalRequest = HTTPRequestMethod \\n CanonicalURI \\n CanonicalQueryString \\n CanonicalHeaders \\n
                       SignedHeaders \\n HexEncode(SHA256(RequestPayload))
    with POST, "/", "", "content-type:application/json; charset=utf-8\\nhost:<host>\\n", "content-type;host"
    StringToSign = "TC3-HMAC-SHA256" \\n RequestTimestamp \\n CredentialScope \\n HexEncode(SHA256(CanonicalRequest))
    CredentialScope = <UTC date of the timestamp>/sms/tc3_request
    SecretDate = HMAC_SHA256("TC3" + SecretKey, Date); SecretService = HMAC_SHA256(SecretDate, "sms");
    SecretSigning = HMAC_SHA256(SecretService, "tc3_request"); Signature = HexEncode(HMAC_SHA256(SecretSigning, S2S))
    Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<CredentialScope>, SignedHeaders=content-type;host,
                   Signature=<Signature>

Orchard's message id goes in `SessionContext`, which Tencent echoes back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from .base import (
    DEFAULT_TIMEOUT,
    CallbackRejected,
    Channel,
    InboundReply,
    OutboundMessage,
    Quota,
    Reason,
    SendResult,
    StatusUpdate,
    http_failure,
    status_failure,
    utcnow,
)
from .sms import is_opt_out_reply, json_list, positional_params, shanghai_time, split_e164

API_VERSION = "2021-01-11"
SERVICE = "sms"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"

#: Tencent Cloud SMS error codes (错误码) → (reason, permanent). Prefix rules below cover the families.
ERRORS: dict[str, tuple[Reason, bool]] = {
    "InvalidParameterValue.IncorrectPhoneNumber": (Reason.invalid_recipient, True),
    "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber": (Reason.invalid_request, True),
    "UnsupportedOperation.UnsupportedRegion": (Reason.invalid_recipient, True),
    "FailedOperation.PhoneNumberInBlacklist": (Reason.recipient_blocked, True),
    "FailedOperation.TemplateIncorrectOrUnapproved": (Reason.template_rejected, True),
    "FailedOperation.SignatureIncorrectOrUnapproved": (Reason.sign_rejected, True),
    "InvalidParameterValue.TemplateParameterFormatError": (Reason.template_rejected, True),
    "InvalidParameterValue.TemplateParameterLengthLimit": (Reason.template_rejected, True),
    "FailedOperation.TemplateParamSetNotMatchApprovedTemplate": (Reason.template_rejected, True),
    "FailedOperation.ContainSensitiveWord": (Reason.content_rejected, True),
    "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter": (Reason.content_rejected, True),
    "FailedOperation.InsufficientBalanceInSmsPackage": (Reason.insufficient_balance, False),
    "FailedOperation.MarketingSendTimeConstraint": (Reason.throttled, False),  # marketing outside 8:00-22:00
    "LimitExceeded.PhoneNumberCountLimit": (Reason.invalid_request, True),
    "RequestLimitExceeded": (Reason.throttled, False),
    "InternalError.RequestTimeException": (Reason.provider_unavailable, False),  # clock skew
}
_PREFIXES: list[tuple[str, tuple[Reason, bool]]] = [
    ("AuthFailure", (Reason.auth, True)),
    ("UnauthorizedOperation", (Reason.auth, True)),
    ("LimitExceeded", (Reason.throttled, False)),  # 30 s / 1 h / daily per number, same content per day
    ("InternalError", (Reason.provider_unavailable, False)),
    ("MissingParameter", (Reason.invalid_request, True)),
    ("InvalidParameter", (Reason.invalid_request, True)),
    ("UnsupportedOperation", (Reason.invalid_request, True)),
    ("FailedOperation", (Reason.unknown, True)),
]


def classify(code: str, text: str | None) -> SendResult:
    if code in ERRORS:
        reason, permanent = ERRORS[code]
    else:
        reason, permanent = next((v for p, v in _PREFIXES if code.startswith(p)), (Reason.unknown, True))
    return SendResult.fail(reason, permanent=permanent, code=code, text=text)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def tc3_authorization(*, secret_id: str, secret_key: str, host: str, payload: bytes, timestamp: int,
                      service: str = SERVICE, content_type: str = CONTENT_TYPE) -> str:
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    canonical_request = "\n".join([
        "POST", "/", "", f"content-type:{content_type}\nhost:{host}\n", "content-type;host",
        hashlib.sha256(payload).hexdigest(),
    ])
    scope = f"{date}/{service}/tc3_request"
    to_sign = "\n".join([ALGORITHM, str(timestamp), scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={signature}"


class TencentSmsProvider:
    channel = Channel.sms
    name = "tencent_sms"

    def __init__(self, secret_id: str, secret_key: str, sdk_app_id: str, *,
                 endpoint: str = "https://sms.tencentcloudapi.com", region: str = "ap-guangzhou",
                 sign_name: str | None = None, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self._secret_id = secret_id
        self._secret_key = secret_key
        self.sdk_app_id = sdk_app_id
        self.endpoint = endpoint.rstrip("/")
        self.host = urlsplit(self.endpoint).netloc
        self.region = region
        self.sign_name = sign_name
        self._clock = clock
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"TencentSmsProvider(endpoint={self.endpoint!r}, sdk_app_id={self.sdk_app_id!r})"

    def request_body(self, msg: OutboundMessage) -> dict:
        split_e164(msg.recipient)  # validates
        if not msg.template:
            raise ValueError("TemplateId is required")
        sign_name = msg.sign_name or self.sign_name
        if not sign_name and msg.recipient.startswith("+86"):
            raise ValueError("SignName is required for mainland numbers")
        body = {
            "PhoneNumberSet": [msg.recipient],
            "SmsSdkAppId": self.sdk_app_id,
            "TemplateId": msg.template,
            "TemplateParamSet": positional_params(msg.variables),
            "SessionContext": msg.message_id,
        }
        if sign_name:
            body["SignName"] = sign_name
        return body

    def send(self, msg: OutboundMessage) -> SendResult:
        try:
            payload = json.dumps(self.request_body(msg), ensure_ascii=False, separators=(",", ":")).encode()
        except ValueError as exc:
            return SendResult.fail(Reason.invalid_request, permanent=True, text=str(exc))
        ts = int(self._clock().timestamp())
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Host": self.host,
            "X-TC-Action": "SendSms",
            "X-TC-Version": API_VERSION,
            "X-TC-Timestamp": str(ts),
            "X-TC-Region": self.region,
            "Authorization": tc3_authorization(secret_id=self._secret_id, secret_key=self._secret_key,
                                               host=self.host, payload=payload, timestamp=ts),
        }
        try:
            resp = self._http.post(self.endpoint + "/", content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return http_failure(exc)
        try:
            data = resp.json()["Response"]
        except (ValueError, KeyError, TypeError):
            return status_failure(resp)
        if "Error" in data:
            err = data["Error"]
            return classify(str(err.get("Code", "")), err.get("Message"))
        if resp.status_code != 200:
            return status_failure(resp)
        statuses = data.get("SendStatusSet") or []
        if not statuses:
            return SendResult.fail(Reason.unknown, permanent=False, text="no SendStatusSet in the answer")
        st = statuses[0]
        if st.get("Code") == "Ok":
            return SendResult.ok(st.get("SerialNo"))
        return classify(str(st.get("Code", "")), st.get("Message"))

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """Status reports (短信下发状态回调): a JSON array of {user_receive_time, nationcode, mobile,
        report_status: SUCCESS|FAIL, errmsg, description, sid}; `sid` is the SerialNo `send` returned.
        Tencent does not sign these callbacks; protect the callback URL."""
        out = []
        for it in json_list(body):
            if "sid" not in it or "report_status" not in it:
                raise CallbackRejected("not a Tencent SMS status report")
            ok = it["report_status"] == "SUCCESS"
            at = shanghai_time(it.get("user_receive_time"))
            out.append(StatusUpdate(provider_message_id=str(it["sid"]), status="delivered" if ok else "failed",
                                    at=at, raw=it, error_code=None if ok else it.get("errmsg")))
        return out

    def parse_inbound(self, headers: Mapping[str, str], body: bytes) -> list[InboundReply]:
        """Reply callback (短信回复回调): {extend, mobile, nationcode, sign, text, time (unix seconds)}."""
        out = []
        for it in json_list(body):
            if "text" not in it or "mobile" not in it:
                raise CallbackRejected("not a Tencent SMS reply")
            sender = f"+{it.get('nationcode') or '86'}{it['mobile']}"
            at = datetime.fromtimestamp(int(it["time"]), UTC) if it.get("time") else utcnow()
            out.append(InboundReply(sender=sender, text=str(it["text"]), at=at,
                                    opt_out=is_opt_out_reply(str(it["text"])), raw=it))
        return out

    def quota(self) -> Quota | None:
        """Tencent reports no remaining per-number allowance; Orchard enforces its own caps before sending."""
        return None

    def close(self) -> None:
        self._http.close()

