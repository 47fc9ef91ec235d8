"""journeys.cursor_at (a time cursor for segment exits and schedules); a run's trigger key is unique
per member, not per journey (a birthday, a schedule occurrence is one key for many members)

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
    # The new unique key starts with (journey_id, member_id): it serves that index's lookups too.
    with op.batch_alter_table('journey_runs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_journey_runs_journey_id_trigger_key', type_='unique')
        batch_op.drop_index('ix_journey_runs_journey_member')
        batch_op.create_unique_constraint('uq_journey_runs_journey_id_member_id_trigger_key',
                                          ['journey_id', 'member_id', 'trigger_key'])


def downgrade() -> None:
    with op.batch_alter_table('journey_runs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_journey_runs_journey_id_member_id_trigger_key', type_='unique')
        batch_op.create_unique_constraint('uq_journey_runs_journey_id_trigger_key', ['journey_id', 'trigger_key'])
        batch_op.create_index('ix_journey_runs_journey_member', ['journey_id', 'member_id'], unique=False)
    with op.batch_alter_table('journeys', schema=None) as batch_op:
        batch_op.drop_column('cursor_at')

