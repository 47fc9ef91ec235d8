"""Identity kinds and their normalisation.

Built-in kinds get real validation (phones → E.164 via `phonenumbers`, e-mails lower-cased and
checked); any other lower-case snake_case kind is accepted (the list is extensible) and its value is
trimmed. The priority order decides which member an event lands on when its keys disagree.
"""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

from orchard.kit.phone import InvalidPhone, normalize_phone

BUILTIN_KINDS = ("external_id", "wechat_unionid", "phone", "card_no", "email", "wechat_openid", "anonymous_id")
#: Lower index wins when two members are matched by one call.
PRIORITY = {kind: i for i, kind in enumerate(BUILTIN_KINDS)}
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


class InvalidIdentity(ValueError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def normalize(kind: str, value: object) -> tuple[str, str]:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise InvalidIdentity(str(kind), "identity kind must be lower-case snake_case, 2–32 characters")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidIdentity(kind, "identity value must be a string")
    text = str(value).strip()
    if not text:
        raise InvalidIdentity(kind, "identity value is empty")
    if len(text) > 255:
        raise InvalidIdentity(kind, "identity value is longer than 255 characters")
    if kind == "phone":
        try:
            return kind, normalize_phone(text)
        except InvalidPhone as exc:
            raise InvalidIdentity(kind, str(exc)) from None
    if kind == "email":
        try:
            return kind, validate_email(text, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise InvalidIdentity(kind, str(exc)) from None
    return kind, text


def priority(kind: str) -> int:
    return PRIORITY.get(kind, len(BUILTIN_KINDS) - 1)
