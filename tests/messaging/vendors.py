"""Vendor callbacks built the way each vendor builds them (written from their docs, not with the adapters' own
helpers), the settings that configure those vendors, and sent messages to report on."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time

import pytest

from orchard.config import get_settings
from orchard.messaging.models import Message

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"orchard-test-webhook-key-32bytes").decode()
WECHAT_TOKEN = "orchard-oa-token"
JPUSH_KEY, JPUSH_MASTER = "2743204aad6fe2572aa2d8de", "jpush-master-Do-Not-Log"
ENV = {
    "ORCHARD_SMS_ALIYUN_ACCESS_KEY_ID": "LTAI5tTestKeyId", "ORCHARD_SMS_ALIYUN_ACCESS_KEY_SECRET": "aliyun-secret",
    "ORCHARD_SMS_TENCENT_SECRET_ID": "AKIDtest", "ORCHARD_SMS_TENCENT_SECRET_KEY": "tencent-secret",
    "ORCHARD_SMS_TENCENT_SDK_APP_ID": "1400000000",
    "ORCHARD_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "ORCHARD_WECHAT_OA_APPID": "wx0123456789abcdef", "ORCHARD_WECHAT_OA_SECRET": "wechat-secret",
    "ORCHARD_WECHAT_OA_CALLBACK_TOKEN": WECHAT_TOKEN,
    "ORCHARD_PUSH_JPUSH_APP_KEY": JPUSH_KEY, "ORCHARD_PUSH_JPUSH_MASTER_SECRET": JPUSH_MASTER,
}


@pytest.fixture
def vendors(monkeypatch):
    """Aliyun, Tencent, the webhook, the WeChat official account and JPush configured (credentials only)."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def sent(s, member_id: int, *, channel: str, provider: str, pmid: str | None, at: dt.datetime, key: str,
         run_id: int | None = None, journey_id: int | None = None, step: str | None = None) -> int:
    """A message the provider accepted at `at` (as outbox._record leaves it)."""
    m = Message(key=key, member_id=member_id, channel=channel, purpose="marketing", recipient="r", payload={},
                status="sent", priority=0, attempts=1, provider=provider, provider_message_id=pmid, sent_at=at,
                created_at=at, journey_id=journey_id, run_id=run_id, step=step)
    s.add(m)
    s.flush()
    return m.id


def aliyun_report(biz_id: str, out_id: str, *, success: bool, at: str, code: str = "DELIVERED") -> dict:
    """One SmsReport item as Aliyun's HTTP batch push sends it (times in Beijing time)."""
    return {"phone_number": "13800000001", "send_time": at, "report_time": at, "success": success,
            "err_code": code, "err_msg": "用户接收成功" if success else "空号", "sms_size": "1",
            "biz_id": biz_id, "out_id": out_id}


def standard_webhook(payload: dict, *, msg_id: str = "evt_1", ts: int | None = None,
                     secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    """Body and headers signed per standardwebhooks.com: v1 = base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))."""
    body = json.dumps(payload).encode()
    ts = int(time.time()) if ts is None else ts
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": f"v1,{sig}",
                  "content-type": "application/json"}


def wechat_query(token: str = WECHAT_TOKEN, *, timestamp: str = "1732413600", nonce: str = "381752") -> dict:
    """WeChat's server-URL signature: SHA1 of token, timestamp and nonce sorted and joined."""
    signature = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()
    return {"signature": signature, "timestamp": timestamp, "nonce": nonce}


def jpush_auth(key: str = JPUSH_KEY, master: str = JPUSH_MASTER) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{master}".encode()).decode()}
