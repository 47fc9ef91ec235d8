"""members.preferred_channel: the member's own preferred message channel

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 09:00:00

Added with a plain ALTER TABLE … ADD COLUMN carrying its CHECK on both databases: a batch
(copy-and-rename) migration of `members` on SQLite would drop the table every other table's foreign
keys point at, with foreign keys enforced.
"""
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

CHANNELS = "'sms','wechat_subscribe','wechat_template','app_push','email'"


def upgrade() -> None:
    op.execute("ALTER TABLE members ADD COLUMN preferred_channel VARCHAR(24) "
               f"CONSTRAINT ck_members_preferred_channel CHECK (preferred_channel in ({CHANNELS}))")


def downgrade() -> None:
    op.execute("ALTER TABLE members DROP COLUMN preferred_channel")
