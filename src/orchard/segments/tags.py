"""Rule tags: a tag whose members are given by a segment definition, refreshed with the segments.

A refresh adds the tag (source 'rule') to matching members who do not carry it at all, and removes
only 'rule' assignments from members who no longer match: a tag given by staff or an import is never
taken away by a rule. Every add and remove is written to `tag_changes` with the rule as actor, in the
same set-based statements.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    Select,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    select,
    text,
)
from sqlalchemy.orm import Session

from orchard import db
from orchard.audit.service import record
from orchard.auth.service import Principal
from orchard.db import UTCDateTime
from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.kit.clock import utcnow
from orchard.members.models import TAG_KINDS, MemberTag, Tag, TagChange
from orchard.segments import compiler as C
from orchard.segments import evaluate, language, onepass, order_summary
from orchard.segments.evaluate import NEW


def is_builtin(tag: Tag) -> bool:
    """Built-in preference tags carry {"builtin": name}: the scoring package computes them."""
    return isinstance(tag.definition, dict) and "builtin" in tag.definition


def define(session: Session, *, principal: Principal, name: str, kind: str = "behaviour",
           description: str | None = None, definition: Any = None, apply_now: bool = True) -> Tag:
    """Create a tag in the catalog: a rule tag when `definition` is given (applied at once), else a
    manual one."""
    if kind not in TAG_KINDS:
        raise InvalidInput.field("kind", "one of " + ", ".join(TAG_KINDS))
    if session.scalar(select(Tag.id).where(Tag.name == name)) is not None:
        raise Conflict(f"a tag named {name!r} exists", code="tag.name_taken")
    canonical = None
    if definition is not None:
        canonical = language.dump(evaluate.compile_definition(session, definition, root="$.definition").tree)
    tag = Tag(name=name, kind=kind, description=description, source="rule" if canonical else "manual",
              created_at=utcnow())
    if canonical is not None:  # unset, not None: the JSON type would store a JSON null, not SQL NULL
        tag.definition = canonical
    session.add(tag)
    session.flush()
    record(session, actor=principal.actor, action="tag.define", entity="tag", entity_id=tag.id,
           data={"name": name, "kind": kind, "definition": canonical})
    if canonical is not None and apply_now:
        refresh_one(session, tag, now=tag.created_at)
    return tag


def get(session: Session, name: str) -> Tag:
    tag = session.scalar(select(Tag).where(Tag.name == name))
    if tag is None:
        raise NotFound("tag not found", code="tag.not_found")
    return tag


#: The members a rule tag refresh adds the tag to, and those it removes it from: computed once each,
#: then written from. Each anti-join against the members matching the rule (up to every member) was
#: evaluated three times before — to count, to write the history, to write the assignments.
ADDING = Table("_tag_adding", MetaData(), Column("member_id", BigInteger))
STALE = Table("_tag_stale", MetaData(), Column("member_id", BigInteger))


def refresh_one(session: Session, tag: Tag, *, now: dt.datetime) -> dict[str, Any]:
    """Refresh one rule tag on its own (a new rule applied at once; `refresh` evaluates many together)."""
    db.batch_settings(session)
    compiled = evaluate.compile_definition(session, tag.definition, now=now)
    evaluate.temp_table(session)
    session.execute(insert(NEW).from_select(["member_id"], C.members_query(compiled.condition, compiled.ctx)))
    MT = MemberTag.__table__
    has_any = exists().where(MT.c.member_id == NEW.c.member_id, MT.c.tag_id == tag.id)
    stale = and_(MT.c.tag_id == tag.id, MT.c.source == "rule", ~exists().where(NEW.c.member_id == MT.c.member_id))
    result = _write(session, tag, select(NEW.c.member_id).where(~has_any), select(MT.c.member_id).where(stale),
                    now=now, postgresql=compiled.ctx.dialect == "postgresql")
    evaluate.drop_temp_table(session, NEW.name)
    return result


def _write(session: Session, tag: Tag, adding: Select, stale: Select, *, now: dt.datetime,
           postgresql: bool) -> dict[str, Any]:
    """Add the tag to the `adding` members and take the rule's assignment from the `stale` ones, with
    their history; returns the counts and the tag's size."""
    actor = f"rule:{tag.name}"[:64]
    MT, TC = MemberTag.__table__, TagChange.__table__
    for table in (ADDING, STALE):
        evaluate.temp_table(session, table.name, primary_key=False)
    session.execute(insert(ADDING).from_select(["member_id"], adding))
    session.execute(insert(STALE).from_select(["member_id"], stale))
    if postgresql:
        # Unanalyzed, a temp table is guessed at 200 distinct ids: the DELETE below then compared each
        # stale member with every member carrying the tag (a nested loop: 150 s for 6,000 of 800k).
        session.execute(text(f"ANALYZE {ADDING.name}, {STALE.name}"))
    added = session.scalar(select(func.count()).select_from(ADDING)) or 0
    removed = session.scalar(select(func.count()).select_from(STALE)) or 0
    at = literal(now, UTCDateTime())
    for ids, change in ((ADDING, "added"), (STALE, "removed")):
        session.execute(insert(TC).from_select(["member_id", "tag_id", "change", "source", "actor", "at"], select(
            ids.c.member_id, literal(tag.id), literal(change), literal("rule"), literal(actor), at)))
    session.execute(insert(MT).from_select(["member_id", "tag_id", "source", "added_by", "added_at"], select(
        ADDING.c.member_id, literal(tag.id), literal("rule"), literal(actor), at)))
    session.execute(delete(MT).where(MT.c.tag_id == tag.id, MT.c.source == "rule",
                                     MT.c.member_id.in_(select(STALE.c.member_id))))
    for table in (ADDING, STALE):
        evaluate.drop_temp_table(session, table.name)
    tag.refreshed_at = now
    session.flush()
    return {"tag": tag.name, "added": added, "removed": removed,
            "size": session.scalar(select(func.count()).select_from(MT).where(MT.c.tag_id == tag.id)) or 0}


def refresh_batch(session: Session, batch: list[Tag], *, now: dt.datetime) -> list[dict[str, Any]]:
    """Refresh rule tags none of which reads another of them, in one pass over members (`onepass`):
    each tag then writes only the members whose assignment changes. Order windows on categories read
    member_category_last: the caller brings it up to date first (`order_summary.update`, as `refresh`
    does)."""
    db.batch_settings(session)
    state = onepass.tag_state([tag.id for tag in batch])
    probes, joins = [], set()
    for i, tag in enumerate(batch):
        compiled = evaluate.compile_definition(session, tag.definition, now=now, order_summary=True)
        probes.append(onepass.tag_probe(f"t{i}", compiled.condition, state, i))
        joins |= compiled.ctx.joins
    changes = onepass.run(session, probes, joins, [state])
    pg = session.get_bind().dialect.name == "postgresql"
    MT = MemberTag.__table__
    results = []
    for tag, probe in zip(batch, probes, strict=True):
        b, has = probe.col(changes, "b"), probe.col(changes, "has")
        ids = select(changes.c.member_id)
        given = exists().where(MT.c.member_id == changes.c.member_id, MT.c.tag_id == tag.id, MT.c.source != "rule")
        results.append(_write(session, tag, ids.where(b, not_(has)), ids.where(not_(b), has, ~given),
                              now=now, postgresql=pg))
    onepass.drop(session)
    return results


def refresh(session: Session, *, now: dt.datetime | None = None, names: list[str] | None = None) -> list[dict]:
    """Refresh rule tags (all, or the named ones), built-in preference tags excepted, in name order —
    in batches of tags that read none of the others in their batch (`onepass.batches`), each batch in
    one pass over members."""
    now = now or utcnow()
    stmt = select(Tag).where(Tag.source == "rule").order_by(Tag.name)
    if names:
        stmt = stmt.where(Tag.name.in_(names))
    by_name = {t.name: t for t in session.scalars(stmt) if not is_builtin(t)}
    trees = {name: language.parse(t.definition) for name, t in by_name.items()}
    if order_summary.needed(trees.values()):
        order_summary.update(session, now=now)
    reads = {name: onepass.references(tree, language.Tag_) for name, tree in trees.items()}
    return [result for batch in onepass.batches(list(by_name), reads.__getitem__)
            for result in refresh_batch(session, [by_name[n] for n in batch], now=now)]


def history(session: Session, *, tag_id: int | None = None, member_id: int | None = None,
            limit: int = 100) -> list[TagChange]:
    stmt = select(TagChange).order_by(TagChange.id.desc()).limit(limit)
    if tag_id is not None:
        stmt = stmt.where(TagChange.tag_id == tag_id)
    if member_id is not None:
        stmt = stmt.where(TagChange.member_id == member_id)
    return list(session.scalars(stmt))
