"""E-mail through a real aiosmtpd server on loopback: headers (Message-ID, List-Unsubscribe, RFC 8058 one-click),
bodies, and SMTP reply codes mapped to permanent / transient."""

import email
import email.policy
import socket

import pytest
from aiosmtpd.controller import Controller

from orchard.channels.base import OutboundMessage, Reason
from orchard.channels.smtp import SmtpProvider


class Handler:
    def __init__(self):
        self.envelopes = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        if address.startswith("full@"):
            return "452 4.2.2 Mailbox full, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtpd():
    handler = Handler()
    ctl = Controller(handler, hostname="127.0.0.1", port=_free_port())
    ctl.start()
    try:
        yield ctl, handler
    finally:
        ctl.stop()


def _provider(ctl, **kw):
    return SmtpProvider("127.0.0.1", ctl.port, from_address="news@orchard.example", from_name="果园会员",
                        security="none", unsubscribe_mailto="unsubscribe@orchard.example", timeout=5, **kw)


def _msg(to="li.lei@example.com", **kw):
    return OutboundMessage(**{**dict(
        message_id="msg-mail-1", channel="email", recipient=to, purpose="marketing", subject="本周会员日",
        body="李雷您好，本周六会员日全场8折。", html="<html><body><p>李雷您好</p></body></html>",
        unsubscribe_url="https://m.orchard.example/u/abc123"), **kw})


def test_marketing_mail_headers_and_bodies(smtpd):
    ctl, handler = smtpd
    res = _provider(ctl).send(_msg())
    assert res.accepted and res.provider_message_id == "<orchard.msg-mail-1@orchard.example>"
    (env,) = handler.envelopes
    assert env.mail_from == "news@orchard.example" and env.rcpt_tos == ["li.lei@example.com"]
    m = email.message_from_bytes(env.original_content, policy=email.policy.default)
    assert m["Message-ID"] == "<orchard.msg-mail-1@orchard.example>"
    assert m["Subject"] == "本周会员日" and m["To"] == "li.lei@example.com"
    assert m["List-Unsubscribe"].strip() == ("<mailto:unsubscribe@orchard.example?subject=unsubscribe%20msg-mail-1>, "
                                     "<https://m.orchard.example/u/abc123>")
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert m.get_content_type() == "multipart/alternative"
    text = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    assert "https://m.orchard.example/u/abc123" in text and "会员日全场8折" in text
    assert 'href="https://m.orchard.example/u/abc123"' in html and html.index("退订") < html.index("</body>")


def test_resend_has_the_same_message_id(smtpd):
    ctl, handler = smtpd
    p = _provider(ctl)
    assert p.send(_msg()).accepted and p.send(_msg()).accepted
    ids = {email.message_from_bytes(e.original_content)["Message-ID"] for e in handler.envelopes}
    assert ids == {"<orchard.msg-mail-1@orchard.example>"}


def test_service_mail_without_unsubscribe_and_text_only(smtpd):
    ctl, handler = smtpd
    res = _provider(ctl).send(_msg(purpose="service", unsubscribe_url=None, html=None, subject="积分到账"))
    assert res.accepted
    m = email.message_from_bytes(handler.envelopes[0].original_content, policy=email.policy.default)
    assert "List-Unsubscribe" not in m and m.get_content_type() == "text/plain"


def test_marketing_without_unsubscribe_is_refused_before_smtp(smtpd):
    ctl, handler = smtpd
    res = _provider(ctl).send(_msg(unsubscribe_url=None))
    assert res.permanent and res.reason == Reason.invalid_request and handler.envelopes == []


def test_smtp_codes(smtpd):
    ctl, _ = smtpd
    gone = _provider(ctl).send(_msg(to="nobody@example.com"))
    assert (gone.permanent, gone.reason, gone.error_code) == (True, Reason.invalid_recipient, "550")
    full = _provider(ctl).send(_msg(to="full@example.com"))
    assert (full.permanent, full.error_code) == (False, "452")


def test_unreachable_server_is_transient():
    res = SmtpProvider("127.0.0.1", _free_port(), from_address="a@b.example", security="none", timeout=2).send(
        _msg())
    assert res.retryable and res.reason == Reason.network


def test_starttls_required_but_not_offered_is_permanent(smtpd):
    ctl, _ = smtpd
    res = SmtpProvider("127.0.0.1", ctl.port, from_address="a@b.example", security="starttls", timeout=5).send(
        _msg())
    assert res.permanent  # a configuration error: retrying will not make the server offer STARTTLS
