"""The expiry pass (SPEC L4): every lot past its expiry with points left is expired in one set-based
pass — one `expire` entry per member, lots emptied, balances moved — in SQL, never a loop over
members. Running it again finds nothing to do.

The expiry is recorded on the lot itself: the one UPDATE that empties a lot also writes the points it
took (`expired`) and the expire entry that took them (`expire_entry_id`), so a year-end pass writes no
allocation row, no foreign-key probe and — with the table's fillfactor (migrations 0017, 0018), since none
of those columns is indexed — no index entry per lot. A lot that already names an expire entry (points
a cancelled spend restored into it after it expired) is expired again the old way, with an allocation
row: `expired` always means what `expire_entry_id` took. docs/decisions/0003-expiry-on-the-lot.md.

Spends lock the member's account row before reading lots; the pass locks the affected accounts
(PostgreSQL) before it reads the due lots, so a spend and the pass never take the same points.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.kit.clock import utcnow

SOURCE = "expiry"
#: A lot the pass takes: past its expiry (at the instant itself, too) and not empty.
DUE = "expires_at <= :now AND remaining > 0"
#: PostgreSQL work_mem for the pass (SET LOCAL: this transaction only).
WORK_MEM = "256MB"


def _sql(statement: str):
    """`:now` bound as the timestamp columns store it: on SQLite that is a naive UTC string, and a
    plain datetime parameter (written with "+00:00") would compare wrongly with it as text."""
    return text(statement).bindparams(bindparam("now", type_=UTCDateTime)) if ":now" in statement \
        else text(statement)


@dataclass
class ExpiryResult:
    members: int
    lots: int
    points: int


def _next_entry_ids(session: Session, pg: bool) -> str:
    """The SQL expression that numbers the expire entries in `_due_members` before they are written,
    so that the lot update can name its entry without reading the entries back (by a string join on
    external_id, as it once did). PostgreSQL draws them from the table's sequence; SQLite writers are
    serial (BEGIN IMMEDIATE), so max(id) + n cannot collide."""
    if pg:
        seq = session.execute(text("SELECT pg_get_serial_sequence('points_entries', 'id')")).scalar_one()
        if not re.fullmatch(r'[\w."]+', seq):
            raise RuntimeError(f"unexpected sequence name {seq!r}")
        return f"nextval('{seq}')"
    return "(SELECT coalesce(max(id), 0) FROM points_entries) + row_number() OVER (ORDER BY member_id)"


def expire_due(session: Session, *, now: dt.datetime | None = None, actor: str = "system:expiry") -> ExpiryResult:
    now = now or utcnow()
    pg = session.get_bind().dialect.name == "postgresql"
    params = {"now": now, "actor": actor, "src": SOURCE, "stamp": now.strftime("%Y%m%dT%H%M%S.%fZ")}
    if pg:
        # The per-member hash aggregate and the sorted lock of 1M members spill to disk at the default
        # 4 MB; one batch job per day may use more, for this transaction only.
        session.execute(_sql(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        # The lock answers with one row: sending and fetching 1M rows of `1` cost 0.1–0.3 s of backend and
        # 0.1 s of client CPU at 1M members.
        session.execute(_sql(
            "SELECT count(*) FROM (SELECT 1 FROM points_accounts WHERE member_id IN "
            f"(SELECT member_id FROM points_lots WHERE {DUE}) ORDER BY member_id FOR UPDATE) locked"), params)
    session.execute(_sql("DROP TABLE IF EXISTS _due_members"))
    # One row per member, keyed: every per-member statement below joins it by member_id. `again`: due
    # lots that an earlier expiry already named (expired again through allocation rows).
    session.execute(_sql(
        "CREATE TEMP TABLE _due_members (member_id BIGINT PRIMARY KEY, entry_id BIGINT NOT NULL, "
        "total BIGINT NOT NULL, lots BIGINT NOT NULL, again BIGINT NOT NULL)"))
    session.execute(_sql(
        f"INSERT INTO _due_members (member_id, entry_id, total, lots, again) "
        f"SELECT member_id, {_next_entry_ids(session, pg)}, total, lots, again FROM ("
        f"SELECT member_id, sum(remaining) AS total, count(*) AS lots, count(expire_entry_id) AS again "
        f"FROM points_lots WHERE {DUE} GROUP BY member_id ORDER BY member_id) g"), params)
    if pg:  # autovacuum never analyzes temp tables: without statistics the planner guesses 200 groups
        session.execute(_sql("ANALYZE _due_members"))
    members, lots, points, again = session.execute(_sql(
        "SELECT count(*), coalesce(sum(lots), 0), coalesce(sum(total), 0), coalesce(sum(again), 0) "
        "FROM _due_members")).one()
    if not lots:
        session.execute(_sql("DROP TABLE _due_members"))
        return ExpiryResult(0, 0, 0)
    session.execute(_sql(
        "INSERT INTO points_entries (id, member_id, kind, amount, balance_after, reason, source, external_id, "
        "body_hash, actor, explanation, created_at) "
        "SELECT d.entry_id, d.member_id, 'expire', -d.total, a.balance - d.total, '积分过期 points expired', :src, "
        "'expire-' || d.member_id || '-' || :stamp, '', :actor, '{}', :now "
        "FROM _due_members d JOIN points_accounts a ON a.member_id = d.member_id"), params)
    if again:  # rare: restored into a lot after its first expiry
        session.execute(_sql(
            "INSERT INTO points_allocations (entry_id, lot_id, amount) "
            "SELECT d.entry_id, l.id, l.remaining FROM points_lots l JOIN _due_members d ON d.member_id = l.member_id "
            "WHERE d.again > 0 AND l.expire_entry_id IS NOT NULL AND l.expires_at <= :now AND l.remaining > 0"), params)
        session.execute(_sql(
            f"UPDATE points_lots SET remaining = 0 WHERE {DUE} AND expire_entry_id IS NOT NULL "
            "AND member_id IN (SELECT member_id FROM _due_members WHERE again > 0)"), params)
    # SET reads the row as it was: `expired` gets the remaining points this update takes.
    session.execute(_sql(
        "UPDATE points_lots SET expired = points_lots.remaining, remaining = 0, expire_entry_id = d.entry_id "
        "FROM _due_members d WHERE d.member_id = points_lots.member_id AND points_lots.expires_at <= :now "
        "AND points_lots.remaining > 0 AND points_lots.expire_entry_id IS NULL"), params)
    session.execute(_sql(
        "UPDATE points_accounts SET balance = points_accounts.balance - d.total, updated_at = :now "
        "FROM _due_members d WHERE d.member_id = points_accounts.member_id"), params)
    session.execute(_sql(
        "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) "
        "SELECT :now, :actor, 'points.expire', 'member', CAST(member_id AS varchar), '{}' FROM _due_members"), params)
    session.execute(_sql("DROP TABLE _due_members"))
    return ExpiryResult(int(members), int(lots), int(points))
