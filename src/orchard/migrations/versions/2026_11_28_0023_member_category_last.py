"""member_category_last: each member's latest counted order per category (segments.order_summary)

The nightly refresh evaluated every order window on a category from the orders and their lines: at 10M
orders, "bought 美妆 in the last 365 days" read 5M orders and 0.8M lines (~3.5 s) and "bought from 3
categories in a year" joined 5M orders with 10M lines (~8 s), for every definition, every night. Both
are answered by each member's latest counted order per category (4M rows at 1M members), kept
incrementally by the refresh from id marks on orders, refunds and merges. The table starts empty; the
first refresh fills it from all orders.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-28 11:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'member_category_last',
        sa.Column('member_id', ID, nullable=False),
        sa.Column('category', sa.String(length=100), nullable=False),
        sa.Column('last_paid_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('member_id', 'category', name=op.f('pk_member_category_last')),
    )
    op.create_index('ix_member_category_last_category', 'member_category_last',
                    ['category', 'last_paid_at', 'member_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_member_category_last_category', table_name='member_category_last')
    op.drop_table('member_category_last')
