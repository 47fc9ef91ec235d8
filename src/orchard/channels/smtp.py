"""E-mail over SMTP (stdlib smtplib + email.message).

Every message carries `Message-ID: <orchard.{message id}@{domain}>`, so a resend after a crash is recognisably the
same message, and for marketing mail the unsubscribe link in the body plus `List-Unsubscribe` (RFC 2369) with a
mailto: and an https: URI and `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Literal

from .base import Channel, OutboundMessage, Purpose, Quota, Reason, SendResult, StatusUpdate

#: SMTP reply codes that are permanent although they are not 5xx, or transient although they are.
_AUTH_CODES = {530, 534, 535, 538}


def smtp_failure(code: int, text: bytes | str | None, *, stage: str) -> SendResult:
    """RFC 5321: 4yz = transient, 5yz = permanent. Authentication failures are a configuration error."""
    msg = text.decode(errors="replace") if isinstance(text, bytes) else (text or "")
    msg = f"{stage}: {msg}"
    if code in _AUTH_CODES:
        return SendResult.fail(Reason.auth, permanent=True, code=str(code), text=msg)
    if 400 <= code < 500:
        reason = Reason.throttled if code in (421, 450, 451, 452) else Reason.provider_unavailable
        return SendResult.fail(reason, permanent=False, code=str(code), text=msg)
    if stage == "RCPT" and code in (550, 551, 553):
        return SendResult.fail(Reason.invalid_recipient, permanent=True, code=str(code), text=msg)
    if stage == "DATA" and code == 554:
        return SendResult.fail(Reason.content_rejected, permanent=True, code=str(code), text=msg)
    return SendResult.fail(Reason.invalid_request, permanent=True, code=str(code), text=msg)


class SmtpProvider:
    channel = Channel.email
    name = "smtp"

    def __init__(self, host: str, port: int = 587, *, from_address: str, from_name: str | None = None,
                 security: Literal["none", "starttls", "ssl"] = "starttls", username: str | None = None,
                 password: str | None = None, unsubscribe_mailto: str | None = None,
                 message_id_domain: str | None = None, timeout: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.security = host, port, security
        self.from_address, self.from_name = from_address, from_name
        self._username, self._password = username, password
        self.unsubscribe_mailto = unsubscribe_mailto
        self.message_id_domain = message_id_domain or from_address.rpartition("@")[2] or "orchard.local"
        self.timeout = timeout
        self._ssl = ssl_context

    def __repr__(self) -> str:
        return f"SmtpProvider(host={self.host!r}, port={self.port}, from={self.from_address!r})"

    def message_id(self, msg: OutboundMessage) -> str:
        return f"<orchard.{msg.message_id}@{self.message_id_domain}>"

    def build(self, msg: OutboundMessage) -> EmailMessage:
        if msg.purpose is Purpose.marketing and not msg.unsubscribe_url:
            raise ValueError("a marketing e-mail needs an unsubscribe URL")
        if not msg.subject:
            raise ValueError("an e-mail needs a subject")
        if not (msg.body or msg.html):
            raise ValueError("an e-mail needs a text or HTML body")
        em = EmailMessage()
        em["From"] = formataddr((self.from_name, self.from_address)) if self.from_name else self.from_address
        em["To"] = msg.recipient
        em["Subject"] = msg.subject
        em["Date"] = formatdate(localtime=False, usegmt=True)
        em["Message-ID"] = self.message_id(msg)
        text = msg.body or ""
        html = msg.html
        if msg.unsubscribe_url:
            uris = []
            if self.unsubscribe_mailto:
                uris.append(f"<mailto:{self.unsubscribe_mailto}?subject=unsubscribe%20{msg.message_id}>")
            uris.append(f"<{msg.unsubscribe_url}>")
            em["List-Unsubscribe"] = ", ".join(uris)
            em["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            text = f"{text}\n\n退订 / Unsubscribe: {msg.unsubscribe_url}\n"
            if html is not None:
                link = f'<p><a href="{_attr(msg.unsubscribe_url)}">退订 / Unsubscribe</a></p>'
                html = html.replace("</body>", link + "</body>") if "</body>" in html else html + link
        em.set_content(text)
        if html is not None:
            em.add_alternative(html, subtype="html")
        return em

    def send(self, msg: OutboundMessage) -> SendResult:
        try:
            em = self.build(msg)
        except ValueError as exc:
            return SendResult.fail(Reason.invalid_request, permanent=True, text=str(exc))
        mid = em["Message-ID"]
        try:
            smtp_cls = smtplib.SMTP_SSL if self.security == "ssl" else smtplib.SMTP
            kw = {"context": self._ssl or ssl.create_default_context()} if self.security == "ssl" else {}
            with smtp_cls(self.host, self.port, timeout=self.timeout, **kw) as smtp:
                if self.security == "starttls":
                    smtp.starttls(context=self._ssl or ssl.create_default_context())
                if self._username:
                    smtp.login(self._username, self._password or "")
                refused = smtp.send_message(em, from_addr=self.from_address, to_addrs=[msg.recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return smtp_failure(code, text, stage="RCPT")
        except smtplib.SMTPSenderRefused as exc:
            return smtp_failure(exc.smtp_code, exc.smtp_error, stage="MAIL")
        except smtplib.SMTPDataError as exc:
            return smtp_failure(exc.smtp_code, exc.smtp_error, stage="DATA")
        except smtplib.SMTPAuthenticationError as exc:
            return smtp_failure(exc.smtp_code, exc.smtp_error, stage="AUTH")
        except smtplib.SMTPResponseException as exc:
            return smtp_failure(exc.smtp_code, exc.smtp_error, stage="SMTP")
        except TimeoutError:
            return SendResult.fail(Reason.timeout, permanent=False, text="SMTP timeout")
        except smtplib.SMTPNotSupportedError as exc:
            return SendResult.fail(Reason.invalid_request, permanent=True, text=f"server: {exc}")
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult.fail(Reason.network, permanent=False, text=type(exc).__name__)
        if refused:
            code, text = next(iter(refused.values()))
            return smtp_failure(code, text, stage="RCPT")
        return SendResult.ok(mid)

    def parse_callback(self, headers: Mapping[str, str], body: bytes,
                       query: Mapping[str, str] | None = None) -> list[StatusUpdate]:
        """SMTP has no delivery callback (bounces arrive as mail): nothing to parse."""
        return []

    def quota(self) -> Quota | None:
        return None


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
