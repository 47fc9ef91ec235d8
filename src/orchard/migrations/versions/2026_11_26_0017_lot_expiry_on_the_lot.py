"""points_lots.expired / expire_entry_id: an expiry is recorded on the lot it empties; fillfactor 50

The expiry pass used to write one points_allocations row per expired lot (an insert, two foreign-key
checks, three index entries) and a non-HOT update of the lot: ~24 minutes for 8M due lots. Now the one
UPDATE that empties a lot also records what the expiry took (`expired`) and which expire entry took it
(`expire_entry_id`). Neither column is indexed nor a foreign key: an index or a key check on them would
make that update non-HOT again or add a probe per lot; `orchard points verify` checks that every lot
names an expire entry of its own member and that the entry is covered exactly (docs/decisions/0003).

Earlier expiries stay as they were written (allocation rows): the ledger is append-only, and verify,
the reports and the pass read both forms.

fillfactor 50 (PostgreSQL): `remaining`, `expired` and `expire_entry_id` are in no index, so with free
space in the page an update of a lot — by a spend or by the pass — is HOT (no new index entries). A
year-end pass (年底清零) empties nearly every row of the older pages at once: each page needs room for a
new version of every row, i.e. half of it free (at 70, 42 % of the updates were HOT; at 50, 95 %:
docs/benchmarks.md). Same for the account's balance and debt. It applies to pages written from now
on; an existing table gets it on its next rewrite (VACUUM FULL or pg_repack, in a maintenance
window). SQLite has no such setting.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-26 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
CHECK = 'expired >= 0 AND remaining + expired <= amount'


def upgrade() -> None:
    pg = op.get_bind().dialect.name == 'postgresql'
    if pg:
        op.execute('ALTER TABLE points_lots SET (fillfactor = 50)')
        op.execute('ALTER TABLE points_accounts SET (fillfactor = 50)')
        # A new NOT NULL column with a constant default is a catalog change only (no table rewrite).
        op.add_column('points_lots', sa.Column('expired', sa.BigInteger(), nullable=False, server_default='0'))
        op.add_column('points_lots', sa.Column('expire_entry_id', ID, nullable=True))
        # NOT VALID then VALIDATE: the scan of a large table runs without blocking writers.
        op.execute(f'ALTER TABLE points_lots ADD CONSTRAINT ck_points_lots_expired_in_range CHECK ({CHECK}) NOT VALID')
        op.execute('ALTER TABLE points_lots VALIDATE CONSTRAINT ck_points_lots_expired_in_range')
    else:
        with op.batch_alter_table('points_lots', schema=None) as batch_op:
            batch_op.add_column(sa.Column('expired', sa.BigInteger(), nullable=False, server_default='0'))
            batch_op.add_column(sa.Column('expire_entry_id', ID, nullable=True))
            batch_op.create_check_constraint(op.f('ck_points_lots_expired_in_range'), CHECK)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == 'postgresql'
    with op.batch_alter_table('points_lots', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_points_lots_expired_in_range'), type_='check')
        batch_op.drop_column('expire_entry_id')
        batch_op.drop_column('expired')
    if pg:
        op.execute('ALTER TABLE points_accounts RESET (fillfactor)')
        op.execute('ALTER TABLE points_lots RESET (fillfactor)')
