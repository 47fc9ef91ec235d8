"""journeys.cursor_at: a time cursor for triggers whose rows change in place (segment exits) and
the last schedule occurrence fired

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('journeys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cursor_at', TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('journeys', schema=None) as batch_op:
        batch_op.drop_column('cursor_at')
