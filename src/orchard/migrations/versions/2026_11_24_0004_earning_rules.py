"""earning rules, per-rule awards, refund reversal (debt), restores and transfers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 02:10:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
KINDS_OLD = "kind in ('earn','spend','expire','adjust')"
KINDS = "kind in ('earn','spend','expire','adjust','reverse','restore','transfer')"


def upgrade() -> None:
    op.create_table('earning_rules',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('stop_further', sa.Boolean(), nullable=False),
    sa.Column('starts_at', TS, nullable=True),
    sa.Column('ends_at', TS, nullable=True),
    sa.Column('config', JSON, nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('amount','event','multiplier')", name=op.f('ck_earning_rules_kind')),
    sa.CheckConstraint("status in ('active','inactive')", name=op.f('ck_earning_rules_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_earning_rules'))
    )

    with op.batch_alter_table('points_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('debt', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.drop_constraint(op.f('ck_points_accounts_balance_nonneg'), type_='check')
        batch_op.create_check_constraint('debt_nonneg', 'debt >= 0')
        batch_op.create_check_constraint('balance_covers_debt', 'balance + debt >= 0')

    with op.batch_alter_table('points_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_id', ID, nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_points_entries_order_id_orders'), 'orders', ['order_id'], ['id'])
        batch_op.create_index('ix_points_entries_order_id', ['order_id'], unique=False)
        batch_op.drop_constraint(op.f('ck_points_entries_kind'), type_='check')
        batch_op.create_check_constraint('kind', KINDS)

    with op.batch_alter_table('points_allocations', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_points_allocations_amount_pos'), type_='check')
        batch_op.create_check_constraint('amount_nonzero', 'amount <> 0')

    op.create_table('points_awards',
    sa.Column('id', ID, nullable=False),
    sa.Column('entry_id', ID, nullable=True),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('rule_id', ID, nullable=False),
    sa.Column('order_id', ID, nullable=True),
    sa.Column('refund_id', ID, nullable=True),
    sa.Column('line_no', sa.Integer(), nullable=True),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('awarded_at', TS, nullable=False),
    sa.CheckConstraint('points <> 0', name=op.f('ck_points_awards_points_nonzero')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_entries.id'], name=op.f('fk_points_awards_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_points_awards_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['earning_rules.id'], name=op.f('fk_points_awards_rule_id_earning_rules')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_points_awards_order_id_orders')),
    sa.ForeignKeyConstraint(['refund_id'], ['refunds.id'], name=op.f('fk_points_awards_refund_id_refunds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_awards'))
    )
    with op.batch_alter_table('points_awards', schema=None) as batch_op:
        batch_op.create_index('ix_points_awards_member_id_rule_id_awarded_at', ['member_id', 'rule_id', 'awarded_at'],
                              unique=False)
        batch_op.create_index('ix_points_awards_order_id', ['order_id'], unique=False)
        batch_op.create_index('ix_points_awards_entry_id', ['entry_id'], unique=False)


def downgrade() -> None:
    op.drop_table('points_awards')
    with op.batch_alter_table('points_allocations', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_points_allocations_amount_nonzero'), type_='check')
        batch_op.create_check_constraint('amount_pos', 'amount > 0')
    with op.batch_alter_table('points_entries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_points_entries_kind'), type_='check')
        batch_op.create_check_constraint('kind', KINDS_OLD)
        batch_op.drop_index('ix_points_entries_order_id')
        batch_op.drop_constraint(op.f('fk_points_entries_order_id_orders'), type_='foreignkey')
        batch_op.drop_column('order_id')
    with op.batch_alter_table('points_accounts', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_points_accounts_balance_covers_debt'), type_='check')
        batch_op.drop_constraint(op.f('ck_points_accounts_debt_nonneg'), type_='check')
        batch_op.create_check_constraint('balance_nonneg', 'balance >= 0')
        batch_op.drop_column('debt')
    op.drop_table('earning_rules')
