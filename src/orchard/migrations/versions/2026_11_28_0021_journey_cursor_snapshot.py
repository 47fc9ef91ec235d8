"""journeys.cursor_settled and journeys.cursor_snapshot: id-cursored triggers also read rows that
committed after a later id was read (PostgreSQL)

An id cursor alone loses rows: a transaction that took id 100 and commits after one that took 101
is invisible to a sweep that reads 101 and moves the cursor there. The sweep now keeps the snapshot
it read under (`pg_current_snapshot()` as text) and a settled mark below which every id is final;
the next sweep also reads the rows between the two marks that the kept snapshot could not see
(journeys.triggers). NULL snapshot: a plain id cursor (SQLite, where writers commit in id order,
and journeys published before this revision until their next sweep).

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-28 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('journeys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cursor_settled', ID, nullable=True))
        batch_op.add_column(sa.Column('cursor_snapshot', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('journeys', schema=None) as batch_op:
        batch_op.drop_column('cursor_snapshot')
        batch_op.drop_column('cursor_settled')
