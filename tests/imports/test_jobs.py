"""HTTP imports as background jobs (`/api/v1/imports`): upload → poll → counts → error report, over
the test client and a real server; permissions; refused input never makes a job or leaves a file;
unreadable files fail the job with the reader's reason; jobs left running by a dead process are
failed at startup (or by the sweep); progress is visible mid-run; shutdown interrupts a job after its
current batch; Idempotency-Key works with multipart uploads."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from openpyxl import Workbook
from sqlalchemy import func, select

from orchard import db
from orchard.audit.models import AuditEntry
from orchard.config import get_settings
from orchard.events.models import Order
from orchard.imports import jobs
from orchard.imports.models import ImportJob
from orchard.kit.clock import utcnow
from orchard.members.models import Member
from tests.factories import api_key, headers, make_org, token_for

URL = "/api/v1/imports"
ORDERS = [["订单号", "手机号", "支付时间", "金额(分)", "门店编码"],
          ["A1", "13812341234", "2026-10-01", "12850", "SH001"],
          ["A2", "12345", "2026-10-01", "100", ""],
          ["A3", "13812341235", "2026-10-02", "-1", "SH001"],
          ["A4", "13812341236", "2026-10-03", "500", "NOPE"],
          ["A5", "13812341237", "2026-10-04", "900", "GZ001"]]
MEMBERS = [["手机号", "姓名", "门店编码"],
           ["13900000001", "张三", "SH001"],
           ["13900000002", "李四", "GZ001"],
           ["13900000003", "王五", "HZ001"]]


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8-sig")


def upload(client, token: str, kind: str | None, content: bytes | None, name: str = "订单.csv", **extra: str):
    parts: dict = {k: (None, v) for k, v in ({"kind": kind} if kind is not None else {}).items()}
    parts.update({k: (None, v) for k, v in extra.items() if k not in ("headers",)})
    if content is not None:
        parts["file"] = (name, content, "text/csv")
    return client.post(URL, files=parts, headers=headers(token))


def wait_done(client, token: str, job_id: int, timeout: float = 60, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{URL}/{job_id}", headers=headers(token, **kw)).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.05)


def job_count() -> int:
    with db.transaction(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(ImportJob))


def stored_uploads() -> list[Path]:
    root = Path(get_settings().data_dir) / "imports"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    """A data directory of this test's own, so it can see exactly which files an upload left."""
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def admin(client) -> str:
    make_org()
    return token_for(client, "admin")


# ---- the happy path ------------------------------------------------------------------------------

def test_upload_is_queued_then_imported_with_counts_and_an_error_report(client, admin):
    content = csv_bytes(ORDERS)
    r = upload(client, admin, "orders", content, source="pos")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"{URL}/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded")
    assert (job["kind"], job["source"], job["file_name"], job["size_bytes"]) == ("orders", "pos", "订单.csv",
                                                                                  len(content))
    assert job["created_by"].startswith("staff:")

    done = wait_done(client, admin, job["id"])
    assert done["status"] == "succeeded", done
    assert (done["rows_processed"], done["created"], done["unchanged"], done["errors"]) == (5, 2, 0, 3)
    assert done["has_error_report"] and done["error_code"] is None and done["finished_at"]
    with db.transaction(readonly=True) as s:
        assert sorted(s.scalars(select(Order.external_id).where(Order.source == "pos"))) == ["A1", "A5"]

    report = client.get(f"{URL}/{job['id']}/errors", headers=headers(admin))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    assert "filename*=UTF-8''" in report.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(report.content.decode("utf-8-sig"))))
    assert rows[0][:4] == ["行号 row", "列 column", "原因 reason", "级别 level"]
    assert [r[:2] for r in rows[1:]] == [["3", "member_phone"], ["4", "amount_fen"], ["5", "store_code"]]
    assert rows[1][4:] == ORDERS[2]

    with db.transaction(readonly=True) as s:
        actions = dict(s.execute(select(AuditEntry.action, AuditEntry.data).where(AuditEntry.entity == "import_job")
                                 ).tuples().all())
    assert actions["import.uploaded"]["file_name"] == "订单.csv"
    assert actions["import.uploaded"]["sha256"] == job["sha256"]
    assert "import.errors_downloaded" in actions

    # The same file again: nothing new, all of it unchanged or refused again.
    again = wait_done(client, admin, upload(client, admin, "orders", content, source="pos").json()["id"])
    assert (again["created"], again["unchanged"], again["errors"]) == (0, 2, 3)


def test_members_import_without_errors_has_no_report(client, admin):
    job = wait_done(client, admin, upload(client, admin, "members", csv_bytes(MEMBERS), name="会员.csv").json()["id"])
    assert (job["status"], job["created"], job["has_error_report"]) == ("succeeded", 3, False)
    r = client.get(f"{URL}/{job['id']}/errors", headers=headers(admin))
    assert r.status_code == 404 and r.json()["code"] == "imports.no_report"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"{URL}/987654321", headers=headers(admin)).status_code == 404
    assert client.get(f"{URL}/987654321/errors", headers=headers(admin)).status_code == 404


def test_xlsx_upload(client, admin):
    wb = Workbook()
    ws = wb.active
    for row in MEMBERS:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    job = wait_done(client, admin, upload(client, admin, "members", buf.getvalue(), name="会员.xlsx").json()["id"])
    assert (job["status"], job["created"]) == ("succeeded", 3)
    assert any(p.name == "upload.xlsx" for p in stored_uploads())


def test_list_is_newest_first_and_paginated(client, admin):
    ids = [upload(client, admin, "members", csv_bytes(MEMBERS)).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait_done(client, admin, job_id)
    page = client.get(URL, params={"limit": 2}, headers=headers(admin)).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = client.get(URL, params={"limit": 2, "cursor": page["next_cursor"]}, headers=headers(admin)).json()
    assert [j["id"] for j in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    assert len(client.get(URL, params={"status": "succeeded", "kind": "members"}, headers=headers(admin))
               .json()["items"]) == 3
    assert client.get(URL, params={"status": "failed"}, headers=headers(admin)).json()["items"] == []
    assert client.get(URL, params={"status": "nope"}, headers=headers(admin)).status_code == 422


def test_upload_over_a_real_http_server_with_an_idempotency_key(live_server):
    content = csv_bytes(MEMBERS)
    with httpx.Client(base_url=live_server, timeout=30) as http:
        make_org()
        admin = token_for(http, "admin")
        h = headers(admin, **{"Idempotency-Key": "upload-1"})
        # httpx draws a new multipart boundary for every request: a retry is still a replay.
        first = http.post(URL, headers=h, data={"kind": "members"}, files={"file": ("会员.csv", content, "text/csv")})
        retry = http.post(URL, headers=h, data={"kind": "members"}, files={"file": ("会员.csv", content, "text/csv")})
        assert first.status_code == retry.status_code == 202, (first.text, retry.text)
        assert retry.headers.get("idempotent-replayed") == "true"
        assert retry.json()["id"] == first.json()["id"]
        other = http.post(URL, headers=h, data={"kind": "members"},
                          files={"file": ("会员.csv", content + b"13900000009,x,SH001\r\n", "text/csv")})
        assert other.status_code == 422 and other.json()["code"] == "idempotency.key_reused"
        job = wait_done(http, admin, first.json()["id"])
    assert (job["status"], job["created"]) == ("succeeded", 3)
    assert job_count() == 1
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 3


def test_a_large_upload_with_a_key_arrives_intact_through_the_spool(client, admin):
    """Past the middleware's 1 MiB in-memory spool, and several of the upload's own flushes."""
    content = csv_bytes([["no_such_column", "x"]] + [[f"139{i:08d}", f"会员{i}"] for i in range(120_000)])
    assert len(content) > 2 * 1024 * 1024
    r = client.post(URL, files={"kind": (None, "members"), "file": ("big.csv", content, "text/csv")},
                    headers=headers(admin, **{"Idempotency-Key": "big-1"}))
    assert r.status_code == 202, r.text
    assert (r.json()["sha256"], r.json()["size_bytes"]) == (hashlib.sha256(content).hexdigest(), len(content))
    [stored] = [p for p in stored_uploads() if p.name == "upload.csv"]
    assert stored.read_bytes() == content
    assert wait_done(client, admin, r.json()["id"])["error_code"] == "imports.unreadable"  # the header, at once


# ---- access --------------------------------------------------------------------------------------

def test_store_staff_and_store_bound_keys_may_not_import(client, admin):
    content = csv_bytes(MEMBERS)
    job_id = upload(client, admin, "members", content).json()["id"]
    wait_done(client, admin, job_id)
    for token in (token_for(client, "clerk", ["SH001"]), token_for(client, "store_manager", ["EAST"]),
                  token_for(client, "service"), api_key("integrator", name="sh-pos", store="SH001")):
        for method, url in (("POST", URL), ("GET", URL), ("GET", f"{URL}/{job_id}"),
                            ("GET", f"{URL}/{job_id}/errors")):
            r = client.request(method, url, headers=headers(token),
                               files={"kind": (None, "members"), "file": ("m.csv", content)} if method == "POST"
                               else None)
            assert r.status_code == 403 and r.json()["code"] == "auth.forbidden", (method, url, r.text)
    assert job_count() == 1
    assert client.post(URL, files={"kind": (None, "members"), "file": ("m.csv", content)}).status_code == 401
    for token in (token_for(client, "hq_ops"), api_key("integrator", name="erp")):
        assert upload(client, token, "members", content).status_code == 202
    assert job_count() == 3


# ---- refused input -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["bad_kind", "no_kind", "no_file", "empty_file", "bad_source", "unknown_field",
                                  "xls", "twice", "json", "no_boundary", "truncated"])
def test_malformed_input_is_a_problem_naming_the_field_and_leaves_nothing(client, admin, case):
    content = csv_bytes(MEMBERS)
    h = headers(admin)
    if case == "json":
        r = client.post(URL, json={"kind": "members"}, headers=h)
    elif case == "no_boundary":
        r = client.post(URL, content=b"x", headers={**h, "content-type": "multipart/form-data"})
    elif case == "truncated":
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nmembers\r\n--XyZ\r\n"
                b"Content-Disposition: form-data; name=\"file\"; filename=\"m.csv\"\r\n\r\n" + content)
        r = client.post(URL, content=body, headers={**h, "content-type": "multipart/form-data; boundary=XyZ"})
    elif case == "twice":
        r = client.post(URL, files=[("kind", (None, "members")), ("kind", (None, "orders")),
                                    ("file", ("m.csv", content))], headers=h)
    else:
        kind = {"bad_kind": "coupons", "no_kind": None}.get(case, "members")
        extra = {"bad_source": {"source": "bad source!"}, "unknown_field": {"owner": "me"}}.get(case, {})
        r = upload(client, admin, kind, None if case == "no_file" else b"" if case == "empty_file" else content,
                   name="m.xls" if case == "xls" else "m.csv", **extra)
    expected = {"json": (415, "Content-Type"), "no_boundary": (400, "body"), "truncated": (400, "body"),
                "bad_kind": (422, "kind"), "no_kind": (422, "kind"), "no_file": (422, "file"),
                "empty_file": (422, "file"), "bad_source": (422, "source"), "unknown_field": (422, "owner"),
                "xls": (422, "file"), "twice": (422, "kind")}[case]
    assert r.status_code == expected[0], r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert expected[1] in [e["field"] for e in r.json()["errors"]], r.text
    assert job_count() == 0 and stored_uploads() == []


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setenv("ORCHARD_UPLOAD_MAX_BYTES", "100")
    get_settings.cache_clear()
    yield 100
    monkeypatch.delenv("ORCHARD_UPLOAD_MAX_BYTES")
    get_settings.cache_clear()


def test_an_upload_over_the_limit_is_a_413(client, admin, small_limit):
    content = csv_bytes(MEMBERS) * 10
    assert len(content) > small_limit
    r = upload(client, admin, "members", content)
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file", r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.post(URL, files={"kind": (None, "members"), "file": ("m.csv", content)},
                    headers=headers(admin, **{"Idempotency-Key": "too-big"}))
    assert r.status_code == 413, r.text
    # Past the Idempotency-Key middleware's own cap (the limit + 1 MiB), it answers 413 itself.
    r = client.post(URL, files={"kind": (None, "members"), "file": ("m.csv", b"1" * (1024 * 1024 + 200))},
                    headers=headers(admin, **{"Idempotency-Key": "much-too-big"}))
    assert r.status_code == 413 and r.json()["code"] == "request.too_large", r.text
    assert job_count() == 0 and stored_uploads() == []


@pytest.mark.parametrize("content, name, reason", [
    (csv_bytes([["foo", "bar"], ["1", "2"]]), "m.csv", "the header has no column for"),
    (b"PK\x03\x04 not really a workbook", "m.xlsx", "not a readable XLSX file"),
])
def test_an_unreadable_file_fails_the_job_with_the_reason(client, admin, content, name, reason):
    r = upload(client, admin, "members", content, name=name)
    assert r.status_code == 202, r.text
    job = wait_done(client, admin, r.json()["id"])
    assert (job["status"], job["error_code"]) == ("failed", "imports.unreadable")
    assert job["error_message"].startswith("文件无法读取：") and reason in job["error_message"]
    english = wait_done(client, admin, job["id"], **{"Accept-Language": "en"})
    assert english["error_message"].startswith("The file cannot be read: ")


# ---- the worker ----------------------------------------------------------------------------------

def _running_job(worker: str, heartbeat_at: dt.datetime) -> int:
    with db.transaction() as s:
        job = ImportJob(kind="members", status="running", source="import", file_name="m.csv",
                        file_path="imports/none/upload.csv", size_bytes=1, sha256="0" * 64, rows_processed=1000,
                        created=0, unchanged=0, updated=0, errors=0, warnings=0, unknown_columns=[],
                        created_by="staff:1", worker=worker, started_at=heartbeat_at, heartbeat_at=heartbeat_at)
        s.add(job)
        s.flush()
        return job.id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_jobs_left_running_by_a_dead_process_are_failed_at_startup(app):
    make_org()
    now = utcnow()
    dead_here = _running_job(f"{jobs.HOST}:{_dead_pid()}:abcd", now)  # this host, the process is gone
    silent = _running_job("elsewhere:42:abcd", now - dt.timedelta(minutes=10))  # no heartbeat for 10 min
    alive = _running_job("elsewhere:43:abcd", now)  # another host, beating: left alone
    with TestClient(app) as client:
        admin = token_for(client, "admin")
        by_id = {j["id"]: j for j in client.get(URL, headers=headers(admin)).json()["items"]}
    for job_id in (dead_here, silent):
        assert (by_id[job_id]["status"], by_id[job_id]["error_code"]) == ("failed", "imports.interrupted")
        assert "导入中断" in by_id[job_id]["error_message"] and by_id[job_id]["rows_processed"] == 1000
    assert by_id[alive]["status"] == "running"
    # Once its heartbeat is older than STALE_AFTER, any worker's sweep fails it too.
    assert jobs.recover_stale(now=now + jobs.STALE_AFTER + dt.timedelta(seconds=1)) == [alive]
    assert jobs.recover_stale() == []


def _gated_import(monkeypatch, *, batch_size: int = 2):
    """Make the worker pause after each committed batch until `gate` is set."""
    reached, gate = threading.Event(), threading.Event()
    real = jobs.run_import

    def gated(kind, path, *, progress, **kw):
        def step(rows: int) -> None:
            progress(rows)
            reached.set()
            assert gate.wait(30)

        return real(kind, path, **{**kw, "batch_size": batch_size}, progress=step)

    monkeypatch.setattr(jobs, "run_import", gated)
    return reached, gate


def test_progress_is_visible_while_the_job_runs(client, admin, monkeypatch):
    reached, gate = _gated_import(monkeypatch)
    rows = [MEMBERS[0]] + [[f"1390000{i:04d}", f"会员{i}", "SH001"] for i in range(5)]
    job_id = upload(client, admin, "members", csv_bytes(rows)).json()["id"]
    assert reached.wait(30)
    mid = client.get(f"{URL}/{job_id}", headers=headers(admin)).json()
    assert (mid["status"], mid["rows_processed"]) == ("running", 2)
    assert mid["started_at"] and mid["finished_at"] is None
    gate.set()
    done = wait_done(client, admin, job_id)
    assert (done["status"], done["rows_processed"], done["created"]) == ("succeeded", 5, 5)


def test_shutdown_stops_a_running_job_after_its_batch(app, monkeypatch):
    reached, gate = _gated_import(monkeypatch)
    real_stop = jobs.Worker.stop

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        gate.set()  # let the paused batch end: the next one sees the stop
        real_stop(self, timeout)

    monkeypatch.setattr(jobs.Worker, "stop", stop)
    rows = [MEMBERS[0]] + [[f"1390000{i:04d}", f"会员{i}", "SH001"] for i in range(7)]
    with TestClient(app) as client:
        make_org()
        admin = token_for(client, "admin")
        job_id = upload(client, admin, "members", csv_bytes(rows)).json()["id"]
        assert reached.wait(30)
    with db.transaction(readonly=True) as s:
        job = s.get(ImportJob, job_id)
        assert (job.status, job.error_code, job.rows_processed) == ("failed", "imports.interrupted", 4)
        assert s.scalar(select(func.count()).select_from(Member)) == 4  # the batches before the stop stay


def test_queued_jobs_wait_and_run_one_at_a_time_in_order(client, admin):
    ids = [upload(client, admin, "members", csv_bytes(MEMBERS)).json()["id"] for _ in range(3)]
    done = [wait_done(client, admin, job_id) for job_id in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 3
    assert [j["created"] for j in done] == [3, 0, 0]  # in upload order: the first one created the members
    starts = [dt.datetime.fromisoformat(j["started_at"]) for j in done]
    finishes = [dt.datetime.fromisoformat(j["finished_at"]) for j in done]
    assert starts == sorted(starts) and all(finishes[i] <= starts[i + 1] for i in range(2))
