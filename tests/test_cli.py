"""The CLI contract, run as a real subprocess against the test database."""

import json
import os
import subprocess
import sys
import time

import httpx

from tests.conftest import _free_port
from tests.factories import make_org

ORCHARD = [sys.executable, "-m", "orchard.cli"]


def run(*args, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run([*ORCHARD, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_db_upgrade_is_idempotent(clean_db):
    assert "up to date" in run("db", "upgrade").stdout


def test_users_create_reads_the_password_from_stdin_and_it_logs_in(client):
    make_org()
    run("users", "create", "--username", "clerk1", "--role", "clerk", "--store", "SH001", stdin="correct horse\n")
    r = client.post("/api/v1/auth/token", json={"username": "clerk1", "password": "correct horse"})
    assert r.status_code == 200
    bad = run("users", "create", "--username", "x", "--role", "emperor", stdin="correct horse\n", check=False)
    assert bad.returncode != 0 and "role" in bad.stderr


def test_apikeys_create_prints_the_key_alone_on_the_last_line(client):
    out = run("apikeys", "create", "--name", "POS").stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("ork_") and " " not in key
    assert client.get("/api/v1/members", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_members_show_by_id_and_phone(client):
    out = run("apikeys", "create", "--name", "POS").stdout.strip().splitlines()[-1]
    m = client.post("/api/v1/events", headers={"Authorization": f"Bearer {out}"}, json={
        "source": "app", "external_id": "e1", "name": "sign_up", "occurred_at": "2026-10-01T00:00:00Z",
        "member": {"identities": {"phone": "13812341234"}, "profile": {"name": "王芳"}}}).json()
    by_id = json.loads(run("members", "show", str(m["member_id"])).stdout)
    by_phone = json.loads(run("members", "show", "--phone", "138 1234 1234").stdout)
    assert by_id["name"] == by_phone["name"] == "王芳"
    assert by_id["aggregates"]["order_count"] == 0
    assert run("members", "show", "999999", check=False).returncode == 1


def test_serve_answers_on_the_given_port_with_local_docs(clean_db):
    port = _free_port()
    proc = subprocess.Popen([*ORCHARD, "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)
        docs = httpx.get(f"http://127.0.0.1:{port}/docs")
        assert docs.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in docs.text
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()
        assert "/api/v1/members/{member_id}" in spec["paths"]
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/members").status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_points_rules_load_list_and_refuse_a_bad_file_whole(clean_db, tmp_path):
    make_org()
    good = tmp_path / "rules.json"
    good.write_text(json.dumps([
        {"name": "每元1分", "kind": "amount", "config": {"points": 1, "per_fen": 100, "stores": ["SH001"]}},
        {"name": "会员日", "kind": "multiplier", "config": {"factor": "2", "when": {"type": "member_day",
                                                                                  "weekdays": [3]}}},
    ], ensure_ascii=False), encoding="utf-8")
    assert run("points", "rules", "load", str(good)).stdout.count("created") == 2
    again = run("points", "rules", "load", str(good)).stdout
    assert again.count("replaced") == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "新规则", "kind": "amount", "config": {"points": 1, "per_fen": 100}},
                               {"name": "坏", "kind": "amount", "config": {"points": 1, "per_fen": 100,
                                                                          "stores": ["NOPE"]}}]), encoding="utf-8")
    p = run("points", "rules", "load", str(bad), check=False)
    assert p.returncode == 1 and "NOPE" in p.stdout and "nothing loaded" in p.stdout
    listing = run("points", "rules", "list").stdout
    assert "每元1分" in listing and "会员日" in listing and "新规则" not in listing
    assert run("points", "rules", "load", str(tmp_path / "missing.json"), check=False).returncode == 2


def test_tiers_evaluate_and_show(client):
    from tests.factories import headers, token_for

    admin = headers(token_for(client, "admin"))
    assert run("tiers", "show", check=False).returncode == 1
    r = client.put("/api/v1/tiers", headers=admin, json={"levels": [
        {"code": "BASE", "name": "普通会员", "rank": 0, "threshold": 0},
        {"code": "GOLD", "name": "金卡", "rank": 1, "threshold": 1}], "metric": "orders"})
    assert r.status_code == 200
    client.post("/api/v1/members", headers=admin, json={"name": "甲"})
    assert "evaluated" in run("tiers", "evaluate").stdout
    out = run("tiers", "show").stdout
    assert "金卡" in out and "orders" in out


def test_points_liability_prints_the_months(clean_db):
    from tests.loyalty.test_reports import scenario

    scenario()
    out = run("points", "liability", "--from", "2026-03", "--to", "2026-05").stdout
    assert "2026-04" in out and "SH001" in out and "70" in out
    assert run("points", "liability", "--from", "2026-05", "--to", "2026-03", check=False).returncode == 2


def test_points_anomalies_scans_a_day(clean_db):
    assert "member spikes 0" in run("points", "anomalies", "--day", "2026-11-20").stdout
    assert run("points", "anomalies", "--day", "20th", check=False).returncode == 2
