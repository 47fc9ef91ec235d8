"""Compile a parsed definition into one SQL statement (SQLAlchemy Core) over the members table.

Design, in short:

* **Whole days in the tenant's zone.** "Last 30 days" is today and the 29 days before it; "days since
  the last order ≥ 90" holds from local midnight of the 90th day after it. Every such condition
  becomes a plain comparison of a stored timestamp with a boundary computed here, in Python, from
  `now` (index-friendly; no per-row date arithmetic in the filter).
* **Flip times.** Each boundary is recorded as (column, day offset). A member's answer can change by
  time alone only at the local midnight when one of those boundaries passes one of its timestamps;
  `flip_expression` gives the earliest such instant after `now` per member, so the real-time sweep
  re-checks exactly those members then, instead of rescanning everyone.
* **Behaviour and membership as set predicates.** An event window is `member id IN (SELECT member_id …
  GROUP BY member_id HAVING …)`; a threshold that zero satisfies ("fewer than 1", absence) is written
  as `NOT IN` the complement, so members with no rows at all are counted right.
* **Two-valued leaves.** A condition on a missing value (no orders yet, no score) is false, and its
  `not` is true: "not ordered in the last 30 days" includes members who never ordered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    case,
    cast,
    distinct,
    extract,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy import Float as SAFloat
from sqlalchemy import String as SAString
from sqlalchemy.orm import Session

from orchard.db import UTCDateTime
from orchard.errors import InvalidInput
from orchard.events.models import Event, Order, OrderLine
from orchard.identity.models import Identity
from orchard.kit.clock import tenant_zone, utcnow
from orchard.loyalty.models import GrowthAccount, MemberTier, PointsAccount, PointsLot, TierLevel
from orchard.members.models import Consent, Member, MemberAggregate, MemberTag, Tag
from orchard.org.models import OrgUnit
from orchard.scoring.models import MemberLifecycle, MemberRfm
from orchard.segments import fields as F
from orchard.segments import language as lang
from orchard.segments.models import Segment, SegmentMembership

m = Member.__table__
agg = MemberAggregate.__table__.alias("agg")
acct = PointsAccount.__table__.alias("acct")
growth = GrowthAccount.__table__.alias("growth")
mtier = MemberTier.__table__.alias("mtier")
tlevel = TierLevel.__table__.alias("tlevel")
tover = TierLevel.__table__.alias("tover")
lcyc = MemberLifecycle.__table__.alias("lcyc")
rfm = MemberRfm.__table__.alias("rfm")

_AGG_FIELDS = {"order_count": "order_count", "total_spend_fen": "total_spend_fen", "refund_fen": "refund_fen"}
_AGG_TIMES = {"first_order_at": "first_order_at", "last_order_at": "last_order_at",
              "last_visit_at": "last_visit_at", "last_login_at": "last_login_at", "last_event_at": "last_event_at"}
_DAYS_SINCE = {"days_since_last_order": "last_order_at", "days_since_first_order": "first_order_at",
               "days_since_last_visit": "last_visit_at", "days_since_last_login": "last_login_at",
               "days_since_last_event": "last_event_at"}
_PAID = ("paid", "partially_refunded")


@dataclass
class Context:
    """What a compilation needs and collects: the clock, the joins used and the time boundaries."""

    session: Session
    now: dt.datetime
    zone: ZoneInfo
    dialect: str
    #: Code of the saved segment being compiled (a reference to it is a cycle).
    self_code: str | None = None
    joins: set[str] = field(default_factory=set)
    #: (timestamp column, day offset j): the condition compares the column with midnight(today − j).
    boundaries: list[tuple[Any, int]] = field(default_factory=list)
    #: Codes of the segments the definition reads.
    segments: set[str] = field(default_factory=set)
    #: Answer order windows on categories from member_category_last (`segments.order_summary`): only
    #: where the refresh has just brought that table up to date.
    order_summary: bool = False
    _params: int = 0

    @property
    def today(self) -> dt.date:
        return self.now.astimezone(self.zone).date()

    def midnight(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), self.zone).astimezone(dt.UTC)

    def at(self, value: dt.datetime):
        return literal(value, UTCDateTime())


def context(session: Session, *, now: dt.datetime | None = None, self_code: str | None = None,
            order_summary: bool = False) -> Context:
    return Context(session=session, now=now or utcnow(), zone=tenant_zone(),
                   dialect=session.get_bind().dialect.name, self_code=self_code, order_summary=order_summary)


def compile_condition(tree: Any, ctx: Context, path: str = "$",
                      leaf: Callable[[Any, str], ColumnElement[bool]] | None = None) -> ColumnElement[bool]:
    """The boolean SQL for a parsed definition (raises `InvalidInput` naming the path on bad meaning).
    With `leaf`, each non-group condition is `leaf(node, path)` instead (the groups combine them the same
    way): how a preview combines per-condition columns it computed once."""
    if isinstance(tree, lang.All):
        return and_(*(compile_condition(c, ctx, p, leaf) for c, p in lang.children(tree, path)))
    if isinstance(tree, lang.Any_):
        return or_(*(compile_condition(c, ctx, p, leaf) for c, p in lang.children(tree, path)))
    if isinstance(tree, lang.Not):
        inner = compile_condition(tree.not_, ctx, path + ".not", leaf)
        return not_(inner.is_(true()))
    if leaf is not None:
        return leaf(tree, path)
    if isinstance(tree, lang.Field):
        return _field(tree, ctx, path)
    if isinstance(tree, lang.Tag_):
        return _tag(tree, ctx, path)
    if isinstance(tree, lang.SegmentRef):
        return _segment(tree, ctx, path)
    if isinstance(tree, lang.ConsentCond):
        sub = select(Consent.member_id).where(Consent.channel == tree.consent, Consent.purpose == tree.purpose,
                                              Consent.granted.is_(True))
        return m.c.id.in_(sub) if tree.granted else m.c.id.not_in(sub)
    if isinstance(tree, lang.IdentityCond):
        sub = select(Identity.member_id).where(Identity.kind == tree.identity)
        return m.c.id.in_(sub) if tree.present else m.c.id.not_in(sub)
    if isinstance(tree, lang.Behaviour):
        return _behaviour(tree, ctx, path)
    raise AssertionError(f"unknown condition {type(tree).__name__}")


# -- fields ---------------------------------------------------------------------------------------

def _column(spec: F.FieldSpec, cond: lang.Field, ctx: Context, path: str):
    name = spec.name
    if name in ("name", "gender", "birthday", "region", "source_channel", "joined_at", "reduce_disturbance"):
        return m.c[name]
    if name == "home_store":  # compared by store code in `_home_store`; exists / not_exists read the id
        return m.c.home_store_id
    if name == "birthday_month":
        return extract("month", m.c.birthday)
    if name in _AGG_FIELDS:
        ctx.joins.add("agg")
        return func.coalesce(agg.c[_AGG_FIELDS[name]], 0)
    if name == "avg_order_fen":
        ctx.joins.add("agg")
        return case((agg.c.order_count > 0, agg.c.total_spend_fen / agg.c.order_count), else_=None)
    if name in _AGG_TIMES:
        ctx.joins.add("agg")
        return agg.c[_AGG_TIMES[name]]
    if name in _DAYS_SINCE:
        ctx.joins.add("agg")
        return agg.c[_DAYS_SINCE[name]]
    if name == "days_since_joined":
        return m.c.joined_at
    if name == "points_balance":
        ctx.joins.add("acct")
        return func.coalesce(acct.c.balance, 0)
    if name == "points_expiring":
        lot = PointsLot.__table__
        until = ctx.at(ctx.now + dt.timedelta(days=cond.within_days or 0))
        due = select(func.coalesce(func.sum(lot.c.remaining), 0)).where(
            lot.c.member_id == m.c.id, lot.c.remaining > 0, lot.c.expires_at > ctx.at(ctx.now),
            lot.c.expires_at <= until, or_(lot.c.pending_until.is_(None), lot.c.pending_until <= ctx.at(ctx.now)),
            lot.c.held_flag_id.is_(None)).scalar_subquery()
        return due
    if name == "growth_value":
        ctx.joins.add("growth")
        return func.coalesce(growth.c.balance, 0)
    if name == "tier":
        ctx.joins.add("tier")
        base = ctx.session.scalar(select(TierLevel.code).where(TierLevel.active.is_(True))
                                  .order_by(TierLevel.rank).limit(1))
        # The effective tier: an override while it lasts, else the evaluated level, else the base level.
        overriding = and_(mtier.c.override_level_id.is_not(None),
                          or_(mtier.c.override_until.is_(None), mtier.c.override_until > ctx.at(ctx.now)))
        return case((overriding, tover.c.code), else_=func.coalesce(tlevel.c.code, literal(base, SAString())))
    if name in ("lifecycle_stage", "lifecycle_since"):
        ctx.joins.add("lcyc")
        return lcyc.c.stage if name == "lifecycle_stage" else lcyc.c.since
    if name in ("rfm_class", "r_score", "f_score", "m_score", "recency_days", "value_tier"):
        ctx.joins.add("rfm")
        return rfm.c[name]
    if name.startswith(F.ATTRIBUTE_PREFIX):
        key = name[len(F.ATTRIBUTE_PREFIX):]
        if spec.type == "int_attribute":
            return _json_number(m.c.attributes, key, ctx)
        return m.c.attributes[key].as_string()
    raise AssertionError(name)


def _json_number(column, key: str, ctx: Context):
    """A JSON property as a number, or NULL when it is not one (never a cast error on bad data)."""
    if ctx.dialect == "postgresql":
        return case((func.jsonb_typeof(column[key]) == "number", cast(column[key].as_string(), SAFloat)),
                    else_=None)
    return case((func.json_type(column, f"$.{_sqlite_key(key)}").in_(("integer", "real")),
                 column[key].as_float()), else_=None)


def _sqlite_key(key: str) -> str:
    return '"' + key.replace('"', '') + '"'


def _field(cond: lang.Field, ctx: Context, path: str) -> ColumnElement[bool]:
    spec = F.check_field(cond, path)
    col = _column(spec, cond, ctx, path)
    op, v = cond.op, cond.value
    if op == "exists":
        return col.is_not(None)
    if op == "not_exists":
        return col.is_(None)
    if spec.name == "home_store":
        return _home_store(op, v, ctx, path)
    if spec.type == "days":
        return _days_since(col, op, v, ctx)
    if spec.type == "datetime":
        return _datetime(col, op, v, ctx, path)
    if spec.type == "date":
        return _date(col, op, v, ctx, path)
    if op == "eq":
        return col == v
    if op == "ne":
        return col != v
    if op == "in":
        return col.in_(v)
    if op == "not_in":
        return col.not_in(v)
    if op == "gt":
        return col > v
    if op == "gte":
        return col >= v
    if op == "lt":
        return col < v
    if op == "lte":
        return col <= v
    if op == "between":
        return col.between(v[0], v[1])
    if op == "contains":
        return col.contains(str(v), autoescape=True)
    raise AssertionError(op)


def _home_store(op: str, v: Any, ctx: Context, path: str) -> ColumnElement[bool]:
    codes = v if isinstance(v, list) else [v]
    found = dict(ctx.session.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.code.in_(codes))).all())
    missing = [c for c in codes if c not in found]
    if missing:
        raise InvalidInput.field(path + ".value", "unknown store code " + ", ".join(map(repr, missing)))
    ids = [found[c] for c in codes]
    if op in ("eq", "in"):
        return m.c.home_store_id.in_(ids)
    if op in ("ne", "not_in"):
        return m.c.home_store_id.not_in(ids)
    if op == "contains":
        raise InvalidInput.field(path + ".op", "home_store takes eq, ne, in, not_in, exists or not_exists")
    raise AssertionError(op)


def _since(col, j: int, ctx: Context):
    """midnight(today − j) as a bound value; records the boundary for flip times."""
    ctx.boundaries.append((col, j))
    return ctx.at(ctx.midnight(ctx.today - dt.timedelta(days=j)))


def _days_since(col, op: str, n: Any, ctx: Context) -> ColumnElement[bool]:
    """days_since(col) = today − local date of col. `≥ n` ⇔ col < midnight(today − n + 1)."""
    def at_least(k: int):
        return col < _since(col, k - 1, ctx)

    def at_most(k: int):
        return col >= _since(col, k, ctx)

    if op == "gte":
        return at_least(n)
    if op == "gt":
        return at_least(n + 1)
    if op == "lte":
        return at_most(n)
    if op == "lt":
        return at_most(n - 1)
    if op == "eq":
        return and_(at_least(n), at_most(n))
    if op == "ne":
        return and_(col.is_not(None), not_(and_(at_least(n), at_most(n))))
    if op == "between":
        return and_(at_least(n[0]), at_most(n[1]))
    raise AssertionError(op)


def _datetime(col, op: str, v: Any, ctx: Context, path: str) -> ColumnElement[bool]:
    if op == "within_last_days":
        return col >= _since(col, v - 1, ctx)
    if op == "older_than_days":
        return col < _since(col, v - 1, ctx)
    if op == "before":
        when = F.parse_when(v, path + ".value")
        return col < ctx.at(_start(when, ctx))
    if op == "after":
        when = F.parse_when(v, path + ".value")
        return col > ctx.at(when) if isinstance(when, dt.datetime) else \
            col >= ctx.at(ctx.midnight(when + dt.timedelta(days=1)))
    if op == "between":
        low, high = F.parse_when(v[0], path + ".value[0]"), F.parse_when(v[1], path + ".value[1]")
        if isinstance(low, dt.datetime):
            return col.between(ctx.at(low), ctx.at(high))
        return and_(col >= ctx.at(ctx.midnight(low)), col < ctx.at(ctx.midnight(high + dt.timedelta(days=1))))
    raise AssertionError(op)


def _start(when: dt.date | dt.datetime, ctx: Context) -> dt.datetime:
    return when.astimezone(dt.UTC) if isinstance(when, dt.datetime) else ctx.midnight(when)


def _date(col, op: str, v: Any, ctx: Context, path: str) -> ColumnElement[bool]:
    """Dates without a time (birthday). `within_next_days n`: the anniversary falls today or in the
    next n days (29 February counts as 28 February in other years)."""
    if op == "within_next_days":
        days = [ctx.today + dt.timedelta(days=i) for i in range(v + 1)]
        keys = {d.strftime("%m%d") for d in days}
        if "0228" in keys and not any(d.month == 2 and d.day == 29 for d in days):
            keys.add("0229")
        mmdd = func.to_char(col, "MMDD") if ctx.dialect == "postgresql" else func.strftime("%m%d", col)
        return mmdd.in_(sorted(keys))

    def day(value: Any, p: str) -> dt.date:
        when = F.parse_when(value, p)
        if isinstance(when, dt.datetime):
            raise InvalidInput.field(p, "a birthday is compared with dates, not date-times")
        return when

    if op == "eq":
        return col == day(v, path + ".value")
    if op == "before":
        return col < day(v, path + ".value")
    if op == "after":
        return col > day(v, path + ".value")
    if op == "between":
        return col.between(day(v[0], path + ".value[0]"), day(v[1], path + ".value[1]"))
    raise AssertionError(op)


# -- tags, segments --------------------------------------------------------------------------------

def _tag(cond: lang.Tag_, ctx: Context, path: str) -> ColumnElement[bool]:
    tag_id = ctx.session.scalar(select(Tag.id).where(Tag.name == cond.tag))
    if tag_id is None:
        raise InvalidInput.field(path + ".tag", f"no tag named {cond.tag!r}")
    sub = select(MemberTag.member_id).where(MemberTag.tag_id == tag_id)
    return m.c.id.in_(sub) if cond.has else m.c.id.not_in(sub)


def _segment(cond: lang.SegmentRef, ctx: Context, path: str) -> ColumnElement[bool]:
    if cond.segment == ctx.self_code:
        raise InvalidInput.field(path + ".segment", "a segment cannot contain itself")
    row = ctx.session.execute(select(Segment.id, Segment.status).where(Segment.code == cond.segment)).first()
    if row is None:
        raise InvalidInput.field(path + ".segment", f"no segment with code {cond.segment!r}")
    if row.status != "active":
        raise InvalidInput.field(path + ".segment", f"segment {cond.segment!r} is archived")
    ctx.segments.add(cond.segment)
    sub = select(SegmentMembership.member_id).where(SegmentMembership.segment_id == row.id,
                                                    SegmentMembership.exited_at.is_(None))
    return m.c.id.in_(sub) if cond.member else m.c.id.not_in(sub)


# -- behaviour -------------------------------------------------------------------------------------

_COMPARE = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


def _behaviour(cond: lang.Behaviour, ctx: Context, path: str) -> ColumnElement[bool]:
    F.check_behaviour(cond, path)
    if ctx.order_summary and (shape := summary_shape(cond)):
        return _summarised(cond, shape, ctx, path)
    return _members(_window(cond, ctx, path), cond)


def _threshold(measure, cond: lang.Behaviour) -> ColumnElement[bool]:
    """The HAVING of a grouped window: the threshold, or its negation when zero satisfies it (then the
    members are those *not* in the set, so members with no rows at all count)."""
    having = _COMPARE[cond.op](measure, cond.value)
    return not_(having) if _zero_passes(cond) else having


def _zero_passes(cond: lang.Behaviour) -> bool:
    return _COMPARE[cond.op](0, cond.value)


def _members(grouped: Select, cond: lang.Behaviour) -> ColumnElement[bool]:
    return m.c.id.not_in(grouped) if _zero_passes(cond) else m.c.id.in_(grouped)


def _window(cond: lang.Behaviour, ctx: Context, path: str, only: Select | None = None) -> Select:
    """The members (of the `only` ones) whose rows in the window pass `_threshold`."""
    if cond.event == "$order":
        member_col, time_col, query = _orders(cond, ctx, path)
    else:
        e = Event.__table__
        member_col, time_col = e.c.member_id, e.c.occurred_at
        query = select(e.c.member_id).where(e.c.name == cond.event, e.c.member_id.is_not(None))
        for i, f in enumerate(cond.where):
            query = query.where(prop_filter(e.c.properties, f, ctx, f"{path}.where[{i}]"))
    query = query.where(time_col <= ctx.at(ctx.now))
    if only is not None:
        query = query.where(member_col.in_(only))
    if cond.since_joined:
        joined = m.alias("joined")
        query = query.join(joined, joined.c.id == member_col).where(time_col >= joined.c.joined_at)
    else:
        query = query.where(time_col >= _window_start(cond, ctx))
    return query.group_by(member_col).having(_threshold(_measure(cond, ctx), cond))


def _window_start(cond: lang.Behaviour, ctx: Context):
    return ctx.at(ctx.midnight(ctx.today - dt.timedelta(days=cond.last_days - 1)))


#: Thresholds on an order count that only ask whether there is one: (op, value) → present?
_PRESENCE = {("gte", 1): True, ("gt", 0): True, ("ne", 0): True,
             ("eq", 0): False, ("lte", 0): False, ("lt", 1): False}


def summary_shape(cond: lang.Behaviour) -> str | None:
    """Whether member_category_last answers an order window, and how: "distinct" (the number of
    distinct categories, with any category filters on the same line) or "presence" (some order with a
    line passing one category filter, or none). None for everything else (counts, sums, stores,
    amounts, SKUs, windows since joining): those read the orders."""
    if cond.event != "$order" or cond.since_joined or not cond.last_days:
        return None
    if any(f.prop != "category" for f in cond.where):
        return None
    if cond.measure == "distinct" and cond.prop == "category":
        return "distinct"
    value = cond.value if isinstance(cond.value, int | float) and not isinstance(cond.value, bool) else None
    if cond.measure == "count" and len(cond.where) == 1 and (cond.op, value) in _PRESENCE:
        return "presence"
    return None


def _summarised(cond: lang.Behaviour, shape: str, ctx: Context, path: str) -> ColumnElement[bool]:
    """An order window on categories from member_category_last (`segments.order_summary`). A member
    with a matching row later than `now` is answered from the orders (the row hides whether an
    earlier order falls in the window); there are none unless orders are dated after the clock."""
    from orchard.segments.models import MemberCategoryLast

    S = MemberCategoryLast.__table__
    tests = [_scalar_filter(S.c.category, f, f"{path}.where[{i}]", numeric=False) for i, f in enumerate(cond.where)]
    now = ctx.at(ctx.now)
    rows = select(S.c.member_id).where(S.c.last_paid_at >= _window_start(cond, ctx), S.c.last_paid_at <= now,
                                       *tests)
    if shape == "presence":
        summary = m.c.id.in_(rows) if _PRESENCE[(cond.op, cond.value)] else m.c.id.not_in(rows)
    else:
        summary = _members(rows.group_by(S.c.member_id).having(_threshold(func.count(), cond)), cond)
    # No row can be later than the clock unless an order is (one probe of ix_orders_paid_at).
    latest = ctx.session.scalar(select(func.max(Order.__table__.c.paid_at)))
    if latest is None or latest <= ctx.now:
        return summary
    late = select(S.c.member_id).where(S.c.last_paid_at > now, *tests)
    return case((m.c.id.in_(late), _members(_window(cond, ctx, path, only=late), cond)), else_=summary)


def _measure(cond: lang.Behaviour, ctx: Context):
    if cond.event == "$order":
        o, line = Order.__table__, OrderLine.__table__
        if cond.measure == "count":
            return func.count(distinct(o.c.id))
        if cond.measure == "sum":  # amount_fen, net of refunds (orders are not multiplied: no line join here)
            return func.coalesce(func.sum(o.c.amount_fen - o.c.refunded_fen), 0)
        column = {"store": o.c.store_id, "channel": o.c.channel, "amount_fen": o.c.amount_fen,
                  "category": line.c.category, "sku": line.c.sku}[cond.prop]
        return func.count(distinct(column))
    props = Event.__table__.c.properties
    if cond.measure == "count":
        return func.count()
    if cond.measure == "sum":
        return func.coalesce(func.sum(_json_number(props, cond.prop, ctx)), 0)
    return func.count(distinct(props[cond.prop].as_string()))


def _orders(cond: lang.Behaviour, ctx: Context, path: str):
    o, line = Order.__table__, OrderLine.__table__
    query = select(o.c.member_id).where(o.c.status.in_(_PAID))
    joined_lines = cond.measure == "distinct" and cond.prop in ("category", "sku")
    if joined_lines:
        query = query.join(line, line.c.order_id == o.c.id)
    for i, f in enumerate(cond.where):
        fpath = f"{path}.where[{i}]"
        if f.prop in ("category", "sku"):
            column = line.c[f.prop]
            test = _scalar_filter(column, f, fpath, numeric=False)
            if joined_lines:
                query = query.where(test)
            else:
                query = query.where(o.c.id.in_(select(line.c.order_id).where(test)))
        elif f.prop == "store":
            query = query.where(_store_filter(o.c.store_id, f, ctx, fpath))
        elif f.prop == "channel":
            query = query.where(_scalar_filter(o.c.channel, f, fpath, numeric=False))
        else:
            query = query.where(_scalar_filter(o.c.amount_fen - o.c.refunded_fen, f, fpath, numeric=True))
    return o.c.member_id, o.c.paid_at, query


def _store_filter(column, f: lang.PropFilter, ctx: Context, path: str) -> ColumnElement[bool]:
    if f.op == "exists":
        return column.is_not(None)
    if f.op not in ("eq", "ne", "in", "not_in"):
        raise InvalidInput.field(path + ".op", "a store is filtered with eq, ne, in, not_in or exists")
    codes = f.value if isinstance(f.value, list) else [f.value]
    found = dict(ctx.session.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.code.in_(
        [str(c) for c in codes]))).all())
    missing = [c for c in codes if str(c) not in found]
    if missing:
        raise InvalidInput.field(path + ".value", "unknown store code " + ", ".join(map(repr, missing)))
    ids = [found[str(c)] for c in codes]
    return column.in_(ids) if f.op in ("eq", "in") else column.not_in(ids)


def _scalar_filter(column, f: lang.PropFilter, path: str, *, numeric: bool) -> ColumnElement[bool]:
    op, v = f.op, f.value
    if op == "exists":
        return column.is_not(None)
    if op == "contains":
        if numeric:
            raise InvalidInput.field(path + ".op", "contains applies to text")
        return column.contains(v, autoescape=True)
    if op in ("in", "not_in"):
        values = [x if numeric else str(x) for x in v]
        return column.in_(values) if op == "in" else column.not_in(values)
    value = v if numeric else str(v)
    return _COMPARE[op](column, value)


def prop_filter(props, f: lang.PropFilter, ctx: Context, path: str) -> ColumnElement[bool]:
    """An event property test. Numbers compare as numbers, everything else as text; a property that is
    missing (or of the other kind) fails the test rather than raising a database cast error. Public:
    journey event triggers filter their events with it too."""
    op, v = f.op, f.value
    if op == "exists":
        return props[f.prop].as_string().is_not(None) if ctx.dialect == "postgresql" else \
            func.json_type(props, f"$.{_sqlite_key(f.prop)}").is_not(None)
    sample = v[0] if isinstance(v, list) else v
    numeric = isinstance(sample, int | float) and not isinstance(sample, bool)
    if isinstance(sample, bool):
        column = props[f.prop].as_string()
        v = [str(x).lower() for x in v] if isinstance(v, list) else str(v).lower()
        if ctx.dialect == "sqlite":  # json_extract gives 1/0 for true/false
            column = case((func.json_type(props, f"$.{_sqlite_key(f.prop)}") == "true", "true"),
                          (func.json_type(props, f"$.{_sqlite_key(f.prop)}") == "false", "false"), else_=None)
        return _scalar_filter(column, lang.PropFilter(prop=f.prop, op=op, value=v), path, numeric=False)
    column = _json_number(props, f.prop, ctx) if numeric else props[f.prop].as_string()
    if op == "ne":  # a missing property is "not equal" too
        return or_(column.is_(None), column != v)
    return _scalar_filter(column, f, path, numeric=numeric)


# -- statements ------------------------------------------------------------------------------------

def frame(ctx: Context) -> FromClause:
    """members LEFT JOIN the per-member tables the compiled conditions read."""
    source: FromClause = m
    if "agg" in ctx.joins:
        source = source.outerjoin(agg, agg.c.member_id == m.c.id)
    if "acct" in ctx.joins:
        source = source.outerjoin(acct, acct.c.member_id == m.c.id)
    if "growth" in ctx.joins:
        source = source.outerjoin(growth, growth.c.member_id == m.c.id)
    if "tier" in ctx.joins:
        source = source.outerjoin(mtier, mtier.c.member_id == m.c.id).outerjoin(
            tlevel, tlevel.c.id == mtier.c.level_id).outerjoin(tover, tover.c.id == mtier.c.override_level_id)
    if "lcyc" in ctx.joins:
        source = source.outerjoin(lcyc, lcyc.c.member_id == m.c.id)
    if "rfm" in ctx.joins:
        source = source.outerjoin(rfm, rfm.c.member_id == m.c.id)
    return source


def live() -> ColumnElement[bool]:
    """The population every segment draws from: members not merged into another."""
    return m.c.status == "active"


def members_query(condition: ColumnElement[bool], ctx: Context, *extra: ColumnElement[bool]) -> Select:
    return select(m.c.id).select_from(frame(ctx)).where(live(), condition, *extra)


def flip_expression(ctx: Context):
    """The earliest instant after `now` when one of the definition's time boundaries passes one of the
    member's timestamps (NULL when none will): midnight(local date of the column + j + 1)."""
    if not ctx.boundaries:
        return None
    seen: set[tuple[str, int]] = set()
    candidates = []
    now = ctx.at(ctx.now)
    for col, j in ctx.boundaries:
        key = (str(col), j)
        if key in seen:
            continue
        seen.add(key)
        at = _local_midnight_after(col, j + 1, ctx)
        candidates.append(case((at > now, at), else_=None))
    if len(candidates) == 1:
        return candidates[0]
    if ctx.dialect == "postgresql":
        return func.least(*candidates)
    far = literal("9999-12-31 00:00:00.000", SAString())
    return func.nullif(func.min(*(func.coalesce(c, far) for c in candidates)), far)


def flip_instant(ctx: Context):
    """`flip_expression` for a pass over every member (the one-pass refresh): the same instant, but
    each boundary's zone arithmetic runs once per member, and only for members whose timestamp can
    still flip. midnight(local date of col + j + 1) > now ⇔ local date of col ≥ today − j ⇔
    col ≥ midnight(today − j): a comparison with a constant guards it. Repeating the three zone
    conversions in the guard and the result was most of a 20-segment pass at 200k members. On SQLite
    (a fixed zone offset) it is `flip_expression` itself."""
    if not ctx.boundaries or ctx.dialect != "postgresql":
        return flip_expression(ctx)
    seen: set[tuple[str, int]] = set()
    candidates = []
    for col, j in ctx.boundaries:
        if (str(col), j) in seen:
            continue
        seen.add((str(col), j))
        floor = ctx.at(ctx.midnight(ctx.today - dt.timedelta(days=j)))
        candidates.append(case((col >= floor, _local_midnight_after(col, j + 1, ctx)), else_=None))
    return candidates[0] if len(candidates) == 1 else func.least(*candidates)


#: Fields whose value changes only with the member's own data (a write that queues the member for
#: the real-time sweep) or in `orchard refresh` before the segments: never by the clock alone.
_DATA_ONLY = {"name", "gender", "birthday_month", "region", "source_channel", "home_store", "reduce_disturbance",
              "order_count", "total_spend_fen", "refund_fen", "avg_order_fen", "points_balance",
              "lifecycle_stage", "rfm_class", "r_score", "f_score", "m_score", "recency_days", "value_tier"}


def data_only(node: Any) -> bool:
    """Whether a condition's answer can change only with the member's data, not with time: no
    `days_since_*` / datetime boundary, behaviour window, birthday countdown or points expiry, and
    nothing whose changes do not queue the member (tier, growth value, another segment's membership)."""
    if isinstance(node, lang.All | lang.Any_ | lang.Not):
        return all(data_only(child) for child, _ in lang.children(node, "$"))
    if isinstance(node, lang.Field):
        if node.field.startswith(F.ATTRIBUTE_PREFIX):
            return True
        if node.field == "birthday":
            return node.op != "within_next_days"
        return node.field in _DATA_ONLY
    return isinstance(node, lang.Tag_ | lang.ConsentCond | lang.IdentityCond)


def flip_gate(tree: Any, ctx: Context, root: str = "$") -> ColumnElement[bool] | None:
    """The data-only conjuncts of a top-level `all`: a member failing one of them stays outside the
    segment whatever the clock does, until its data changes (which queues it for the sweep, which
    recomputes its flip) or the next refresh — so it needs no flip time. None when there is none."""
    if not isinstance(tree, lang.All):
        return None
    parts = [compile_condition(child, ctx, path) for child, path in lang.children(tree, root) if data_only(child)]
    return and_(*parts) if parts else None


def _local_midnight_after(col, days: int, ctx: Context):
    if ctx.dialect == "postgresql":
        zone = ctx.zone.key
        return func.timezone(zone, func.date_trunc("day", func.timezone(zone, col))
                             + func.make_interval(0, 0, 0, days))
    # SQLite has no zone database: the zone's offset now is used (exact for zones without DST,
    # such as Asia/Shanghai). Stored times are naive UTC text.
    offset = int(ctx.now.astimezone(ctx.zone).utcoffset().total_seconds())
    return func.strftime("%Y-%m-%d %H:%M:%f", func.date(col, f"{offset:+d} seconds"), f"{days:+d} days",
                         f"{-offset:+d} seconds")
