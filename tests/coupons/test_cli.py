"""`orchard coupons templates | issue | expire` as real subprocesses against the test database."""

import datetime as dt

from sqlalchemy import update

from orchard import db
from orchard.coupons.models import Coupon
from tests.coupons.helpers import API, coupons_of, members, template
from tests.factories import headers, token_for
from tests.test_cli import run


def test_issue_from_a_file_then_list_and_expire(client, tmp_path):
    # given
    admin = headers(token_for(client, "admin"))
    t = template(client, admin, name="会员日券", total_limit=3)
    ms = members(4)
    ids = tmp_path / "ids.txt"
    ids.write_text("# 会员日\n" + "\n".join(map(str, [*ms, ms[0], 999_999])) + "\n\n", encoding="utf-8")
    # when
    out = run("coupons", "issue", str(t["id"]), "--members-file", str(ids)).stdout
    again = run("coupons", "issue", str(t["id"]), "--members-file", str(ids)).stdout
    # then
    assert "issued 3" in out and "unknown 1" in out and "total limit 1" in out, out
    assert "already issued" in again
    assert [c.member_id for c in coupons_of(t["id"])] == ms[:3]
    listing = run("coupons", "templates").stdout
    assert "会员日券" in listing and "满100减20" in listing
    with db.transaction() as s:
        s.execute(update(Coupon).where(Coupon.member_id == ms[0]).values(
            valid_from=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), valid_to=dt.datetime(2026, 1, 2, tzinfo=dt.UTC)))
    assert "expired 1" in run("coupons", "expire").stdout
    assert "expired 0" in run("coupons", "expire").stdout
    assert client.get(f"{API}/members/{ms[0]}/coupons?status=expired", headers=admin).json()["items"]


def test_bad_files_exit_2_and_unknown_templates_exit_1(client, tmp_path):
    admin = headers(token_for(client, "admin"))
    t = template(client, admin)
    bad = tmp_path / "bad.txt"
    bad.write_text("12\nabc\n", encoding="utf-8")
    p = run("coupons", "issue", str(t["id"]), "--members-file", str(bad), check=False)
    assert p.returncode == 2 and "line 2" in p.stderr
    p = run("coupons", "issue", str(t["id"]), "--members-file", str(tmp_path / "missing.txt"), check=False)
    assert p.returncode == 2
    good = tmp_path / "ok.txt"
    good.write_text("1\n", encoding="utf-8")
    p = run("coupons", "issue", "999999", "--members-file", str(good), check=False)
    assert p.returncode == 1 and "999999" in p.stderr
