"""Aliyun SMS (Dysmsapi 2017-05-25) `SendSms` over the RPC-style HTTP API, signed with signature method
HMAC-SHA1, SignatureVersion 1.0 ("POP" v1), exactly as Aliyun's "RPC 风格签名" / 短信 HTTP 协议 documents:

1. the request parameters (common + API, without Signature) sorted by name;
2. each name and value percent-encoded as UTF-8 with RFC 3986 rules: A-Z a-z 0-9 - _ . ~ kept, space → %20,
   everything else %XX in upper case (so `*` → %2A, `~` kept);
3. CanonicalizedQueryString = name=value pairs joined with `&`;
4. StringToSign = "GET" + "&" + percentEncode("/") + "&" + percentEncode(CanonicalizedQueryString);
5. Signature = Base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign)), sent as the `Signature` parameter.

Orchard's message id goes in `OutId`, which Aliyun echoes in the delivery report (`out_id`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from urllib.parse import quote

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
    mapped_failure,
    status_failure,
    utcnow,
)
from .sms import is_opt_out_reply, json_list, shanghai_time, split_e164

API_VERSION = "2017-05-25"

#: Aliyun SMS error codes (短信服务错误码) → (reason, permanent).
ERRORS: dict[str, tuple[Reason, bool]] = {
    "isv.MOBILE_NUMBER_ILLEGAL": (Reason.invalid_recipient, True),
    "isv.MOBILE_COUNT_OVER_LIMIT": (Reason.invalid_request, True),
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": (Reason.invalid_recipient, True),
    "isv.SMS_TEMPLATE_ILLEGAL": (Reason.template_rejected, True),
    "isv.TEMPLATE_MISSING_PARAMETERS": (Reason.template_rejected, True),
    "isv.TEMPLATE_PARAMS_ILLEGAL": (Reason.template_rejected, True),
    "isv.INVALID_JSON_PARAM": (Reason.invalid_request, True),
    "isv.INVALID_PARAMETERS": (Reason.invalid_request, True),
    "isv.PARAM_LENGTH_LIMIT": (Reason.invalid_request, True),
    "isv.PARAM_NOT_SUPPORT_URL": (Reason.content_rejected, True),
    "isv.SMS_SIGNATURE_ILLEGAL": (Reason.sign_rejected, True),
    "isv.SMS_SIGN_ILLEGAL": (Reason.sign_rejected, True),
    "isv.SIGN_NAME_ILLEGAL": (Reason.sign_rejected, True),
    "isv.SMS_CONTENT_ILLEGAL": (Reason.content_rejected, True),
    "isv.BLACK_KEY_CONTROL_LIMIT": (Reason.content_rejected, True),
    "isv.EXTEND_CODE_ERROR": (Reason.invalid_request, True),
    "isv.ACCOUNT_NOT_EXISTS": (Reason.auth, True),
    "isv.ACCOUNT_ABNORMAL": (Reason.auth, True),
    "isv.OUT_OF_SERVICE": (Reason.insufficient_balance, True),
    "isv.AMOUNT_NOT_ENOUGH": (Reason.insufficient_balance, False),
    "isv.DENY_IP_RANGE": (Reason.auth, True),
    "isp.RAM_PERMISSION_DENY": (Reason.auth, True),
    "SignatureDoesNotMatch": (Reason.auth, True),
    "InvalidAccessKeyId.NotFound": (Reason.auth, True),
    "InvalidAccessKeyId.Inactive": (Reason.auth, True),
    "IncompleteSignature": (Reason.auth, True),
    "MissingParameter": (Reason.invalid_request, True),
    # flow control: 验证码 1/min, 5/h, 10/day per number; 通知/推广 per sign+template+number per day
    "isv.BUSINESS_LIMIT_CONTROL": (Reason.throttled, False),
    "isv.DAY_LIMIT_CONTROL": (Reason.throttled, False),
    "Throttling.User": (Reason.throttled, False),
    "Throttling": (Reason.throttled, False),
    "SignatureNonceUsed": (Reason.provider_unavailable, False),  # a fresh nonce on retry fixes it
    "InvalidTimeStamp.Expired": (Reason.provider_unavailable, False),  # clock skew; retry after NTP
    "isp.SYSTEM_ERROR": (Reason.provider_unavailable, False),
    "ServiceUnavailable": (Reason.provider_unavailable, False),
    "InternalError": (Reason.provider_unavailable, False),
}


def percent_encode(value: str) -> str:
    """Aliyun POP percent-encoding: RFC 3986 unreserved characters kept, everything else %XX (UTF-8)."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def string_to_sign(params: Mapping[str, str], method: str = "GET") -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(params: Mapping[str, str], access_key_secret: str, method: str = "GET") -> str:
    params = {k: v for k, v in params.items() if k != "Signature"}
    digest = hmac.new(f"{access_key_secret}&".encode(), string_to_sign(params, method).encode(), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode()


def aliyun_phone(e164: str) -> str:
    """Aliyun wants mainland numbers without the country code and others as <country><number> without '+'."""
    cc, national = split_e164(e164)
    return national if cc == "86" else cc + national


class AliyunSmsProvider:
    channel = Channel.sms
    name = "aliyun_sms"

    def __init__(self, access_key_id: str, access_key_secret: str, *, endpoint: str = "https://dysmsapi.aliyuncs.com",
                 region_id: str = "cn-hangzhou", sign_name: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], datetime] = utcnow, nonce: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self._key_id = access_key_id
        self._secret = access_key_secret
        self.endpoint = endpoint.rstrip("/")
        self.region_id = region_id
        self.sign_name = sign_name
        self._clock = clock
        self._nonce = nonce
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __repr__(self) -> str:  # never show the secret
        return f"AliyunSmsProvider(endpoint={self.endpoint!r}, access_key_id={self._key_id[:4]}…)"

    def signed_params(self, msg: OutboundMessage) -> dict[str, str]:
        sign_name = msg.sign_name or self.sign_name
        if not sign_name:
            raise ValueError("SignName is required (message sign_name or the provider's default)")
        if not msg.template:
            raise ValueError("TemplateCode is required")
        params = {
            "AccessKeyId": self._key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "RegionId": self.region_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": self._nonce(),
            "SignatureVersion": "1.0",
            "Timestamp": self._clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": API_VERSION,
            "PhoneNumbers": aliyun_phone(msg.recipient),
            "SignName": sign_name,
            "TemplateCode": msg.template,
            "OutId": msg.message_id,
        }
        if msg.variables:
            params["TemplateParam"] = json.dumps(msg.variables, ensure_ascii=False, separators=(",", ":"))
        params["Signature"] = sign(params, self._secret)
        return params

    def send(self, msg: OutboundMessage) -> SendResult:
        try:
            params = self.signed_params(msg)
        except ValueError as exc:
            return SendResult.fail(Reason.invalid_request, permanent=True, text=str(exc))
        # Signature first, then the canonical string: the query is sent byte for byte as it was signed.
        sig = params.pop("Signature")
        url = f"{self.endpoint}/?Signature={percent_encode(sig)}&{canonical_query(params)}"
        try:
            resp = self._http.get(url)
        except httpx.HTTPError as exc:
            return http_failure(exc)
        try:
            data = resp.json()
        except ValueError:
            return status_failure(resp)
        code = str(data.get("Code", ""))
        if resp.status_code == 200 and code == "OK":
            return SendResult.ok(data.get("BizId"))
        if code and code in ERRORS:
            return mapped_failure(ERRORS, code, data.get("Message"))
        if resp.status_code >= 500 or code.startswith("isp."):
            return SendResult.fail(Reason.provider_unavailable, permanent=False, code=code or None,
                                   text=data.get("Message"))
        if resp.status_code != 200:
            return status_failure(resp, code or None, data.get("Message"))
        return mapped_failure(ERRORS, code, data.get("Message"))

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """Delivery reports (SmsReport, HTTP batch push): a JSON array of
        {phone_number, send_time, report_time, success, err_code, err_msg, sms_size, biz_id, out_id}.
        Aliyun does not sign these pushes; protect the callback URL (secret path, source allow-list)."""
        items = json_list(body)
        out = []
        for it in items:
            if "biz_id" not in it:
                raise CallbackRejected("not an Aliyun SmsReport item")
            ok = it.get("success") in (True, "true")
            out.append(StatusUpdate(
                provider_message_id=str(it["biz_id"]), status="delivered" if ok else "failed",
                at=shanghai_time(it.get("report_time") or it.get("send_time")), raw=it,
                message_id=it.get("out_id") or None, error_code=None if ok else it.get("err_code")))
        return out

    def parse_inbound(self, headers: Mapping[str, str], body: bytes) -> list[InboundReply]:
        """Inbound replies (SmsUp): a JSON array of {phone_number, send_time, content, sign_name, dest_code,
        sequence_id}. `opt_out` marks T/TD/R/N/退订/取消."""
        out = []
        for it in json_list(body):
            if "content" not in it or "phone_number" not in it:
                raise CallbackRejected("not an Aliyun SmsUp item")
            text = str(it["content"])
            out.append(InboundReply(sender=_e164_cn(str(it["phone_number"])), text=text,
                                    at=shanghai_time(it.get("send_time")), opt_out=is_opt_out_reply(text), raw=it))
        return out

    def quota(self) -> Quota | None:
        """Aliyun has no API for what is left under its flow control; Orchard enforces its own per-number caps."""
        return None

    def close(self) -> None:
        self._http.close()



def _e164_cn(phone: str) -> str:
    """Aliyun reports mainland numbers without the country code."""
    phone = phone.strip()
    if phone.startswith("+"):
        return phone
    return f"+86{phone}" if len(phone) == 11 and phone.startswith("1") else f"+{phone}"
