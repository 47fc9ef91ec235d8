"""points ledger: accounts, entries, lots, allocations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 00:15:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('points_accounts',
    sa.Column('member_id', ID, nullable=False),
    sa.Column('balance', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('balance >= 0', name=op.f('ck_points_accounts_balance_nonneg')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_points_accounts_member_id_members'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_points_accounts'))
    )
    op.create_table('points_entries',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('balance_after', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('explanation', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
              nullable=False),
    sa.Column('store_id', ID, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('earn','spend','expire','adjust')", name=op.f('ck_points_entries_kind')),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_points_entries_amount_nonzero')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_points_entries_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['org_units.id'], name=op.f('fk_points_entries_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_entries')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_points_entries_source_external_id'))
    )
    with op.batch_alter_table('points_entries', schema=None) as batch_op:
        batch_op.create_index('ix_points_entries_member_id_id', ['member_id', 'id'], unique=False)

    op.create_table('points_lots',
    sa.Column('id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('entry_id', ID, nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('earned_at', TS, nullable=False),
    sa.Column('expires_at', TS, nullable=True),
    sa.Column('pending_until', TS, nullable=True),
    sa.Column('store_id', ID, nullable=True),
    sa.CheckConstraint('amount > 0', name=op.f('ck_points_lots_amount_pos')),
    sa.CheckConstraint('remaining >= 0 AND remaining <= amount', name=op.f('ck_points_lots_remaining_in_range')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_entries.id'], name=op.f('fk_points_lots_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_points_lots_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['org_units.id'], name=op.f('fk_points_lots_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_lots')),
    sa.UniqueConstraint('entry_id', name=op.f('uq_points_lots_entry_id'))
    )
    with op.batch_alter_table('points_lots', schema=None) as batch_op:
        batch_op.create_index('ix_points_lots_member_id_expires_at', ['member_id', 'expires_at'], unique=False)
        batch_op.create_index('ix_points_lots_expires_at', ['expires_at'], unique=False)

    op.create_table('points_allocations',
    sa.Column('id', ID, nullable=False),
    sa.Column('entry_id', ID, nullable=False),
    sa.Column('lot_id', ID, nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_points_allocations_amount_pos')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_entries.id'],
                            name=op.f('fk_points_allocations_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['lot_id'], ['points_lots.id'], name=op.f('fk_points_allocations_lot_id_points_lots')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_allocations'))
    )
    with op.batch_alter_table('points_allocations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_points_allocations_entry_id'), ['entry_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_points_allocations_lot_id'), ['lot_id'], unique=False)


def downgrade() -> None:
    op.drop_table('points_allocations')
    op.drop_table('points_lots')
    op.drop_table('points_entries')
    op.drop_table('points_accounts')
