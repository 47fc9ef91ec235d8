"""Bulk issue in one set-based pass: limits, skipped ids, replays, code collisions retried, codes
made by the database that look like the ones made in Python."""

import collections

import pytest
from sqlalchemy import select, update

from orchard import db
from orchard.coupons import codes, issuing
from orchard.coupons.models import Coupon, CouponTemplate
from orchard.members.models import Member
from tests.coupons.helpers import API, coupons_of, issue, members, template
from tests.factories import headers, token_for
from tests.loyalty.helpers import member


def test_bulk_issue_over_http_skips_unknown_and_merged_and_replays(client):
    # given
    admin = headers(token_for(client, "admin"))
    t = template(client, admin)
    ms = [member() for _ in range(5)]
    with db.transaction() as s:
        s.execute(update(Member).where(Member.id == ms[4]).values(status="merged", merged_into_id=ms[0]))
    body = {"member_ids": [*ms, ms[0], 999_999], "external_id": "B-1", "reason": "会员日发券"}
    # when
    r = client.post(f"{API}/coupon-templates/{t['id']}/issue", headers=admin, json=body)
    again = client.post(f"{API}/coupon-templates/{t['id']}/issue", headers=admin, json=body)
    # then
    assert r.status_code == again.status_code == 201, r.text
    assert r.json() == again.json()
    assert (r.json()["requested"], r.json()["issued"], r.json()["skipped"]) == (
        6, 4, {"unknown": 2, "member_limit": 0, "total_limit": 0})
    issued = coupons_of(t["id"])
    assert sorted(c.member_id for c in issued) == ms[:4]
    assert len({c.code for c in issued}) == 4 and all(set(c.code) <= set(codes.ALPHABET) for c in issued)
    assert all(c.batch_id == r.json()["id"] and c.valid_to > c.valid_from for c in issued)
    assert client.get(f"{API}/coupon-templates/{t['id']}", headers=admin).json()["issued_count"] == 4
    # a wallet shows the bulk-issued coupon, and it redeems
    code = client.get(f"{API}/members/{ms[0]}/coupons", headers=admin).json()["items"][0]["code"]
    ok = client.post(f"{API}/coupons/{code}/redeem", headers=admin,
                     json={"order_external_id": "O", "amount_fen": 10000})
    assert ok.status_code == 200, ok.text
    reused = client.post(f"{API}/coupon-templates/{t['id']}/issue", headers=admin, json={**body, "member_ids": ms[:1]})
    assert reused.status_code == 409 and reused.json()["code"] == "coupon.id_reused"


@pytest.mark.parametrize("body, field", [({"member_ids": []}, "member_ids"), ({"member_ids": [0]}, "member_ids.0"),
                                         ({"reason": ""}, "reason"), ({"external_id": ""}, "external_id")])
def test_bad_bulk_bodies_are_422(client, body, field):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin)
    r = client.post(f"{API}/coupon-templates/{t['id']}/issue", headers=admin,
                    json={"member_ids": [1], "external_id": "B", "reason": "x", **body})
    assert r.status_code == 422 and field in [e["field"] for e in r.json()["errors"]], r.text


def test_bulk_respects_the_per_member_and_total_limits(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, per_member_limit=1, total_limit=5)
    ms = [member() for _ in range(8)]
    issue(t["id"], ms[0])  # already at the per-member limit
    with db.transaction() as s:
        batch, _ = issuing.issue_bulk(s, template_id=t["id"], member_ids=ms, source="t", external_id="B",
                                      reason="x", actor="test")
        result = (batch.requested, batch.issued, batch.skipped)
    # one already held, four left under the total limit: the lowest ids win
    assert result == (8, 4, {"unknown": 0, "member_limit": 1, "total_limit": 3})
    assert [c.member_id for c in coupons_of(t["id"])] == ms[:5]
    with db.transaction() as s:
        batch, _ = issuing.issue_bulk(s, template_id=t["id"], member_ids=ms, source="t", external_id="B2",
                                      reason="x", actor="test")
        assert batch.issued == 0
    with db.transaction(readonly=True) as s:
        assert s.get(CouponTemplate, t["id"]).issued_count == 5


def test_colliding_codes_are_retried_until_every_member_has_one(client):
    """With two-character codes (1,024 of them) a batch of 150 collides at once; the extra passes
    give exactly the members that lost their code a new one."""
    admin = headers(token_for(client, "admin"))
    t = template(client, admin)
    ms = members(150)
    with db.transaction() as s:
        batch, _ = issuing.issue_bulk(s, template_id=t["id"], member_ids=ms, source="t", external_id="C",
                                      reason="x", actor="test", code_length=2)
        assert batch.issued == 150
    got = coupons_of(t["id"])
    assert sorted(c.member_id for c in got) == ms and len({c.code for c in got}) == 150


def test_database_codes_use_the_whole_alphabet(client):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin)
    ms = members(300)
    with db.transaction() as s:
        issuing.issue_bulk(s, template_id=t["id"], member_ids=ms, source="t", external_id="D", reason="x", actor="t")
    with db.transaction(readonly=True) as s:
        all_codes = list(s.scalars(select(Coupon.code)))
    chars = collections.Counter("".join(all_codes))
    assert set(chars) == set(codes.ALPHABET)  # 3,600 draws over 32 symbols: each appears
    assert max(chars.values()) < 3 * min(chars.values())
    assert all(len(c) == codes.LENGTH for c in all_codes)
