"""The one-pass refresh of rule tags and segments (`onepass`) against evaluating each definition alone.

The same random members, orders, events, manual tags, merges and profile changes are played twice over
several days: once refreshed definition by definition (`tags.refresh_one` in name order, then
`evaluate.apply` in dependency order: the path `orchard refresh` took before), once through
`tags.refresh` and `service.refresh`. Everything either writes must be equal: assignments, tag
history, spells with their times and causes, size history, flips, sizes. The definitions read each
other across batches (a tag reading an earlier tag, one reading a later tag, segments of segments and
of tags), have flips with and without a data-only gate, absences, windows, consents.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import pytest
from sqlalchemy import select, text

from orchard import db
from orchard.events.models import Event, Order, OrderLine
from orchard.members.models import Consent, Member, MemberAggregate, MemberTag, Tag
from orchard.segments import evaluate, onepass, service, tags
from orchard.segments.models import Segment
from tests.conftest import wipe_tables
from tests.segments.helpers import ADMIN, NOW

CATEGORIES = ["运动鞋", "美妆", "服装"]
RECENT = {"field": "days_since_last_order", "op": "lte", "value": 30}

#: Rule tags, in the order they are defined (name order is their refresh order): c reads a (an earlier
#: tag: a later batch), d reads e (a later tag: the state before this refresh, in the same batch).
TAGS = [
    ("a_big", {"field": "total_spend_fen", "op": "gte", "value": 20_000}),
    ("b_viewer", {"event": "product_viewed", "last_days": 14, "op": "gte", "value": 2,
                  "where": [{"prop": "category", "op": "eq", "value": "运动鞋"}]}),
    ("c_big_recent", {"all": [{"tag": "a_big"}, {"field": "days_since_last_order", "op": "lte", "value": 60}]}),
    ("e_no_order", {"event": "$order", "last_days": 20, "op": "eq", "value": 0}),
    ("d_reads_e", {"any": [{"tag": "e_no_order"}, {"field": "region", "op": "eq", "value": "上海"}]}),
    ("g_beauty", {"event": "$order", "last_days": 60, "op": "gte", "value": 1,
                  "where": [{"prop": "category", "op": "eq", "value": "美妆"}]}),
    ("f_multi", {"event": "$order", "last_days": 365, "measure": "distinct", "prop": "category", "op": "gte",
                 "value": 2}),
]

#: Saved segments: two levels of segments of segments, tags, flips gated and not.
SEGMENTS = [
    ("recent", RECENT),
    ("big_recent", {"all": [{"tag": "a_big"}, {"field": "days_since_last_order", "op": "lte", "value": 45}]}),
    ("viewers", {"event": "product_viewed", "last_days": 7, "op": "gte", "value": 1}),
    ("live_none", {"all": [{"event": "live_attended", "last_days": 30, "op": "eq", "value": 0},
                           {"field": "gender", "op": "eq", "value": "female"}]}),
    ("sms_lapsed", {"all": [{"consent": "sms"}, {"field": "days_since_last_order", "op": "gte", "value": 20},
                            {"not": {"field": "reduce_disturbance", "op": "eq", "value": True}}]}),
    ("beauty_buyers", {"event": "$order", "last_days": 30, "op": "gte", "value": 1,
                       "where": [{"prop": "category", "op": "eq", "value": "美妆"}]}),
    ("two_big_orders", {"event": "$order", "last_days": 60, "op": "gte", "value": 2,
                        "where": [{"prop": "amount_fen", "op": "gte", "value": 9_000}]}),
    ("of_recent", {"any": [{"segment": "recent"}, {"tag": "d_reads_e"}]}),
    ("new_not_of", {"all": [{"not": {"segment": "of_recent"}},
                            {"field": "joined_at", "op": "within_last_days", "value": 60}]}),
    ("bday", {"any": [{"field": "birthday", "op": "within_next_days", "value": 5}, {"segment": "viewers"}]}),
]

DAYS = [0, 1, 2, 5, 31]


def _order(s, rng: random.Random, member_id: int, at: dt.datetime) -> None:
    amount = rng.choice([500, 3_000, 9_000, 25_000])
    o = Order(source="t", external_id=f"{member_id}-{at.isoformat()}-{rng.random()}", body_hash="x",
              member_id=member_id, amount_fen=amount, paid_at=at, status="paid")
    s.add(o)
    s.flush()
    s.add(OrderLine(order_id=o.id, line_no=1, category=rng.choice(CATEGORIES), quantity=1, unit_price_fen=amount,
                    amount_fen=amount))
    a = s.get(MemberAggregate, member_id)
    a.order_count += 1
    a.total_spend_fen += amount
    a.first_order_at = min(a.first_order_at or at, at)
    a.last_order_at = max(a.last_order_at or at, at)


def _event(s, rng: random.Random, member_id: int, at: dt.datetime) -> None:
    s.add(Event(source="t", external_id=f"e{member_id}-{at.isoformat()}-{rng.random()}", body_hash="x",
                member_id=member_id, name=rng.choice(["product_viewed", "product_viewed", "live_attended"]),
                occurred_at=at, properties={"category": rng.choice(CATEGORIES)}))


def _members(s, rng: random.Random, now: dt.datetime, n: int) -> None:
    for _ in range(n):
        m = Member(name=f"m{rng.random():.12f}", joined_at=now - dt.timedelta(days=rng.randint(0, 120)),
                   gender=rng.choice(["female", "male"]), region=rng.choice(["上海", "杭州"]),
                   birthday=(now + dt.timedelta(days=rng.randint(-3, 12))).date().replace(year=1990)
                   if rng.random() < 0.5 else None, reduce_disturbance=rng.random() < 0.2)
        s.add(m)
        s.flush()
        s.add(MemberAggregate(member_id=m.id, order_count=0, total_spend_fen=0, refund_fen=0))
        s.flush()
        for _ in range(rng.choice([0, 0, 1, 2, 4])):
            _order(s, rng, m.id, now - dt.timedelta(days=rng.randint(0, 80), hours=rng.randint(0, 23)))
        for _ in range(rng.choice([0, 1, 3])):
            _event(s, rng, m.id, now - dt.timedelta(days=rng.randint(0, 20), hours=rng.randint(0, 23)))
        if rng.random() < 0.5:
            s.add(Consent(member_id=m.id, channel="sms", purpose="marketing", granted=True))
    s.flush()


def _changes(s, rng: random.Random, now: dt.datetime) -> None:
    """A day's changes: new members, orders and events, manual tags given and taken, a merge, moves."""
    ids = list(s.scalars(select(Member.id).where(Member.status == "active").order_by(Member.id)))
    _members(s, rng, now, 4)
    for mid in rng.sample(ids, 8):
        _order(s, rng, mid, now - dt.timedelta(hours=rng.randint(1, 30)))
    for mid in rng.sample(ids, 8):
        _event(s, rng, mid, now - dt.timedelta(hours=rng.randint(1, 30)))
    tag_ids = list(s.scalars(select(Tag.id).order_by(Tag.id)))
    for mid in rng.sample(ids, 3):  # staff give a rule tag by hand (a manual one is never taken away)
        tid = rng.choice(tag_ids)
        row = s.get(MemberTag, (mid, tid))
        if row is None:
            s.add(MemberTag(member_id=mid, tag_id=tid, source="manual", added_by="staff:1", added_at=now))
        else:
            row.source = "manual"
    manual = s.scalars(select(MemberTag).where(MemberTag.source == "manual").order_by(
        MemberTag.member_id, MemberTag.tag_id)).all()
    if manual:
        s.delete(rng.choice(manual))
    for mid in rng.sample(ids, 2):
        member = s.get(Member, mid)
        member.region = "杭州" if member.region == "上海" else "上海"
    loser, survivor = rng.sample(ids, 2)
    merged = s.get(Member, loser)
    merged.status, merged.merged_into_id = "merged", survivor
    s.flush()


def _single(s, now: dt.datetime) -> None:
    """Each definition alone, in the order `orchard refresh` used before the one-pass path."""
    for tag in s.scalars(select(Tag).where(Tag.source == "rule").order_by(Tag.name)):
        tags.refresh_one(s, tag, now=now)
    for segment in service.dependency_order(list(s.scalars(select(Segment).where(Segment.status == "active")))):
        evaluate.apply(s, segment, now=now, cause="refresh")


def _batched(s, now: dt.datetime) -> None:
    tags.refresh(s, now=now)
    service.refresh(s, now=now)


def _snapshot(s) -> dict[str, object]:
    """Everything a refresh writes, by member name (ids are not compared), as multisets."""
    q = {
        "member_tags": "SELECT m.name, t.name, mt.source, mt.added_by, mt.added_at FROM member_tags mt "
                       "JOIN members m ON m.id = mt.member_id JOIN tags t ON t.id = mt.tag_id",
        "tag_changes": "SELECT m.name, t.name, c.change, c.source, c.actor, c.at FROM tag_changes c "
                       "JOIN members m ON m.id = c.member_id JOIN tags t ON t.id = c.tag_id",
        "spells": "SELECT g.code, m.name, x.entered_at, x.entered_by, x.exited_at, x.exited_by "
                  "FROM segment_memberships x JOIN members m ON m.id = x.member_id "
                  "JOIN segments g ON g.id = x.segment_id",
        "sizes": "SELECT g.code, z.at, z.size, z.entered, z.exited, z.cause FROM segment_sizes z "
                 "JOIN segments g ON g.id = z.segment_id",
        "flips": "SELECT g.code, m.name, f.flip_at FROM segment_flips f JOIN members m ON m.id = f.member_id "
                 "JOIN segments g ON g.id = f.segment_id",
        "segments": "SELECT code, size, refreshed_at, next_refresh_at FROM segments",
        "tags": "SELECT name, refreshed_at FROM tags",
    }
    return {k: Counter(tuple(str(v) for v in row) for row in s.execute(text(sql))) for k, sql in q.items()}


def _play(seed: int, refresh) -> list[dict[str, object]]:
    rng = random.Random(seed)
    with db.transaction() as s:
        _members(s, rng, NOW, 50)
        for name, definition in TAGS:
            tags.define(s, principal=ADMIN, name=name, definition=definition, apply_now=False)
        for code, definition in SEGMENTS:
            service.create(s, principal=ADMIN, code=code, name=code, definition=definition, refresh_now=False)
    out = []
    for day in DAYS:
        now = NOW + dt.timedelta(days=day, minutes=day)
        if day:
            with db.transaction() as s:
                _changes(s, rng, now)
        with db.transaction() as s:
            refresh(s, now)
        with db.transaction(readonly=True) as s:
            out.append(_snapshot(s))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_one_pass_refresh_equals_each_definition_alone(clean_db, seed):
    single = _play(seed, _single)
    wipe_tables()
    batched = _play(seed, _batched)
    for day, (a, b) in zip(DAYS, zip(single, batched, strict=True), strict=True):
        for key in a:
            assert a[key] == b[key], f"day {day}: {key} differs"
    # The scenario exercises what it claims: entries, exits, flips moved and kept, manual tags, history.
    last = single[-1]
    assert any(row[4] != "None" for row in last["spells"])  # someone exited
    assert any(row[2] == "removed" for row in last["tag_changes"])
    assert last["flips"] and any(row[2] == "manual" for row in last["member_tags"])
    assert len({row[0] for row in last["spells"]}) == len(SEGMENTS)


def test_batches_split_only_before_a_definition_that_reads_its_own_batch():
    reads = {"a": set(), "b": {"z"}, "c": {"a"}, "d": {"b", "x"}, "e": set()}
    assert onepass.batches(list(reads), reads.__getitem__) == [["a", "b"], ["c", "d", "e"]]
    assert onepass.batches([], reads.__getitem__) == []


def test_batches_hold_at_most_one_mask_of_definitions():
    """Each definition of a batch is one bit of a BIGINT mask: a batch never outgrows it."""
    names = [f"t{i:03d}" for i in range(130)]
    split = onepass.batches(names, lambda _: set())
    assert [len(b) for b in split] == [onepass.MAX_BATCH, onepass.MAX_BATCH, 130 - 2 * onepass.MAX_BATCH]
    assert onepass.MAX_BATCH <= 62 and sum(split, []) == names
    reads = {"a": set(), "b": set(), "c": {"a"}}
    assert onepass.batches(list(reads), reads.__getitem__, size=1) == [["a"], ["b"], ["c"]]
