"""messages.opened_at: read receipts from the providers that report them (WeChat, webhook receivers)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column('messages', sa.Column('opened_at', TS, nullable=True))


def downgrade() -> None:
    op.drop_column('messages', 'opened_at')
