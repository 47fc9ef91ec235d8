"""Bulk imports queue the members they touch for the segments' real-time sweep (both paths), and a
full refresh empties the queue of what it covered."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from orchard import db
from orchard.imports.service import run_import
from orchard.members.models import Member
from orchard.segments import dirty, service
from orchard.segments.models import DirtyMember
from tests.factories import make_org


def test_imports_queue_their_members_and_a_full_refresh_clears_the_queue(clean_db, tmp_path):
    make_org()
    members = tmp_path / "m.csv"
    members.write_text("手机号,姓名\n13800000001,王芳\n13800000002,李雷\n", encoding="utf-8")
    orders = tmp_path / "o.csv"
    orders.write_text("order_id,member_phone,paid_at,amount\nO1,13800000003,2026-11-01,12.50\n", encoding="utf-8")
    run_import("members", members)
    run_import("orders", orders)
    with db.transaction(readonly=True) as s:
        queued = set(s.scalars(select(DirtyMember.member_id)))
        everyone = set(s.scalars(select(Member.id)))
    assert queued == everyone and len(everyone) == 3
    with db.transaction() as s:
        dirty.mark(s, list(everyone), at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    with db.transaction() as s:
        service.refresh(s)
    with db.transaction(readonly=True) as s:
        assert s.scalar(select(DirtyMember.member_id)) is None
