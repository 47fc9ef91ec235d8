"""Journey, message-template, message and contact-policy routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.journeys import engine, service
from orchard.journeys.models import Journey, JourneyVersion
from orchard.members import scope
from orchard.messaging import outbox, respect, templates
from orchard.messaging.models import Message, MessageTemplate

router = APIRouter(tags=["journeys"])
Code = Annotated[str, Path(min_length=1, max_length=64)]
MemberId = Annotated[int, Path(ge=1, le=2**62)]


class JourneyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    description: Annotated[str, Field(max_length=2000)] | None = None
    graph: Any
    priority: Annotated[int, Field(ge=0, le=100)] = 0
    reentry: Literal["once", "cooldown", "always"] = "once"
    reentry_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class GraphIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    graph: Any


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["live", "paused", "archived"]


def _read(session, journey: Journey) -> dict[str, Any]:
    versions = session.scalars(select(JourneyVersion).where(JourneyVersion.journey_id == journey.id)
                               .order_by(JourneyVersion.version))
    return {"code": journey.code, "name": journey.name, "description": journey.description,
            "status": journey.status, "priority": journey.priority, "reentry": journey.reentry,
            "reentry_days": journey.reentry_days, "live_version_id": journey.live_version_id,
            "versions": [{"id": v.id, "version": v.version, "status": v.status, "graph": v.graph,
                          "published_at": v.published_at} for v in versions],
            "created_at": journey.created_at, "updated_at": journey.updated_at}


@router.post("/journeys", status_code=201, operation_id="createJourney")
def create(body: JourneyIn, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    """A journey with its first draft (validated: shape, links, reachability, no loop without a wait)."""
    journey = service.create(session, code=body.code, name=body.name, graph=body.graph, actor=principal.actor,
                             description=body.description, priority=body.priority, reentry=body.reentry,
                             reentry_days=body.reentry_days)
    return _read(session, journey)


@router.get("/journeys", operation_id="listJourneys")
def list_journeys(session: SessionDep, principal: Actor(Perm.journeys_manage)) -> list[dict]:
    return [_read(session, j) for j in session.scalars(select(Journey).order_by(Journey.code))]


@router.get("/journeys/{journey_code}", operation_id="getJourney")
def get(journey_code: Code, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    return _read(session, service.get(session, journey_code))


@router.put("/journeys/{journey_code}/draft", operation_id="editJourneyDraft")
def edit(journey_code: Code, body: GraphIn, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    """Replace the draft (a published version never changes; editing after a publish opens a new draft)."""
    service.edit(session, code=journey_code, graph=body.graph, actor=principal.actor)
    return _read(session, service.get(session, journey_code))


@router.post("/journeys/{journey_code}/publish", operation_id="publishJourney")
def publish(journey_code: Code, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    service.publish(session, code=journey_code, actor=principal.actor)
    return _read(session, service.get(session, journey_code))


@router.post("/journeys/{journey_code}/status", operation_id="setJourneyStatus")
def set_status(journey_code: Code, body: StatusIn, session: SessionDep,
               principal: Actor(Perm.journeys_manage)) -> dict:
    return _read(session, service.set_status(session, code=journey_code, status=body.status, actor=principal.actor))


@router.get("/journeys/{journey_code}/report", operation_id="getJourneyReport")
def report(journey_code: Code, session: SessionDep, principal: Actor(Perm.journeys_manage),
           attribution_days: Annotated[int, Query(ge=1, le=90)] = 7) -> dict:
    """Per journey, step and variant: entered, waiting, sent, suppressed by reason, delivered, opened, clicked,
    converted within `attribution_days` after the touch (control: after entering), revenue; and treated vs
    control (lift, 95 % interval, two-proportion z-test p-value). See journeys.reporting."""
    from orchard.journeys import reporting

    return reporting.report(session, service.get(session, journey_code), attribution_days=attribution_days)


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_id: Annotated[int, Field(ge=1, le=2**62)]
    #: The version to try (default: the newest, draft or not).
    version: Annotated[int, Field(ge=1, le=100_000)] | None = None


@router.post("/journeys/{journey_code}/dry-run", operation_id="dryRunJourney")
def dry_run(journey_code: Code, body: DryRunIn, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    """The path a chosen member would take through a version now, step by step, writing nothing: would
    they enter (and which condition is false if not), waits, branches, their split variant, each send's
    verdict (sent, deferred by quiet hours, suppressed and why) with the rendered text, and the rest."""
    from orchard.journeys import dryrun

    member = scope.get_visible(session, principal, body.member_id)
    return dryrun.dry_run(session, service.get(session, journey_code), member, version=body.version)


@router.get("/members/{member_id}/journeys", operation_id="explainMemberJourneys")
def explain(member_id: MemberId, session: SessionDep, principal: Actor(Perm.members_read),
            journey: Annotated[str | None, Query(max_length=64)] = None) -> dict:
    """Why a member entered or not, which path they took, and every message decided for them with
    its status and reason (suppressed: weekly cap, no consent, quiet hours …)."""
    member = scope.get_visible(session, principal, member_id)
    journey_id = service.get(session, journey).id if journey else None
    return {"member_id": member.id, "decisions": engine.explain(session, member_id=member.id, journey_id=journey_id),
            "messages": outbox.explain(session, member_id=member.id)}


# -- templates, messages, policy -------------------------------------------------------------------

class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    channel: Literal["sms", "wechat_template", "wechat_subscribe", "app_push", "email", "webhook", "wecom", "log"]
    purpose: Literal["marketing", "service"]
    body: Annotated[str, Field(min_length=1, max_length=5000)]
    subject: Annotated[str, Field(max_length=200)] | None = None
    provider_template: Annotated[str, Field(max_length=128)] | None = None
    sign_name: Annotated[str, Field(max_length=32)] | None = None
    variables: dict[str, str] = {}
    publish: bool = False


def _template(t: MessageTemplate) -> dict[str, Any]:
    return {"code": t.code, "name": t.name, "channel": t.channel, "purpose": t.purpose, "body": t.body,
            "subject": t.subject, "provider_template": t.provider_template, "sign_name": t.sign_name,
            "variables": t.variables, "status": t.status, "published_at": t.published_at}


@router.post("/message-templates", status_code=201, operation_id="createMessageTemplate")
def create_template(body: TemplateIn, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    """With `publish`, the template is checked at once: unknown variables, SMS signature and opt-out."""
    t = templates.create(session, actor=principal.actor, **body.model_dump())
    return _template(t)


@router.get("/message-templates", operation_id="listMessageTemplates")
def list_templates(session: SessionDep, principal: Actor(Perm.journeys_manage)) -> list[dict]:
    return [_template(t) for t in session.scalars(select(MessageTemplate).order_by(MessageTemplate.code))]


@router.post("/message-templates/{template_code}/publish", operation_id="publishMessageTemplate")
def publish_template(template_code: Code, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    return _template(templates.publish_template(session, code=template_code, actor=principal.actor))


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_id: Annotated[int, Field(ge=1, le=2**62)]


@router.post("/message-templates/{template_code}/preview", operation_id="previewMessageTemplate")
def preview_template(template_code: Code, body: PreviewIn, session: SessionDep,
                     principal: Actor(Perm.journeys_manage)) -> dict:
    """The template rendered for a chosen member (subject, body, provider variables)."""
    member = scope.get_visible(session, principal, body.member_id)
    return outbox.preview(session, template_code=template_code, member=member)


@router.get("/messages", operation_id="listMessages")
def list_messages(session: SessionDep, principal: Actor(Perm.journeys_manage),
                  status: Literal["queued", "sending", "sent", "delivered", "failed", "dead", "suppressed",
                                  "cancelled"] | None = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict]:
    """Messages newest first; `status=dead` (and `failed`) is the dead-letter list."""
    stmt = select(Message).order_by(Message.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(Message.status == status)
    return [{"id": m.id, "key": m.key, "member_id": m.member_id, "channel": m.channel, "purpose": m.purpose,
             "status": m.status, "reason": m.reason, "detail": m.detail, "attempts": m.attempts,
             "created_at": m.created_at, "sent_at": m.sent_at} for m in session.scalars(stmt)]


@router.post("/messages/{message_id}/resend", operation_id="resendMessage")
def resend(message_id: Annotated[int, Path(ge=1, le=2**62)], session: SessionDep,
           principal: Actor(Perm.journeys_manage)) -> dict:
    m = outbox.resend(session, message_id=message_id, actor=principal.actor)
    return {"id": m.id, "status": m.status}


@router.get("/contact-policy", operation_id="getContactPolicy")
def get_policy(session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    return respect.get_policy(session).model_dump(mode="json")


@router.put("/contact-policy", operation_id="setContactPolicy")
def set_policy(body: respect.Policy, session: SessionDep, principal: Actor(Perm.journeys_manage)) -> dict:
    """Caps, quiet hours, exclusions (audited)."""
    return respect.set_policy(session, body, actor=principal.actor).model_dump(mode="json")


class ReplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone: Annotated[str, Field(min_length=3, max_length=40)]
    text: Annotated[str, Field(max_length=500)]
    provider: Annotated[str, Field(max_length=32)] | None = None


@router.post("/channels/sms/replies", operation_id="receiveSmsReply")
def sms_reply(body: ReplyIn, session: SessionDep, principal: Actor(Perm.events_ingest)) -> dict:
    """An inbound SMS reply (forwarded by the SMS gateway integration): T / TD / R / 退订 withdraw SMS
    marketing consent at once for every member with that number (audited, with the reply as source)."""
    from orchard.messaging import replies

    return replies.handle_reply(session, phone=body.phone, text=body.text, provider=body.provider,
                                actor=principal.actor)


# -- staff tasks, subscribe grants -----------------------------------------------------------------

class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["done", "failed"] = "done"
    outcome: Annotated[str, Field(max_length=2000)] | None = None


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: Annotated[str, Field(min_length=1, max_length=128, description="the subscribe template id")]
    count: Annotated[int, Field(ge=1, le=100)] = 1


def _task(t) -> dict[str, Any]:
    return {"id": t.id, "member_id": t.member_id, "store_id": t.store_id, "kind": t.kind, "title": t.title,
            "body": t.body, "status": t.status, "due_at": t.due_at, "outcome": t.outcome, "done_by": t.done_by,
            "done_at": t.done_at, "journey_id": t.journey_id}


@router.get("/staff-tasks", operation_id="listStaffTasks")
def list_tasks(session: SessionDep, principal: Actor(Perm.members_notes),
               status: Literal["open", "done", "failed", "cancelled"] | None = "open",
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict]:
    """Call-backs and WeCom tasks for the caller's stores (all stores for HQ), soonest due first."""
    from orchard.journeys import tasks

    return [_task(t) for t in tasks.listing(session, principal, status=status, limit=limit)]


@router.post("/staff-tasks/{task_id}/close", operation_id="closeStaffTask")
def close_task(task_id: Annotated[int, Path(ge=1, le=2**62)], body: CloseIn, session: SessionDep,
               principal: Actor(Perm.members_notes)) -> dict:
    """Done (or could not be done), with what came of it; audited."""
    from orchard.journeys import tasks

    return _task(tasks.close(session, principal, task_id=task_id, status=body.status, outcome=body.outcome))


@router.post("/members/{member_id}/subscribe-grants", operation_id="addSubscribeGrant")
def add_grant(member_id: MemberId, body: GrantIn, session: SessionDep, principal: Actor(Perm.members_consent)) -> dict:
    """The mini-program reports that the member accepted a subscribe message (one grant = one send)."""
    member = scope.get_visible(session, principal, member_id)
    return {"member_id": member.id, "template": body.template,
            "remaining": outbox.grant(session, member_id=member.id, template=body.template, count=body.count)}
