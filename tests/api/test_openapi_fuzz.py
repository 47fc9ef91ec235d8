"""Schemathesis over the app's own OpenAPI document: the spec is valid OpenAPI, and no operation in it
answers 5xx to generated input, valid (positive) or invalid (negative).

The operations are read from the spec at run time, so routes added later (the /v1 Segment-compatible
tracking routes, anything new under /api/v1) are fuzzed without touching this file. Each request carries
the credential its operation's `security` asks for: an admin token for HTTPBearer, an integrator API key
as Bearer or as Segment write key for the tracking schemes; an unknown scheme fails the test.

The database is seeded with an org tree, members, orders, a refund, an event, a note, a tag, a consent,
an API key, a coupon template and coupons, a duplicate candidate and a finished import job with an
error report, and generated path ids are swapped for real ones half of the time so the "row exists"
branches run, not only the 404s.
Write requests sometimes carry an Idempotency-Key (fresh, or a deliberate re-use) so the middleware
sees fuzzed input too.

Failures are collected (not raised inside Hypothesis, which would shrink against a live database) and
reported together, with a curl command for each. Runs on every database backend in conftest.
"""

from __future__ import annotations

import base64
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.factories import PASSWORD, api_key, headers, make_org, order, token_for

#: Examples per operation and generation mode, per backend. PostgreSQL is the production store and the
#: stricter one (integer ranges, text encodings), so it gets the deeper run; SQLite a lighter one (with
#: ~170 operations the full depth costs ~90 s per backend on a 2-core box). Raise them for a deeper local
#: run, e.g. ORCHARD_FUZZ_POSITIVE=150 ORCHARD_FUZZ_NEGATIVE=60 (applies to both backends).
EXAMPLES = {"postgresql": (20, 8), "sqlite": (10, 4)}
if "ORCHARD_FUZZ_POSITIVE" in os.environ or "ORCHARD_FUZZ_NEGATIVE" in os.environ:
    EXAMPLES = {k: (int(os.environ.get("ORCHARD_FUZZ_POSITIVE", p)), int(os.environ.get("ORCHARD_FUZZ_NEGATIVE", n)))
                for k, (p, n) in EXAMPLES.items()}
#: The operations are fuzzed in this many shards (each its own test, so test workers share them).
SHARDS = 3
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Seeded:
    """Real ids and names to substitute into generated path parameters."""

    path_values: dict[str, list[Any]] = field(default_factory=dict)
    member_ids: list[int] = field(default_factory=list)
    username: str = "admin_all"


def seed(client, token: str) -> Seeded:
    make_org()
    h = headers(token)
    out = Seeded()

    def post(url: str, body: dict, expect: int | tuple[int, ...] = 201) -> dict:
        r = client.post(url, json=body, headers=h)
        assert r.status_code in ((expect,) if isinstance(expect, int) else expect), (url, r.status_code, r.text)
        return r.json()

    members = [
        post("/api/v1/members", {"name": "张三", "birthday": "1990-01-02", "home_store_code": "SH001",
                                 "identities": [{"kind": "phone", "value": "13800138001"},
                                                {"kind": "card_no", "value": "CARD0001"}]}),
        post("/api/v1/members", {"name": "张三", "birthday": "1990-01-02", "home_store_code": "HZ001",
                                 "identities": [{"kind": "phone", "value": "13800138002"}]}),
        post("/api/v1/members", {"name": "李四", "home_store_code": "GZ001",
                                 "identities": [{"kind": "email", "value": "li@example.com"}]}),
    ]
    out.member_ids = [m["id"] for m in members]
    orders = [post("/api/v1/orders", order(f"FZ-{i}", phone=p))
              for i, p in enumerate(["13800138001", "13800138002", "13900139003"])]
    refund = post("/api/v1/refunds", {"source": "pos", "external_id": "FZ-R1", "order_external_id": "FZ-0",
                                      "refunded_at": "2026-10-02T10:00:00+08:00", "amount_fen": 1000}, (200, 201))
    post("/api/v1/events", {"source": "app", "external_id": "FZ-E1", "name": "login",
                            "member": {"id": out.member_ids[0]}, "occurred_at": "2026-10-01T09:00:00+08:00"})
    first = out.member_ids[0]
    post(f"/api/v1/members/{first}/notes", {"body": "喜欢绿茶"})
    r = client.post(f"/api/v1/members/{first}/tags", json={"name": "vip"}, headers=h)
    assert r.status_code == 200, r.text
    r = client.put(f"/api/v1/members/{first}/consents/sms/marketing", json={"granted": True}, headers=h)
    assert r.status_code == 200, r.text
    key = post("/api/v1/api-keys", {"name": "fuzz-pos", "role": "integrator"})
    r = client.post("/api/v1/members/duplicates/scan", headers=h)
    assert r.status_code == 200, r.text
    candidates = client.get("/api/v1/members/duplicates", headers=h).json()["items"]
    identity_ids = [i["id"] for m in members for i in m["identities"]]
    # An import job with an error report (one bad row), finished, so its routes answer 200 too.
    r = client.post("/api/v1/imports", headers=h, files={
        "kind": (None, "orders"),
        "file": ("o.csv", b"order_id,member_phone,paid_at,amount_fen\nFZ-I1,13800138001,2026-10-01,100\n"
                          b"FZ-I2,12345,2026-10-01,100\n")})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (job := client.get(r.headers["location"], headers=h).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["has_error_report"], job
    tpl = post("/api/v1/coupon-templates", {"name": "满100减20", "kind": "amount_off", "off_fen": 2000,
                                            "threshold_fen": 10000, "validity": "relative", "valid_days": 30})
    coupons = [post(f"/api/v1/members/{mid}/coupons", {"template_id": tpl["id"], "external_id": f"FZ-C{mid}"})
               for mid in out.member_ids]
    out.path_values = {
        "member_id": out.member_ids,
        "order_id": [o["id"] for o in orders],
        "refund_id": [refund["id"]],
        "identity_id": identity_ids,
        "candidate_id": [c["id"] for c in candidates] or [1],
        "key_id": [key["id"]],
        "job_id": [job["id"]],
        "name": ["vip"],
        "channel": ["sms", "wechat"],
        "purpose": ["marketing", "service"],
        "template_id": [tpl["id"]],
        "code": [c["code"] for c in coupons],
    }
    return out


@dataclass
class Run:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    per_operation: dict[str, dict[int, int]] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    def fail(self, op: str, kind: str, text: str) -> None:
        self.failures.setdefault((op, kind), text)


def _auth_options(operation, global_security: list, creds: dict[str, str]) -> list[dict[str, str]]:
    """The Authorization headers that satisfy the operation's security requirements ([{}]: none needed)."""
    security = operation.definition.raw.get("security", global_security)
    if not security or any(not requirement for requirement in security):
        return [{}]
    schemes = [name for requirement in security for name in requirement]
    unknown = [name for name in schemes if name not in creds]
    assert not unknown, f"{operation.label}: teach this test to authenticate with {unknown}"
    return [{"Authorization": creds[name]} for name in schemes]


def _fuzz_operation(operation, mode: GenerationMode, examples: int, *, auth_options: list[dict[str, str]],
                    seeded: Seeded, run: Run, checks: list, keys: itertools.count) -> None:
    path_params = [p.name for p in operation.path_parameters] if hasattr(operation, "path_parameters") else []
    label = f"{operation.label} [{mode.value}]"

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def fuzz(case, data) -> None:
        if path_params and case.path_parameters is not None and data.draw(st.booleans(), label="real_ids"):
            for name in path_params:
                choices = seeded.path_values.get(name)
                if choices:
                    case.path_parameters[name] = data.draw(st.sampled_from(choices), label=name)
        if isinstance(case.body, dict) and {"username", "password"} <= set(case.body) \
                and data.draw(st.booleans(), label="login"):
            case.body.update(username=seeded.username, password=PASSWORD)
        if isinstance(case.body, dict) and "merge_id" in case.body and data.draw(st.booleans(), label="merge"):
            case.body["merge_id"] = data.draw(st.sampled_from(seeded.member_ids), label="merge_id")
        extra = dict(data.draw(st.sampled_from(auth_options), label="auth"))
        if case.method.upper() in WRITE_METHODS:
            n = next(keys)
            if n % 3 == 0:
                extra["Idempotency-Key"] = f"fuzz-{n}"
            elif n % 7 == 0:
                extra["Idempotency-Key"] = f"fuzz-{n - n % 3}"  # re-use: replay or key_reused
        run.requests += 1
        try:
            response = case.call(headers=extra)
        except Exception as exc:  # the app raised through the transport: a 500 to a real client
            run.fail(label, "exception", f"{type(exc).__name__}: {exc}\n{case.as_curl_command(headers=extra)}")
            return
        run.by_status[response.status_code] = run.by_status.get(response.status_code, 0) + 1
        seen = run.per_operation.setdefault(operation.label, {})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            run.fail(label, f"status {response.status_code}",
                     f"{response.text[:500]}\n{case.as_curl_command(headers=extra)}")
            return
        try:
            case.validate_response(response, checks=checks, headers=extra)
        except Exception as exc:
            run.fail(label, type(exc).__name__, f"{str(exc)[:1500]}")

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing to make invalid (an operation without parameters or body has no negative cases).
        assert mode is GenerationMode.NEGATIVE, f"{label}: no valid input could be generated"


def test_spec_is_valid_openapi(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.validate()  # the OpenAPI 3.x meta-schema
    errors = [r.err() for r in schema.get_all_operations() if isinstance(r, Err)]
    assert not errors, errors
    spec = schema.raw_schema
    assert spec["openapi"].startswith("3.")
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values() if "operationId" in op]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


@pytest.mark.parametrize("shard", range(SHARDS))
def test_no_operation_answers_5xx(app, client, database, shard):
    positive, negative = EXAMPLES["postgresql" if database.startswith("postgresql") else "sqlite"]
    started = time.monotonic()
    token = token_for(client, "admin")
    seeded = seed(client, token)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Send the admin token on every case, also in negative mode (which otherwise drops or mangles it:
    # unauthenticated calls are covered route by route in test_access_scoping).
    schema.config.generation.update(with_security_parameters=False)
    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)]
    operations = sorted((r.ok() for r in results), key=lambda op: op.label)
    assert operations, "the spec has no operations"
    operations = operations[shard::SHARDS]
    key = api_key("integrator", name="fuzz-tracker")
    creds = {"HTTPBearer": f"Bearer {token}", "TrackingBearer": f"Bearer {key}",
             "SegmentWriteKey": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    run = Run()
    keys = itertools.count(1)
    positive_checks = [not_a_server_error, response_schema_conformance]
    for operation in operations:
        auth_options = _auth_options(operation, schema.raw_schema.get("security", []), creds)
        _fuzz_operation(operation, GenerationMode.POSITIVE, positive, auth_options=auth_options,
                        seeded=seeded, run=run, checks=positive_checks, keys=keys)
        _fuzz_operation(operation, GenerationMode.NEGATIVE, negative, auth_options=auth_options,
                        seeded=seeded, run=run, checks=[not_a_server_error], keys=keys)
    elapsed = time.monotonic() - started
    summary = (f"fuzzed {len(operations)} operations with {run.requests} requests in {elapsed:.1f}s; "
               f"statuses {dict(sorted(run.by_status.items()))}; failures {len(run.failures)}")
    for label, statuses in run.per_operation.items():
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    print(summary)
    report = "\n\n".join(f"== {op}: {kind}\n{text}" for (op, kind), text in sorted(run.failures.items()))
    assert not run.failures, f"{summary}\n\n{report}"
    assert run.requests >= len(operations) * min(positive, 10)

