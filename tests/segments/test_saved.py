"""Saved segments over HTTP and the service: spells on refresh, size history, flips at their computed
moment, real-time entry after an ingested order, cycles, archive, scope and the member filter."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from orchard import db
from orchard.segments import service
from orchard.segments.models import DirtyMember, SegmentFlip, SegmentMembership
from tests.factories import headers, make_org, order, token_for
from tests.segments.helpers import SH, local, member

URL = "/api/v1/segments"
RECENT = {"field": "days_since_last_order", "op": "lte", "value": 30}


@pytest.fixture
def admin(client):
    make_org()
    return headers(token_for(client, "admin"))


def save(client, admin, code, definition, **kw):
    r = client.post(URL, headers=admin, json={"code": code, "name": code, "definition": definition, **kw})
    assert r.status_code == 201, r.text
    return r.json()


def current(code: str) -> set[int]:
    with db.transaction(readonly=True) as s:
        from orchard.segments.models import Segment

        sid = s.scalar(select(Segment.id).where(Segment.code == code))
        return set(s.scalars(select(SegmentMembership.member_id).where(
            SegmentMembership.segment_id == sid, SegmentMembership.exited_at.is_(None))))


def test_saved_segment_spells_sizes_and_flip(client, admin):
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as s:
        recent = member(s, "recent", orders=[(now - dt.timedelta(days=3), 10_000)])
        old = member(s, "old", orders=[(now - dt.timedelta(days=200), 10_000)])
        never = member(s, "never")
    seg = save(client, admin, "recent_buyers", RECENT)
    assert seg["size"] == 1 and seg["version"] == 1 and seg["depends_on"] == []
    assert current("recent_buyers") == {recent}
    # One flip row: the recent buyer leaves at local midnight of day 31 after the order.
    with db.transaction(readonly=True) as s:
        flips = {f.member_id: f.flip_at for f in s.scalars(select(SegmentFlip))}
    last = (now - dt.timedelta(days=3)).astimezone(SH).date()
    assert flips == {recent: dt.datetime.combine(last + dt.timedelta(days=31), dt.time(), SH).astimezone(dt.UTC)}
    # A sweep before the flip changes nothing; at the flip the member exits, found by the sweep alone.
    with db.transaction() as s:
        assert service.sweep(s, now=flips[recent] - dt.timedelta(seconds=1))["members"] == 0
    with db.transaction() as s:
        out = service.sweep(s, now=flips[recent])
    assert out["flipped"] == 1 and out["members"] == 1
    assert current("recent_buyers") == set()
    with db.transaction(readonly=True) as s:
        spell = s.scalars(select(SegmentMembership).where(SegmentMembership.member_id == recent)).one()
        assert (spell.entered_by, spell.exited_by, spell.exited_at) == ("refresh", "realtime", flips[recent])
    sizes = client.get(f"{URL}/recent_buyers/sizes", headers=admin).json()
    assert [(x["size"], x["entered"], x["exited"], x["cause"]) for x in sizes] == [(0, 0, 1, "realtime"),
                                                                                   (1, 1, 0, "refresh")]
    changes = client.get(f"{URL}/recent_buyers/changes", headers=admin).json()["items"]
    assert [(c["member_id"], c["exited_by"]) for c in changes] == [(recent, "realtime")]
    del old, never


def test_an_ingested_order_enters_the_member_in_real_time(client, admin):
    save(client, admin, "buyers", {"field": "order_count", "op": "gte", "value": 1})
    r = client.post("/api/v1/orders", headers=admin,
                    json=order("o-1", paid_at=dt.datetime.now(SH).replace(microsecond=0).isoformat()))
    assert r.status_code == 201, r.text
    member_id = r.json()["member_id"]
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(DirtyMember.member_id)) == member_id
    assert current("buyers") == set()
    with db.transaction() as s:
        out = service.sweep(s)
    assert out["members"] == 1 and out["segments"][0]["entered"] == 1
    assert current("buyers") == {member_id}
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(DirtyMember.member_id)) is None
    listed = client.get("/api/v1/members", params={"segment": "buyers"}, headers=admin).json()["items"]
    assert [m["id"] for m in listed] == [member_id]


def test_a_member_requeued_during_a_sweep_is_not_lost(client, admin):
    from orchard.segments import dirty

    with db.transaction() as s:
        mid, other = member(s, "x"), member(s, "y")
        dirty.mark(s, [mid, other], at=local(2026, 1, 1))
    with db.transaction() as s:
        service._batch_table(s, limit=10)
        dirty.mark(s, [mid], at=local(2026, 1, 2))  # a change after the sweep read the queue
        service._forget_handled(s)
    with db.transaction(readonly=True) as s:
        assert list(s.execute(select(DirtyMember.member_id, DirtyMember.since))) == [(mid, local(2026, 1, 2))]


def test_segments_of_segments_cycles_and_archive(client, admin):
    with db.transaction() as s:
        a = member(s, "a", orders=[(dt.datetime.now(dt.UTC), 100)])
        member(s, "b")
    save(client, admin, "buyers", {"field": "order_count", "op": "gte", "value": 1})
    nested = save(client, admin, "buyers_female_or_any", {"any": [{"segment": "buyers"},
                                                                 {"field": "gender", "op": "eq", "value": "female"}]})
    assert nested["depends_on"] == ["buyers"] and current("buyers_female_or_any") == {a}
    r = client.patch(f"{URL}/buyers", headers=admin, json={"definition": {"segment": "buyers_female_or_any"}})
    assert r.status_code == 422 and "contain each other" in r.json()["errors"][0]["reason"]
    r = client.patch(f"{URL}/buyers", headers=admin, json={"definition": {"segment": "buyers"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "$.definition.segment"
    assert client.post(f"{URL}/buyers/archive", headers=admin).json()["code"] == "segment.in_use"
    out = client.post(f"{URL}/buyers_female_or_any/archive", headers=admin).json()
    assert out["status"] == "archived" and out["size"] == 0
    assert current("buyers_female_or_any") == set()
    r = client.patch(f"{URL}/buyers", headers=admin, json={"definition": {"field": "order_count", "op": "gte",
                                                                          "value": 2}})
    assert r.json()["version"] == 2 and r.json()["size"] == 0


def test_preview_and_schema_over_http(client, admin):
    with db.transaction() as s:
        member(s, "a", gender="female")
        member(s, "b", gender="male")
    r = client.post(f"{URL}/preview", headers=admin,
                    json={"definition": {"all": [{"field": "gender", "op": "eq", "value": "female"}]}})
    assert r.status_code == 200 and r.json()["count"] == 1
    assert r.json()["conditions"] == [{"path": "$.all[0]", "count": 1,
                                       "condition": {"field": "gender", "op": "eq", "value": "female"}}]
    bad = client.post(f"{URL}/preview", headers=admin, json={"definition": {"all": [{"field": "x", "op": "eq"}]}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "$.all[0].field"
    schema = client.get(f"{URL}/schema", headers=admin).json()
    assert schema["title"] == "Orchard segment definition" and any(f["field"] == "rfm_class"
                                                                   for f in schema["x-fields"])


def test_store_staff_see_their_segments_and_members_only(client, admin):
    save(client, admin, "hq_all", {"field": "order_count", "op": "gte", "value": 0})
    manager = headers(token_for(client, "store_manager", stores=["SH001"]))
    assert client.get(URL, headers=manager).json() == []
    r = client.post(URL, headers=manager, json={"code": "mine", "name": "mine", "owner_unit_code": "SH001",
                                                "definition": {"field": "order_count", "op": "gte", "value": 0}})
    assert r.status_code == 201, r.text
    r = client.post(URL, headers=manager, json={"code": "theirs", "name": "x", "owner_unit_code": "BJ001",
                                                "definition": {"field": "order_count", "op": "gte", "value": 0}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "owner_unit_code"
    assert [s["code"] for s in client.get(URL, headers=manager).json()] == ["mine"]
    assert client.get(f"{URL}/hq_all", headers=manager).status_code == 404


def test_flips_only_for_members_passing_the_data_only_conjuncts(client, admin):
    """A member who fails a conjunct that only its own data can change (a tag) stays outside whatever
    the clock does: it gets no flip row. When staff tag it, the sweep enters it and stores its flip."""
    from orchard.members import notes_tags
    from tests.segments.helpers import ADMIN, tag

    now = dt.datetime.now(dt.UTC)
    with db.transaction() as s:
        vip = member(s, "vip", orders=[(now - dt.timedelta(days=3), 10_000)])
        plain = member(s, "plain", orders=[(now - dt.timedelta(days=5), 10_000)])
        tag(s, vip, "VIP")
    definition = {"all": [{"tag": "VIP"}, RECENT]}
    save(client, admin, "vip_recent", definition)
    save(client, admin, "vip_or_recent", {"any": [{"tag": "VIP"}, RECENT]})
    with db.transaction(readonly=True) as s:
        from orchard.segments.models import Segment

        codes = dict(s.execute(select(Segment.id, Segment.code)).all())
        flips = {(codes[f.segment_id], f.member_id) for f in s.scalars(select(SegmentFlip))}
    # `any` has no data-only gate: both recent buyers keep a flip there.
    assert flips == {("vip_recent", vip), ("vip_or_recent", vip), ("vip_or_recent", plain)}
    assert current("vip_recent") == {vip}
    with db.transaction() as s:
        notes_tags.add_tag(s, principal=ADMIN, member_id=plain, name="VIP")
    with db.transaction() as s:
        service.sweep(s)
    assert current("vip_recent") == {vip, plain}
    with db.transaction(readonly=True) as s:
        sid = next(i for i, c in codes.items() if c == "vip_recent")
        assert set(s.scalars(select(SegmentFlip.member_id).where(SegmentFlip.segment_id == sid))) == {vip, plain}


def test_data_only_conditions():
    from orchard.segments import compiler as C
    from orchard.segments import language as lang

    def static(d):
        return C.data_only(lang.parse(d))

    assert static({"tag": "VIP"}) and static({"consent": "sms"}) and static({"identity": "phone"})
    assert static({"field": "order_count", "op": "gte", "value": 2})
    assert static({"field": "attributes.city", "op": "eq", "value": "上海"})
    assert static({"field": "birthday", "op": "before", "value": "2000-01-01"})
    assert static({"not": {"any": [{"tag": "A"}, {"field": "rfm_class", "op": "eq", "value": "important_value"}]}})
    assert not static({"field": "birthday", "op": "within_next_days", "value": 3})
    assert not static(RECENT)
    assert not static({"field": "joined_at", "op": "within_last_days", "value": 3})
    assert not static({"field": "points_expiring", "within_days": 30, "op": "gte", "value": 1})
    assert not static({"field": "tier", "op": "eq", "value": "GOLD"})
    assert not static({"segment": "x"})
    assert not static({"event": "product_viewed", "last_days": 30})
    assert not static({"all": [{"tag": "A"}, RECENT]})


def test_refresh_rewrites_only_changed_flips_and_ends_as_a_fresh_computation(client, admin):
    """A refresh writes only the flip rows that differ; what it leaves must equal flips computed from
    nothing: moved (a new order), dropped (the member left the gate), added (a new member) and kept."""
    from orchard.members.models import MemberAggregate
    from orchard.segments.models import Segment

    now = dt.datetime.now(dt.UTC)
    with db.transaction() as s:
        moved = member(s, "moved", orders=[(now - dt.timedelta(days=3), 10_000)], region="上海")
        gone = member(s, "gone", orders=[(now - dt.timedelta(days=5), 10_000)], region="上海")
        kept = member(s, "kept", orders=[(now - dt.timedelta(days=9), 10_000)], region="上海")
    save(client, admin, "sh_recent", {"all": [{"field": "region", "op": "eq", "value": "上海"}, RECENT]})

    def flips() -> dict[int, dt.datetime]:
        with db.transaction(readonly=True) as s:
            return {f.member_id: f.flip_at for f in s.scalars(select(SegmentFlip))}

    before = flips()
    assert set(before) == {moved, gone, kept}
    with db.transaction() as s:
        s.get(MemberAggregate, moved).last_order_at = now - dt.timedelta(hours=1)
        from orchard.members.models import Member

        s.get(Member, gone).region = "杭州"
        added = member(s, "added", orders=[(now - dt.timedelta(days=2), 10_000)], region="上海")
    with db.transaction() as s:
        service.refresh(s)
    after = flips()
    assert set(after) == {moved, kept, added} and after[kept] == before[kept] and after[moved] != before[moved]
    with db.transaction() as s:
        s.execute(SegmentFlip.__table__.delete())
        service.refresh(s)
    assert flips() == after
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(Segment.size).where(Segment.code == "sh_recent")) == 3
