"""Message templates: Jinja2 in a sandbox, with every variable checked when a template is published.

A missing variable is an error at publish time, not a blank in a customer's SMS: rendering uses
`StrictUndefined`, and publishing renders the template against a sample of every variable a message
can carry (member, points, tier, coupon, event, store, brand) — an unknown name or attribute fails
the publish with the variable named. At send time the same strictness turns a missing value into a
permanent failure of that one message, recorded with the reason.
"""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.audit.service import record
from orchard.channels.sms import check_sms_template
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.messaging.models import CHANNELS, PURPOSES, MessageTemplate

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)

#: One sample of everything a message context may hold (`context.build` fills the real values).
SAMPLE: dict[str, Any] = {
    "member": {"id": 1, "name": "王芳", "gender": "female", "birthday": "1990-05-01", "region": "上海",
               "joined_at": "2025-01-01", "home_store": "上海南京路店"},
    "points": {"balance": 1200, "available": 1000, "pending": 200, "expiring": 300, "expiring_at": "2026-12-31"},
    "tier": {"code": "GOLD", "name": "金卡会员", "next_name": "铂金会员", "next_needs": 50000},
    "coupon": {"code": "7K3M9QWX2D8F", "name": "满100减20", "valid_to": "2026-12-31"},
    "recommend": {"category": "运动鞋", "categories": ["运动鞋", "服装", "配件"]},
    "event": {},
    "store": {"code": "SH001", "name": "上海南京路店", "city": "上海"},
    "brand": {"name": "Orchard"},
    "link": lambda url: url,
}


def render(text: str, context: dict[str, Any]) -> str:
    return _compiled(text).render(**context)


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> Any:
    """Compiling is most of a render's cost and a template's text is rendered for thousands of members;
    a compiled template renders any number of times, from any thread."""
    return _ENV.from_string(text)


def render_template(template: MessageTemplate, context: dict[str, Any]) -> dict[str, Any]:
    """The payload of one message: subject, body and provider variables, rendered strictly."""
    out: dict[str, Any] = {"body": render(template.body, context)}
    if template.subject:
        out["subject"] = render(template.subject, context)
    if template.variables:
        out["variables"] = {k: render(str(v), context) for k, v in template.variables.items()}
    if template.provider_template:
        out["provider_template"] = template.provider_template
    if template.sign_name:
        out["sign_name"] = template.sign_name
    return out


def check(template: MessageTemplate) -> None:
    """Everything that makes a template unpublishable, named by field."""
    for field, text in (("body", template.body), ("subject", template.subject or ""),
                        *((f"variables.{k}", str(v)) for k, v in (template.variables or {}).items())):
        try:
            render(text, SAMPLE)
        except UndefinedError as exc:
            raise InvalidInput.field(field, f"unknown variable: {exc.message}") from None
        except TemplateError as exc:
            raise InvalidInput.field(field, f"template error: {exc}") from None
    if template.channel == "sms":
        if not template.sign_name:
            raise InvalidInput.field("sign_name", "an SMS template needs its signature (签名)")
        # The vendors' registration rules (the signature is sent as the sign name, 【】 added by them).
        verdict = check_sms_template(f"【{template.sign_name}】{template.body}", template.purpose,
                                     sign_name=template.sign_name)
        if not verdict.ok:
            raise InvalidInput.field("body", "; ".join(verdict.reasons))
    if template.channel == "email" and not template.subject:
        raise InvalidInput.field("subject", "an e-mail needs a subject")


def create(session: Session, *, code: str, name: str, channel: str, purpose: str, body: str, actor: str,
           subject: str | None = None, provider_template: str | None = None, sign_name: str | None = None,
           variables: dict[str, Any] | None = None, publish: bool = False) -> MessageTemplate:
    if channel not in CHANNELS:
        raise InvalidInput.field("channel", "one of " + ", ".join(CHANNELS))
    if purpose not in PURPOSES:
        raise InvalidInput.field("purpose", "marketing or service")
    if session.scalar(select(MessageTemplate.id).where(MessageTemplate.code == code)) is not None:
        raise Conflict(f"a template with code {code!r} exists", code="template.code_taken")
    now = utcnow()
    template = MessageTemplate(code=code, name=name, channel=channel, purpose=purpose, body=body, subject=subject,
                               provider_template=provider_template, sign_name=sign_name, variables=variables or {},
                               status="draft", version=1, created_by=actor, created_at=now, updated_at=now)
    try:
        _ENV.parse(body)
    except TemplateError as exc:
        raise InvalidInput.field("body", f"template error: {exc}") from None
    session.add(template)
    session.flush()
    record(session, actor=actor, action="template.create", entity="message_template", entity_id=template.id,
           data={"code": code, "channel": channel, "purpose": purpose})
    if publish:
        return publish_template(session, code=code, actor=actor)
    return template


def get(session: Session, code: str) -> MessageTemplate:
    template = session.scalar(select(MessageTemplate).where(MessageTemplate.code == code))
    if template is None:
        raise NotFound("template not found", code="template.not_found")
    return template


def publish_template(session: Session, *, code: str, actor: str) -> MessageTemplate:
    template = get(session, code)
    check(template)
    template.status, template.published_at, template.updated_at = "published", utcnow(), utcnow()
    record(session, actor=actor, action="template.publish", entity="message_template", entity_id=template.id,
           data={"code": code, "version": template.version})
    session.flush()
    return template

