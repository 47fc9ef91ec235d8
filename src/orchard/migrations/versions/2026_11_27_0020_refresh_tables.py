"""sku_first_sales and refresh_marks (the early-adopter tag's first sale per SKU, kept incrementally);
member_rfm fillfactor 50; ix_events_name_time covers member_id

The preference refresh took every SKU's first counted sale over all orders and lines on each run (at
10M orders, a join and aggregate of 10M × 10M rows) to find the members who bought SKUs within 14 days
of their launch. The first sale of a SKU changes only when an order is added (an id above the last
pass's mark) or when the order that held it stops counting (refunded in full, deleted): the refresh
now folds in the new orders and re-checks the recorded order of each SKU (`scoring.first_sales`).
Both tables start empty; the first refresh fills them from all orders.

member_rfm (PostgreSQL): every refresh rewrites every row (recency moves with the date), and with full
pages each new row version went to another page, adding an entry to each of its three indexes (1M
rows: ~40 s of an 84 s RFM step at full size). With half of each page free the update is HOT when the
class and the tier did not change (most rows): no index entry. Pages written from now on get the
setting; as every row is rewritten by the next refresh, the table takes it then (the old pages are
emptied and reused, no rewrite needed here). SQLite has no such setting.

ix_events_name_time (PostgreSQL) gains INCLUDE (member_id): a behaviour window without a property
filter (`live_attended` in 90 days, `store_visit` in 60, absence of `live_attended` in 180) needs only
name, time and member, so it becomes an index-only scan of the window's entries instead of a bitmap
heap scan of every events page of the window (at 30M events, 90 days of live_attended: 125k pages,
3.7 s of a 14 s preview under load). Same index, 8 more bytes per entry: no extra B-tree insert per
ingested event. Windows filtering on a property still read the heap. The rebuild takes the events
table's write lock for its length (on a large table, create the new index CONCURRENTLY by hand under
another name first and swap the names).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE member_rfm SET (fillfactor = 50)')
        op.execute('DROP INDEX ix_events_name_time')
        op.execute('CREATE INDEX ix_events_name_time ON events (name, occurred_at) INCLUDE (member_id)')
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
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP INDEX ix_events_name_time')
        op.execute('CREATE INDEX ix_events_name_time ON events (name, occurred_at)')
        op.execute('ALTER TABLE member_rfm RESET (fillfactor)')
    op.drop_table('refresh_marks')
    op.drop_table('sku_first_sales')
