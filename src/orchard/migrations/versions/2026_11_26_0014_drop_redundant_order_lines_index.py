"""order_lines: drop ix_order_lines_order_id, which the unique (order_id, line_no) index makes redundant

Every look-up of an order's lines (and the foreign-key checks of refund lines and cascades) is served
by uq_order_lines_order_id_line_no, whose leading column is order_id; the extra index only cost each
ingested or imported line another B-tree insert.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 13:00:00
"""
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_lines_order_id'))


def downgrade() -> None:
    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_lines_order_id'), ['order_id'], unique=False)
