"""JPush REST API v3 `POST /v3/push` to one registration id, HTTP Basic auth base64(appKey:masterSecret).

`options.sendno` is derived from Orchard's message id (JPush echoes it back; an int32). JPush's own duplicate
guard (`cid`) needs ids drawn beforehand from `GET /v3/push/cid` and stored with the message; pass one as
`extra["jpush_cid"]` to use it (`fetch_cids` draws them), otherwise a resend after a lost answer may push twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .base import (
    DEFAULT_TIMEOUT,
    CallbackRejected,
    Channel,
    OutboundMessage,
    Quota,
    Reason,
    SendResult,
    StatusUpdate,
    header,
    http_failure,
    parse_retry_after,
    status_failure,
)

#: JPush push API error codes → (reason, permanent).
ERRORS: dict[str, tuple[Reason, bool]] = {
    "1000": (Reason.provider_unavailable, False),  # internal error
    "1001": (Reason.invalid_request, True),  # only POST supported
    "1002": (Reason.invalid_request, True),  # missing required parameter
    "1003": (Reason.invalid_request, True),  # invalid parameter value
    "1004": (Reason.auth, True),  # authentication failed
    "1005": (Reason.invalid_request, True),  # message too long
    "1008": (Reason.auth, True),  # invalid appkey
    "1009": (Reason.invalid_request, True),  # unsupported platform / audience
    "1011": (Reason.invalid_recipient, True),  # no user found for the audience
    "1020": (Reason.invalid_request, True),  # https only
    "1030": (Reason.provider_unavailable, False),  # internal service timeout
    "2002": (Reason.throttled, False),  # API call frequency exceeded
    "2003": (Reason.auth, True),  # appkey may not call this API
    "2004": (Reason.auth, True),  # no permission
    "2005": (Reason.throttled, False),  # over the daily push quota
    "2008": (Reason.throttled, False),  # pushing too often
}


def sendno_for(message_id: str) -> int:
    """A stable positive int32 from the message id (same on every retry)."""
    return int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


class JPushProvider:
    channel = Channel.app_push
    name = "jpush"

    def __init__(self, app_key: str, master_secret: str, *, endpoint: str = "https://api.jpush.cn",
                 apns_production: bool = True, time_to_live: int | None = 86400,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None):
        self.app_key = app_key
        self.endpoint = endpoint.rstrip("/")
        self.apns_production = apns_production
        self.time_to_live = time_to_live
        self._http = httpx.Client(timeout=timeout, transport=transport, auth=(app_key, master_secret))
        #: What JPush sends with its receipts and URL checks: the same Basic credentials as the push API.
        self._callback_auth = "Basic " + base64.b64encode(f"{app_key}:{master_secret}".encode()).decode()
        self._rate_lock = threading.Lock()
        self._rate: Quota | None = None

    def __repr__(self) -> str:
        return f"JPushProvider(app_key={self.app_key!r}, endpoint={self.endpoint!r})"

    def payload(self, msg: OutboundMessage) -> dict[str, Any]:
        alert = msg.body or ""
        extras = {"orchard_message_id": msg.message_id, **({"url": msg.url} if msg.url else {})}
        android: dict[str, Any] = {"alert": alert, "extras": extras}
        if msg.subject:
            android["title"] = msg.subject
        ios: dict[str, Any] = {"alert": {"title": msg.subject, "body": alert} if msg.subject else alert,
                               "extras": extras}
        options: dict[str, Any] = {"sendno": sendno_for(msg.message_id), "apns_production": self.apns_production}
        if self.time_to_live is not None:
            options["time_to_live"] = self.time_to_live
        p: dict[str, Any] = {
            "platform": "all",
            "audience": {"registration_id": [msg.recipient]},
            "notification": {"alert": alert, "android": android, "ios": ios},
            "options": options,
        }
        if msg.extra.get("jpush_cid"):
            p["cid"] = msg.extra["jpush_cid"]
        return p

    def _remember_rate(self, resp: httpx.Response) -> None:
        h = resp.headers
        if "x-rate-limit-limit" not in h:
            return
        try:
            reset = int(h.get("x-rate-limit-reset", "0"))
            with self._rate_lock:
                self._rate = Quota(limit=int(h["x-rate-limit-limit"]), remaining=int(h["x-rate-limit-remaining"]),
                                   resets_at=datetime.now(UTC) + timedelta(seconds=reset),
                                   detail="API calls in the current 60 s window")
        except (KeyError, ValueError):
            pass

    def send(self, msg: OutboundMessage) -> SendResult:
        if not msg.body:
            return SendResult.fail(Reason.invalid_request, permanent=True, text="a push needs a body (alert)")
        try:
            resp = self._http.post(f"{self.endpoint}/v3/push", json=self.payload(msg))
        except httpx.HTTPError as exc:
            return http_failure(exc)
        self._remember_rate(resp)
        try:
            data = resp.json()
        except ValueError:
            return status_failure(resp)
        if resp.status_code == 200 and "error" not in data:
            return SendResult.ok(str(data.get("msg_id")))
        err = data.get("error") or {}
        code = str(err.get("code", ""))
        if code in ERRORS:
            reason, permanent = ERRORS[code]
            return SendResult.fail(reason, permanent=permanent, code=code, text=err.get("message"),
                                   retry_after=parse_retry_after(resp.headers.get("x-rate-limit-reset"))
                                   if reason is Reason.throttled else None)
        return status_failure(resp, code or None, err.get("message"))

    def fetch_cids(self, count: int = 1) -> list[str]:
        """Draw push cids (`GET /v3/push/cid`) to store with messages before their first attempt."""
        resp = self._http.get(f"{self.endpoint}/v3/push/cid", params={"count": count, "type": "push"})
        resp.raise_for_status()
        return list(resp.json()["cidlist"])

    def verify_callback(self, headers: Mapping[str, str]) -> None:
        """JPush authenticates what it posts back ("回执 API", 调用验证) the way the push API authenticates us:
        `Authorization: Basic base64(appKey:masterSecret)`."""
        got = header(headers, "authorization") or ""
        if not hmac.compare_digest(got.encode(), self._callback_auth.encode()):
            raise CallbackRejected("bad JPush callback credentials")

    def url_check(self, headers: Mapping[str, str], query: Mapping[str, str] | None) -> str:
        """The GET JPush sends to validate a receipt URL: authenticated like a receipt, answered with `echostr`."""
        self.verify_callback(headers)
        return (query or {}).get("echostr", "")

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """Checks the credentials, then reports nothing: JPush's delivery / click receipts are a VIP feature whose
        fields Jiguang hands out per account (not published), and the standard plan has none (its report API is
        pulled, which this adapter does not do)."""
        self.verify_callback(headers)
        return []

    def quota(self) -> Quota | None:
        """JPush's rate-limit window as reported on the last response (X-Rate-Limit-* headers)."""
        with self._rate_lock:
            return self._rate

    def close(self) -> None:
        self._http.close()
