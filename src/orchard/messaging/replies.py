"""Inbound SMS replies: an opt-out (T, TD, R, 退订 …) withdraws SMS marketing consent at once, for
every member holding that number, with the reply recorded as the consent change's source."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.channels.sms import is_opt_out_reply
from orchard.errors import InvalidInput
from orchard.identity.models import Identity
from orchard.kit.phone import normalize_phone
from orchard.members.consent import set_consent


def handle_reply(session: Session, *, phone: str, text: str, provider: str | None, actor: str) -> dict:
    try:
        number = normalize_phone(phone)
    except Exception:  # noqa: BLE001 — phonenumbers raises several kinds; all mean "not a phone"
        raise InvalidInput.field("phone", "not a phone number") from None
    opt_out = is_opt_out_reply(text)
    members = list(session.scalars(select(Identity.member_id).where(Identity.kind == "phone",
                                                                    Identity.value == number)))
    if opt_out:
        for member_id in members:
            set_consent(session, member_id=member_id, channel="sms", purpose="marketing", granted=False,
                        source=f"sms_reply:{provider or 'unknown'}", actor=actor)
    return {"phone": number, "opt_out": opt_out, "members": members}
