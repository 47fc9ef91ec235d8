"""Standard Webhooks signing: the spec's published test vector, a round trip to a loopback receiver that verifies
with `webhook.verify`, tampering, and the status mapping."""

import base64
import json
import time

import pytest

from orchard.channels import webhook
from orchard.channels.base import OutboundMessage, Reason
from orchard.channels.webhook import WebhookProvider, WebhookVerificationError

from .loopback import Loopback, Request

SECRET = "whsec_" + base64.b64encode(b"orchard-webhook-test-key-32bytes").decode()


def test_standard_webhooks_published_vector():
    """From the standard-webhooks reference libraries' tests."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = webhook.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,bogus " + sig}
    assert webhook.verify(secret, headers, b'{"test": 2432232314}', now=lambda: 1614265330) == {"test": 2432232314}


class Receiver:
    def __init__(self, status=204):
        self.status = status
        self.got: list[dict] = []
        self.rejected: list[str] = []

    def __call__(self, req: Request):
        try:
            self.got.append(webhook.verify(SECRET, req.headers, req.body))
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return 401, "bad signature"
        return self.status, ""


def _msg(url, **kw):
    return OutboundMessage(**{**dict(message_id="msg-hook-1", channel="webhook", recipient=url,
                                     template="points_changed", variables={"points": "120"}), **kw})


def test_round_trip_verifies_and_id_is_the_message_id():
    rec = Receiver()
    with Loopback(rec) as lb:
        res = WebhookProvider(SECRET).send(_msg(lb.url + "/hook"))
        req = lb.requests[0]
    assert res.accepted and rec.rejected == []
    assert req.headers["webhook-id"] == "msg-hook-1"
    assert rec.got[0]["data"] == {"message_id": "msg-hook-1", "purpose": "service", "template": "points_changed",
                                  "variables": {"points": "120"}}


def test_tampered_body_wrong_secret_and_stale_timestamp_are_rejected():
    rec = Receiver()
    with Loopback(rec) as lb:
        WebhookProvider(SECRET).send(_msg(lb.url))
        req = lb.requests[0]
    tampered = req.body.replace(b"120", b"999")
    with pytest.raises(WebhookVerificationError):
        webhook.verify(SECRET, req.headers, tampered)
    other = "whsec_" + base64.b64encode(b"another-key").decode()
    with pytest.raises(WebhookVerificationError):
        webhook.verify(other, req.headers, req.body)
    with pytest.raises(WebhookVerificationError):
        webhook.verify(SECRET, req.headers, req.body, now=lambda: time.time() + 3600)
    with pytest.raises(WebhookVerificationError):
        webhook.verify(SECRET, {**req.headers, "webhook-id": "msg-other"}, req.body)
    assert webhook.verify(SECRET, req.headers, req.body)["type"] == "orchard.message"


def test_receiver_rejects_a_request_signed_with_another_secret():
    rec = Receiver()
    with Loopback(rec) as lb:
        res = WebhookProvider("whsec_" + base64.b64encode(b"x" * 24).decode()).send(_msg(lb.url))
    assert rec.rejected and res.permanent and res.error_code == "401" and res.reason == Reason.auth


@pytest.mark.parametrize(("status", "permanent", "reason"), [
    (400, True, Reason.invalid_request), (404, True, Reason.invalid_request), (410, True, Reason.invalid_request),
    (408, False, Reason.provider_unavailable), (429, False, Reason.throttled),
    (500, False, Reason.provider_unavailable), (503, False, Reason.provider_unavailable),
])
def test_status_mapping(status, permanent, reason):
    with Loopback(lambda req: (status, "nope", {"Retry-After": "30"})) as lb:
        res = WebhookProvider(SECRET).send(_msg(lb.url))
    assert (res.accepted, res.permanent, res.reason) == (False, permanent, reason)
    if status == 429:
        assert res.retry_after == 30


def test_2xx_accepted_timeout_transient_bad_url_permanent():
    with Loopback(lambda req: (200, {"ok": True})) as lb:
        assert WebhookProvider(SECRET).send(_msg(lb.url)).accepted
        lb.delay = 0.5
        assert WebhookProvider(SECRET, timeout=0.1).send(_msg(lb.url)).reason == Reason.timeout
    assert WebhookProvider(SECRET).send(_msg("ftp://x")).permanent
    with pytest.raises(ValueError):
        WebhookProvider("whsec_not base64!")


def test_signed_status_callback():
    p = WebhookProvider(SECRET)
    body = json.dumps({"type": "orchard.message.status", "data": {"message_id": "msg-hook-1", "status": "read",
                                                                  "at": "2024-05-01T10:00:00+08:00"}}).encode()
    ts = int(time.time())
    headers = {"webhook-id": "evt-1", "webhook-timestamp": str(ts),
               "webhook-signature": webhook.sign(SECRET, "evt-1", ts, body)}
    (u,) = p.parse_callback(headers, body)
    assert (u.message_id, u.status) == ("msg-hook-1", "read")
    with pytest.raises(WebhookVerificationError):
        p.parse_callback(headers, body.replace(b"read", b"clicked"))
