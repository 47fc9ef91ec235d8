"""Access control, walked over the routes the app actually has (``app.routes``), not a hand-kept list.

* Object level: a clerk of another store (and a store-bound API key) gets a bare 404 on every
  member-scoped route and method, for the member, its orders and refunds, and an id merged into it;
  no response carries the member's name, phone (national, E.164 or masked), card number, note or tag,
  and nothing is written. The same calls on the outsider's own member succeed, so the 404s come from
  scoping, not from bad bodies. A new member-scoped route that `ROUTE_BODIES` does not know fails the
  walk, so it cannot be forgotten.
* Lists never include an out-of-scope member, whatever the filter (phone in any format, identity,
  name, store, tag, consent).
* Masking: store staff see `138****1234`, never a full mobile number, on any GET route (and on their
  own writes); a region manager sees the region's members; HQ sees full numbers.
* Function level: every /api/v1 route but the token endpoint needs credentials (401 problem+json) and
  a permission; each role gets 403 where `auth.roles` does not grant it.
* Mass assignment: PATCH /members/{id} refuses server-owned fields with 422 and changes nothing.

Every test prints how many requests it made and how many leaks it found (always 0): `pytest -s`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute

from orchard.auth.roles import ROLE_PERMS, Perm, Role
from tests.factories import api_key, headers, order, token_for

API = "/api/v1"
PROBLEM = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "errors"}
MOBILE = re.compile(r"1[3-9]\d{9}")
MASKED_MOBILE = re.compile(r"^1[3-9]\d\*{4}\d{4}$")
#: Path parameters that name a member or a row belonging to one: routes carrying them are walked.
MEMBER_PARAMS = {"member_id", "order_id", "refund_id", "identity_id", "event_id", "note_id", "consent_id", "code"}
#: Id-like path parameters known NOT to address one member's data (admin objects, merge-review pairs).
NON_MEMBER_PARAMS = {"key_id", "candidate_id", "staff_id", "job_id", "rule_id", "flag_id", "benefit_id",
                     "template_id", "item_code", "segment_code", "journey_code", "template_code",
                     "message_id", "task_id", "provider"}
#: Routes a vendor calls, not staff: no Orchard credential, the vendor's signature is the authentication
#: (messaging.callback_endpoints). Without a valid signature they answer 401 (or 404: provider not configured).
VENDOR_CALLBACKS = {"receiveChannelCallback", "verifyChannelCallback"}
NO_SUCH_ID = 987_654_321


# ---- the data ----------------------------------------------------------------------------------

@dataclass
class Target:
    """A member and the rows hanging off it, plus strings that must never reach an outsider."""

    store: str
    member_id: int
    sibling_id: int  # another member of the same store (the merge body needs one)
    order_id: int
    refund_id: int
    identity_id: int  # the card_no identity (removable without losing the phone)
    tag: str
    name: str
    phone: str
    card: str
    note: str
    event_id: int = 0
    coupon_code: str = ""  # a coupon in the member's wallet ({code} routes)
    coupon_template_id: int = 0
    markers: list[str] = field(default_factory=list)

    def path_values(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "order_id": self.order_id, "refund_id": self.refund_id,
                "identity_id": self.identity_id, "event_id": self.event_id, "name": self.tag,
                "channel": "sms", "purpose": "marketing", "external_id": f"W-{self.store}-{self.member_id}",
                "code": self.coupon_code, "item_code": "CUP", "segment_code": "none", "journey_code": "none",
                "template_code": "none", "message_id": 1, "task_id": 1, "provider": "webhook"}


#: Per operation_id: the JSON body a member-scoped route is called with (None: no body). A valid body
#: matters: an invalid one would answer 422 before the scope check and prove nothing.
ROUTE_BODIES: dict[str, Callable[[Target], dict | None]] = {
    "getMember": lambda t: None,
    "explainMemberJourneys": lambda t: None,
    "addSubscribeGrant": lambda t: {"template": "TPL-1"},
    "getMemberPoints": lambda t: None,
    "listMemberPointsEntries": lambda t: None,
    "spendMemberPoints": lambda t: {"amount": 1, "reason": "兑换", "external_id": f"W-{t.store}-{t.member_id}"},
    "cancelMemberPointsSpend": lambda t: {"reason": "订单取消"},
    "getMemberTier": lambda t: None,
    "getMemberScores": lambda t: None,
    "listMemberTierChanges": lambda t: None,
    "overrideMemberTier": lambda t: {"level": "GOLD", "until": "2099-01-01T00:00:00Z", "reason": "特批"},
    "getMemberGrowth": lambda t: None,
    "checkInMember": lambda t: None,
    "getMemberCheckin": lambda t: None,
    "makeUpCheckin": lambda t: {"day": (dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
                                        - dt.timedelta(days=2)).isoformat()},
    "listMemberTasks": lambda t: None,
    "getMemberBenefits": lambda t: None,
    "redeemCatalogItem": lambda t: {"external_id": f"W-{t.store}-{t.member_id}"},  # cancelled by the next
    "cancelCatalogRedemption": lambda t: {"reason": "未领取"},
    "adjustMemberGrowth": lambda t: {"amount": 5, "reason": "补偿", "external_id": f"G-{t.store}-{t.member_id}"},
    "adjustMemberPoints": lambda t: {"amount": 5, "reason": "补偿", "external_id": f"A-{t.store}-{t.member_id}"},
    "updateMember": lambda t: {"region": "新区域", "attributes": {"level": "gold"}},
    "addMemberIdentity": lambda t: {"kind": "card_no", "value": f"NEW-{t.store}-{t.member_id}"},
    "setMemberPushRegistration": lambda t: {"registration_id": f"REG-{t.store}-{t.member_id}"},
    "removeMemberIdentity": lambda t: None,
    "listMemberConsents": lambda t: None,
    "setMemberConsent": lambda t: {"granted": False, "source": "store"},
    "listMemberNotes": lambda t: None,
    "addMemberNote": lambda t: {"body": "来店咨询"},
    "listMemberTags": lambda t: None,
    "addMemberTag": lambda t: {"name": "new-tag"},
    "removeMemberTag": lambda t: None,
    "mergeMember": lambda t: {"merge_id": t.sibling_id, "reason": "same person"},
    "listMemberMerges": lambda t: None,
    "listMemberOrders": lambda t: None,
    "listMemberEvents": lambda t: None,
    "getOrder": lambda t: None,
    "getRefund": lambda t: None,
    "listMemberCoupons": lambda t: None,
    "issueMemberCoupon": lambda t: {"template_id": t.coupon_template_id, "external_id": f"CI-{t.store}-{t.member_id}",
                                    "reason": "到店关怀"},
    "getCoupon": lambda t: None,
    "redeemCoupon": lambda t: {"order_external_id": f"W-{t.store}-{t.member_id}", "amount_fen": 10000,
                               "store_code": t.store},
    "cancelCouponRedemption": lambda t: {"order_external_id": f"W-{t.store}-{t.member_id}", "reason": "订单取消"},
    "voidCoupon": lambda t: {"reason": "发错券"},
}


class Api:
    """The test client plus a request counter and a leak ledger."""

    def __init__(self, client) -> None:
        self.client = client
        self.requests = 0
        self.leaks: list[str] = []

    def call(self, method: str, url: str, token: str | None = None, body: Any = None, **kw):
        self.requests += 1
        h = headers(token) if token else {}
        h.update(kw.pop("headers", {}))
        return self.client.request(method, url, headers=h, json=body, **kw)

    def leak(self, what: str) -> None:
        self.leaks.append(what)

    def report(self, label: str) -> str:
        line = f"[access-scoping] {label}: {self.requests} requests, {len(self.leaks)} leaks"
        print(line)
        return line + ("\n  " + "\n  ".join(self.leaks[:50]) if self.leaks else "")


@pytest.fixture
def api(client) -> Iterator[Api]:
    yield Api(client)


def _ok(r, *codes: int) -> dict:
    assert r.status_code in (codes or (200, 201)), (r.request.method, r.request.url, r.status_code, r.text)
    return r.json() if r.content else {}


def seed_member(api: Api, admin: str, *, store: str, name: str, phone: str, card: str, prefix: str) -> Target:
    """A member of `store` with a phone, a card, an order, a refund, an event, a note, a tag, consent,
    points and a coupon."""
    m = _ok(api.call("POST", f"{API}/members", admin, {
        "name": name, "home_store_code": store, "birthday": "1991-02-03",
        "identities": [{"kind": "phone", "value": phone}, {"kind": "card_no", "value": card}]}), 201)
    sibling = _ok(api.call("POST", f"{API}/members", admin, {"name": f"{name}乙", "home_store_code": store}), 201)
    o = _ok(api.call("POST", f"{API}/orders", admin, order(f"{prefix}-O1", phone=phone, store_code=store)), 201)
    assert o["member_id"] == m["id"]
    refund = _ok(api.call("POST", f"{API}/refunds", admin, {
        "source": "pos", "external_id": f"{prefix}-R1", "order_external_id": f"{prefix}-O1",
        "refunded_at": "2026-10-02T10:00:00+08:00", "amount_fen": 1000}), 201)
    event = _ok(api.call("POST", f"{API}/events", admin, {
        "source": "app", "external_id": f"{prefix}-E1", "name": "store_visit", "member": {"id": m["id"]},
        "occurred_at": "2026-10-01T09:00:00+08:00", "store_code": store}), 201)
    note = f"{name}偏好乌龙茶"
    _ok(api.call("POST", f"{API}/members/{m['id']}/notes", admin, {"body": note}), 201)
    tag = f"vip-{store.lower()}"
    _ok(api.call("POST", f"{API}/members/{m['id']}/tags", admin, {"name": tag}))
    _ok(api.call("PUT", f"{API}/members/{m['id']}/consents/sms/marketing", admin, {"granted": True}))
    _ok(api.call("POST", f"{API}/members/{m['id']}/points/adjust", admin,
                 {"amount": 1000, "reason": "开卡礼", "external_id": f"{prefix}-P1"}))
    tpl = _ok(api.call("POST", f"{API}/coupon-templates", admin, {
        "name": f"{store} 无门槛券", "kind": "amount_off", "off_fen": 500, "validity": "relative",
        "valid_days": 30}), 201)
    coupon = _ok(api.call("POST", f"{API}/members/{m['id']}/coupons", admin,
                          {"template_id": tpl["id"], "external_id": f"{prefix}-C1"}), 201)
    card_identity = next(i["id"] for i in m["identities"] if i["kind"] == "card_no")
    national = re.sub(r"\D", "", phone)
    t = Target(store=store, member_id=m["id"], sibling_id=sibling["id"], order_id=o["id"], refund_id=refund["id"],
               identity_id=card_identity, tag=tag, name=name, phone=phone, card=card, note=note,
               event_id=event["id"], coupon_code=coupon["code"], coupon_template_id=tpl["id"])
    t.markers = [name, national, f"+86{national}", f"{national[:3]}****{national[-4:]}", card, note, tag,
                 f"{prefix}-O1", f"{prefix}-R1", f"{prefix}-E1"]
    return t


@dataclass
class World:
    admin: str
    sh: Target  # the member under test: home store SH001
    gz: Target  # the outsider's own member: home store GZ001
    merged_into_sh: int  # a GZ001 member merged into the SH001 one: its id now resolves to SH001


@pytest.fixture
def world(api) -> World:
    admin = token_for(api.client, "admin")
    _ok(api.call("PUT", f"{API}/tiers", admin, {"levels": [{"code": "BASE", "name": "普通", "rank": 0, "threshold": 0},
                                                            {"code": "GOLD", "name": "金卡", "rank": 1,
                                                             "threshold": 1000}]}))
    _ok(api.call("PUT", f"{API}/checkin", admin, {"ladder": [{"points": 1}], "makeup_per_month": 5}))
    _ok(api.call("PUT", f"{API}/catalog/CUP", admin, {"code": "CUP", "name": "保温杯", "points_cost": 1}))
    sh = seed_member(api, admin, store="SH001", name="王小明", phone="13912345678", card="SHCARD-0001", prefix="SH")
    gz = seed_member(api, admin, store="GZ001", name="陈广州", phone="13712340001", card="GZCARD-0001", prefix="GZ")
    ghost = _ok(api.call("POST", f"{API}/members", admin, {"name": "待合并", "home_store_code": "GZ001"}), 201)
    _ok(api.call("POST", f"{API}/members/{sh.member_id}/merge", admin,
                 {"merge_id": ghost["id"], "reason": "same person"}))
    api.requests = 0  # count what the tests do, not the seeding
    return World(admin=admin, sh=sh, gz=gz, merged_into_sh=ghost["id"])


# ---- route introspection -----------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """One API route as served: full path (router prefixes applied), methods, operation id, dependencies."""

    path: str
    methods: frozenset[str]
    operation_id: str | None
    dependant: Any


def api_routes(app) -> list[Route]:
    """Every APIRoute under /api/v1. FastAPI >= 0.16x keeps included routers nested in `app.routes`
    (`_IncludedRouter`); `iter_route_contexts` flattens them with their prefixes applied."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        contexts: list[Any] = list(app.routes)
    else:
        contexts = list(iter_route_contexts(app.routes))
    out = []
    for ctx in contexts:
        if not isinstance(getattr(ctx, "original_route", ctx), APIRoute) or not ctx.path.startswith(API):
            continue
        out.append(Route(ctx.path, frozenset(ctx.methods), ctx.operation_id, ctx.dependant))
    assert out, "found no /api/v1 routes"
    return out


def path_params(route: Route) -> list[str]:
    return re.findall(r"{(\w+)(?::\w+)?}", route.path)


def is_member_scoped(route: Route) -> bool:
    return bool(MEMBER_PARAMS & set(path_params(route)))


def fill(route: Route, values: dict[str, Any]) -> str:
    missing = [p for p in path_params(route) if p not in values]
    assert not missing, f"{route.path}: no value for path parameter(s) {missing}; extend path_values()"
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: str(values[m.group(1)]), route.path)


def route_perms(route: Route) -> set[Perm]:
    """The permissions a route's dependencies check (`deps.require(perm)` closes over `perm`)."""
    found: set[Perm] = set()

    def walk(dependant) -> None:
        for sub in dependant.dependencies:
            for cell in getattr(sub.call, "__closure__", None) or ():
                if isinstance(cell.cell_contents, Perm):
                    found.add(cell.cell_contents)
            walk(sub)

    walk(route.dependant)
    return found


def calls(route: Route) -> list[str]:
    return sorted(m for m in route.methods if m not in ("HEAD", "OPTIONS"))


def leaked_markers(r, markers: list[str]) -> list[str]:
    texts = [r.text]
    try:
        texts.append(json.dumps(r.json(), ensure_ascii=False))
        texts.append(json.dumps(r.json(), ensure_ascii=True))
    except ValueError:
        pass
    return [m for m in markers if any(m in t for t in texts)]


def is_bare_problem(r, status: int) -> bool:
    if r.status_code != status or not r.headers.get("content-type", "").startswith(PROBLEM):
        return False
    body = r.json()
    return isinstance(body, dict) and set(body) <= PROBLEM_KEYS and body.get("status") == status


def snapshot(api: Api, admin: str, t: Target) -> dict[str, Any]:
    """Everything an HQ admin can read about the member (to prove outsiders changed nothing)."""
    base = f"{API}/members/{t.member_id}"
    out = {}
    for suffix in ("", "/consents", "/notes", "/tags", "/merges", "/orders", "/events", "/coupons"):
        r = api.call("GET", base + suffix, admin)
        assert r.status_code == 200, r.text
        out[suffix or "/"] = r.json()
    out["order"] = api.call("GET", f"{API}/orders/{t.order_id}", admin).json()
    out["refund"] = api.call("GET", f"{API}/refunds/{t.refund_id}", admin).json()
    return out


# ---- object level: the walk --------------------------------------------------------------------

def walk_member_routes(api: Api, app, *, token: str, role: Role, target: Target, outsider: bool,
                       member_id: int | None = None) -> int:
    """Call every member-scoped route and method for `target`; returns the number of calls."""
    routes = [r for r in api_routes(app) if is_member_scoped(r)]
    uncovered = sorted({r.operation_id or r.path for r in routes} - set(ROUTE_BODIES))
    assert not uncovered, f"member-scoped routes without an entry in ROUTE_BODIES: {uncovered}"
    grants = ROLE_PERMS[role]
    n = 0
    for route in routes:
        values = target.path_values()
        if member_id is not None:
            values["member_id"] = member_id
        url = fill(route, values)
        body = ROUTE_BODIES[route.operation_id](target)
        perms = route_perms(route)
        assert perms, f"{route.path} checks no permission"
        for method in calls(route):
            n += 1
            r = api.call(method, url, token, body)
            where = f"{role} {method} {url} -> {r.status_code}"
            if not perms <= grants:
                # Function-level denial comes first and must not depend on the member existing.
                probe = api.call(method, fill(route, {**values, "member_id": NO_SUCH_ID, "order_id": NO_SUCH_ID,
                                                      "refund_id": NO_SUCH_ID}), token, body)
                if not is_bare_problem(r, 403) or r.json() != probe.json() or probe.status_code != 403:
                    api.leak(f"{where}: expected the same bare 403 as for a missing id, got {r.text[:200]}")
            elif outsider:
                if not is_bare_problem(r, 404):
                    api.leak(f"{where}: expected a bare 404 problem, got {r.text[:300]}")
            elif not 200 <= r.status_code < 300:
                api.leak(f"{where}: own member should be reachable, got {r.text[:300]}")
            if outsider:
                found = leaked_markers(r, target.markers)
                if found:
                    api.leak(f"{where}: body contains {found}")
    return n


@pytest.mark.parametrize("outsider_kind", ["clerk", "store_api_key"])
def test_outsider_gets_404_on_every_member_scoped_route(app, api, world, outsider_kind):
    if outsider_kind == "clerk":
        token, role = token_for(api.client, "clerk", ["GZ001"]), Role.clerk
    else:
        token, role = api_key("integrator", name="gz-pos", store="GZ001"), Role.integrator
    before = snapshot(api, world.admin, world.sh)
    calls_made = walk_member_routes(api, app, token=token, role=role, target=world.sh, outsider=True)
    # An id merged into the SH001 member resolves to it first, and is then just as invisible.
    calls_made += walk_member_routes(api, app, token=token, role=role, target=world.sh, outsider=True,
                                     member_id=world.merged_into_sh)
    after = snapshot(api, world.admin, world.sh)
    if before != after:
        api.leak("an outsider's calls changed the SH001 member")
    # Control: the same calls on the outsider's own member are accepted (so the bodies are valid).
    calls_made += walk_member_routes(api, app, token=token, role=role, target=world.gz, outsider=False)
    assert calls_made >= 3 * len(ROUTE_BODIES)
    report = api.report(f"{outsider_kind} of GZ001 on member-scoped routes ({calls_made} calls)")
    assert not api.leaks, report


def test_outsider_ingestion_cannot_reach_or_reveal_member(api, world):
    key = api_key("integrator", name="gz-pos", store="GZ001")
    sh = world.sh
    events_before = api.call("GET", f"{API}/members/{sh.member_id}/events", world.admin).json()
    attempts = [
        ("POST", f"{API}/events", {"external_id": "X-1", "name": "login", "member": {"id": sh.member_id},
                                   "occurred_at": "2026-10-03T10:00:00+08:00"}),
        ("POST", f"{API}/events", {"external_id": "X-2", "name": "login", "member": {"identities": {"phone": sh.phone}},
                                   "occurred_at": "2026-10-03T10:00:00+08:00"}),
        ("POST", f"{API}/orders", {**order("X-3", phone=sh.phone, store_code="GZ001")}),
        ("POST", f"{API}/orders", {**order("X-4", store_code="GZ001"), "member": {"id": sh.member_id}}),
        ("POST", f"{API}/ingest", {"items": [{"type": "event", "external_id": "X-5", "name": "login",
                                              "member": {"id": sh.member_id},
                                              "occurred_at": "2026-10-03T10:00:00+08:00"}]}),
    ]
    for method, url, body in attempts:
        r = api.call(method, url, key, body)
        if r.status_code in (200, 201) and url.endswith("/ingest"):
            if r.json()["accepted"] != 0:
                api.leak(f"{url}: batch item for an out-of-scope member accepted")
        elif r.status_code not in (404, 422):
            api.leak(f"{method} {url} -> {r.status_code}: {r.text[:200]}")
        found = leaked_markers(r, sh.markers)
        if found or str(sh.member_id) in json.dumps(r.json().get("member_id", "")):
            api.leak(f"{method} {url}: body reveals {found or 'the member id'}")
    events_after = api.call("GET", f"{API}/members/{sh.member_id}/events", world.admin).json()
    orders = api.call("GET", f"{API}/members/{sh.member_id}/orders", world.admin).json()
    if events_after != events_before or len(orders["items"]) != 1:
        api.leak("an out-of-scope ingestion wrote to the SH001 member")
    report = api.report("store-bound API key ingesting for an out-of-scope member")
    assert not api.leaks, report


def _mentions_id(obj: Any, member_id: int, key: str = "") -> bool:
    """Whether a response names `member_id`: as an id field, or as a number inside a message."""
    if isinstance(obj, dict):
        return any(_mentions_id(v, member_id, k) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_mentions_id(v, member_id, key) for v in obj)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj == member_id and (key == "id" or key.endswith("_id") or key.endswith("_ids"))
    if isinstance(obj, str) and key in ("warnings", "detail", "message", "reason", "title"):
        return re.search(rf"(?<![\d.]){member_id}(?![\d.])", obj) is not None
    return False


def test_identity_conflicts_do_not_reveal_out_of_scope_member(api, world):
    """A key that belongs to another store's member is refused (409/422) without saying whose it is."""
    sh, gz = world.sh, world.gz
    clerk = token_for(api.client, "clerk", ["GZ001"])
    attempts = [
        ("POST", f"{API}/members", {"name": "新会员", "home_store_code": "GZ001",
                                    "identities": [{"kind": "phone", "value": sh.phone}]}),
        ("POST", f"{API}/members", {"name": "新会员", "home_store_code": "GZ001",
                                    "identities": [{"kind": "card_no", "value": sh.card}]}),
        ("POST", f"{API}/members/{gz.member_id}/identities", {"kind": "phone", "value": sh.phone}),
        ("POST", f"{API}/members/{gz.member_id}/identities", {"kind": "card_no", "value": sh.card}),
        ("PATCH", f"{API}/members/{gz.member_id}", {"home_store_code": "SH001"}),
    ]
    before = snapshot(api, world.admin, sh)
    for method, url, body in attempts:
        r = api.call(method, url, clerk, body)
        if r.status_code not in (409, 422) or not r.headers["content-type"].startswith(PROBLEM):
            api.leak(f"{method} {url} {body} -> {r.status_code} {r.text[:200]}")
        if leaked_markers(r, sh.markers) or _mentions_id(r.json(), sh.member_id):
            api.leak(f"{method} {url} {body}: names the SH001 member: {r.text[:300]}")
    if snapshot(api, world.admin, sh) != before:
        api.leak("the SH001 member changed")
    report = api.report("GZ001 clerk identity conflicts")
    assert not api.leaks, report


def test_idempotent_replay_is_per_principal(api, world):
    """Another principal re-using an Idempotency-Key gets its own answer, never the stored one."""
    sh = world.sh
    owner = token_for(api.client, "clerk", ["SH001"])
    outsider = token_for(api.client, "clerk", ["GZ001"])
    url, body, key = f"{API}/members/{sh.member_id}/notes", {"body": "回访记录"}, {"Idempotency-Key": "note-1"}
    first = api.call("POST", url, owner, body, headers=key)
    assert first.status_code == 201, first.text
    again = api.call("POST", url, owner, body, headers=key)
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true", again.text
    r = api.call("POST", url, outsider, body, headers=key)
    if not is_bare_problem(r, 404) or r.headers.get("idempotent-replayed"):
        api.leak(f"outsider re-using the key got {r.status_code} {r.text[:200]}")
    r = api.call("GET", f"{API}/members/{sh.member_id}", outsider, headers=key)
    if not is_bare_problem(r, 404):
        api.leak(f"outsider GET with the key got {r.status_code}")
    report = api.report("Idempotency-Key replay across principals")
    assert not api.leaks, report


def test_tracking_cannot_reveal_out_of_scope_member(app, api, world):
    if "/v1/identify" not in app.openapi()["paths"]:
        pytest.skip("no Segment-compatible tracking routes in this build")
    sh, gz = world.sh, world.gz
    _ok(api.call("POST", f"{API}/members/{gz.member_id}/identities", world.admin,
                 {"kind": "external_id", "value": "U-GZ-1"}), 201)
    key = api_key("integrator", name="gz-tracker", store="GZ001")
    before = snapshot(api, world.admin, sh)
    messages = [
        ("/v1/identify", {"messageId": "T-1", "userId": "U-GZ-1", "traits": {"phone": sh.phone}}),
        ("/v1/identify", {"messageId": "T-2", "userId": "U-NEW-1", "traits": {"phone": sh.phone}}),
        ("/v1/identify", {"messageId": "T-3", "anonymousId": "anon-1", "traits": {"phone": sh.phone}}),
        ("/v1/track", {"messageId": "T-4", "userId": "U-GZ-1", "event": "Signed In",
                       "context": {"traits": {"phone": sh.phone}}}),
        ("/v1/alias", {"messageId": "T-5", "userId": "U-GZ-1", "previousId": "anon-2"}),
        ("/v1/batch", {"batch": [{"type": "identify", "messageId": "T-6", "userId": "U-GZ-1",
                                  "traits": {"phone": sh.phone, "email": "gz@example.com"}}]}),
    ]
    for path, body in messages:
        r = api.call("POST", path, key, body)
        if r.status_code not in (200, 422):
            api.leak(f"{path} -> {r.status_code} {r.text[:200]}")
        if leaked_markers(r, sh.markers) or _mentions_id(r.json(), sh.member_id):
            api.leak(f"{path} {body}: names the SH001 member: {r.text[:400]}")
    if snapshot(api, world.admin, sh) != before:
        api.leak("tracking by a GZ001 key changed the SH001 member")
    report = api.report("store-bound key on the tracking API")
    assert not api.leaks, report


# ---- lists -------------------------------------------------------------------------------------

def test_member_list_never_shows_out_of_scope_member(api, world):
    sh, gz = world.sh, world.gz
    clerk = token_for(api.client, "clerk", ["GZ001"])
    national = re.sub(r"\D", "", sh.phone)
    queries: list[dict[str, Any]] = [
        {}, {"limit": 200}, {"phone": national}, {"phone": f"+86{national}"}, {"phone": f"+86 {national[:3]} "
                                                                                 f"{national[3:7]} {national[7:]}"},
        {"phone": f"{national[:3]}-{national[3:7]}-{national[7:]}"}, {"identity": f"phone:{national}"},
        {"identity": f"card_no:{sh.card}"}, {"q": sh.name}, {"q": sh.name[:1]}, {"store": "SH001"},
        {"store": "EAST"}, {"store": "HQ"}, {"tag": sh.tag}, {"consent": "sms:marketing"},
        {"joined_from": "2000-01-01T00:00:00Z"},
    ]
    seen_own = False
    for params in queries:
        r = api.call("GET", f"{API}/members", clerk, params=params)
        if r.status_code != 200:
            api.leak(f"list {params} -> {r.status_code} {r.text[:200]}")
            continue
        ids = {m["id"] for m in r.json()["items"]}
        seen_own |= gz.member_id in ids
        if ids & {sh.member_id, sh.sibling_id, world.merged_into_sh}:
            api.leak(f"list {params} returned an SH001 member")
        found = leaked_markers(r, sh.markers)
        if found:
            api.leak(f"list {params}: body contains {found}")
    assert seen_own, "the clerk should at least see the GZ001 member (control)"
    report = api.report("GZ001 clerk member lists")
    assert not api.leaks, report


# ---- masking and visibility --------------------------------------------------------------------

def _phones(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "phone" and isinstance(v, str):
                yield v
            if k == "value" and obj.get("kind") == "phone" and isinstance(v, str):
                yield v
            yield from _phones(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _phones(v)


def test_store_clerk_sees_member_with_masked_phone_on_every_get_route(app, api, world):
    sh = world.sh
    clerk = token_for(api.client, "clerk", ["SH001"])
    national = re.sub(r"\D", "", sh.phone)
    responses = []
    for route in api_routes(app):
        if "GET" not in route.methods:
            continue
        url = fill(route, {**sh.path_values(), "key_id": 1, "candidate_id": 1, "staff_id": 1, "job_id": 1,
              "rule_id": 1, "flag_id": 1, "benefit_id": 1, "item_code": "CUP", "template_id": sh.coupon_template_id,
              })
        r = api.call("GET", url, clerk)
        if is_member_scoped(route) and route_perms(route) <= ROLE_PERMS[Role.clerk] and r.status_code != 200:
            api.leak(f"GET {url}: the SH001 clerk should see its member, got {r.status_code} {r.text[:200]}")
        responses.append((f"GET {url}", r))
    for params in ({}, {"phone": national}, {"phone": f"+86{national}"}, {"identity": f"card_no:{sh.card}"}):
        r = api.call("GET", f"{API}/members", clerk, params=params)
        ids = [m["id"] for m in r.json()["items"]]
        if sh.member_id not in ids:
            api.leak(f"list {params}: the SH001 clerk does not find its member")
        if world.gz.member_id in ids:
            api.leak(f"list {params}: the SH001 clerk sees the GZ001 member")
        responses.append((f"GET /members {params}", r))
    # The clerk's own writes answer with masked data too.
    walk_member_routes(api, app, token=clerk, role=Role.clerk, target=sh, outsider=False)
    member = api.call("GET", f"{API}/members/{sh.member_id}", clerk)
    responses.append(("GET member after writes", member))
    assert member.json()["phone"] == f"{national[:3]}****{national[-4:]}"
    for label, r in responses:
        if MOBILE.search(r.text):
            api.leak(f"{label}: unmasked mobile number {MOBILE.search(r.text).group()}")
        if r.headers.get("content-type", "").startswith("application/json"):
            for phone in _phones(r.json()):
                if not MASKED_MOBILE.match(phone):
                    api.leak(f"{label}: phone not masked: {phone}")
        if sh.card in r.text:
            api.leak(f"{label}: full card number")
    assert len(responses) >= 20
    report = api.report(f"SH001 clerk across {len(responses)} GET responses")
    assert not api.leaks, report


def test_region_manager_sees_region_and_hq_sees_full_phone(api, world):
    sh, gz = world.sh, world.gz
    national = re.sub(r"\D", "", sh.phone)
    east = token_for(api.client, "store_manager", ["EAST"])
    south = token_for(api.client, "store_manager", ["SOUTH"])
    hq = token_for(api.client, "hq_ops")
    service = token_for(api.client, "service")

    r = api.call("GET", f"{API}/members/{sh.member_id}", east)
    assert r.status_code == 200, r.text
    assert r.json()["phone"] == f"{national[:3]}****{national[-4:]}"
    assert not MOBILE.search(r.text)
    ids = {m["id"] for m in api.call("GET", f"{API}/members", east, params={"limit": 200}).json()["items"]}
    assert sh.member_id in ids and gz.member_id not in ids
    r = api.call("GET", f"{API}/members/{gz.member_id}", east)
    assert is_bare_problem(r, 404) and not leaked_markers(r, gz.markers), r.text

    r = api.call("GET", f"{API}/members/{sh.member_id}", south)
    assert is_bare_problem(r, 404) and not leaked_markers(r, sh.markers), r.text

    r = api.call("GET", f"{API}/members/{sh.member_id}", service)  # unscoped but masked
    assert r.status_code == 200 and r.json()["phone"].startswith(national[:3] + "****"), r.text
    assert not MOBILE.search(r.text)

    r = api.call("GET", f"{API}/members/{sh.member_id}", hq)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["phone"] == f"+86{national}"
    assert {"kind": "phone", "value": f"+86{national}"}.items() <= next(
        i for i in body["identities"] if i["kind"] == "phone").items()
    assert any(i["value"] == sh.card for i in body["identities"])
    items = api.call("GET", f"{API}/members", hq, params={"phone": national}).json()["items"]
    assert [m["id"] for m in items] == [sh.member_id] and items[0]["phone"] == f"+86{national}"
    api.report("region manager / service / HQ visibility")


# ---- function level ----------------------------------------------------------------------------

def _principals(api: Api) -> dict[Role, str]:
    return {
        Role.clerk: token_for(api.client, "clerk", ["GZ001"]),
        Role.store_manager: token_for(api.client, "store_manager", ["SOUTH"]),
        Role.service: token_for(api.client, "service"),
        Role.integrator: api_key("integrator", name="erp"),
        Role.hq_ops: token_for(api.client, "hq_ops"),
    }


def test_role_table_is_enforced_on_every_route(app, api, world):
    principals = _principals(api)
    values = {**world.gz.path_values(), "key_id": 1, "candidate_id": 1, "staff_id": 1, "job_id": 1,
              "rule_id": 1, "flag_id": 1, "benefit_id": 1, "item_code": "CUP",
              "template_id": world.gz.coupon_template_id}
    checked = 0
    for route in api_routes(app):
        perms = route_perms(route)
        if route.operation_id == "createToken" or route.operation_id in VENDOR_CALLBACKS:
            assert not perms
            continue
        assert len(perms) == 1, f"{route.path}: expected exactly one permission check, found {perms}"
        for role, token in principals.items():
            if perms <= ROLE_PERMS[role]:
                continue
            for method in calls(route):
                body = ROUTE_BODIES.get(route.operation_id, lambda t: {})(world.gz)
                r = api.call(method, fill(route, values), token, body)
                checked += 1
                if not is_bare_problem(r, 403) or r.json().get("code") != "auth.forbidden":
                    api.leak(f"{role} {method} {route.path}: expected 403 auth.forbidden, got "
                             f"{r.status_code} {r.text[:200]}")
    assert checked >= 20

    # The named cases, spelled out: a clerk (even on its own member) cannot merge, manage staff or
    # API keys, review duplicates, create org units or ingest.
    clerk = principals[Role.clerk]
    gz = world.gz
    denied = [
        ("POST", f"{API}/members/{gz.member_id}/merge", {"merge_id": gz.sibling_id, "reason": "dup"}),
        ("GET", f"{API}/members/duplicates", None),
        ("POST", f"{API}/members/duplicates/scan", None),
        ("POST", f"{API}/staff", {"username": "sneaky", "password": "longenough1", "role": "admin"}),
        ("GET", f"{API}/staff", None),
        ("POST", f"{API}/api-keys", {"name": "sneaky", "role": "integrator"}),
        ("GET", f"{API}/api-keys", None),
        ("POST", f"{API}/org/units", {"kind": "store", "code": "SZ001", "name": "深圳店", "parent_code": "SOUTH"}),
        ("POST", f"{API}/events", {"external_id": "C-1", "name": "login", "member": {"id": gz.member_id},
                                   "occurred_at": "2026-10-03T10:00:00+08:00"}),
        ("POST", f"{API}/orders", order("C-2", phone=gz.phone, store_code="GZ001")),
        ("POST", f"{API}/refunds", {"external_id": "C-3", "order_external_id": "GZ-O1", "order_source": "pos",
                                    "refunded_at": "2026-10-02T10:00:00+08:00"}),
        ("POST", f"{API}/ingest", {"items": [{"type": "event", "external_id": "C-4", "name": "login",
                                              "member": {"id": gz.member_id},
                                              "occurred_at": "2026-10-03T10:00:00+08:00"}]}),
    ]
    for method, url, body in denied:
        r = api.call(method, url, clerk, body)
        assert is_bare_problem(r, 403), (method, url, r.status_code, r.text)
    staff = api.call("GET", f"{API}/staff", world.admin).json()
    assert "sneaky" not in {s["username"] for s in staff}
    assert api.call("GET", f"{API}/members/{gz.member_id}/merges", world.admin).json() == []
    report = api.report(f"role table over {checked} denied route/role pairs")
    assert not api.leaks, report


def test_every_api_route_requires_credentials(app, api):
    values = {"member_id": 1, "order_id": 1, "refund_id": 1, "identity_id": 1, "event_id": 1, "key_id": 1,
              "candidate_id": 1, "staff_id": 1, "job_id": 1, "rule_id": 1, "flag_id": 1, "benefit_id": 1,
              "name": "vip", "channel": "sms", "purpose": "marketing", "external_id": "S-1", "template_id": 1,
              "code": "7K3M9QWX2D8F", "item_code": "CUP", "segment_code": "none", "journey_code": "none",
                "template_code": "none", "message_id": 1, "task_id": 1, "provider": "webhook"}
    checked = 0
    for route in api_routes(app):
        if route.operation_id == "createToken":
            continue
        if route.operation_id in VENDOR_CALLBACKS:  # unsigned: refused, whatever Orchard credential comes along
            for method in calls(route):
                for creds in ({}, {"Authorization": "Bearer nonsense"}):
                    r = api.call(method, fill(route, values), body={} if method != "GET" else None, headers=creds)
                    checked += 1
                    if not (is_bare_problem(r, 401) or is_bare_problem(r, 404)):
                        api.leak(f"{method} {route.path} unsigned -> {r.status_code} {r.text[:200]}")
            continue
        for method in calls(route):
            url = fill(route, values)
            for creds in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Bearer ok_live_forged"},
                          {"Authorization": "Basic YWRtaW46YWRtaW4="}, {"Idempotency-Key": "k1"}):
                r = api.call(method, url, body={} if method != "GET" else None, headers=creds)
                checked += 1
                if not is_bare_problem(r, 401) or "bearer" not in r.headers.get("www-authenticate", "").lower():
                    api.leak(f"{method} {url} with {list(creds) or 'no credentials'} -> {r.status_code} "
                             f"{r.headers.get('content-type')} {r.text[:200]}")
    r = api.call("POST", f"{API}/auth/token", body={"username": "nobody", "password": "wrong"})
    assert is_bare_problem(r, 401), r.text
    assert checked >= 5 * 25
    report = api.report(f"unauthenticated calls on every /api/v1 route ({checked})")
    assert not api.leaks, report


# ---- mass assignment ---------------------------------------------------------------------------

def test_patch_member_rejects_server_owned_fields(api, world):
    sh = world.sh
    url = f"{API}/members/{sh.member_id}"
    for token in (world.admin, token_for(api.client, "clerk", ["SH001"])):
        before = api.call("GET", url, world.admin).json()
        for extra in ({"aggregates": {"order_count": 99, "total_spend_fen": 10**9}}, {"status": "merged"},
                      {"merged_into_id": world.gz.member_id}, {"id": 1}, {"home_store_id": 1},
                      {"created_at": "2000-01-01T00:00:00Z"}, {"updated_at": "2000-01-01T00:00:00Z"},
                      {"phone": "13700000000"}, {"identities": [{"kind": "phone", "value": "13700000000"}]},
                      {"tags": ["vip"]}, {"resolved_from": 1}, {"joined_at": "2000-01-01T00:00:00Z"}):
            for body in (extra, {"name": "改名", **extra}):
                r = api.call("PATCH", url, token, body)
                assert is_bare_problem(r, 422), (body, r.status_code, r.text)
                field_name = next(iter(extra))
                assert any(e["field"] == field_name for e in r.json().get("errors", [])), r.text
        after = api.call("GET", url, world.admin).json()
        assert after == before
    api.report("mass assignment on PATCH /members/{id}")
