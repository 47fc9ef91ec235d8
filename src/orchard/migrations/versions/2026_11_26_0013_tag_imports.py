"""import_jobs.kind 'tags': tag files (members and the tags they carry) through the same import jobs

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 12:00:00
"""
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

KINDS_BEFORE = "kind in ('members','orders','refunds','events')"
KINDS_AFTER = "kind in ('members','orders','refunds','events','tags')"


def _kinds(check: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode rebuilds the table with the new one.
    with op.batch_alter_table('import_jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_import_jobs_kind'), type_='check')
        batch_op.create_check_constraint('kind', check)


def upgrade() -> None:
    _kinds(KINDS_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM import_jobs WHERE kind = 'tags'")
    _kinds(KINDS_BEFORE)
