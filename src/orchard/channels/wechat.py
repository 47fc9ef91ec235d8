"""WeChat official-account template messages (service notices) and mini-program subscribe messages.

Both are plain HTTPS+JSON calls with an `access_token` query parameter, implemented here with httpx rather than
through `wechatpy`: the current PyPI release (1.8.18) hard-codes the token URL (`WeChatClient.fetch_access_token`
uses the literal `https://api.weixin.qq.com/cgi-bin/token`) and the mini-program API class carries its own
`API_BASE_URL`, so pointing it at a test server means overriding several classes and a method; it also brings a
second HTTP stack (requests) that raises instead of answering, and six/xmltodict/optionaldict. Two endpoints and a
token cache are less code than that wrapper.

Token: `GET /cgi-bin/token?grant_type=client_credential&appid=…&secret=…` → {access_token, expires_in}; cached until
five minutes before it expires, shared by the threads of this process; on errcode 40001 / 40014 / 42001 (invalid or
expired token) it is fetched again and the call retried once. Several processes each fetch their own token; that
invalidates the others' (WeChat keeps the previous one valid for 5 minutes), which the retry absorbs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from .base import (
    DEFAULT_TIMEOUT,
    CallbackRejected,
    Channel,
    OutboundMessage,
    Purpose,
    Quota,
    Reason,
    SendResult,
    StatusUpdate,
    http_failure,
    mapped_failure,
    status_failure,
)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})

#: WeChat global return codes (全局返回码) → (reason, permanent).
ERRORS: dict[str, tuple[Reason, bool]] = {
    "-1": (Reason.provider_unavailable, False),  # 系统繁忙
    "40003": (Reason.invalid_recipient, True),  # invalid openid
    "40013": (Reason.auth, True),  # invalid appid
    "40125": (Reason.auth, True),  # invalid appsecret
    "40164": (Reason.auth, True),  # caller IP not on the allow-list
    "48001": (Reason.auth, True),  # api unauthorized
    "40036": (Reason.template_rejected, True),  # invalid template_id size
    "40037": (Reason.template_rejected, True),  # invalid template_id
    "47003": (Reason.template_rejected, True),  # template data does not fit the template
    "43116": (Reason.template_rejected, True),  # template blocked for abuse
    "41030": (Reason.invalid_request, True),  # invalid page
    "45002": (Reason.invalid_request, True),  # content too long
    "43004": (Reason.recipient_blocked, True),  # recipient does not follow the account
    "43019": (Reason.recipient_blocked, True),  # recipient is on the blacklist
    "43101": (Reason.no_grant, True),  # user refused / no subscription grant left
    "45009": (Reason.throttled, False),  # daily API quota reached
    "45011": (Reason.throttled, False),  # per-minute API quota reached
}


class AccessToken:
    """A cached access token for one appid (thread-safe)."""

    def __init__(self, http: httpx.Client, endpoint: str, appid: str, secret: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._http, self._endpoint, self._appid, self._secret = http, endpoint, appid, secret
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.fetches = 0

    def get(self) -> str | SendResult:
        with self._lock:
            if self._token and self._clock() < self._expires:
                return self._token
            try:
                resp = self._http.get(f"{self._endpoint}/cgi-bin/token", params={
                    "grant_type": "client_credential", "appid": self._appid, "secret": self._secret})
            except httpx.HTTPError as exc:
                return http_failure(exc)
            if resp.status_code != 200:
                return status_failure(resp)
            try:
                data = resp.json()
            except ValueError:
                return SendResult.fail(Reason.provider_unavailable, permanent=False, text="token answer not JSON")
            self.fetches += 1
            if not data.get("access_token"):
                return mapped_failure(ERRORS, str(data.get("errcode")), data.get("errmsg"))
            self._token = data["access_token"]
            # refresh five minutes early (WeChat's own advice); never cache for less than a minute
            self._expires = self._clock() + max(60, int(data.get("expires_in", 7200)) - 300)
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None


class _WeChatBase:
    channel: Channel
    name: str
    send_path: str

    def __init__(self, appid: str, secret: str, *, endpoint: str = "https://api.weixin.qq.com",
                 callback_token: str | None = None, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.appid = appid
        self.endpoint = endpoint.rstrip("/")
        self._callback_token = callback_token
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self.token = AccessToken(self._http, self.endpoint, appid, secret, clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(appid={self.appid!r}, endpoint={self.endpoint!r})"

    def _call(self, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, SendResult | None]:
        """POST with the token; refetch the token and retry once on 40001/40014/42001."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        for attempt in (1, 2):
            token = self.token.get()
            if isinstance(token, SendResult):
                return None, token
            try:
                resp = self._http.post(f"{self.endpoint}{path}", params={"access_token": token}, content=body,
                                       headers={"Content-Type": "application/json; charset=utf-8"})
            except httpx.HTTPError as exc:
                return None, http_failure(exc)
            if resp.status_code != 200:
                return None, status_failure(resp)
            try:
                data = resp.json()
            except ValueError:
                return None, SendResult.fail(Reason.provider_unavailable, permanent=False, text="answer not JSON")
            errcode = int(data.get("errcode", 0))
            if errcode in TOKEN_ERRORS and attempt == 1:
                self.token.invalidate(token)
                continue
            if errcode != 0:
                return None, mapped_failure(ERRORS, str(errcode), data.get("errmsg"))
            return data, None
        raise AssertionError("unreachable")

    def _send(self, payload: dict[str, Any]) -> SendResult:
        data, failure = self._call(self.send_path, payload)
        if failure is not None:
            return failure
        assert data is not None
        return SendResult.ok(str(data["msgid"]) if data.get("msgid") is not None else None)

    def quota(self) -> Quota | None:
        """Today's call quota of the send API (`/cgi-bin/openapi/quota/get`)."""
        data, failure = self._call("/cgi-bin/openapi/quota/get", {"cgi_path": self.send_path})
        if failure is not None or data is None:
            return None
        q = data.get("quota") or {}
        return Quota(limit=q.get("daily_limit"), used=q.get("used"), remaining=q.get("remain"),
                     detail=f"daily calls of {self.send_path}")

    def verify_callback(self, query: Mapping[str, str] | None) -> None:
        """WeChat's server-URL check: signature = SHA1 of the sorted concatenation of token, timestamp, nonce."""
        if not self._callback_token:
            raise CallbackRejected("no callback token configured")
        query = query or {}
        parts = [self._callback_token, query.get("timestamp", ""), query.get("nonce", "")]
        expected = hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()
        if not hmac.compare_digest(expected, query.get("signature", "")):
            raise CallbackRejected("bad WeChat callback signature")

    def url_check(self, headers: Mapping[str, str], query: Mapping[str, str] | None) -> str:
        """The GET WeChat sends when the server URL is saved in its console: signed like a push, answered with
        the `echostr` it carries (plaintext mode)."""
        self.verify_callback(query)
        return (query or {}).get("echostr", "")

    def close(self) -> None:
        self._http.close()


def _data(variables: dict[str, str]) -> dict[str, dict[str, str]]:
    return {k: {"value": v} for k, v in variables.items()}


def _event(body: bytes) -> dict[str, Any]:
    """A pushed event, XML (明文模式) or JSON. Encrypted (安全模式) pushes are not supported."""
    text = body.strip()
    if text.startswith(b"{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CallbackRejected("bad JSON event") from exc
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CallbackRejected("bad XML event") from exc
    if root.find("Encrypt") is not None:
        raise CallbackRejected("encrypted (安全模式) events are not supported; use 明文模式")

    def conv(el: ET.Element) -> Any:
        children = list(el)
        if not children:
            return (el.text or "").strip()
        out: dict[str, Any] = {}
        for c in children:
            v = conv(c)
            if c.tag in out:  # repeated element → list
                out[c.tag] = out[c.tag] if isinstance(out[c.tag], list) else [out[c.tag]]
                out[c.tag].append(v)
            else:
                out[c.tag] = v
        return out

    return conv(root)


def _event_time(ev: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(ev.get("CreateTime") or time.time()), UTC)


class WeChatTemplateProvider(_WeChatBase):
    """Official-account template message (`/cgi-bin/message/template/send`): service notices only."""

    channel = Channel.wechat_oa
    name = "wechat_template"
    send_path = "/cgi-bin/message/template/send"

    def payload(self, msg: OutboundMessage) -> dict[str, Any]:
        p: dict[str, Any] = {"touser": msg.recipient, "template_id": msg.template, "data": _data(msg.variables),
                             "client_msg_id": msg.message_id}
        if msg.url:
            p["url"] = msg.url
        if msg.extra.get("miniprogram_appid"):
            p["miniprogram"] = {"appid": msg.extra["miniprogram_appid"],
                                "pagepath": msg.extra.get("miniprogram_pagepath", "")}
        return p

    def send(self, msg: OutboundMessage) -> SendResult:
        if msg.purpose is Purpose.marketing:
            return SendResult.fail(Reason.content_rejected, permanent=True,
                                   text="WeChat template messages may carry service notices only, not marketing")
        if not msg.template:
            return SendResult.fail(Reason.invalid_request, permanent=True, text="template_id is required")
        return self._send(self.payload(msg))

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """`TEMPLATESENDJOBFINISH` events: Status success | failed:user block | failed: system failed."""
        self.verify_callback(query)
        ev = _event(body)
        if ev.get("Event") != "TEMPLATESENDJOBFINISH":
            return []
        status = str(ev.get("Status", ""))
        ok = status == "success"
        return [StatusUpdate(provider_message_id=str(ev.get("MsgID") or ev.get("MsgId")),
                             status="delivered" if ok else "failed", at=_event_time(ev), raw=ev,
                             error_code=None if ok else status)]


class WeChatSubscribeProvider(_WeChatBase):
    """Mini-program subscribe message (`/cgi-bin/message/subscribe/send`). Each user grant allows one send; the
    caller counts grants per member and template and skips members with none. WeChat's own refusal (43101) comes
    back as permanent `no_grant`, which tells the caller its count was wrong: set it to 0."""

    channel = Channel.wechat_mp
    name = "wechat_subscribe"
    send_path = "/cgi-bin/message/subscribe/send"

    def __init__(self, appid: str, secret: str, *, miniprogram_state: str = "formal", lang: str = "zh_CN",
                 **kw: Any) -> None:
        super().__init__(appid, secret, **kw)
        self.miniprogram_state = miniprogram_state
        self.lang = lang

    def payload(self, msg: OutboundMessage) -> dict[str, Any]:
        p: dict[str, Any] = {"touser": msg.recipient, "template_id": msg.template, "data": _data(msg.variables),
                             "miniprogram_state": self.miniprogram_state, "lang": self.lang}
        if msg.url:
            p["page"] = msg.url
        return p

    def send(self, msg: OutboundMessage) -> SendResult:
        if not msg.template:
            return SendResult.fail(Reason.invalid_request, permanent=True, text="template_id is required")
        return self._send(self.payload(msg))

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """`subscribe_msg_sent_event`: SubscribeMsgSentEvent.List items {TemplateId, MsgID, ErrorCode,
        ErrorStatus}; ErrorCode 0 = delivered."""
        self.verify_callback(query)
        ev = _event(body)
        if ev.get("Event") != "subscribe_msg_sent_event":
            return []
        items = (ev.get("SubscribeMsgSentEvent") or {}).get("List") or []
        if isinstance(items, dict):
            items = [items]
        out = []
        for it in items:
            ok = str(it.get("ErrorCode", "")) == "0"
            out.append(StatusUpdate(provider_message_id=str(it.get("MsgID")), status="delivered" if ok else "failed",
                                    at=_event_time(ev), raw=ev, error_code=None if ok else str(it.get("ErrorCode"))))
        return out
