"""The points ledger on the real databases: lots drawn soonest-expiring first, pending and expired
points never spendable, idempotent commands, the expiry pass, and verify catching a broken ledger."""

import datetime as dt

import pytest
from sqlalchemy import select, text

from orchard import db
from orchard.errors import Conflict
from orchard.loyalty.expiry import expire_due
from orchard.loyalty.ledger import Insufficient
from orchard.loyalty.models import PointsAllocation, PointsEntry, PointsLot
from tests.factories import make_org
from tests.loyalty.helpers import T0, member, post, summary, violations

DAY = dt.timedelta(days=1)


def test_spends_draw_on_the_soonest_expiring_lot_first(clean_db):
    m = member()
    late = post(m, 100, expires_at=T0 + 300 * DAY)
    never = post(m, 50)
    soon = post(m, 30, expires_at=T0 + 10 * DAY)
    spend = post(m, -60)
    with db.transaction(readonly=True) as s:
        drawn = dict(s.execute(select(PointsLot.entry_id, PointsAllocation.amount).join(
            PointsAllocation, PointsAllocation.lot_id == PointsLot.id).where(PointsAllocation.entry_id == spend[0]))
            .all())
    assert drawn == {soon[0]: 30, late[0]: 30}
    assert never[0] not in drawn
    assert spend[2] == 120 and summary(m).available == 120
    assert violations() == {}


def test_a_short_balance_is_refused_and_nothing_is_written(clean_db):
    m = member()
    post(m, 40)
    with pytest.raises(Insufficient) as err:
        post(m, -41)
    assert err.value.extra["code"] == "points.insufficient" and err.value.extra["available"] == 40
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(text("count(*)")).select_from(PointsEntry)) == 1
    assert summary(m).balance == 40


def test_pending_and_expired_points_are_held_but_not_spendable(clean_db):
    m = member()
    post(m, 100, pending_until=T0 + 7 * DAY)
    post(m, 20, expires_at=T0 + DAY)
    later = T0 + 2 * DAY
    s = summary(m, now=later)
    assert (s.balance, s.available, s.pending) == (120, 0, 100)  # expired, not yet swept: never spendable
    with pytest.raises(Insufficient):
        post(m, -1, now=later)
    assert summary(m, now=T0 + 8 * DAY).available == 100


def test_a_retry_returns_the_first_entry_and_another_body_is_refused(clean_db):
    m = member()
    post(m, 100)
    first = post(m, -30, external_id="POS-1")
    again = post(m, -30, external_id="POS-1")
    assert again[:3] == first[:3] and first[3] is True and again[3] is False
    assert summary(m).balance == 70
    with pytest.raises(Conflict) as err:
        post(m, -31, external_id="POS-1")
    assert err.value.extra["code"] == "points.id_reused"


def test_the_expiry_pass_expires_due_lots_once_in_one_entry_per_member(clean_db):
    a, b = member(), member()
    post(a, 100, expires_at=T0 + DAY)
    post(a, 50, expires_at=T0 + DAY / 2)
    post(a, 10, expires_at=T0 + 30 * DAY)
    post(b, 5, expires_at=T0 + DAY)
    post(a, -120)  # takes 50 (soonest) then 70 of the 100
    with db.transaction() as s:
        r = expire_due(s, now=T0 + 2 * DAY)
    assert (r.members, r.lots, r.points) == (2, 2, 35)
    with db.transaction() as s:
        assert expire_due(s, now=T0 + 2 * DAY).lots == 0
        kinds = s.execute(select(PointsEntry.member_id, PointsEntry.amount).where(PointsEntry.kind == "expire")).all()
    assert sorted(kinds) == sorted([(a, -30), (b, -5)])
    assert summary(a, now=T0 + 2 * DAY).balance == 10 and summary(b, now=T0 + 2 * DAY).balance == 0
    assert violations() == {}


def test_expiring_soon_is_listed_by_date(clean_db):
    m = member()
    post(m, 10, expires_at=T0 + 5 * DAY)
    post(m, 15, expires_at=T0 + 5 * DAY)
    post(m, 7, expires_at=T0 + 40 * DAY)
    post(m, 9, expires_at=T0 + 400 * DAY)
    assert summary(m).expiring == [(T0 + 5 * DAY, 25), (T0 + 40 * DAY, 7)]


def test_verify_names_what_a_tampered_ledger_breaks(clean_db):
    make_org()
    m = member()
    post(m, 100)
    post(m, -30)
    with db.transaction() as s:
        s.execute(text("UPDATE points_lots SET remaining = remaining + 5"))
    assert set(violations()) == {"balance_is_lots_less_debt", "lot_remaining_is_amount_less_allocations"}
    with db.transaction() as s:
        s.execute(text("UPDATE points_lots SET remaining = remaining - 5"))
        s.execute(text("UPDATE points_accounts SET balance = balance + 1"))
    assert set(violations()) == {"balance_is_sum_of_entries", "balance_is_lots_less_debt"}


def test_a_lot_expires_at_its_expiry_instant(clean_db):
    """At exactly `expires_at` the points are gone, for the pass as for spending (on SQLite the
    instant is compared as stored text, so the parameter must be stored the same way)."""
    m = member()
    post(m, 10, expires_at=T0 + DAY)
    assert summary(m, now=T0 + DAY).available == 0
    with db.transaction() as s:
        assert expire_due(s, now=T0 + DAY).points == 10
    assert summary(m, now=T0 + DAY).balance == 0
    with db.transaction(readonly=True) as s:
        at = s.scalar(select(PointsEntry.created_at).where(PointsEntry.kind == "expire"))
    assert at == T0 + DAY
    assert violations() == {}
