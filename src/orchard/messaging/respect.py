"""The respect rules (J3): who may be contacted, how often, when — decided per message and recorded.

Checked when a message is decided and again just before it is sent (consent may be withdrawn, a
member may ask to be left alone, the clock may pass into quiet hours meanwhile):

* the member is live (not merged), not excluded by tag (blacklist, complained);
* marketing: not "reduce disturbance"; consent granted for the channel and purpose; service
  messages: consent not explicitly withdrawn;
* a recipient exists for the channel (phone for SMS, openid for WeChat, …); a mini-program
  subscribe message needs a grant left for its template (each user grant allows one send);
* marketing caps: at most N marketing messages per member per D days, globally and per channel;
  an SMS number gets at most `sms_per_number_per_day` messages of any purpose;
* quiet hours (member's zone — the tenant's): marketing is sent only between `start` and `end`;
  a decision outside them is queued for the next `start`, never sent early or late.

Every "no" has a stable reason code, stored on the message row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchard.audit.service import record
from orchard.db import one_of
from orchard.identity.models import Identity
from orchard.journeys.models import SubscribeGrant
from orchard.kit.clock import tenant_zone, utcnow
from orchard.members.models import Consent, Member, MemberTag, Tag
from orchard.messaging.models import ContactPolicy, Message

#: The consent channel a message channel needs.
CONSENT_CHANNEL = {"sms": "sms", "wechat_template": "wechat", "wechat_subscribe": "wechat", "app_push": "app_push",
                   "email": "email", "wecom": "wecom"}
#: The identity kind that addresses a member on a channel.
RECIPIENT_KIND = {"sms": "phone", "email": "email", "wechat_template": "wechat_openid",
                  "wechat_subscribe": "wechat_mp_openid", "app_push": "push_registration_id"}
#: Messages that count toward caps (decided and not withdrawn).
COUNTED = ("queued", "sending", "sent", "delivered")


class Cap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max: int = Field(ge=0, le=1000)
    days: int = Field(ge=1, le=365)


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: dt.time = dt.time(8, 0)
    end: dt.time = dt.time(21, 0)

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: dt.time) -> dt.time:
        if value.tzinfo is not None:
            raise ValueError("a local time of day in the tenant's zone, without an offset (e.g. 08:00)")
        return value

    @field_validator("end")
    @classmethod
    def _order(cls, end: dt.time, info) -> dt.time:
        start = info.data.get("start")
        if start is not None and end <= start:
            raise ValueError("end must be after start (the allowed window is within one day)")
        return end


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Marketing messages per member: "all" channels together, and per channel.
    caps: dict[str, Cap] = {"all": Cap(max=1, days=7)}
    quiet_hours: QuietHours = QuietHours()
    #: Members carrying one of these tags get no marketing at all.
    exclude_tags: list[str] = ["黑名单", "投诉"]
    #: Members touched (any marketing message) in the last N days get no new marketing (0: off).
    exclude_touched_days: int = Field(0, ge=0, le=365)
    sms_per_number_per_day: int = Field(5, ge=1, le=100)

    @field_validator("caps")
    @classmethod
    def _cap_keys(cls, caps: dict[str, Cap]) -> dict[str, Cap]:
        allowed = {"all", *CONSENT_CHANNEL, "webhook", "log"}
        unknown = set(caps) - allowed
        if unknown:
            raise ValueError("unknown channel(s) " + ", ".join(sorted(unknown)))
        return caps


def get_policy(session: Session) -> Policy:
    row = session.get(ContactPolicy, 1)
    return Policy.model_validate(row.policy) if row else Policy()


def set_policy(session: Session, policy: Policy, *, actor: str) -> Policy:
    row = session.get(ContactPolicy, 1)
    data = policy.model_dump(mode="json")
    before = row.policy if row else None
    if row is None:
        session.add(ContactPolicy(id=1, policy=data, updated_by=actor, updated_at=utcnow()))
    else:
        row.policy, row.updated_by, row.updated_at = data, actor, utcnow()
    record(session, actor=actor, action="contact_policy.set", entity="contact_policy", entity_id=1,
           data={"before": before, "after": data})
    session.flush()
    return policy


@dataclass(frozen=True)
class Verdict:
    """`ok` with the recipient, or a reason code; `not_before` when quiet hours defer the send."""

    ok: bool
    reason: str | None = None
    detail: str | None = None
    recipient: str | None = None
    not_before: dt.datetime | None = None


def quiet_until(policy: Policy, now: dt.datetime) -> dt.datetime | None:
    """None when marketing may go now; else the next moment it may (the window's next start)."""
    zone = tenant_zone()
    local = now.astimezone(zone)
    start, end = policy.quiet_hours.start, policy.quiet_hours.end
    if start <= local.time() < end:
        return None
    day = local.date() if local.time() < start else local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, start, zone).astimezone(dt.UTC)


def recipient_for(session: Session, member_id: int, channel: str) -> str | None:
    if channel in ("log", "wecom", "webhook"):
        return f"member:{member_id}"
    kind = RECIPIENT_KIND[channel]
    return session.scalar(select(Identity.value).where(Identity.member_id == member_id, Identity.kind == kind)
                          .order_by(Identity.id.desc()).limit(1))


def check(session: Session, *, member: Member, channel: str, purpose: str, policy: Policy, now: dt.datetime,
          at_send: bool = False, exclude_message_id: int | None = None, grant: str | None = None) -> Verdict:
    """Every rule for one message to one member (see the module docstring)."""
    if member.status != "active":
        return Verdict(False, "member.inactive", "the member was merged into another")
    marketing = purpose == "marketing"
    if marketing and policy.exclude_tags:
        excluded = session.scalar(select(Tag.name).join(MemberTag, MemberTag.tag_id == Tag.id).where(
            MemberTag.member_id == member.id, Tag.name.in_(policy.exclude_tags)).limit(1))
        if excluded:
            return Verdict(False, "excluded.tag", f"the member carries the tag {excluded}")
    if marketing and member.reduce_disturbance:
        return Verdict(False, "reduce_disturbance", "the member asked to be contacted less (减少打扰)")
    consent_channel = CONSENT_CHANNEL.get(channel)
    if consent_channel is not None:
        row = session.get(Consent, (member.id, consent_channel, purpose))
        if marketing and (row is None or not row.granted):
            return Verdict(False, f"consent.{consent_channel}",
                           f"no {consent_channel} consent for {purpose}" + (" at send time" if at_send else ""))
        if not marketing and row is not None and not row.granted:
            return Verdict(False, f"consent.{consent_channel}", f"{consent_channel} {purpose} consent withdrawn")
    recipient = recipient_for(session, member.id, channel)
    if channel == "wechat_subscribe" and grant is not None and not at_send:
        left = session.scalar(select(SubscribeGrant.remaining).where(
            SubscribeGrant.member_id == member.id, SubscribeGrant.template == grant))
        if not left:
            return Verdict(False, "no_grant", f"no subscribe grant left for template {grant}")
    if recipient is None:
        return Verdict(False, "no_recipient", f"the member has no {RECIPIENT_KIND.get(channel)} for {channel}")
    if channel == "sms":
        day_ago = now - dt.timedelta(days=1)
        sent = _count(session, Message.channel == "sms", Message.recipient == recipient,
                      Message.created_at > day_ago, exclude=exclude_message_id)
        if sent >= policy.sms_per_number_per_day:
            return Verdict(False, "cap.number", f"{sent} SMS to this number in 24 h")
    if marketing and not at_send:
        for scope, cap in policy.caps.items():
            if scope != "all" and scope != channel:
                continue
            window = now - dt.timedelta(days=cap.days)
            conds = [Message.member_id == member.id, Message.purpose == "marketing", Message.created_at > window]
            if scope != "all":
                conds.append(Message.channel == channel)
            if _count(session, *conds, exclude=exclude_message_id) >= cap.max:
                return Verdict(False, f"cap.{scope}", f"{cap.max} marketing message(s) per {cap.days} days reached")
        if policy.exclude_touched_days:
            window = now - dt.timedelta(days=policy.exclude_touched_days)
            if _count(session, Message.member_id == member.id, Message.purpose == "marketing",
                      Message.created_at > window, exclude=exclude_message_id):
                return Verdict(False, "excluded.touched", f"touched in the last {policy.exclude_touched_days} days")
    not_before = quiet_until(policy, now) if marketing else None
    return Verdict(True, recipient=recipient, not_before=not_before)


def check_at_send(session: Session, messages: Sequence[Message], *, policy: Policy,
                  now: dt.datetime) -> dict[int, Verdict]:
    """`check(…, at_send=True)` for a batch of claimed messages, by message id, in five set-based reads
    instead of up to six queries per message (the outbox re-checks every batch before sending it).

    The rules and their order, reason codes and details are `check`'s; keep the two in step (a test
    compares them case by case). One difference, deliberate: the SMS per-number count treats the batch
    as if sent one after another in id order — a batch message counts the messages to its number
    outside the batch plus the earlier batch messages to it that pass the other rules — where a
    message-by-message check would also count the later ones (still `sending`), suppressing the
    oldest instead of the newest when a number is over its cap."""
    if not messages:
        return {}
    member_ids = {m.member_id for m in messages}
    members = {mid: (status, reduce) for mid, status, reduce in session.execute(
        select(Member.id, Member.status, Member.reduce_disturbance).where(one_of(session, Member.id, member_ids)))}
    marketing_ids = {m.member_id for m in messages if m.purpose == "marketing"}
    excluded: dict[int, str] = {}
    if marketing_ids and policy.exclude_tags:
        excluded = dict(session.execute(
            select(MemberTag.member_id, func.min(Tag.name)).join(Tag, MemberTag.tag_id == Tag.id)
            .where(one_of(session, MemberTag.member_id, marketing_ids), Tag.name.in_(policy.exclude_tags))
            .group_by(MemberTag.member_id)).all())
    consent_channels = {CONSENT_CHANNEL[m.channel] for m in messages if m.channel in CONSENT_CHANNEL}
    consents: dict[tuple[int, str, str], bool] = {}
    if consent_channels:
        consents = {(mid, ch, purpose): granted for mid, ch, purpose, granted in session.execute(
            select(Consent.member_id, Consent.channel, Consent.purpose, Consent.granted).where(
                one_of(session, Consent.member_id, member_ids), Consent.channel.in_(consent_channels)))}
    kinds = {RECIPIENT_KIND[m.channel] for m in messages if m.channel in RECIPIENT_KIND}
    addresses: dict[tuple[int, str], str] = {}
    if kinds:
        for mid, kind, value in session.execute(  # ascending ids: the newest identity of a kind wins
                select(Identity.member_id, Identity.kind, Identity.value).where(
                    one_of(session, Identity.member_id, member_ids), Identity.kind.in_(kinds)).order_by(Identity.id)):
            addresses[(mid, kind)] = value
    out: dict[int, Verdict] = {}
    numbers: dict[int, str] = {}  # sms messages that passed every other rule → their number
    for m in sorted(messages, key=lambda m: m.id):
        verdict, recipient = _first_refusal(m, members.get(m.member_id), excluded, consents, addresses)
        if verdict is not None:
            out[m.id] = verdict
        elif m.channel == "sms":
            numbers[m.id] = recipient
        else:
            out[m.id] = Verdict(True, recipient=recipient)
    if numbers:
        day_ago = now - dt.timedelta(days=1)
        sent = dict(session.execute(
            select(Message.recipient, func.count()).where(
                Message.status.in_(COUNTED), Message.channel == "sms", Message.created_at > day_ago,
                one_of(session, Message.recipient, set(numbers.values())),
                ~one_of(session, Message.id, [m.id for m in messages]))
            .group_by(Message.recipient)).all())
        for m in sorted((m for m in messages if m.id in numbers), key=lambda m: m.id):
            number = numbers[m.id]
            count = sent.get(number, 0)
            if count >= policy.sms_per_number_per_day:
                out[m.id] = Verdict(False, "cap.number", f"{count} SMS to this number in 24 h")
                continue
            out[m.id] = Verdict(True, recipient=number)
            if m.created_at > day_ago:
                sent[number] = count + 1
    quiet = quiet_until(policy, now)
    if quiet is not None:
        for m in messages:
            if m.purpose == "marketing" and out[m.id].ok:
                out[m.id] = Verdict(True, recipient=out[m.id].recipient, not_before=quiet)
    return out


def _first_refusal(m: Message, member: tuple[str, bool] | None, excluded: dict[int, str],
                   consents: dict[tuple[int, str, str], bool],
                   addresses: dict[tuple[int, str], str]) -> tuple[Verdict | None, str | None]:
    """`check`'s rules up to the recipient, from facts read for the whole batch: (refusal, None) or
    (None, recipient)."""
    if member is None or member[0] != "active":
        return Verdict(False, "member.inactive", "the member was merged into another"), None
    marketing = m.purpose == "marketing"
    if marketing and m.member_id in excluded:
        return Verdict(False, "excluded.tag", f"the member carries the tag {excluded[m.member_id]}"), None
    if marketing and member[1]:
        return Verdict(False, "reduce_disturbance", "the member asked to be contacted less (减少打扰)"), None
    consent_channel = CONSENT_CHANNEL.get(m.channel)
    if consent_channel is not None:
        granted = consents.get((m.member_id, consent_channel, m.purpose))
        if marketing and not granted:
            return Verdict(False, f"consent.{consent_channel}",
                           f"no {consent_channel} consent for {m.purpose} at send time"), None
        if not marketing and granted is False:
            return Verdict(False, f"consent.{consent_channel}",
                           f"{consent_channel} {m.purpose} consent withdrawn"), None
    if m.channel in ("log", "wecom", "webhook"):
        return None, f"member:{m.member_id}"
    recipient = addresses.get((m.member_id, RECIPIENT_KIND[m.channel]))
    if recipient is None:
        return Verdict(False, "no_recipient",
                       f"the member has no {RECIPIENT_KIND.get(m.channel)} for {m.channel}"), None
    return None, recipient


def _count(session: Session, *conds: Any, exclude: int | None = None) -> int:
    stmt = select(func.count()).select_from(Message).where(Message.status.in_(COUNTED), *conds)
    if exclude is not None:
        stmt = stmt.where(Message.id != exclude)
    return session.scalar(stmt) or 0
