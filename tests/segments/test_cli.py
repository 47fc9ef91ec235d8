"""`orchard refresh` and `orchard segments …` as real subprocesses against the test database."""

from __future__ import annotations

import json

from orchard import db
from orchard.kit.clock import utcnow
from tests.factories import make_org
from tests.segments.helpers import member
from tests.test_cli import run


def test_refresh_runs_every_step_and_segments_commands(clean_db, tmp_path):
    make_org()
    with db.transaction() as s:
        member(s, "a", orders=[(utcnow(), 10_000)])
        member(s, "b")
    from orchard.imports.pg_bulk import SYSTEM
    from orchard.segments import service

    with db.transaction() as s:
        service.create(s, principal=SYSTEM, code="buyers", name="买过", refresh_now=False,
                       definition={"field": "order_count", "op": "gte", "value": 1})
    out = run("refresh").stdout
    for step in ("lifecycle", "rfm", "preferences", "tags", "segments"):
        assert step in out
    assert "segment=buyers" in out and "size=1" in out
    listed = run("segments", "list").stdout
    assert "buyers" in listed and "1" in listed
    definition = tmp_path / "d.json"
    definition.write_text(json.dumps({"all": [{"field": "order_count", "op": "eq", "value": 0}]}), encoding="utf-8")
    preview = run("segments", "preview", str(definition)).stdout
    assert "1 / 2" in preview and "$.all[0]" in preview
    definition.write_text(json.dumps({"field": "nope", "op": "eq", "value": 1}), encoding="utf-8")
    bad = run("segments", "preview", str(definition), check=False)
    assert bad.returncode == 1 and "$.field" in bad.stdout + bad.stderr
    assert "flipped" in run("segments", "sweep").stdout
    assert "segments.sweep" in run("scheduler", "status").stdout
