"""journeys: journeys, immutable published versions, members' runs, the decision log

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 06:10:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('journeys',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('reentry', sa.String(length=16), nullable=False),
    sa.Column('reentry_days', sa.Integer(), nullable=True),
    sa.Column('live_version_id', ID, nullable=True),
    sa.Column('owner_unit_id', ID, nullable=True),
    sa.Column('cursor', ID, nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("status in ('draft','live','paused','archived')", name=op.f('ck_journeys_status')),
    sa.CheckConstraint("reentry in ('once','cooldown','always')", name=op.f('ck_journeys_reentry')),
    sa.ForeignKeyConstraint(['owner_unit_id'], ['org_units.id'], name=op.f('fk_journeys_owner_unit_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journeys')),
    sa.UniqueConstraint('code', name=op.f('uq_journeys_code'))
    )
    op.create_table('journey_versions',
    sa.Column('id', ID, nullable=False),
    sa.Column('journey_id', ID, nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('graph', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('published_at', TS, nullable=True),
    sa.CheckConstraint("status in ('draft','published')", name=op.f('ck_journey_versions_status')),
    sa.ForeignKeyConstraint(['journey_id'], ['journeys.id'], name=op.f('fk_journey_versions_journey_id_journeys'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_versions')),
    sa.UniqueConstraint('journey_id', 'version', name=op.f('uq_journey_versions_journey_id_version'))
    )
    op.create_table('journey_runs',
    sa.Column('id', ID, nullable=False),
    sa.Column('journey_id', ID, nullable=False),
    sa.Column('version_id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('trigger_key', sa.String(length=160), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('step', sa.String(length=64), nullable=False),
    sa.Column('wake_at', TS, nullable=True),
    sa.Column('wait_event', sa.String(length=64), nullable=True),
    sa.Column('variant', sa.String(length=32), nullable=True),
    sa.Column('context', JSON, nullable=False),
    sa.Column('entered_at', TS, nullable=False),
    sa.Column('ended_at', TS, nullable=True),
    sa.Column('end_reason', sa.String(length=64), nullable=True),
    sa.CheckConstraint("status in ('active','waiting','completed','exited','failed')",
                       name=op.f('ck_journey_runs_status')),
    sa.ForeignKeyConstraint(['journey_id'], ['journeys.id'], name=op.f('fk_journey_runs_journey_id_journeys'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_journey_runs_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['journey_versions.id'],
                            name=op.f('fk_journey_runs_version_id_journey_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_runs')),
    sa.UniqueConstraint('journey_id', 'trigger_key', name=op.f('uq_journey_runs_journey_id_trigger_key'))
    )
    op.create_index('ix_journey_runs_wake', 'journey_runs', ['wake_at'], unique=False,
                    postgresql_where=sa.text("status IN ('active','waiting')"),
                    sqlite_where=sa.text("status IN ('active','waiting')"))
    op.create_index('ix_journey_runs_journey_member', 'journey_runs', ['journey_id', 'member_id'], unique=False)
    op.create_index('ix_journey_runs_member_status', 'journey_runs', ['member_id', 'status'], unique=False)
    op.create_table('journey_log',
    sa.Column('id', ID, nullable=False),
    sa.Column('journey_id', ID, nullable=False),
    sa.Column('run_id', ID, nullable=True),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('step', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('detail', JSON, nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.ForeignKeyConstraint(['journey_id'], ['journeys.id'], name=op.f('fk_journey_log_journey_id_journeys'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_journey_log_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_log'))
    )
    op.create_index('ix_journey_log_member_at', 'journey_log', ['member_id', 'at'], unique=False)
    op.create_index('ix_journey_log_journey_kind', 'journey_log', ['journey_id', 'kind', 'at'], unique=False)
    op.create_index('ix_journey_log_run', 'journey_log', ['run_id'], unique=False)
    op.create_table('staff_tasks',
    sa.Column('id', ID, nullable=False),
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('store_id', ID, nullable=True),
    sa.Column('assignee_staff_id', ID, nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('due_at', TS, nullable=True),
    sa.Column('journey_id', ID, nullable=True),
    sa.Column('run_id', ID, nullable=True),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('done_by', sa.String(length=64), nullable=True),
    sa.Column('done_at', TS, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('callback','wecom')", name=op.f('ck_staff_tasks_kind')),
    sa.CheckConstraint("status in ('open','done','failed','cancelled')", name=op.f('ck_staff_tasks_status')),
    sa.ForeignKeyConstraint(['assignee_staff_id'], ['staff.id'], name=op.f('fk_staff_tasks_assignee_staff_id_staff')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_staff_tasks_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['org_units.id'], name=op.f('fk_staff_tasks_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff_tasks')),
    sa.UniqueConstraint('key', name=op.f('uq_staff_tasks_key'))
    )
    op.create_index(op.f('ix_staff_tasks_member_id'), 'staff_tasks', ['member_id'], unique=False)
    op.create_index('ix_staff_tasks_store_status', 'staff_tasks', ['store_id', 'status', 'due_at'], unique=False)
    op.create_table('subscribe_grants',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('template', sa.String(length=128), nullable=False),
    sa.Column('remaining', sa.Integer(), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('remaining >= 0', name=op.f('ck_subscribe_grants_remaining_nonneg')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_subscribe_grants_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', 'template', name=op.f('pk_subscribe_grants'))
    )


def downgrade() -> None:
    for table in ('subscribe_grants', 'staff_tasks', 'journey_log', 'journey_runs', 'journey_versions', 'journeys'):
        op.drop_table(table)
