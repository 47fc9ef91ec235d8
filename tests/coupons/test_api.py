"""Coupons over HTTP: templates, issue (idempotent), wallet, redeem exactly once (idempotent per
order), undo, void, stats, 422s naming the field, permissions and store scoping."""

import datetime as dt

import pytest
from sqlalchemy import select

from orchard import db
from orchard.audit.models import AuditEntry
from orchard.coupons import redeeming
from orchard.coupons.models import Coupon
from tests.coupons.helpers import API, issue, redeem_body, template
from tests.factories import api_key, headers, token_for
from tests.loyalty.helpers import member


def actions() -> list[str]:
    with db.transaction(readonly=True) as s:
        return list(s.scalars(select(AuditEntry.action).where(AuditEntry.action.like("coupon%"))
                              .order_by(AuditEntry.id)))


def test_issue_wallet_redeem_once_undo_and_stats(client):
    # given
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, campaign="双11", stores=["SH001"])
    assert t["label"] == "满100减20" and t["issued_count"] == 0
    m = member("SH001")
    # when: issue twice with one external id
    body = {"template_id": t["id"], "external_id": "CRM-1", "reason": "开业活动"}
    first = client.post(f"{API}/members/{m}/coupons", headers=admin, json=body)
    again = client.post(f"{API}/members/{m}/coupons", headers=admin, json=body)
    # then: one coupon
    assert first.status_code == again.status_code == 201, first.text
    assert first.json() == again.json()
    coupon = first.json()
    assert coupon["status"] == "issued" and coupon["usable_now"] and len(coupon["code"]) == 12
    reused = client.post(f"{API}/members/{m}/coupons", headers=admin, json={**body, "reason": "另一个"})
    assert reused.status_code == 409 and reused.json()["code"] == "coupon.id_reused"
    wallet = client.get(f"{API}/members/{m}/coupons?usable=true", headers=admin).json()
    assert [c["code"] for c in wallet["items"]] == [coupon["code"]]

    # redeem, typed the way a clerk might type it
    typed = coupon["code_display"].lower()
    order = redeem_body("POS-1", store_code="SH001", member_id=m)
    r1 = client.post(f"{API}/coupons/{typed}/redeem", headers=admin, json=order)
    assert r1.status_code == 200, r1.text
    assert (r1.json()["discount_fen"], r1.json()["eligible_fen"], r1.json()["store_code"]) == (2000, 12000, "SH001")
    r2 = client.post(f"{API}/coupons/{coupon['code']}/redeem", headers=admin, json=order)
    assert r2.status_code == 200 and r2.json() == r1.json()  # a retry answers with the first result
    other = client.post(f"{API}/coupons/{coupon['code']}/redeem", headers=admin,
                        json=redeem_body("POS-2", store_code="SH001"))
    assert other.status_code == 409 and other.json()["code"] == "coupon.already_redeemed"
    changed = client.post(f"{API}/coupons/{coupon['code']}/redeem", headers=admin, json={**order, "amount_fen": 13000})
    assert changed.status_code == 409 and changed.json()["code"] == "coupon.id_reused"
    read = client.get(f"{API}/coupons/{coupon['code']}", headers=admin).json()
    assert (read["status"], read["redeemed_order_id"], read["redeemed_store_code"]) == ("redeemed", "POS-1", "SH001")

    # undo once: usable again; a repeat answers with the undone redemption
    cancel = {"order_external_id": "POS-1", "reason": "订单取消"}
    c1 = client.post(f"{API}/coupons/{coupon['code']}/redemption/cancel", headers=admin, json=cancel)
    c2 = client.post(f"{API}/coupons/{coupon['code']}/redemption/cancel", headers=admin, json=cancel)
    assert c1.status_code == c2.status_code == 200 and c1.json() == c2.json() and c1.json()["cancelled_at"]
    assert client.get(f"{API}/coupons/{coupon['code']}", headers=admin).json()["status"] == "issued"
    stale = client.post(f"{API}/coupons/{coupon['code']}/redeem", headers=admin, json=order)
    assert stale.status_code == 409 and stale.json()["code"] == "coupon.redemption_cancelled"
    missing = client.post(f"{API}/coupons/{coupon['code']}/redemption/cancel", headers=admin,
                          json={**cancel, "order_external_id": "NOPE"})
    assert missing.status_code == 404
    r3 = client.post(f"{API}/coupons/{coupon['code']}/redeem", headers=admin,
                     json=redeem_body("POS-3", store_code="SH001"))
    assert r3.status_code == 200, r3.text

    stats = client.get(f"{API}/coupon-templates/{t['id']}/stats", headers=admin).json()
    assert (stats["issued"], stats["redeemed"], stats["redemption_rate"], stats["discount_fen"]) == (1, 1, 1.0, 2000)
    by_campaign = client.get(f"{API}/coupon-templates/stats?campaign=双11", headers=admin).json()
    assert [s["template_id"] for s in by_campaign] == [t["id"]]
    assert actions() == ["coupon_template.created", "coupon.issued", "coupon.redeemed",
                         "coupon.redemption_cancelled", "coupon.redeemed"]


def test_percent_coupon_with_cap_categories_and_channels(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, name="8折券", kind="percent_off", off_fen=None, percent=20, max_off_fen=3000,
                 threshold_fen=5000, categories=["茶叶"], channels=["wechat_mp"])
    assert t["label"] == "满50 8折 最高减30"
    m = member()
    codes = [issue(t["id"], m) for _ in range(4)]
    lines = [{"category": "茶叶", "amount_fen": 9999}, {"category": "茶具", "amount_fen": 50000}]
    ok = client.post(f"{API}/coupons/{codes[0]}/redeem", headers=admin,
                     json=redeem_body("O-1", 59999, channel="wechat_mp", lines=lines))
    assert ok.status_code == 200 and ok.json()["discount_fen"] == 1999, ok.text  # 20% of 9999 rounds down
    big = client.post(f"{API}/coupons/{codes[1]}/redeem", headers=admin,
                      json=redeem_body("O-2", 100000, channel="wechat_mp",
                                       lines=[{"category": "茶叶", "amount_fen": 100000}]))
    assert big.json()["discount_fen"] == 3000  # the cap
    cases = [
        (redeem_body("O-3", 59999, channel="pos", lines=lines), 409, "coupon.channel_not_allowed"),
        (redeem_body("O-4", 59999, channel="wechat_mp", lines=[lines[1]]), 409, "coupon.category_not_allowed"),
        (redeem_body("O-5", 59999, channel="wechat_mp", lines=[{"category": "茶叶", "amount_fen": 4999}]), 409,
         "coupon.below_threshold"),
        (redeem_body("O-6", 59999, channel="wechat_mp"), 422, "lines"),
        (redeem_body("O-7", 100, channel="wechat_mp", lines=lines), 422, "lines"),
    ]
    for body, status, what in cases:
        r = client.post(f"{API}/coupons/{codes[2]}/redeem", headers=admin, json=body)
        assert r.status_code == status, (body, r.text)
        assert (r.json()["code"] if status == 409 else r.json()["errors"][0]["field"]) == what
    # a non-stackable coupon is alone on its order
    two = client.post(f"{API}/coupons/{codes[2]}/redeem", headers=admin,
                      json=redeem_body("O-1", 59999, channel="wechat_mp", lines=lines))
    assert two.status_code == 409 and two.json()["code"] == "coupon.not_stackable"


def test_stackable_coupons_combine_except_within_a_group(client):
    admin = headers(token_for(client, "admin"))
    a = template(client, admin, name="A", stackable=True, exclusive_group="店庆", threshold_fen=0, off_fen=100)
    b = template(client, admin, name="B", stackable=True, exclusive_group="店庆", threshold_fen=0, off_fen=100)
    c = template(client, admin, name="C", stackable=True, threshold_fen=0, off_fen=100)
    m = member()
    ca, cb, cc = issue(a["id"], m), issue(b["id"], m), issue(c["id"], m)
    assert client.post(f"{API}/coupons/{ca}/redeem", headers=admin, json=redeem_body("S-1")).status_code == 200
    r = client.post(f"{API}/coupons/{cb}/redeem", headers=admin, json=redeem_body("S-1"))
    assert r.status_code == 409 and r.json()["code"] == "coupon.not_stackable"
    assert client.post(f"{API}/coupons/{cc}/redeem", headers=admin, json=redeem_body("S-1")).status_code == 200


def test_gift_and_service_coupons_hand_over_a_benefit(client):
    admin = headers(token_for(client, "admin"))
    gift = template(client, admin, name="试用装", kind="gift", off_fen=None, threshold_fen=0,
                    benefit={"sku": "TRY-01", "name": "试用装"})
    m = member()
    r = client.post(f"{API}/coupons/{issue(gift['id'], m)}/redeem", headers=admin, json=redeem_body("G-1", 0))
    assert r.status_code == 200 and r.json()["discount_fen"] == 0 and r.json()["benefit"]["sku"] == "TRY-01"


@pytest.mark.parametrize("body, field", [
    ({"kind": "amount_off", "off_fen": None}, "off_fen"),
    ({"kind": "percent_off", "off_fen": None}, "percent"),
    ({"kind": "percent_off", "off_fen": None, "percent": 100}, "percent"),
    ({"off_fen": -1}, "off_fen"),
    ({"off_fen": 20000}, "off_fen"),  # more than the threshold
    ({"threshold_fen": -5}, "threshold_fen"),
    ({"kind": "gift", "off_fen": None}, "benefit.name"),
    ({"validity": "fixed"}, "valid_from"),
    ({"validity": "fixed", "valid_days": None, "valid_from": "2026-01-02T00:00:00+08:00",
      "valid_to": "2026-01-01T00:00:00+08:00"}, "valid_to"),
    ({"valid_days": None}, "valid_days"),
    ({"valid_days": 0}, "valid_days"),
    ({"stores": ["NOPE"]}, "stores[0]"),
    ({"stores": ["EAST"]}, "stores[0]"),  # a region, not a store
    ({"exclusive_group": "x"}, "exclusive_group"),
    ({"channels": ["Bad Channel"]}, "channels.0"),
    ({"total_limit": 0}, "total_limit"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_templates_are_422_naming_the_field(client, body, field):
    admin = headers(token_for(client, "admin"))
    base = {"name": "券", "kind": "amount_off", "off_fen": 2000, "threshold_fen": 10000, "validity": "relative",
            "valid_days": 30}
    r = client.post(f"{API}/coupon-templates", headers=admin, json={**base, **body})
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


def test_template_terms_are_fixed_but_status_and_limits_change(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, total_limit=2)
    m = member()
    issue(t["id"], m)
    assert client.patch(f"{API}/coupon-templates/{t['id']}", headers=admin, json={"off_fen": 1}).status_code == 422
    low = client.patch(f"{API}/coupon-templates/{t['id']}", headers=admin, json={"total_limit": 0})
    assert low.status_code == 422
    r = client.patch(f"{API}/coupon-templates/{t['id']}", headers=admin, json={"status": "inactive", "total_limit": 5})
    assert r.status_code == 200 and r.json()["status"] == "inactive" and r.json()["total_limit"] == 5
    assert client.patch(f"{API}/coupon-templates/{t['id']}", headers=admin, json={"name": None}).status_code == 422
    blocked = client.post(f"{API}/members/{m}/coupons", headers=admin,
                          json={"template_id": t["id"], "external_id": "x"})
    assert blocked.status_code == 409 and blocked.json()["code"] == "coupon_template.inactive"
    assert [x["id"] for x in client.get(f"{API}/coupon-templates?status=inactive", headers=admin).json()] == [t["id"]]
    assert client.get(f"{API}/coupon-templates/{t['id']}", headers=admin).json()["issued_count"] == 1
    assert client.get(f"{API}/coupon-templates/999999", headers=admin).status_code == 404


def test_issue_limits_per_member_and_in_total(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, per_member_limit=2, total_limit=3)
    a, b = member(), member()
    answers = [client.post(f"{API}/members/{who}/coupons", headers=admin,
                           json={"template_id": t["id"], "external_id": f"L-{i}"}) for i, who in
               enumerate([a, a, a, b, b])]
    assert [(r.status_code, r.json()["code"] if r.status_code == 409 else None) for r in answers] == [
        (201, None), (201, None), (409, "coupon.member_limit_reached"), (201, None), (409, "coupon.limit_reached")]


def test_fixed_window_and_expiry_pass_and_void(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, validity="fixed", valid_days=None, valid_from="2026-01-01T00:00:00",
                 valid_to="2099-01-01T00:00:00+08:00")
    assert t["valid_from"].startswith("2025-12-31T16:00:00")  # a naive time is read in Asia/Shanghai
    m = member()
    keep, lapse, kill = (issue(t["id"], m) for _ in range(3))
    # given a coupon whose window has passed (and one voided)
    with db.transaction() as s:
        s.execute(Coupon.__table__.update().where(Coupon.code == lapse).values(
            valid_from=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), valid_to=dt.datetime(2026, 2, 1, tzinfo=dt.UTC)))
    v = client.post(f"{API}/coupons/{kill}/void", headers=admin, json={"reason": "发错了"})
    assert v.status_code == 200 and v.json()["status"] == "voided" and v.json()["void_reason"] == "发错了"
    assert client.post(f"{API}/coupons/{kill}/void", headers=admin, json={"reason": "again"}).json()["void_reason"] \
        == "发错了"
    r = client.post(f"{API}/coupons/{kill}/redeem", headers=admin, json=redeem_body("V-1"))
    assert r.status_code == 409 and r.json()["code"] == "coupon.voided"
    # the lapsed coupon reads as expired and cannot be redeemed even before the pass
    assert client.get(f"{API}/coupons/{lapse}", headers=admin).json()["status"] == "expired"
    r = client.post(f"{API}/coupons/{lapse}/redeem", headers=admin, json=redeem_body("V-2"))
    assert r.status_code == 409 and r.json()["code"] == "coupon.expired"
    # when the pass runs twice
    with db.transaction() as s:
        first = redeeming.expire_due(s)
    with db.transaction() as s:
        second = redeeming.expire_due(s)
    # then
    assert (first, second) == (1, 0)
    wallet = client.get(f"{API}/members/{m}/coupons?status=expired", headers=admin).json()["items"]
    assert [c["code"] for c in wallet] == [lapse]
    assert [c["code"] for c in client.get(f"{API}/members/{m}/coupons?status=issued", headers=admin).json()["items"]] \
        == [keep]
    nv = client.post(f"{API}/coupons/{lapse}/void", headers=admin, json={"reason": "x"})
    assert nv.status_code == 409 and nv.json()["code"] == "coupon.not_voidable"
    stats = client.get(f"{API}/coupon-templates/{t['id']}/stats", headers=admin).json()
    assert (stats["issued"], stats["expired"], stats["voided"], stats["outstanding"]) == (3, 1, 1, 1)
    assert "coupon.expired" in actions() and "coupon.voided" in actions()


def test_not_yet_valid_and_ended_templates(client):
    admin = headers(token_for(client, "admin"))
    later = template(client, admin, starts_after_days=1)
    m = member()
    code = issue(later["id"], m)
    r = client.post(f"{API}/coupons/{code}/redeem", headers=admin, json=redeem_body("N-1"))
    assert r.status_code == 409 and r.json()["code"] == "coupon.not_yet_valid"
    assert client.get(f"{API}/members/{m}/coupons?usable=true", headers=admin).json()["items"] == []
    ended = template(client, admin, validity="fixed", valid_days=None, valid_from="2020-01-01T00:00:00+08:00",
                     valid_to="2020-02-01T00:00:00+08:00")
    r = client.post(f"{API}/members/{m}/coupons", headers=admin, json={"template_id": ended["id"], "external_id": "E"})
    assert r.status_code == 409 and r.json()["code"] == "coupon_template.ended"


def test_store_staff_scoping(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, threshold_fen=0, off_fen=500)
    sh, gz = member("SH001"), member("GZ001")
    sh_code, gz_code = issue(t["id"], sh), issue(t["id"], gz)
    clerk = headers(token_for(client, "clerk", ["SH001"]))
    # another store's member, wallet and coupon do not exist for the clerk
    assert client.get(f"{API}/members/{gz}/coupons", headers=clerk).status_code == 404
    unknown = client.get(f"{API}/coupons/ZZZZZZZZZZZZ", headers=clerk)
    hidden = client.get(f"{API}/coupons/{gz_code}", headers=clerk)
    assert hidden.status_code == unknown.status_code == 404 and hidden.json() == unknown.json()
    assert client.post(f"{API}/coupons/{gz_code}/redeem", headers=clerk,
                       json=redeem_body("C-1", store_code="SH001")).status_code == 404
    # own member: only at the clerk's stores, and naming a store
    r = client.post(f"{API}/coupons/{sh_code}/redeem", headers=clerk, json=redeem_body("C-2"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "store_code"
    r = client.post(f"{API}/coupons/{sh_code}/redeem", headers=clerk, json=redeem_body("C-3", store_code="GZ001"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "store_code"
    r = client.post(f"{API}/coupons/{sh_code}/redeem", headers=clerk, json=redeem_body("C-4", member_id=gz,
                                                                                        store_code="SH001"))
    assert r.status_code == 404  # naming an invisible member is a 404 too
    assert client.post(f"{API}/coupons/{sh_code}/redeem", headers=admin,
                       json=redeem_body("C-5", member_id=gz)).json()["code"] == "coupon.other_member"
    assert client.post(f"{API}/coupons/{sh_code}/redeem", headers=clerk,
                       json=redeem_body("C-6", store_code="SH001")).status_code == 200
    # clerks issue and redeem but do not manage templates or void; customer service only reads
    assert client.post(f"{API}/coupons/{sh_code}/void", headers=clerk, json={"reason": "x"}).status_code == 403
    assert client.post(f"{API}/coupon-templates", headers=clerk, json={}).status_code == 403
    service = headers(token_for(client, "service"))
    assert client.get(f"{API}/members/{gz}/coupons", headers=service).status_code == 200
    assert client.post(f"{API}/coupons/{gz_code}/redeem", headers=service, json=redeem_body("C-7")).status_code == 403
    pos = headers(api_key("integrator", name="pos-gz", store="GZ001"))
    assert client.post(f"{API}/coupons/{gz_code}/redeem", headers=pos,
                       json=redeem_body("C-8", store_code="GZ001")).status_code == 200


@pytest.mark.parametrize("code", ["a%00b", "!!!!", "UUUUUU"])
def test_malformed_codes_are_422(client, code):
    admin = headers(token_for(client, "admin"))
    r = client.get(f"{API}/coupons/{code}", headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] in ("code", "path.code"), r.text


def test_merge_moves_coupons_to_the_survivor(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin)
    a = client.post(f"{API}/members", headers=admin, json={"name": "甲"}).json()["id"]
    b = client.post(f"{API}/members", headers=admin, json={"name": "乙"}).json()["id"]
    code = issue(t["id"], b)
    assert client.post(f"{API}/members/{a}/merge", headers=admin,
                       json={"merge_id": b, "reason": "same person"}).status_code == 200
    assert [c["code"] for c in client.get(f"{API}/members/{a}/coupons", headers=admin).json()["items"]] == [code]
    assert client.get(f"{API}/coupons/{code}", headers=admin).json()["member_id"] == a
