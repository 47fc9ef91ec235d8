"""A saved segment's members exported: the store manager gets only their stores' members, masked."""

from __future__ import annotations

import re

from tests.exports.conftest import export_csv, post
from tests.factories import token_for

MOBILE = re.compile(r"1[3-9]\d{9}")


def test_segment_export_is_scoped_and_masked(client, world):
    post(client, world.admin, "/segments", {"code": "everyone", "name": "全部",
                                           "definition": {"field": "order_count", "op": "gte", "value": 0}})
    hq = export_csv(client, world.admin, "members", segment="everyone")
    assert sorted(int(r[0]) for r in hq[1:]) == sorted([world.sh, world.hz, world.gz])
    manager = token_for(client, "store_manager", ["SH001"])
    rows = export_csv(client, manager, "members", segment="everyone")
    assert [int(r[0]) for r in rows[1:]] == [world.sh]
    assert not any(MOBILE.search(cell) for row in rows[1:] for cell in row)
    assert "139****5678" in rows[1]
