"""PostgreSQL fast path for the behaviour events of a batch: set-based SQL instead of one savepoint,
identity resolution and insert per item.

It must end in exactly the state, and answer exactly the per-item results, that the per-item path
(`ingest._ingest_batch` → `ingest.ingest`) would, so it only takes the events whose outcome is
unambiguous and decided by the database as it was when the batch began, and hands every other item
back to the per-item path (which then runs, in batch order, after the fast path's insert):

1. only new events (not already received: those are replayed from the batch's look-up) whose
   (source, external_id) occurs once in the batch (a repeat is a replay or a conflict that depends on
   which occurrence is written first);
2. every value storable as is (no NUL, no lone surrogate, no NaN in properties), the time not too far
   ahead, the store code a store;
3. no earning work: the name is not the event of an active event-earning rule or event task, nor the
   event pending points wait for (`points_order_pending_event`) — such items run the earning hooks on
   the per-item path;
4. the member is decided without writing anything: a member id (live or merged into a live one, and
   visible to the caller) whose given identity keys all already belong to it; or identity keys that
   all belong to one member already; or only an anonymous id that no member has and that no other
   item of the batch could link (it appears in no item with other keys or a member id). Anything that
   would create a member, link a key or record a merge candidate goes back;
5. the events are inserted with one multi-row `INSERT … ON CONFLICT (source, external_id) DO NOTHING
   RETURNING`, rows sorted by (source, external_id) so that concurrent batches take the unique-index
   locks in one order; a row a concurrent writer inserted first is not returned, and its item goes
   back to the per-item path, which re-reads it as a replay or a conflict;
6. aggregate changes are staged in the batch's `aggregates.deferred` collection (applied once per
   member, in member-id order, at the batch's end), and the caller marks the members dirty once.

Event ids are drawn in (source, external_id) order for the fast items, before the per-item path's
items; nothing depends on ids following batch order. tests/events/test_batch_equivalence.py holds
the two paths equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchard.auth.service import Principal
from orchard.config import get_settings
from orchard.errors import OrchardError
from orchard.events import aggregates
from orchard.events.schemas import EventIn, Outcome
from orchard.identity.normalize import InvalidIdentity, normalize
from orchard.identity.resolve import owners_of
from orchard.kit.clock import as_utc, utcnow
from orchard.loyalty import earning

_INSERT = text(
    "INSERT INTO events (source, external_id, body_hash, member_id, anonymous_id, name, store_id, occurred_at, "
    "received_at, properties) "
    "SELECT s, e, h, m, a, n, st, t, :now, CAST(p AS jsonb) FROM unnest(CAST(:s AS text[]), CAST(:e AS text[]), "
    "CAST(:h AS text[]), CAST(:m AS bigint[]), CAST(:a AS text[]), CAST(:n AS text[]), CAST(:st AS bigint[]), "
    "CAST(:t AS timestamptz[]), CAST(:p AS text[])) AS u(s, e, h, m, a, n, st, t, p) ORDER BY s, e "
    "ON CONFLICT (source, external_id) DO NOTHING RETURNING id, source, external_id")


@dataclass
class Candidate:
    """A parsed, not yet received event the fast path may take."""

    index: int
    data: EventIn
    body_hash: str


def applies(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def write_events(session: Session, *, principal: Principal, items: list[Candidate],
                 linkable: set[str]) -> dict[int, Outcome]:
    """Write what the fast path can take; returns {index: outcome} for those items. The rest is the
    caller's to run on the per-item path, after this (in batch order)."""
    if not items:
        return {}
    from orchard.events.ingest import _MAX_FUTURE_SKEW_S, _storable, _store_id  # one rule, not two

    busy = _earning_names(session)
    now = utcnow()
    rows: list[Candidate] = []
    keys_of: dict[int, list[tuple[str, str]]] = {}
    store_of: dict[int, int | None] = {}
    props_of: dict[int, str] = {}
    occurred_of: dict[int, Any] = {}
    for c in items:
        d = c.data
        if d.name in busy or not _storable(d.external_id) or not all(
                _storable(v) for v in (d.member.anonymous_id, d.store_code) if v is not None):
            continue
        if d.member.profile is not None and d.member.id is None:  # its home store code is checked per item
            continue
        occurred = as_utc(d.occurred_at)
        if (occurred - now).total_seconds() > _MAX_FUTURE_SKEW_S:
            continue
        props = _json(d.properties)
        if props is None:
            continue
        try:
            keys = [normalize(kind, value) for kind, value in d.member.identities.items()]
            store_of[c.index] = _store_id(session, d.store_code)
        except (InvalidIdentity, OrchardError):
            continue
        if not all(_storable(v) for _, v in keys):
            continue
        if d.member.anonymous_id is not None:
            keys.append(("anonymous_id", d.member.anonymous_id))
        keys_of[c.index] = list(dict.fromkeys(keys))
        props_of[c.index] = props
        occurred_of[c.index] = occurred
        rows.append(c)
    if not rows:
        return {}

    owners = owners_of(session, {k for c in rows for k in keys_of[c.index]})
    given = {c.data.member.id for c in rows if c.data.member.id is not None}
    live = _live_members(session, given) if given else {}
    member_of: dict[int, int | None] = {}
    for c in rows:
        ref, keys = c.data.member, keys_of[c.index]
        if ref.id is not None:
            found = live.get(ref.id)
            if found is not None and all(owners.get(k) == found for k in keys):
                member_of[c.index] = found
            continue
        known = {owners[k] for k in keys if k in owners}
        if len(known) == 1 and all(k in owners for k in keys):
            member_of[c.index] = known.pop()
        elif not known and all(k[0] == "anonymous_id" and k[1] not in linkable for k in keys):
            member_of[c.index] = None  # an anonymous id no member has and no item of the batch links
    if principal.store_ids is not None:
        homes = _home_stores(session, {m for m in member_of.values() if m is not None})
        member_of = {i: m for i, m in member_of.items() if m is None or homes.get(m) in principal.store_ids}
    take = [c for c in rows if c.index in member_of]
    if not take:
        return {}

    with session.begin_nested():
        written = {(r.source, r.external_id): r.id for r in session.execute(_INSERT, {
            "now": now,
            "s": [c.data.source for c in take], "e": [c.data.external_id for c in take],
            "h": [c.body_hash for c in take], "m": [member_of[c.index] for c in take],
            "a": [c.data.member.anonymous_id for c in take], "n": [c.data.name for c in take],
            "st": [store_of[c.index] for c in take], "t": [occurred_of[c.index] for c in take],
            "p": [props_of[c.index] for c in take]})}
    out: dict[int, Outcome] = {}
    for c in take:
        event_id = written.get((c.data.source, c.data.external_id))
        if event_id is None:  # a concurrent writer was first: the per-item path re-reads it
            continue
        member_id = member_of[c.index]
        if member_id is not None:
            with aggregates.item(session):
                aggregates.on_event(session, member_id=member_id, name=c.data.name, occurred_at=occurred_of[c.index])
        out[c.index] = Outcome(type="event", status="created", id=event_id, member_id=member_id)
    return out


def linkable_anonymous_ids(items: list[Any]) -> set[str]:
    """The anonymous ids a batch's items could link to a member (parsed items: (kind, data) or an
    error): every one given with a member id or identity keys, or by an order (which creates a member
    even for an anonymous id alone)."""
    out = set()
    for item in items:
        if isinstance(item, tuple) and item[0] in ("order", "event"):
            ref = item[1].member
            if ref.anonymous_id is not None and (item[0] == "order" or ref.id is not None or ref.identities):
                out.add(ref.anonymous_id)
    return out


def _json(value: dict[str, Any]) -> str | None:
    """The properties as JSON text PostgreSQL's jsonb takes, or None (NaN, NUL, lone surrogates)."""
    try:
        dumped = json.dumps(value, ensure_ascii=False, allow_nan=False)
        dumped.encode()
    except (ValueError, UnicodeEncodeError):
        return None
    return None if "\\u0000" in dumped else dumped


def _earning_names(session: Session) -> set[str]:
    """Event names whose items need the earning hooks: active event rules and event tasks, and the
    event pending points wait for."""
    names = set(earning.event_names(session))
    if wanted := get_settings().points_order_pending_event:
        names.add(wanted)
    return names


def _live_members(session: Session, ids: set[int]) -> dict[int, int]:
    """{given id: live member id}, following a merge one step as `scope.get_visible` does."""
    rows = session.execute(text(
        "SELECT m.id, coalesce(s.id, CASE WHEN m.merged_into_id IS NULL THEN m.id END) AS live FROM members m "
        "LEFT JOIN members s ON s.id = m.merged_into_id WHERE m.id = ANY(:ids)"), {"ids": sorted(ids)})
    return {r.id: r.live for r in rows if r.live is not None}


def _home_stores(session: Session, ids: set[int]) -> dict[int, int | None]:
    if not ids:
        return {}
    return dict(session.execute(text("SELECT id, home_store_id FROM members WHERE id = ANY(:ids)"),
                                {"ids": sorted(ids)}).all())
