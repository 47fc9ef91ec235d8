"""sku_first_sales and refresh_marks: the early-adopter tag's first sale per SKU, kept incrementally

The preference refresh took every SKU's first counted sale over all orders and lines on each run (at
10M orders, a join and aggregate of 10M × 10M rows) to find the members who bought SKUs within 14 days
of their launch. The first sale of a SKU changes only when an order is added (an id above the last
pass's mark) or when the order that held it stops counting (refunded in full, deleted): the refresh
now folds in the new orders and re-checks the recorded order of each SKU (`scoring.first_sales`).
Both tables start empty; the first refresh fills them from all orders.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'sku_first_sales',
        sa.Column('sku', sa.String(length=128), nullable=False),
        sa.Column('first_at', TS, nullable=False),
        sa.Column('order_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('sku', name=op.f('pk_sku_first_sales')),
    )
    op.create_table(
        'refresh_marks',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('last_id', sa.BigInteger(), nullable=False),
        sa.Column('prev_id', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_refresh_marks')),
    )


def downgrade() -> None:
    op.drop_table('refresh_marks')
    op.drop_table('sku_first_sales')
