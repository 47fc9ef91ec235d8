"""points_lots fillfactor 48 (was 50): room for a year-end pass to empty every lot of a page in place

At 50 a page of points_lots holds 37 lots of 104 bytes and keeps 4,172 bytes free. The expiry pass's
update writes a new version of each lot in the same page (HOT: no index entry) if there is room, and
that version is 8 bytes longer than the old — `expire_entry_id` goes from NULL to an id — so it takes
112 bytes plus a 4-byte line pointer: 37 × 116 = 4,292 > 4,172, and the last two lots of every page
(5 %) went to another page with a new entry in each of the table's five indexes. At 48 a page holds
36 lots (36 × 116 = 4,176 ≤ 4,280 free): every such update is HOT, for a heap 2.8 % larger.
Measured at 200k members / 2M lots, 1.6M due (docs/benchmarks.md): the lot update's backend CPU
3.62 → 2.75 s, 95 → 100 % HOT. Rows with longer optional values (pending_event) leave more room, not
less (fewer rows per page, same 12 bytes of growth each).

Like 0017's, the setting applies to pages written from now on; an existing table gets it on its next
rewrite (VACUUM FULL or pg_repack, in a maintenance window). SQLite has no such setting.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27 09:00:00
"""
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE points_lots SET (fillfactor = 48)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE points_lots SET (fillfactor = 50)')
