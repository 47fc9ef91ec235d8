"""`orchard scoring run` and `orchard scoring show` against the test database."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from orchard import db
from orchard.cli import app
from tests.scoring.helpers import local, member, order


def test_run_then_show(clean_db):
    # given
    with db.transaction() as s:
        m = member(s)
        order(s, m, local(2026, 3, 30), 5_000)
    runner = CliRunner()
    # when
    run = runner.invoke(app, ["scoring", "run", "--at", "2026-04-01T10:00"])
    show = runner.invoke(app, ["scoring", "show", str(m)])
    # then
    assert run.exit_code == 0, run.output
    assert show.exit_code == 0, show.output
    body = json.loads(show.stdout)
    # a lone buyer equals every mean: not recent, not high
    assert body["stage"] == "new" and body["rfm_class"]["name"] == "一般挽留客户"
    assert runner.invoke(app, ["scoring", "show", "999999"]).exit_code == 1
