"""growth value, tiers, check-in, tasks, anomaly flags, the benefit library and the points catalog

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 02:40:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('earning_rules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target', sa.String(length=16), nullable=False, server_default='points'))
        batch_op.create_check_constraint('target', "target in ('points','growth')")

    op.create_table('growth_accounts',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('balance', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('balance >= 0', name=op.f('ck_growth_accounts_balance_nonneg')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_growth_accounts_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_growth_accounts'))
    )
    op.create_table('growth_entries',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('rule_id', ID, nullable=True),
    sa.Column('order_id', ID, nullable=True),
    sa.Column('line_no', sa.Integer(), nullable=True),
    sa.Column('refund_id', ID, nullable=True),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('explanation', JSON, nullable=False),
    sa.Column('occurred_at', TS, nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('earn','reverse','adjust','transfer')", name=op.f('ck_growth_entries_kind')),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_growth_entries_amount_nonzero')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_growth_entries_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['earning_rules.id'], name=op.f('fk_growth_entries_rule_id_earning_rules')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_growth_entries_order_id_orders')),
    sa.ForeignKeyConstraint(['refund_id'], ['refunds.id'], name=op.f('fk_growth_entries_refund_id_refunds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_growth_entries')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_growth_entries_source_external_id'))
    )
    with op.batch_alter_table('growth_entries', schema=None) as batch_op:
        batch_op.create_index('ix_growth_entries_member_id_occurred_at', ['member_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_growth_entries_order_id', ['order_id'], unique=False)

    op.create_table('tier_program',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=16), nullable=False),
    sa.Column('period', sa.String(length=16), nullable=False),
    sa.Column('downgrade', sa.String(length=16), nullable=False),
    sa.Column('hold_days', sa.Integer(), nullable=False),
    sa.Column('weights', JSON, nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_tier_program_single')),
    sa.CheckConstraint("metric in ('growth','spend','orders','score')", name=op.f('ck_tier_program_metric')),
    sa.CheckConstraint("period in ('rolling_12m','calendar_year','lifetime')", name=op.f('ck_tier_program_period')),
    sa.CheckConstraint("downgrade in ('one_level','recompute')", name=op.f('ck_tier_program_downgrade')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_program'))
    )
    op.create_table('tier_levels',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('threshold', sa.BigInteger(), nullable=False),
    sa.Column('benefits', JSON, nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.CheckConstraint('threshold >= 0', name=op.f('ck_tier_levels_threshold_nonneg')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_levels')),
    sa.UniqueConstraint('code', name=op.f('uq_tier_levels_code'))
    )
    op.create_table('member_tiers',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('level_id', ID, nullable=False),
    sa.Column('since', TS, nullable=False),
    sa.Column('keep_until', TS, nullable=True),
    sa.Column('override_level_id', ID, nullable=True),
    sa.Column('override_until', TS, nullable=True),
    sa.Column('override_reason', sa.String(length=200), nullable=True),
    sa.Column('metric_value', sa.BigInteger(), nullable=False),
    sa.Column('evaluated_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_member_tiers_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['level_id'], ['tier_levels.id'], name=op.f('fk_member_tiers_level_id_tier_levels')),
    sa.ForeignKeyConstraint(['override_level_id'], ['tier_levels.id'],
                            name=op.f('fk_member_tiers_override_level_id_tier_levels')),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_member_tiers'))
    )
    with op.batch_alter_table('member_tiers', schema=None) as batch_op:
        batch_op.create_index('ix_member_tiers_level_id', ['level_id'], unique=False)
    op.create_table('tier_changes',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('from_level_id', ID, nullable=True),
    sa.Column('to_level_id', ID, nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('metric_value', sa.BigInteger(), nullable=True),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('details', JSON, nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_tier_changes_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['from_level_id'], ['tier_levels.id'],
                            name=op.f('fk_tier_changes_from_level_id_tier_levels')),
    sa.ForeignKeyConstraint(['to_level_id'], ['tier_levels.id'], name=op.f('fk_tier_changes_to_level_id_tier_levels')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_changes'))
    )
    with op.batch_alter_table('tier_changes', schema=None) as batch_op:
        batch_op.create_index('ix_tier_changes_member_id_at', ['member_id', 'at'], unique=False)
        batch_op.create_index('ix_tier_changes_at', ['at'], unique=False)

    op.create_table('checkin_program',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ladder', JSON, nullable=False),
    sa.Column('cycle', sa.Boolean(), nullable=False),
    sa.Column('makeup_per_month', sa.Integer(), nullable=False),
    sa.Column('makeup_cost_points', sa.Integer(), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_checkin_program_single')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkin_program'))
    )
    op.create_table('checkins',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('streak', sa.Integer(), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('growth', sa.Integer(), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('checkin','makeup')", name=op.f('ck_checkins_kind')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_checkins_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkins')),
    sa.UniqueConstraint('member_id', 'day', name=op.f('uq_checkins_member_id_day'))
    )
    op.create_table('loyalty_tasks',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=True),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('growth', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.CheckConstraint("kind in ('profile','first_order','event')", name=op.f('ck_loyalty_tasks_kind')),
    sa.CheckConstraint('points >= 0 AND growth >= 0', name=op.f('ck_loyalty_tasks_rewards_nonneg')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_loyalty_tasks')),
    sa.UniqueConstraint('code', name=op.f('uq_loyalty_tasks_code'))
    )
    op.create_table('task_completions',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('task_id', ID, nullable=False),
    sa.Column('completed_at', TS, nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('growth', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_task_completions_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['loyalty_tasks.id'], name=op.f('fk_task_completions_task_id_loyalty_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_completions')),
    sa.UniqueConstraint('member_id', 'task_id', name=op.f('uq_task_completions_member_id_task_id'))
    )
    op.create_table('loyalty_flags',
    sa.Column('id', ID, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.String(length=48), nullable=False),
    sa.Column('member_id', ID, nullable=True),
    sa.Column('store_id', ID, nullable=True),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('baseline', sa.BigInteger(), nullable=False),
    sa.Column('details', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('resolved_at', TS, nullable=True),
    sa.Column('resolved_by', sa.String(length=64), nullable=True),
    sa.Column('note', sa.String(length=200), nullable=True),
    sa.CheckConstraint("status in ('open','cleared','confirmed')", name=op.f('ck_loyalty_flags_status')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_loyalty_flags_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['org_units.id'], name=op.f('fk_loyalty_flags_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_loyalty_flags')),
    sa.UniqueConstraint('kind', 'subject', 'day', name=op.f('uq_loyalty_flags_kind_subject_day'))
    )
    with op.batch_alter_table('loyalty_flags', schema=None) as batch_op:
        batch_op.create_index('ix_loyalty_flags_status_day', ['status', 'day'], unique=False)
        batch_op.create_index('ix_loyalty_flags_member_id', ['member_id'], unique=False)
    op.create_table('benefit_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_share_max_pct', sa.Integer(), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_benefit_policy_single')),
    sa.CheckConstraint('store_share_max_pct BETWEEN 0 AND 100', name=op.f('ck_benefit_policy_pct')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_benefit_policy'))
    )
    op.create_table('benefits',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('monetary', sa.Boolean(), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('owner_store_id', ID, nullable=True),
    sa.Column('tier_codes', JSON, nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['owner_store_id'], ['org_units.id'], name=op.f('fk_benefits_owner_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_benefits')),
    sa.UniqueConstraint('code', name=op.f('uq_benefits_code'))
    )
    op.create_table('catalog_items',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('coupon_template_id', sa.BigInteger(), nullable=True),
    sa.Column('points_cost', sa.BigInteger(), nullable=False),
    sa.Column('cash_fen', sa.BigInteger(), nullable=False),
    sa.Column('stock', sa.BigInteger(), nullable=True),
    sa.Column('redeemed', sa.BigInteger(), nullable=False),
    sa.Column('per_member_limit', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('starts_at', TS, nullable=True),
    sa.Column('ends_at', TS, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('gift','service','coupon')", name=op.f('ck_catalog_items_kind')),
    sa.CheckConstraint('points_cost > 0', name=op.f('ck_catalog_items_points_pos')),
    sa.CheckConstraint('cash_fen >= 0', name=op.f('ck_catalog_items_cash_nonneg')),
    sa.CheckConstraint('stock IS NULL OR stock >= 0', name=op.f('ck_catalog_items_stock_nonneg')),
    sa.CheckConstraint('redeemed >= 0', name=op.f('ck_catalog_items_redeemed_nonneg')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_items')),
    sa.UniqueConstraint('code', name=op.f('uq_catalog_items_code'))
    )
    op.create_table('catalog_redemptions',
    sa.Column('id', ID, nullable=False),
    sa.Column('item_id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('cash_fen', sa.BigInteger(), nullable=False),
    sa.Column('points_entry_id', ID, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('store_id', ID, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('cancelled_at', TS, nullable=True),
    sa.CheckConstraint("status in ('redeemed','cancelled')", name=op.f('ck_catalog_redemptions_status')),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_catalog_redemptions_quantity_pos')),
    sa.ForeignKeyConstraint(['item_id'], ['catalog_items.id'], name=op.f('fk_catalog_redemptions_item_id_catalog_items')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_catalog_redemptions_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['points_entry_id'], ['points_entries.id'],
                            name=op.f('fk_catalog_redemptions_points_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['store_id'], ['org_units.id'], name=op.f('fk_catalog_redemptions_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_redemptions')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_catalog_redemptions_source_external_id'))
    )
    with op.batch_alter_table('catalog_redemptions', schema=None) as batch_op:
        batch_op.create_index('ix_catalog_redemptions_member_id_item_id', ['member_id', 'item_id'], unique=False)
    with op.batch_alter_table('points_lots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_flag_id', ID, nullable=True))
        batch_op.add_column(sa.Column('pending_event', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_points_lots_held_flag_id_loyalty_flags'), 'loyalty_flags',
                                    ['held_flag_id'], ['id'])
        batch_op.create_index('ix_points_lots_held_flag_id', ['held_flag_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('points_lots', schema=None) as batch_op:
        batch_op.drop_index('ix_points_lots_held_flag_id')
        batch_op.drop_constraint(op.f('fk_points_lots_held_flag_id_loyalty_flags'), type_='foreignkey')
        batch_op.drop_column('held_flag_id')
        batch_op.drop_column('pending_event')
    op.drop_table('loyalty_flags')
    op.drop_table('catalog_redemptions')
    op.drop_table('catalog_items')
    op.drop_table('benefits')
    op.drop_table('benefit_policy')
    op.drop_table('task_completions')
    op.drop_table('loyalty_tasks')
    op.drop_table('checkins')
    op.drop_table('checkin_program')
    op.drop_table('tier_changes')
    op.drop_table('member_tiers')
    op.drop_table('tier_levels')
    op.drop_table('tier_program')
    op.drop_table('growth_entries')
    op.drop_table('growth_accounts')
    with op.batch_alter_table('earning_rules', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_earning_rules_target'), type_='check')
        batch_op.drop_column('target')
