"""segments, lifecycle and RFM scores, the tag catalog and its history, the service's scheduled jobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 05:40:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
STAGES = "'registered','new','active','declining','dormant','lost'"


def upgrade() -> None:
    # Tags: the old `kind` (manual/rule/imported) was how a tag is given; it becomes `source`, and
    # `kind` now says what the tag describes.
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_constraint('kind', type_='check')
        batch_op.alter_column('kind', new_column_name='source', existing_type=sa.String(length=16),
                              existing_nullable=False)
    op.execute("UPDATE tags SET source = 'import' WHERE source = 'imported'")
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='attribute'))
        batch_op.add_column(sa.Column('description', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('definition', JSON, nullable=True))
        batch_op.add_column(sa.Column('refreshed_at', TS, nullable=True))
        batch_op.create_check_constraint('kind', "kind in ('attribute','behaviour','value','preference')")
        batch_op.create_check_constraint('source', "source in ('manual','rule','import')")
        batch_op.create_check_constraint('rule_has_definition', "(source = 'rule') = (definition IS NOT NULL)")
    with op.batch_alter_table('member_tags', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=16), nullable=False, server_default='manual'))
        batch_op.create_check_constraint('source', "source in ('manual','rule','import')")

    op.create_index('ix_events_name_time', 'events', ['name', 'occurred_at'], unique=False)

    op.create_table('tag_changes',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('tag_id', ID, nullable=False),
    sa.Column('change', sa.String(length=8), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.CheckConstraint("change in ('added','removed')", name=op.f('ck_tag_changes_change')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_tag_changes_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_tag_changes_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_changes'))
    )
    op.create_index(op.f('ix_tag_changes_member_id'), 'tag_changes', ['member_id'], unique=False)
    op.create_index('ix_tag_changes_tag_at', 'tag_changes', ['tag_id', 'at'], unique=False)

    op.create_table('segments',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('definition', JSON, nullable=False),
    sa.Column('depends_on', JSON, nullable=False),
    sa.Column('owner_unit_id', ID, nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('realtime', sa.Boolean(), nullable=False),
    sa.Column('refresh_minutes', sa.Integer(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('refreshed_at', TS, nullable=True),
    sa.Column('next_refresh_at', TS, nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("status in ('active','archived')", name=op.f('ck_segments_status')),
    sa.CheckConstraint('refresh_minutes IS NULL OR refresh_minutes >= 5',
                       name=op.f('ck_segments_refresh_minutes_min')),
    sa.ForeignKeyConstraint(['owner_unit_id'], ['org_units.id'], name=op.f('fk_segments_owner_unit_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segments')),
    sa.UniqueConstraint('code', name=op.f('uq_segments_code'))
    )
    op.create_index(op.f('ix_segments_owner_unit_id'), 'segments', ['owner_unit_id'], unique=False)
    op.create_index(op.f('ix_segments_next_refresh_at'), 'segments', ['next_refresh_at'], unique=False)

    op.create_table('segment_memberships',
    sa.Column('id', ID, nullable=False),
    sa.Column('segment_id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('entered_at', TS, nullable=False),
    sa.Column('entered_by', sa.String(length=16), nullable=False),
    sa.Column('exited_at', TS, nullable=True),
    sa.Column('exited_by', sa.String(length=16), nullable=True),
    sa.CheckConstraint('exited_at IS NULL OR exited_at >= entered_at',
                       name=op.f('ck_segment_memberships_spell_order')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_segment_memberships_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['segment_id'], ['segments.id'],
                            name=op.f('fk_segment_memberships_segment_id_segments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segment_memberships'))
    )
    op.create_index('uq_segment_memberships_open', 'segment_memberships', ['segment_id', 'member_id'], unique=True,
                    postgresql_where=sa.text('exited_at IS NULL'), sqlite_where=sa.text('exited_at IS NULL'))
    op.create_index('ix_segment_memberships_member', 'segment_memberships', ['member_id', 'segment_id'])
    op.create_index('ix_segment_memberships_entered', 'segment_memberships', ['segment_id', 'entered_at'])
    op.create_index('ix_segment_memberships_exited', 'segment_memberships', ['segment_id', 'exited_at'])

    op.create_table('segment_flips',
    sa.Column('segment_id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('flip_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_segment_flips_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['segment_id'], ['segments.id'], name=op.f('fk_segment_flips_segment_id_segments'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('segment_id', 'member_id', name=op.f('pk_segment_flips'))
    )
    op.create_index(op.f('ix_segment_flips_flip_at'), 'segment_flips', ['flip_at'], unique=False)

    op.create_table('segment_sizes',
    sa.Column('id', ID, nullable=False),
    sa.Column('segment_id', ID, nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('entered', sa.BigInteger(), nullable=False),
    sa.Column('exited', sa.BigInteger(), nullable=False),
    sa.Column('cause', sa.String(length=16), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['segment_id'], ['segments.id'], name=op.f('fk_segment_sizes_segment_id_segments'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segment_sizes'))
    )
    op.create_index('ix_segment_sizes_segment_at', 'segment_sizes', ['segment_id', 'at'], unique=False)

    op.create_table('segment_dirty_members',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('since', TS, nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'],
                            name=op.f('fk_segment_dirty_members_member_id_members'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_segment_dirty_members'))
    )
    op.create_index(op.f('ix_segment_dirty_members_since'), 'segment_dirty_members', ['since'], unique=False)

    op.create_table('scoring_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('preset', sa.String(length=16), nullable=False),
    sa.Column('lifecycle', JSON, nullable=False),
    sa.Column('rfm', JSON, nullable=False),
    sa.Column('value', JSON, nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_scoring_policy_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scoring_policy'))
    )

    op.create_table('member_lifecycle',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('since', TS, nullable=False),
    sa.Column('computed_at', TS, nullable=False),
    sa.CheckConstraint(f"stage in ({STAGES})", name=op.f('ck_member_lifecycle_stage')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_member_lifecycle_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_member_lifecycle'))
    )
    op.create_index('ix_member_lifecycle_stage', 'member_lifecycle', ['stage', 'since'], unique=False)

    op.create_table('lifecycle_changes',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('from_stage', sa.String(length=16), nullable=True),
    sa.Column('to_stage', sa.String(length=16), nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.CheckConstraint(f"to_stage in ({STAGES})", name=op.f('ck_lifecycle_changes_to_stage')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_lifecycle_changes_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lifecycle_changes'))
    )
    op.create_index(op.f('ix_lifecycle_changes_member_id'), 'lifecycle_changes', ['member_id'], unique=False)
    op.create_index('ix_lifecycle_changes_to_at', 'lifecycle_changes', ['to_stage', 'at'], unique=False)

    op.create_table('member_rfm',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('recency_days', sa.Integer(), nullable=True),
    sa.Column('frequency', sa.Integer(), nullable=False),
    sa.Column('monetary_fen', sa.BigInteger(), nullable=False),
    sa.Column('r_score', sa.SmallInteger(), nullable=True),
    sa.Column('f_score', sa.SmallInteger(), nullable=True),
    sa.Column('m_score', sa.SmallInteger(), nullable=True),
    sa.Column('rfm_class', sa.String(length=32), nullable=True),
    sa.Column('value_tier', sa.String(length=8), nullable=True),
    sa.Column('computed_on', sa.Date(), nullable=False),
    sa.Column('computed_at', TS, nullable=False),
    sa.CheckConstraint("value_tier IS NULL OR value_tier in ('high','medium','low')",
                       name=op.f('ck_member_rfm_value_tier')),
    sa.CheckConstraint('r_score IS NULL OR (r_score BETWEEN 1 AND 5)', name=op.f('ck_member_rfm_r_score')),
    sa.CheckConstraint('f_score IS NULL OR (f_score BETWEEN 1 AND 5)', name=op.f('ck_member_rfm_f_score')),
    sa.CheckConstraint('m_score IS NULL OR (m_score BETWEEN 1 AND 5)', name=op.f('ck_member_rfm_m_score')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_member_rfm_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_member_rfm'))
    )
    op.create_index('ix_member_rfm_class', 'member_rfm', ['rfm_class'], unique=False)
    op.create_index('ix_member_rfm_value_tier', 'member_rfm', ['value_tier'], unique=False)

    op.create_table('scheduled_jobs',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('next_run_at', TS, nullable=False),
    sa.Column('last_started_at', TS, nullable=True),
    sa.Column('last_finished_at', TS, nullable=True),
    sa.Column('last_status', sa.String(length=16), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_duration_ms', sa.Integer(), nullable=True),
    sa.Column('leased_by', sa.String(length=64), nullable=True),
    sa.Column('lease_until', TS, nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_scheduled_jobs'))
    )


def downgrade() -> None:
    for table in ('scheduled_jobs', 'member_rfm', 'lifecycle_changes', 'member_lifecycle', 'scoring_policy',
                  'segment_dirty_members', 'segment_sizes', 'segment_flips', 'segment_memberships', 'segments',
                  'tag_changes'):
        op.drop_table(table)
    op.drop_index('ix_events_name_time', table_name='events')
    with op.batch_alter_table('member_tags', schema=None) as batch_op:
        batch_op.drop_constraint('source', type_='check')
        batch_op.drop_column('source')
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_constraint('rule_has_definition', type_='check')
        batch_op.drop_constraint('source', type_='check')
        batch_op.drop_constraint('kind', type_='check')
        batch_op.drop_column('refreshed_at')
        batch_op.drop_column('definition')
        batch_op.drop_column('description')
        batch_op.drop_column('kind')
    op.execute("UPDATE tags SET source = 'imported' WHERE source = 'import'")
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.alter_column('source', new_column_name='kind', existing_type=sa.String(length=16),
                              existing_nullable=False)
        batch_op.create_check_constraint('kind', "kind in ('manual','rule','imported')")
