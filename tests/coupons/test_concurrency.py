"""Through a real server: 50 stores redeem one code at once → exactly one success (PostgreSQL: three
rounds); a POS retrying one redemption from many threads gets one answer; concurrent issuers never
pass the template's limits.

On SQLite the callers are 20, not 50: a SQLite request takes the write lock (BEGIN IMMEDIATE) in its
auth dependency and runs the endpoint in a second worker-thread call, so more waiting writers than
the server's 40 worker threads starve the lock holder until the 30 s busy timeout (a server
limitation, not a coupon one; SQLite serialises writers anyway)."""

import concurrent.futures
import itertools

import httpx

from tests.coupons.helpers import API, coupons_of, issue, template
from tests.factories import api_key, headers
from tests.loyalty.helpers import member


def test_fifty_stores_redeeming_one_code_give_exactly_one_success(live_server, clean_db):
    key = api_key("integrator")
    admin = headers(api_key("admin", name="ops"))
    with httpx.Client(base_url=live_server, timeout=60) as c:
        t = template(c, admin, threshold_fen=0, off_fen=500)
    orders = itertools.count()
    pg = clean_db.startswith("postgresql")
    callers = 50 if pg else 20
    for _round in range(3 if pg else 1):
        code = issue(t["id"], member())

        def redeem(_n, code=code):
            with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
                r = c.post(f"{API}/coupons/{code}/redeem",
                           json={"order_external_id": f"O{next(orders)}", "amount_fen": 10000})
                return r.status_code, r.json().get("code") if r.status_code != 200 else None

        with concurrent.futures.ThreadPoolExecutor(max_workers=callers) as pool:
            answers = list(pool.map(redeem, range(callers)))
        assert answers.count((200, None)) == 1, answers
        assert answers.count((409, "coupon.already_redeemed")) == callers - 1, sorted(set(answers))
    with httpx.Client(base_url=live_server, headers=admin, timeout=60) as c:
        stats = c.get(f"{API}/coupon-templates/{t['id']}/stats").json()
    assert stats["redeemed"] == stats["issued"] == (3 if clean_db.startswith("postgresql") else 1)


def test_concurrent_retries_of_one_redemption_answer_alike(live_server, clean_db):
    key = api_key("integrator")
    admin = headers(api_key("admin", name="ops"))
    with httpx.Client(base_url=live_server, timeout=60) as c:
        t = template(c, admin, threshold_fen=0, off_fen=500)
    code = issue(t["id"], member())

    def redeem(_n):
        with httpx.Client(base_url=live_server, headers=headers(key), timeout=60) as c:
            r = c.post(f"{API}/coupons/{code}/redeem", json={"order_external_id": "RETRY", "amount_fen": 10000})
            return r.status_code, r.json().get("id")

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers = set(pool.map(redeem, range(20)))
    assert len(answers) == 1 and next(iter(answers))[0] == 200, answers


def test_concurrent_issuers_never_pass_the_limits(live_server, clean_db):
    """40 single issues and 4 bulk issues race for a template with total 30 and 2 per member."""
    admin = headers(api_key("admin", name="ops"))
    with httpx.Client(base_url=live_server, timeout=60) as c:
        t = template(c, admin, total_limit=30, per_member_limit=2)
    ms = [member() for _ in range(20)]
    calls = [("one", i) for i in range(40)] + [("bulk", i) for i in range(4)]

    def call(item):
        kind, i = item
        with httpx.Client(base_url=live_server, headers=admin, timeout=60) as c:
            if kind == "one":
                r = c.post(f"{API}/members/{ms[i % len(ms)]}/coupons",
                           json={"template_id": t["id"], "external_id": f"one-{i}"})
                return r.status_code
            r = c.post(f"{API}/coupon-templates/{t['id']}/issue",
                       json={"member_ids": ms[i * 5:(i + 1) * 5 + 5], "external_id": f"bulk-{i}", "reason": "活动"})
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(call, calls))
    assert set(statuses) <= {201, 409}, statuses
    issued = coupons_of(t["id"])
    per_member = {m: sum(1 for c in issued if c.member_id == m) for m in ms}
    assert len(issued) == 30 and max(per_member.values()) <= 2
    with httpx.Client(base_url=live_server, headers=admin, timeout=60) as c:
        assert c.get(f"{API}/coupon-templates/{t['id']}").json()["issued_count"] == 30


def test_one_issue_key_sent_at_once_for_two_templates_is_one_coupon_and_a_409(live_server, clean_db):
    """Different templates hold different locks, so only the unique key decides: one 201, the rest
    409 coupon.id_reused (never a 500)."""
    admin = headers(api_key("admin", name="ops"))
    with httpx.Client(base_url=live_server, timeout=60) as c:
        ts = [template(c, admin, name=f"T{i}")["id"] for i in range(2)]
    m = member()

    def call(i):
        with httpx.Client(base_url=live_server, headers=admin, timeout=60) as c:
            r = c.post(f"{API}/members/{m}/coupons", json={"template_id": ts[i % 2], "external_id": "SAME"})
            return r.status_code, r.json()["code"] if r.status_code == 409 else "ok"

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(call, range(10)))
    assert set(answers) <= {(201, "ok"), (409, "coupon.id_reused")}, answers
    assert sum(len(coupons_of(t)) for t in ts) == 1
