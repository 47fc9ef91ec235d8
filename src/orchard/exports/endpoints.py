"""Export routes: validate and audit in the request's transaction, then stream the file from the
export's own session (the request's session is closed by the time the body is sent)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from orchard.auth.roles import Perm
from orchard.deps import Actor, SessionDep
from orchard.exports import columns, service
from orchard.kit import i18n, tabular

router = APIRouter(prefix="/exports", tags=["exports"])

Format = Annotated[Literal["csv", "xlsx"], Query(alias="format", description="csv: UTF-8 with BOM; xlsx: Excel")]
Lang = Annotated[Literal["zh", "en"] | None, Query(
    description="header and file-name language; without it, Accept-Language decides (Chinese by default)")]
Code = Annotated[str | None, Query(max_length=64, description="store or region code")]
_FILE = {200: {"description": "The file, streamed (chunked); `Content-Disposition` names it.",
               "content": {"text/csv": {}, tabular.MEDIA_TYPES["xlsx"]: {}}}}


def _fields(kind: str) -> Any:
    cat = columns.CATALOGS[kind]
    return Query(max_length=2000, description=f"comma-separated, in output order; default: "
                 f"{', '.join(c.key for c in cat if c.default)}. All: {columns.keys(cat)}")


def _english(request: Request, lang: str | None) -> bool:
    return i18n.wants_english(request.headers.get("accept-language")) if lang is None else lang == "en"


class ExportResponse(StreamingResponse):
    """A StreamingResponse that always closes its (sync) body generator. Starlette stops iterating
    when the client goes away but leaves the generator suspended, so the export's session and
    database connection would wait for the garbage collector; closing it runs its `finally` now."""

    def __init__(self, chunks: Iterator[bytes], status_code: int = 200, headers: dict[str, str] | None = None,
                 media_type: str | None = None) -> None:  # FastAPI reads the default status from here
        super().__init__(chunks, status_code=status_code, headers=headers, media_type=media_type)
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # also when the stream was cancelled by a disconnect
                await anyio.to_thread.run_sync(self._chunks.close)


def _download(plan: service.Plan) -> ExportResponse:
    """`filename*` (RFC 6266/5987) carries the Chinese name; `filename` an ASCII one for old clients."""
    day = service.today()
    disposition = (f"attachment; filename=\"{plan.filename(day, english=True)}\"; "
                   f"filename*=UTF-8''{quote(plan.filename(day), safe='')}")
    return ExportResponse(service.stream(plan), media_type=plan.media_type,
                          headers={"Content-Disposition": disposition, "Cache-Control": "no-store"})


@router.get("/members", operation_id="exportMembers", response_class=ExportResponse, responses=_FILE)
def export_members(
    request: Request, session: SessionDep, principal: Actor(Perm.members_read), fmt: Format = "csv",
    fields: Annotated[str | None, _fields("members")] = None, lang: Lang = None,
    phone: Annotated[str | None, Query(max_length=40, description="any format; normalised to E.164")] = None,
    identity: Annotated[str | None, Query(max_length=300, description="kind:value, e.g. card_no:A001")] = None,
    store: Code = None, tag: Annotated[str | None, Query(max_length=64)] = None,
    consent: Annotated[str | None, Query(max_length=40, description="channel:purpose granted, e.g. sms:marketing")
                       ] = None,
    joined_from: dt.datetime | None = None, joined_to: dt.datetime | None = None,
    q: Annotated[str | None, Query(max_length=100, description="name contains")] = None,
    segment: Annotated[str | None, Query(max_length=64, description="current members of a saved segment")] = None,
) -> ExportResponse:
    """Members visible to the caller (same filters as `listMembers`), identities masked as in the API."""
    filters = service.MemberFilters(phone=phone, identity=identity, store=store, tag=tag, consent=consent,
                                    joined_from=joined_from, joined_to=joined_to, q=q, segment=segment)
    return _download(service.plan_members(session, principal=principal, fmt=fmt, fields=fields,
                                          english=_english(request, lang), filters=filters))


@router.get("/orders", operation_id="exportOrders", response_class=ExportResponse, responses=_FILE)
def export_orders(
    request: Request, session: SessionDep, principal: Actor(Perm.events_read), fmt: Format = "csv",
    fields: Annotated[str | None, _fields("orders")] = None, lang: Lang = None,
    paid_from: dt.datetime | None = None, paid_to: dt.datetime | None = None, store: Code = None,
) -> ExportResponse:
    """Orders of members visible to the caller: one row per order line when a line field is chosen
    (the default), else one row per order. `store` is where the order was placed."""
    filters = service.OrderFilters(paid_from=paid_from, paid_to=paid_to, store=store)
    return _download(service.plan_orders(session, principal=principal, fmt=fmt, fields=fields,
                                         english=_english(request, lang), filters=filters))


@router.get("/events", operation_id="exportEvents", response_class=ExportResponse, responses=_FILE)
def export_events(
    request: Request, session: SessionDep, principal: Actor(Perm.events_read), fmt: Format = "csv",
    fields: Annotated[str | None, _fields("events")] = None, lang: Lang = None,
    name: Annotated[str | None, Query(max_length=64, description="event name, e.g. store_visit")] = None,
    occurred_from: dt.datetime | None = None, occurred_to: dt.datetime | None = None, store: Code = None,
) -> ExportResponse:
    """Behaviour events of members visible to the caller (unlinked anonymous events: unscoped callers only)."""
    filters = service.EventFilters(name=name, occurred_from=occurred_from, occurred_to=occurred_to, store=store)
    return _download(service.plan_events(session, principal=principal, fmt=fmt, fields=fields,
                                         english=_english(request, lang), filters=filters))
