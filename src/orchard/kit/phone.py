"""Phone numbers: E.164 normalisation with `phonenumbers` (default region CN) and masking.

Masking keeps the first 3 and last 4 digits of the national number (`138****1234`), the form
Chinese staff expect; store-scoped staff only ever see this form.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

from orchard.config import get_settings


class InvalidPhone(ValueError):
    pass


#: A mainland mobile number as written in most files: 11 digits, optionally after +86.
_CN_MOBILE_SHAPE = re.compile(r"(?:\+86)?(1\d{10})")
#: The mobile ranges libphonenumber knows for CN; a number matching them is valid and its E.164
#: form is +86 and the digits, so the common case skips the full parser (~100 µs a number).
_CN_MOBILE = re.compile(phonenumbers.PhoneMetadata.metadata_for_region("CN").mobile.national_number_pattern)


@lru_cache(maxsize=262_144)
def normalize_phone(raw: str, region: str | None = None) -> str:
    """Return the E.164 form of `raw`, or raise InvalidPhone."""
    text = (raw or "").strip()
    if not text or len(text) > 40:
        raise InvalidPhone("empty or too long phone number")
    shape = _CN_MOBILE_SHAPE.fullmatch(text)
    if shape and (text[0] == "+" or (region or get_settings().default_phone_region) == "CN"):
        digits = shape.group(1)
        if _CN_MOBILE.fullmatch(digits):
            return "+86" + digits
    try:
        num = phonenumbers.parse(text, region or get_settings().default_phone_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(num):
        raise InvalidPhone("not a valid phone number")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(e164: str | None) -> str | None:
    """`+8613812341234` → `138****1234`; other countries keep their +code prefix."""
    if not e164:
        return e164
    try:
        num = phonenumbers.parse(e164, None)
        national = str(num.national_number)
        prefix = "" if num.country_code == 86 else f"+{num.country_code} "
    except phonenumbers.NumberParseException:
        national, prefix = re.sub(r"\D", "", e164), ""
    if len(national) <= 7:
        return prefix + national[:1] + "*" * max(len(national) - 2, 1) + national[-1:]
    return prefix + national[:3] + "*" * (len(national) - 7) + national[-4:]
