"""Check-in streaks and make-ups, and onboarding tasks rewarded once, on SQLite and PostgreSQL."""

import datetime as dt

import pytest

from orchard import db
from orchard.loyalty import checkin
from tests.factories import api_key, headers, order, token_for
from tests.loyalty.helpers import member, summary, violations
from tests.loyalty.test_earning import settings  # noqa: F401

SH = dt.timezone(dt.timedelta(hours=8))


def noon(day: int, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, 12, tzinfo=SH)


def program(**kw):
    with db.transaction() as s:
        checkin.set_program(s, **{"ladder": [{"points": 5}, {"points": 10}, {"points": 20, "growth": 2}],
                                  "cycle": False, "makeup_per_month": 1, "makeup_cost_points": 0, "actor": "t", **kw})


def check(m, when):
    with db.transaction() as s:
        row, created = checkin.check_in(s, member_id=m, now=when)
        return row.streak, row.points, created


def status(m, when):
    with db.transaction(readonly=True) as s:
        return checkin.status(s, m, when)


def test_a_streak_climbs_the_ladder_and_a_missed_day_starts_over(clean_db, settings):  # noqa: F811
    program()
    m = member()
    assert [check(m, noon(d))[:2] for d in (1, 2, 3, 4)] == [(1, 5), (2, 10), (3, 20), (4, 20)]
    assert check(m, noon(4).replace(hour=23)) == (4, 20, False)  # the same day again
    assert check(m, noon(6)) == (1, 5, True)
    assert summary(m, noon(7).astimezone(dt.UTC)).balance == 5 + 10 + 20 + 20 + 5
    s = status(m, noon(7))
    assert (s.streak, s.checked_in_today, s.next_reward["points"]) == (1, False, 10)
    assert violations() == {}


def test_a_cycling_ladder_starts_again(clean_db, settings):  # noqa: F811
    program(ladder=[{"points": 1}, {"points": 2}], cycle=True)
    m = member()
    assert [check(m, noon(d))[1] for d in (1, 2, 3, 4, 5)] == [1, 2, 1, 2, 1]


def test_days_are_shanghai_dates(clean_db, settings):  # noqa: F811
    program()
    m = member()
    assert check(m, dt.datetime(2026, 11, 30, 15, 30, tzinfo=dt.UTC))[0] == 1  # 23:30 on 30 Nov in Shanghai
    assert check(m, dt.datetime(2026, 11, 30, 16, 30, tzinfo=dt.UTC))[0] == 2  # 00:30 on 1 Dec: a new day


def test_makeup_fills_a_gap_within_the_limit_and_costs_points(clean_db, settings):  # noqa: F811
    program(makeup_per_month=1, makeup_cost_points=8)
    m = member()
    check(m, noon(3))
    check(m, noon(5))  # 4 missed
    with db.transaction() as s:
        row, created = checkin.makeup(s, member_id=m, day=dt.date(2026, 11, 4), actor="t", now=noon(5, 11))
    assert (row.kind, row.streak, row.points, created) == ("makeup", 2, 10, True)
    assert status(m, noon(5)).streak == 3  # 3, 4 (made up), 5
    assert summary(m, noon(6).astimezone(dt.UTC)).balance == 5 + 5 + 10 - 8
    with db.transaction() as s:  # a retry of the same make-up
        assert checkin.makeup(s, member_id=m, day=dt.date(2026, 11, 4), actor="t", now=noon(5))[1] is False
    from orchard.errors import Conflict, InvalidInput

    for day, error, code in [(dt.date(2026, 11, 1), Conflict, "checkin.makeup_limit"),
                             (dt.date(2026, 10, 1), InvalidInput, None), (dt.date(2026, 11, 5), Conflict, None),
                             (dt.date(2026, 11, 9), InvalidInput, None)]:
        with pytest.raises(error) as err, db.transaction() as s:
            checkin.makeup(s, member_id=m, day=day, actor="t", now=noon(5))
        if code:
            assert err.value.extra["code"] == code
    assert violations() == {}


def test_a_makeup_without_the_points_writes_nothing(clean_db, settings):  # noqa: F811
    from orchard.loyalty.ledger import Insufficient

    program(makeup_per_month=3, makeup_cost_points=100)
    m = member()
    check(m, noon(3))
    with pytest.raises(Insufficient), db.transaction() as s:
        checkin.makeup(s, member_id=m, day=dt.date(2026, 11, 2), actor="t", now=noon(3))
    assert status(m, noon(3)).makeups_left == 3


def test_checkin_over_http_and_who_may(client, settings):  # noqa: F811
    admin = headers(token_for(client, "admin"))
    r = client.put("/api/v1/checkin", headers=admin, json={"ladder": [{"points": 3}], "makeup_per_month": 2})
    assert r.status_code == 200, r.text
    m = member("SH001")
    key = headers(api_key())
    first = client.post(f"/api/v1/members/{m}/checkin", headers=key)
    again = client.post(f"/api/v1/members/{m}/checkin", headers=key)
    assert first.status_code == again.status_code == 200
    assert (first.json()["created"], again.json()["created"], again.json()["points"]) == (True, False, 3)
    assert client.get(f"/api/v1/members/{m}/checkin", headers=admin).json()["checked_in_today"] is True
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    assert client.post(f"/api/v1/members/{m}/checkin", headers=clerk).status_code == 403
    assert client.put("/api/v1/checkin", headers=admin, json={"ladder": []}).status_code == 422


def test_onboarding_tasks_reward_once(client, settings):  # noqa: F811
    admin = headers(token_for(client, "admin"))
    key = headers(api_key())
    r = client.put("/api/v1/tasks", headers=admin, json=[
        {"code": "profile", "name": "完善资料", "kind": "profile", "points": 50},
        {"code": "first_order", "name": "首单", "kind": "first_order", "points": 100, "growth": 10},
        {"code": "review", "name": "首评", "kind": "event", "event": "review", "points": 20}])
    assert r.status_code == 200, r.text
    bad = client.put("/api/v1/tasks", headers=admin, json=[{"code": "x", "name": "x", "kind": "event"}])
    assert bad.status_code == 422
    m = client.post("/api/v1/orders", headers=key, json=order("O1")).json()["member_id"]
    client.post("/api/v1/orders", headers=key, json=order("O2"))
    for i in range(2):
        client.post("/api/v1/events", headers=key, json={
            "source": "app", "external_id": f"E{i}", "name": "review", "occurred_at": dt.datetime.now(dt.UTC)
            .isoformat(), "member": {"identities": {"phone": "13812341234"}}})
    patch = {"name": "张三", "gender": "female", "birthday": "1990-05-01", "region": "上海"}
    assert client.patch(f"/api/v1/members/{m}", headers=admin, json=patch).status_code == 200
    client.patch(f"/api/v1/members/{m}", headers=admin, json={"region": "杭州"})
    done = {t["code"]: t["done"] for t in client.get(f"/api/v1/members/{m}/tasks", headers=admin).json()}
    assert done == {"profile": True, "first_order": True, "review": True}
    assert client.get(f"/api/v1/members/{m}/points", headers=admin).json()["balance"] == 50 + 100 + 20
    assert client.get(f"/api/v1/members/{m}/growth", headers=admin).json()["balance"] == 10
    assert violations() == {}
