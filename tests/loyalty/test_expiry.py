"""The expiry pass records each expiry on the lots it empties (`expired`, `expire_entry_id`; migration
0017) instead of allocation rows. On both databases: such a ledger verifies clean, a ledger whose
earlier expiries are allocation rows (the pass before 0017) still verifies and reports, a tampered
expiry is caught, spends and cancelled spends after an expiry, debt repayment, month and year ends."""

import datetime as dt

import pytest
from sqlalchemy import func, select, text

from orchard import db
from orchard.loyalty import ledger, policy, reports
from orchard.loyalty.expiry import expire_due
from orchard.loyalty.models import PointsAllocation, PointsEntry, PointsLot
from orchard.org.models import OrgUnit
from tests.factories import make_org
from tests.loyalty.helpers import T0, expire_as_before_0017, member, post, summary, violations

DAY = dt.timedelta(days=1)
SH = dt.timezone(dt.timedelta(hours=8))


def lot_of(entry_id: int) -> PointsLot:
    with db.transaction(readonly=True) as s:
        lot = s.scalar(select(PointsLot).where(PointsLot.entry_id == entry_id))
        s.expunge(lot)
        return lot


def expire(now: dt.datetime):
    with db.transaction() as s:
        return expire_due(s, now=now)


def expire_entries() -> dict[int, tuple[int, int]]:
    """id → (member, amount) of every expire entry."""
    with db.transaction(readonly=True) as s:
        return {i: (m, a) for i, m, a in s.execute(select(PointsEntry.id, PointsEntry.member_id, PointsEntry.amount)
                                                   .where(PointsEntry.kind == "expire"))}


def allocation_count() -> int:
    with db.transaction(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(PointsAllocation))


def test_the_pass_records_each_expiry_on_the_lot_it_empties(clean_db):
    a, b = member(), member()
    big = post(a, 100, expires_at=T0 + DAY)[0]
    small = post(a, 50, expires_at=T0 + DAY / 2)[0]
    later = post(a, 10, expires_at=T0 + 30 * DAY)[0]
    other = post(b, 5, expires_at=T0 + DAY)[0]
    post(a, -120)  # 50 from the soonest lot, 70 of the 100
    before = allocation_count()
    r = expire(T0 + 2 * DAY)
    assert (r.members, r.lots, r.points) == (2, 2, 35)
    entries = {m: (i, n) for i, (m, n) in expire_entries().items()}
    assert {m: n for m, (_, n) in entries.items()} == {a: -30, b: -5}
    assert allocation_count() == before  # nothing per lot but the lot itself
    assert [(x.remaining, x.expired, x.expire_entry_id) for x in map(lot_of, (big, small, later, other))] == [
        (0, 30, entries[a][0]), (0, 0, None), (10, 0, None), (0, 5, entries[b][0])]
    assert violations() == {}
    assert expire(T0 + 2 * DAY).lots == 0
    assert summary(a, now=T0 + 2 * DAY).balance == 10 and summary(b, now=T0 + 2 * DAY).balance == 0


@pytest.mark.parametrize(("tamper", "broken"), [
    ("UPDATE points_lots SET expired = expired + 1 WHERE expire_entry_id IS NOT NULL",
     {"lot_remaining_is_amount_less_allocations", "debits_fully_allocated"}),
    ("UPDATE points_lots SET expired = expired - 1, remaining = remaining + 1 WHERE expire_entry_id IS NOT NULL",
     {"balance_is_lots_less_debt", "debits_fully_allocated"}),
    ("UPDATE points_lots SET expire_entry_id = NULL",
     {"lot_expiry_names_its_entry", "debits_fully_allocated"}),
    ("UPDATE points_lots SET expire_entry_id = (SELECT min(id) FROM points_entries) WHERE expire_entry_id IS NOT NULL",
     {"lot_expiry_names_its_entry", "debits_fully_allocated"}),
    ("UPDATE points_lots SET expired = 0 WHERE expire_entry_id IS NOT NULL",
     {"lot_expiry_names_its_entry", "lot_remaining_is_amount_less_allocations", "debits_fully_allocated"}),
])
def test_verify_catches_a_tampered_expiry(clean_db, tamper, broken):
    m = member()
    post(m, 100, expires_at=T0 + DAY)
    post(m, -40)
    expire(T0 + 2 * DAY)
    assert violations() == {}
    with db.transaction() as s:
        s.execute(text(tamper))
    assert set(violations()) == broken


def test_a_lot_naming_another_members_expiry_is_caught(clean_db):
    a, b = member(), member()
    post(a, 100, expires_at=T0 + DAY)
    post(b, 100, expires_at=T0 + DAY)
    expire(T0 + 2 * DAY)
    with db.transaction() as s:  # a's lot and b's lot swap entries: every amount still adds up
        s.execute(text("UPDATE points_lots SET expire_entry_id = (SELECT max(id) + min(id) FROM points_entries "
                       "WHERE kind = 'expire') - expire_entry_id"))
    assert set(violations()) == {"lot_expiry_names_its_entry", "debits_fully_allocated"}


def test_old_expiries_written_as_allocations_still_verify_and_report_by_store_and_month(clean_db):
    """May's expiry was written by the pass before 0017 (allocation rows), June's by this one (on
    the lots): both verify, and the liability report attributes both to the issuing store."""
    make_org()
    m = member("SH001")
    with db.transaction() as s:
        store = dict(s.query(OrgUnit.code, OrgUnit.id).all())

    def earn(points, code, when, expires):
        with db.transaction() as s:
            entry, _ = ledger.post(s, ledger.Command(
                member_id=m, amount=points, kind="earn", reason="t", source="t", external_id=f"{code}{when}",
                actor="t", store_id=store[code], expires_at=expires), now=when)
            return entry.id

    may = dt.datetime(2026, 5, 10, 12, tzinfo=SH)
    june = dt.datetime(2026, 6, 10, 12, tzinfo=SH)
    sh = earn(100, "SH001", dt.datetime(2026, 3, 1, 12, tzinfo=SH), may - DAY)
    gz = earn(60, "GZ001", dt.datetime(2026, 3, 2, 12, tzinfo=SH), june - DAY)
    gz_late = earn(40, "GZ001", dt.datetime(2026, 3, 3, 12, tzinfo=SH), None)
    post(m, -30, now=dt.datetime(2026, 4, 1, tzinfo=SH))  # 30 of the SH lot (soonest expiring)
    expire_as_before_0017(may)
    assert violations() == {}
    expire(june)
    assert violations() == {}
    assert (lot_of(sh).expired, lot_of(gz).expired, lot_of(gz_late).remaining) == (0, 60, 40)
    with db.transaction(readonly=True) as s:
        codes = {v: k for k, v in store.items()}
        rows = {(r.month, codes.get(r.store_id)): r for r in reports.liability(s, "2026-03", "2026-06")}
        after = {codes.get(r.store_id): r.outstanding for r in reports.liability(s, "2026-07", "2026-07")}
    assert (rows[("2026-05", "SH001")].expired, rows[("2026-05", "SH001")].outstanding) == (70, 0)
    assert ("2026-05", "GZ001") not in rows or rows[("2026-05", "GZ001")].expired == 0
    assert (rows[("2026-06", "GZ001")].expired, rows[("2026-06", "GZ001")].outstanding) == (60, 40)
    assert rows[("2026-04", "SH001")].spent == 30
    assert after == {"GZ001": 40}  # the opening balance subtracts both forms of expiry
    assert summary(m, now=june).balance == 40


def test_spends_after_an_expiry_and_a_spend_cancelled_into_an_expired_lot(clean_db):
    """A cancelled spend puts points back into a lot that expired meanwhile: never spendable, and the
    next pass expires them again — as an allocation row, since the lot already names its first expiry."""
    m = member()
    soon = post(m, 100, expires_at=T0 + 10 * DAY)[0]
    never = post(m, 100)[0]
    first_spend = post(m, -60, now=T0 + DAY)[0]  # from the soon lot
    expire(T0 + 11 * DAY)
    first_expiry = lot_of(soon).expire_entry_id
    assert (lot_of(soon).remaining, lot_of(soon).expired) == (0, 40)
    post(m, -30, now=T0 + 12 * DAY)  # only the lot that never expires is spendable
    assert lot_of(never).remaining == 70
    with db.transaction() as s:
        ledger.restore(s, spend=s.get(PointsEntry, first_spend), reason="取消", actor="test", now=T0 + 12 * DAY)
    assert (lot_of(soon).remaining, lot_of(soon).expired) == (60, 40)
    s = summary(m, now=T0 + 12 * DAY)
    assert (s.balance, s.available) == (130, 70)
    with pytest.raises(ledger.Insufficient):
        post(m, -71, now=T0 + 12 * DAY)
    assert violations() == {}
    r = expire(T0 + 13 * DAY)
    assert (r.members, r.lots, r.points) == (1, 1, 60)
    lot = lot_of(soon)
    assert (lot.remaining, lot.expired, lot.expire_entry_id) == (0, 40, first_expiry)
    second = max(expire_entries())
    with db.transaction(readonly=True) as s:
        paid = s.execute(select(PointsAllocation.lot_id, PointsAllocation.amount)
                         .where(PointsAllocation.entry_id == second)).all()
    assert paid == [(lot.id, 60)]
    assert summary(m, now=T0 + 13 * DAY).balance == 70
    assert violations() == {}
    assert expire(T0 + 13 * DAY).lots == 0


def test_debt_is_never_repaid_into_an_expiry(clean_db):
    """An expire entry has no allocation rows: a credit repaying debt must not take it for a debit
    that nothing paid."""
    m = member()
    post(m, 100, expires_at=T0 + DAY)
    expire(T0 + 2 * DAY)
    with db.transaction() as s:
        ledger.post(s, ledger.Command(member_id=m, amount=-50, kind="reverse", reason="退款", source="test-reverse",
                                      external_id="R1", actor="test", on_short="debt"), now=T0 + 3 * DAY)
    assert summary(m, now=T0 + 3 * DAY).debt == 50
    credit = post(m, 80, now=T0 + 4 * DAY)[0]
    s = summary(m, now=T0 + 4 * DAY)
    assert (s.balance, s.debt, s.available) == (30, 0, 30)
    with db.transaction(readonly=True) as s:
        kinds = s.execute(select(PointsEntry.kind, PointsAllocation.amount).join(
            PointsAllocation, PointsAllocation.entry_id == PointsEntry.id).where(
            PointsAllocation.lot_id == select(PointsLot.id).where(PointsLot.entry_id == credit).scalar_subquery())
        ).all()
    assert kinds == [("reverse", 50)]
    assert violations() == {}


def test_month_and_year_ends_in_the_tenant_zone(clean_db):
    """年底清零: everything earned in 2026 (Shanghai) expires at the first instant of 2027 there —
    16:00 UTC on 31 December — in one entry per member, reported as January's expiry; a month_end
    lot likewise at the first instant of the next month."""
    a, b = member(), member()
    year_end = policy.expires_at(dt.datetime(2026, 3, 1, 12, tzinfo=SH), "year_end:0")
    assert year_end == dt.datetime(2026, 12, 31, 16, tzinfo=dt.UTC)
    last_minute = dt.datetime(2026, 12, 31, 23, 59, tzinfo=SH)
    assert policy.expires_at(last_minute, "year_end:0") == year_end
    new_year = dt.datetime(2027, 1, 1, 0, 0, 1, tzinfo=SH)
    month_end = policy.expires_at(dt.datetime(2026, 4, 30, 23, 30, tzinfo=SH), "month_end")
    assert month_end == dt.datetime(2026, 4, 30, 16, tzinfo=dt.UTC)
    post(a, 100, now=dt.datetime(2026, 3, 1, 12, tzinfo=SH), expires_at=year_end)
    post(a, 30, now=month_end - DAY, expires_at=month_end)
    post(a, 20, now=last_minute, expires_at=year_end)
    post(b, 7, now=last_minute, expires_at=year_end)
    post(b, 9, now=new_year, expires_at=policy.expires_at(new_year, "year_end:0"))
    assert expire(month_end - dt.timedelta(microseconds=1)).lots == 0
    assert (expire(month_end).points, expire(month_end).points) == (30, 0)
    assert expire(year_end - dt.timedelta(microseconds=1)).lots == 0
    r = expire(year_end)
    assert (r.members, r.lots, r.points) == (2, 3, 127)
    assert sorted(n for _, n in expire_entries().values()) == [-120, -30, -7]
    assert summary(a, now=new_year).balance == 0 and summary(b, now=new_year).balance == 9
    with db.transaction(readonly=True) as s:
        rows = {r.month: r for r in reports.liability(s, "2026-04", "2027-01")}
    assert rows["2026-05"].expired == 30  # 16:00 UTC on 30 April is May in Shanghai
    assert (rows["2026-12"].expired, rows["2026-12"].outstanding) == (0, 127)
    assert (rows["2027-01"].expired, rows["2027-01"].issued, rows["2027-01"].outstanding) == (127, 9, 9)
    assert violations() == {}


def test_the_pass_locks_the_accounts_it_expires_before_it_reads_their_lots(clean_db):
    """PostgreSQL: by the time the pass sums the due lots, the account of every member it expires is
    locked (a spend locks the account before it reads lots, so the two never take the same points) —
    and only those. Checked from a second connection at the moment the pass reads the lots."""
    if db.get_engine().dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers; there is no row lock to see")
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    due, fresh = member(), member()
    post(due, 100, expires_at=T0 + DAY)
    post(fresh, 100, expires_at=T0 + 30 * DAY)
    engine, seen = db.get_engine(), {}

    def try_lock(m: int) -> bool:
        with engine.connect() as other:
            try:
                other.execute(text("SELECT 1 FROM points_accounts WHERE member_id = :m FOR UPDATE NOWAIT"), {"m": m})
                return True
            except OperationalError as exc:
                assert "could not obtain lock" in str(exc)
                return False

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO _due_members"):
            seen.update(due=try_lock(due), fresh=try_lock(fresh))

    event.listen(engine, "before_cursor_execute", before)
    try:
        assert expire(T0 + 2 * DAY).members == 1
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert seen == {"due": False, "fresh": True}
    assert violations() == {} and summary(due, now=T0 + 2 * DAY).balance == 0
