"""The expiry pass (SPEC L4): every lot past its expiry with points left is expired in one set-based
pass — one `expire` entry per member, allocations for each lot, lots emptied, balances moved — in
SQL, never a loop over members. Running it again finds nothing to do.

Spends lock the member's account row before reading lots; the pass locks the affected accounts
(PostgreSQL) before it reads the due lots, so a spend and the pass never take the same points.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.kit.clock import utcnow

SOURCE = "expiry"


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


def expire_due(session: Session, *, now: dt.datetime | None = None, actor: str = "system:expiry") -> ExpiryResult:
    now = now or utcnow()
    pg = session.get_bind().dialect.name == "postgresql"
    params = {"now": now, "actor": actor, "src": SOURCE, "stamp": now.strftime("%Y%m%dT%H%M%S.%fZ")}
    if pg:
        session.execute(_sql(
            "SELECT 1 FROM points_accounts WHERE member_id IN (SELECT DISTINCT member_id FROM points_lots "
            "WHERE expires_at <= :now AND remaining > 0) ORDER BY member_id FOR UPDATE"), params)
    session.execute(_sql("DROP TABLE IF EXISTS _due_lots"))
    session.execute(_sql("DROP TABLE IF EXISTS _due_members"))
    session.execute(_sql(
        "CREATE TEMP TABLE _due_lots AS SELECT id AS lot_id, member_id, remaining FROM points_lots "
        "WHERE expires_at <= :now AND remaining > 0"), params)
    # One row per member, keyed: every per-member statement below joins or probes it by member_id (a
    # correlated sum over _due_lots, unindexed, made the account update quadratic in the members).
    session.execute(_sql(
        "CREATE TEMP TABLE _due_members (member_id BIGINT PRIMARY KEY, total BIGINT NOT NULL, lots BIGINT NOT NULL)"))
    session.execute(_sql(
        "INSERT INTO _due_members (member_id, total, lots) "
        "SELECT member_id, sum(remaining), count(*) FROM _due_lots GROUP BY member_id"))
    if pg:  # autovacuum never analyzes temp tables: without statistics the planner guesses 200 groups
        session.execute(_sql("ANALYZE _due_lots"))
        session.execute(_sql("ANALYZE _due_members"))
    members, lots, points = session.execute(_sql(
        "SELECT count(*), coalesce(sum(lots), 0), coalesce(sum(total), 0) FROM _due_members")).one()
    if not lots:
        session.execute(_sql("DROP TABLE _due_lots"))
        session.execute(_sql("DROP TABLE _due_members"))
        return ExpiryResult(0, 0, 0)
    session.execute(_sql(
        "INSERT INTO points_entries (member_id, kind, amount, balance_after, reason, source, external_id, body_hash, "
        "actor, explanation, created_at) "
        "SELECT d.member_id, 'expire', -d.total, a.balance - d.total, '积分过期 points expired', :src, "
        "'expire-' || d.member_id || '-' || :stamp, '', :actor, '{}', :now "
        "FROM _due_members d JOIN points_accounts a ON a.member_id = d.member_id"), params)
    session.execute(_sql(
        "INSERT INTO points_allocations (entry_id, lot_id, amount) "
        "SELECT e.id, d.lot_id, d.remaining FROM _due_lots d JOIN points_entries e "
        "ON e.source = :src AND e.external_id = 'expire-' || d.member_id || '-' || :stamp"), params)
    session.execute(_sql(
        "UPDATE points_lots SET remaining = 0 WHERE id IN (SELECT lot_id FROM _due_lots)"))
    session.execute(_sql(
        "UPDATE points_accounts SET balance = balance - (SELECT d.total FROM _due_members d "
        "WHERE d.member_id = points_accounts.member_id), updated_at = :now "
        "WHERE member_id IN (SELECT member_id FROM _due_members)"), params)
    session.execute(_sql(
        "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) "
        "SELECT :now, :actor, 'points.expire', 'member', CAST(member_id AS varchar), '{}' FROM _due_members"), params)
    session.execute(_sql("DROP TABLE _due_lots"))
    session.execute(_sql("DROP TABLE _due_members"))
    return ExpiryResult(int(members), int(lots), int(points))
