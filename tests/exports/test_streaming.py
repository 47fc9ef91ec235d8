"""Exports stream through a real server (uvicorn): chunked, without Content-Length, read from the
export's own session, which is released when the download ends or the client goes away."""

from __future__ import annotations

import io
import threading
import time

import httpx
import openpyxl

from orchard import db
from orchard.exports import service
from tests.exports.conftest import create_member, read_csv
from tests.factories import headers


def _wait_for_idle_pool(timeout: float = 10) -> int:
    pool = db.get_engine().pool
    deadline = time.time() + timeout
    while pool.checkedout() and time.time() < deadline:
        time.sleep(0.05)
    return pool.checkedout()


def test_a_csv_export_streams_through_a_real_server(client, world, live_server, monkeypatch):
    # given: 30 more members, 4 per query, and the server held inside the export until the client
    # has received the first bytes (a buffered response would never deliver them: the test would fail)
    ids = [world.sh, world.hz, world.gz] + [create_member(client, world.admin, name=f"会员{i}") for i in range(30)]
    monkeypatch.setattr(service, "CHUNK_SIZE", 4)
    gate = threading.Event()
    real = service._BUILDERS["members"]

    def held(session, plan, chunk):
        assert gate.wait(20), "the client never received the first chunk"
        return real(session, plan, chunk)

    monkeypatch.setitem(service._BUILDERS, "members", held)
    # when
    with httpx.stream("GET", f"{live_server}/api/v1/exports/members", params={"fields": "id,name,phone"},
                      headers=headers(world.admin), timeout=30) as r:
        status, response_headers = r.status_code, r.headers
        pieces = r.iter_raw()
        first = next(pieces)
        gate.set()
        body = first + b"".join(pieces)
    # then
    assert status == 200
    assert response_headers["transfer-encoding"] == "chunked" and "content-length" not in response_headers
    assert first == "\ufeff会员ID,姓名,手机号\r\n".encode()
    rows = read_csv(body)
    assert [int(r[0]) for r in rows[1:]] == sorted(ids)
    assert rows[1] == [str(world.sh), "王小明", "+8613912345678"]
    assert _wait_for_idle_pool() == 0


def test_an_xlsx_export_through_a_real_server_opens_in_openpyxl(world, live_server):
    r = httpx.get(f"{live_server}/api/v1/exports/orders", params={"format": "xlsx", "lang": "en"},
                  headers=headers(world.admin), timeout=30)
    assert r.status_code == 200
    ws = openpyxl.load_workbook(io.BytesIO(r.content))["orders"]
    assert [row[2] for row in ws.iter_rows(min_row=2, values_only=True)] == ["SH-O1", "SH-O1", "GZ-O1"]


def test_a_client_leaving_mid_download_releases_the_export_session(client, world, live_server, monkeypatch):
    # given: a download that takes many chunks
    for i in range(40):
        create_member(client, world.admin, name=f"会员{i}")
    monkeypatch.setattr(service, "CHUNK_SIZE", 2)
    # when: the client reads the first chunk and hangs up
    with httpx.stream("GET", f"{live_server}/api/v1/exports/members", headers=headers(world.admin), timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    # then: the export's session (and its database connection) is given back
    assert _wait_for_idle_pool() == 0
    # and the server still answers
    assert httpx.get(f"{live_server}/api/v1/exports/members", params={"fields": "id"},
                     headers=headers(world.admin), timeout=30).status_code == 200
