"""The schema comes only from migrations: they build what the models describe, and go down and up."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import orchard.models  # noqa: F401
from orchard import db, migrate
from orchard.db import Base


def test_the_migrated_schema_matches_the_models(clean_db):
    with db.get_engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_migrations_downgrade_to_base_and_upgrade_again(clean_db):
    migrate.downgrade(clean_db, "base")
    assert set(inspect(db.get_engine()).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(clean_db)
    assert "members" in inspect(db.get_engine()).get_table_names()
