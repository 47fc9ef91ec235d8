"""Cursor pagination for public lists: `limit` (1–200) and an opaque `cursor`; the response carries
`next_cursor` (null on the last page). Ordered by id, so pages are stable while rows are added."""

from __future__ import annotations

import base64
import binascii

from orchard.errors import InvalidInput


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode()).decode()
        kind, _, value = text.partition(":")
        if kind != "id":
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput.field("cursor", "not a cursor returned by this API") from None
