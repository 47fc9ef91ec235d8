"""Migration 0020's PostgreSQL storage settings, which the refresh's speed relies on (they are not
part of the models, so the schema comparison does not see them)."""

import pytest
from sqlalchemy import text

from orchard import db


def test_events_name_time_covers_member_and_member_rfm_leaves_room_for_hot_updates(clean_db):
    engine = db.get_engine()
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL storage settings")
    with engine.connect() as c:
        ddl = c.scalar(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_events_name_time'"))
        options = c.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'member_rfm'"))
    assert ddl.endswith("(name, occurred_at) INCLUDE (member_id)")
    assert options == ["fillfactor=50"]
