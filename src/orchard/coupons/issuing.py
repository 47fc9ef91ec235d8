"""Issuing coupons: one at a time (idempotent on the client's external id) or in bulk to a list of
members in one set-based pass.

Every issuer locks the template row first (`SELECT … FOR UPDATE` on PostgreSQL; SQLite writers are
serial under BEGIN IMMEDIATE), so the total limit (`issued_count`, also a CHECK constraint) and the
per-member limit (a count of the member's coupons of the template) are read and raised by one
writer at a time: concurrent issuers never over-issue. Issuing from one template is serial; issuing
from different templates is not.

Bulk issue: the ids go into a temporary table (an array on PostgreSQL, a JSON array on SQLite), the
targets are computed with one join, and one INSERT … SELECT makes the coupons with codes generated
by the database (coupons.codes). The first try is a plain INSERT; if a generated code collides (the
unique index on `code` aborts it; ~1e-5 likely for a million codes among ten million) it is redone
with `ON CONFLICT (code) DO NOTHING`, which skips the colliding rows, and further passes issue to
exactly the members that lost theirs. (ON CONFLICT costs ~15% per row, hence not on the first try.)
Voided coupons still count against both limits: a limit is on issuing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.coupons import codes, rules
from orchard.coupons.models import Coupon, CouponBatch, CouponTemplate
from orchard.coupons.sql import sql
from orchard.coupons.templates import get as get_template
from orchard.errors import Conflict
from orchard.kit.clock import tenant_zone, utcnow
from orchard.kit.hashing import fingerprint

#: Passes made to re-issue members whose generated code collided; each pass is ~1e-7 likely to be
#: needed at a million coupons, so running out means the code space is nearly full.
MAX_PASSES = 10


def issuable(t: CouponTemplate, now: dt.datetime) -> None:
    if t.status != "active":
        raise Conflict(f"券模板已停用 coupon template {t.id} is inactive", code="coupon_template.inactive")
    if t.validity == "fixed" and t.valid_to <= now:
        raise Conflict(f"券模板已结束 coupon template {t.id} ended at {t.valid_to.isoformat()}",
                       code="coupon_template.ended")


def window_for(t: CouponTemplate, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if t.validity == "fixed":
        return t.valid_from, t.valid_to
    return rules.window(now, zone=tenant_zone(), valid_days=t.valid_days, starts_after_days=t.starts_after_days)


def _replay_one(session: Session, source: str, external_id: str, body_hash: str) -> Coupon | None:
    coupon = session.scalar(select(Coupon).where(Coupon.source == source, Coupon.external_id == external_id)
                            .execution_options(populate_existing=True))
    if coupon is not None and coupon.body_hash != body_hash:
        raise Conflict(f"重复的请求编号 coupon issue {source}/{external_id} was already received with another body",
                       code="coupon.id_reused", source=source, external_id=external_id)
    return coupon


def issue_one(session: Session, *, template_id: int, member_id: int, source: str, external_id: str,
              reason: str | None, actor: str, now: dt.datetime | None = None) -> tuple[Coupon, bool]:
    """Issue one coupon to a live member. Returns (coupon, created); a replay returns the first coupon.
    409 coupon_template.inactive | coupon_template.ended | coupon.limit_reached | coupon.member_limit_reached."""
    body_hash = fingerprint({"template_id": template_id, "member_id": member_id, "reason": reason})
    if (prior := _replay_one(session, source, external_id, body_hash)) is not None:
        return prior, False
    now = now or utcnow()
    t = get_template(session, template_id, lock=True)
    if (prior := _replay_one(session, source, external_id, body_hash)) is not None:
        return prior, False  # a concurrent retry won while we waited for the lock
    issuable(t, now)
    if t.total_limit is not None and t.issued_count >= t.total_limit:
        raise Conflict(f"券已发完 all {t.total_limit} coupons of template {t.id} are issued",
                       code="coupon.limit_reached", total_limit=t.total_limit)
    if t.per_member_limit is not None:
        held = session.scalar(select(func.count()).select_from(Coupon)
                              .where(Coupon.template_id == t.id, Coupon.member_id == member_id))
        if held >= t.per_member_limit:
            raise Conflict(f"已达每人限领数量 the member already received {held} coupons of template {t.id}",
                           code="coupon.member_limit_reached", per_member_limit=t.per_member_limit)
    valid_from, valid_to = window_for(t, now)
    code = codes.new_code()
    while session.scalar(select(Coupon.id).where(Coupon.code == code)) is not None:
        code = codes.new_code()
    coupon = Coupon(code=code, template_id=t.id, member_id=member_id, status="issued", issued_at=now,
                    valid_from=valid_from, valid_to=valid_to, source=source, external_id=external_id,
                    body_hash=body_hash, issued_by=actor, reason=reason, updated_at=now)
    try:
        with session.begin_nested():
            session.add(coupon)
            session.flush()
    except IntegrityError:
        # The same key sent at once for another template (which holds another lock): its answer stands.
        if (prior := _replay_one(session, source, external_id, body_hash)) is not None:
            return prior, False
        raise
    t.issued_count += 1
    session.flush()
    audit.record(session, actor=actor, action="coupon.issued", entity="coupon", entity_id=coupon.id,
                 data={"template_id": t.id, "member_id": member_id, "source": source, "external_id": external_id,
                       "reason": reason, "valid_to": valid_to.isoformat()})
    return coupon, True


@dataclass
class _Plan:
    requested: int
    found: int
    eligible: int


def _replay_batch(session: Session, source: str, external_id: str, body_hash: str) -> CouponBatch | None:
    batch = session.scalar(select(CouponBatch).where(CouponBatch.source == source,
                                                     CouponBatch.external_id == external_id))
    if batch is not None and batch.body_hash != body_hash:
        raise Conflict(f"重复的请求编号 coupon batch {source}/{external_id} was already received with another body",
                       code="coupon.id_reused", source=source, external_id=external_id)
    return batch


def issue_bulk(session: Session, *, template_id: int, member_ids: list[int], source: str, external_id: str,
               reason: str, actor: str, now: dt.datetime | None = None,
               code_length: int | None = None) -> tuple[CouponBatch, bool]:
    """One coupon of the template to each distinct listed member, in one set-based pass. Returns
    (batch, created); a replay returns the first batch."""
    ids = sorted(set(member_ids))
    body_hash = fingerprint({"template_id": template_id, "member_ids": ids, "reason": reason})
    if (prior := _replay_batch(session, source, external_id, body_hash)) is not None:
        return prior, False
    now = now or utcnow()
    t = get_template(session, template_id, lock=True)
    if (prior := _replay_batch(session, source, external_id, body_hash)) is not None:
        return prior, False
    issuable(t, now)
    pg = session.get_bind().dialect.name == "postgresql"
    plan = _targets(session, t, ids, pg)
    room = plan.eligible if t.total_limit is None else min(plan.eligible, t.total_limit - t.issued_count)
    batch = CouponBatch(template_id=t.id, source=source, external_id=external_id, body_hash=body_hash,
                        reason=reason, requested=plan.requested, issued=0, skipped={}, actor=actor, created_at=now)
    try:
        with session.begin_nested():
            session.add(batch)
            session.flush()
    except IntegrityError:
        if (prior := _replay_batch(session, source, external_id, body_hash)) is not None:
            return prior, False
        raise
    valid_from, valid_to = window_for(t, now)
    params = {"now": now, "valid_from": valid_from, "valid_to": valid_to, "actor": actor, "reason": reason}
    issued = 0
    try:
        # Fast path: a plain INSERT (no speculative insertion per row). A collision aborts it whole,
        # and the passes below redo it with ON CONFLICT.
        with session.begin_nested():
            issued = _insert_pass(session, t, batch.id, limit=room, first=True, ordered=room < plan.eligible,
                                  pg=pg, code_length=code_length, params=params, on_conflict=False)
    except IntegrityError:
        issued = 0
    for n in range(MAX_PASSES):
        if issued >= room:
            break
        issued += _insert_pass(session, t, batch.id, limit=room - issued, first=n == 0,
                               ordered=room < plan.eligible, pg=pg, code_length=code_length, params=params)
    if issued < room:
        raise Conflict("券码冲突过多 coupon codes kept colliding: the code space is nearly full",
                       code="coupon.codes_exhausted")
    session.execute(sql("DROP TABLE _coupon_targets"))
    t.issued_count += issued
    batch.issued = issued
    batch.skipped = {"unknown": plan.requested - plan.found, "member_limit": plan.found - plan.eligible,
                     "total_limit": plan.eligible - issued}
    session.flush()
    audit.record(session, actor=actor, action="coupon.batch_issued", entity="coupon_batch", entity_id=batch.id,
                 data={"template_id": t.id, "requested": plan.requested, "issued": issued, "skipped": batch.skipped,
                       "source": source, "external_id": external_id, "reason": reason})
    return batch, True


def _targets(session: Session, t: CouponTemplate, ids: list[int], pg: bool) -> _Plan:
    """Fill _coupon_targets(member_id, ok): the listed live members, ok = 1 when under the per-member
    limit. Returns the counts the batch reports."""
    for name in ("_coupon_ids", "_coupon_targets"):
        session.execute(sql(f"DROP TABLE IF EXISTS {name}"))
    session.execute(sql("CREATE TEMP TABLE _coupon_ids (member_id BIGINT PRIMARY KEY)"))
    if pg:
        # One array literal: PostgreSQL parses it faster than the driver adapts a list of a million ints.
        session.execute(sql("INSERT INTO _coupon_ids SELECT unnest(CAST(:ids AS BIGINT[]))"),
                        {"ids": "{" + ",".join(map(str, ids)) + "}"})
    else:
        session.execute(sql("INSERT INTO _coupon_ids SELECT value FROM json_each(:ids)"), {"ids": json.dumps(ids)})
    under_limit, held = "1", ""
    if t.per_member_limit is not None and t.issued_count > 0:
        held = ("LEFT JOIN (SELECT member_id, count(*) AS n FROM coupons WHERE template_id = :t "
                "GROUP BY member_id) h ON h.member_id = m.id ")
        under_limit = "CASE WHEN coalesce(h.n, 0) < :per THEN 1 ELSE 0 END"
    session.execute(sql(
        f"CREATE TEMP TABLE _coupon_targets AS SELECT m.id AS member_id, {under_limit} AS ok "
        f"FROM _coupon_ids i JOIN members m ON m.id = i.member_id AND m.status = 'active' {held}"),
        {"t": t.id, "per": t.per_member_limit})
    if pg:
        session.execute(sql("ANALYZE _coupon_targets"))
    found, eligible = session.execute(sql("SELECT count(*), coalesce(sum(ok), 0) FROM _coupon_targets")).one()
    session.execute(sql("DROP TABLE _coupon_ids"))
    return _Plan(requested=len(ids), found=int(found), eligible=int(eligible))


def _insert_pass(session: Session, t: CouponTemplate, batch_id: int, *, limit: int, first: bool, ordered: bool,
                 pg: bool, code_length: int | None, params: dict, on_conflict: bool = True) -> int:
    """Insert coupons for up to `limit` targets without one in this batch yet, lowest member ids first
    when the total limit leaves room for only some. Returns the rows inserted (a collided code
    leaves its member for the next pass)."""
    missing = "" if first else \
        " AND NOT EXISTS (SELECT 1 FROM coupons c WHERE c.member_id = g.member_id AND c.template_id = :t " \
        "AND c.batch_id = :b)"
    order = " ORDER BY g.member_id LIMIT :lim" if ordered or not first else ""
    draw = ", uuid_send(gen_random_uuid()) AS rb" if pg else ""
    code = codes.sql_code("postgresql" if pg else "sqlite", code_length)
    done = session.execute(sql(
        "INSERT INTO coupons (code, template_id, member_id, status, issued_at, valid_from, valid_to, batch_id, "
        "issued_by, reason, updated_at) "
        f"SELECT {code}, :t, x.member_id, 'issued', :now, :valid_from, :valid_to, :b, :actor, :reason, :now "
        f"FROM (SELECT g.member_id{draw} FROM _coupon_targets g WHERE g.ok = 1{missing}{order}) x "
        f"WHERE true{' ON CONFLICT (code) DO NOTHING' if on_conflict else ''}"),
        {**params, "t": t.id, "b": batch_id, "lim": limit})
    return done.rowcount or 0
