"""Tracked short links (C3): `{{ link("https://…") }}` in a template becomes `/t/{code}`, which
records the click on the message and redirects.

Codes are derived from the message's key and the URL (a hash), so rendering the same decision again
gives the same links, and the rows are written with the message in its transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from urllib.parse import urlparse

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from orchard.config import get_settings
from orchard.deps import SessionDep
from orchard.errors import InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.messaging.models import Message, ShortLink

router = APIRouter(tags=["tracking"])
_ALPHABET = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"


def code_for(key: str, url: str) -> str:
    n = int(hashlib.sha256(f"{key}\x00{url}".encode()).hexdigest()[:16], 16)
    out = ""
    for _ in range(10):
        n, r = divmod(n, len(_ALPHABET))
        out += _ALPHABET[r]
    return out


class Collector:
    """The `link` function of one message's template context; remembers what it shortened."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.urls: dict[str, str] = {}

    def __call__(self, url: str) -> str:
        parsed = urlparse(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInput.field("link", f"not an http(s) URL: {url!r}")
        code = code_for(self.key, url)
        self.urls[code] = url
        return f"{get_settings().public_base_url.rstrip('/')}/t/{code}"


def save(session: Session, collector: Callable[[str], str], message: Message) -> None:
    if not isinstance(collector, Collector):
        return
    for code, url in collector.urls.items():
        if session.get(ShortLink, code) is None:
            session.add(ShortLink(code=code, url=url, message_id=message.id, member_id=message.member_id, clicks=0,
                                  created_at=utcnow()))
    session.flush()


@router.get("/t/{code}", include_in_schema=False)
def follow(code: str = Path(min_length=1, max_length=16), session: SessionDep = None) -> RedirectResponse:
    link = session.get(ShortLink, code, with_for_update=True)
    if link is None:
        raise NotFound("link not found", code="link.not_found")
    now = utcnow()
    link.clicks += 1
    link.first_click_at = link.first_click_at or now
    if link.message_id is not None:  # the first click, and proof that the message arrived
        from orchard.messaging import receipts

        receipts.mark(session, [receipts.Change(link.message_id, "clicked", now)])
    return RedirectResponse(link.url, status_code=302)
