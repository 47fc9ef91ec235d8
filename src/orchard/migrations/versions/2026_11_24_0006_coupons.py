"""coupons: templates, batches, coupons, redemptions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 04:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('coupon_templates',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=True),
    sa.Column('off_fen', sa.BigInteger(), nullable=True),
    sa.Column('percent', sa.Integer(), nullable=True),
    sa.Column('max_off_fen', sa.BigInteger(), nullable=True),
    sa.Column('threshold_fen', sa.BigInteger(), nullable=False),
    sa.Column('benefit', JSON, nullable=False),
    sa.Column('validity', sa.String(length=16), nullable=False),
    sa.Column('valid_from', TS, nullable=True),
    sa.Column('valid_to', TS, nullable=True),
    sa.Column('valid_days', sa.Integer(), nullable=True),
    sa.Column('starts_after_days', sa.Integer(), nullable=False),
    sa.Column('stores', JSON, nullable=False),
    sa.Column('categories', JSON, nullable=False),
    sa.Column('channels', JSON, nullable=False),
    sa.Column('stackable', sa.Boolean(), nullable=False),
    sa.Column('exclusive_group', sa.String(length=64), nullable=True),
    sa.Column('total_limit', sa.BigInteger(), nullable=True),
    sa.Column('per_member_limit', sa.Integer(), nullable=True),
    sa.Column('issued_count', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("kind in ('amount_off','percent_off','gift','service')", name=op.f('ck_coupon_templates_kind')),
    sa.CheckConstraint("status in ('active','inactive')", name=op.f('ck_coupon_templates_status')),
    sa.CheckConstraint("validity in ('fixed','relative')", name=op.f('ck_coupon_templates_validity')),
    sa.CheckConstraint('off_fen IS NULL OR off_fen > 0', name=op.f('ck_coupon_templates_off_fen_pos')),
    sa.CheckConstraint('percent IS NULL OR (percent >= 1 AND percent <= 99)',
                       name=op.f('ck_coupon_templates_percent_range')),
    sa.CheckConstraint('max_off_fen IS NULL OR max_off_fen > 0', name=op.f('ck_coupon_templates_max_off_fen_pos')),
    sa.CheckConstraint('threshold_fen >= 0', name=op.f('ck_coupon_templates_threshold_nonneg')),
    sa.CheckConstraint("(kind = 'amount_off' AND off_fen IS NOT NULL AND percent IS NULL) OR "
                       "(kind = 'percent_off' AND percent IS NOT NULL AND off_fen IS NULL) OR "
                       "(kind IN ('gift','service') AND off_fen IS NULL AND percent IS NULL)",
                       name=op.f('ck_coupon_templates_kind_terms')),
    sa.CheckConstraint("(validity = 'fixed' AND valid_from IS NOT NULL AND valid_to > valid_from) OR "
                       "(validity = 'relative' AND valid_days IS NOT NULL)",
                       name=op.f('ck_coupon_templates_validity_terms')),
    sa.CheckConstraint('valid_days IS NULL OR (valid_days >= 1 AND valid_days <= 3660)',
                       name=op.f('ck_coupon_templates_valid_days_range')),
    sa.CheckConstraint('starts_after_days >= 0', name=op.f('ck_coupon_templates_starts_after_nonneg')),
    sa.CheckConstraint('total_limit IS NULL OR total_limit > 0', name=op.f('ck_coupon_templates_total_limit_pos')),
    sa.CheckConstraint('per_member_limit IS NULL OR per_member_limit > 0',
                       name=op.f('ck_coupon_templates_per_member_limit_pos')),
    sa.CheckConstraint('issued_count >= 0 AND (total_limit IS NULL OR issued_count <= total_limit)',
                       name=op.f('ck_coupon_templates_issued_within_limit')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupon_templates'))
    )
    with op.batch_alter_table('coupon_templates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_coupon_templates_campaign'), ['campaign'], unique=False)

    op.create_table('coupon_batches',
    sa.Column('id', ID, nullable=False),
    sa.Column('template_id', ID, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('requested', sa.BigInteger(), nullable=False),
    sa.Column('issued', sa.BigInteger(), nullable=False),
    sa.Column('skipped', JSON, nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.CheckConstraint('requested >= 0 AND issued >= 0 AND issued <= requested', name=op.f('ck_coupon_batches_counts')),
    sa.ForeignKeyConstraint(['template_id'], ['coupon_templates.id'],
                            name=op.f('fk_coupon_batches_template_id_coupon_templates')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupon_batches')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_coupon_batches_source_external_id'))
    )
    with op.batch_alter_table('coupon_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_coupon_batches_template_id'), ['template_id'], unique=False)

    op.create_table('coupons',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=16), nullable=False),
    sa.Column('template_id', ID, nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('issued_at', TS, nullable=False),
    sa.Column('valid_from', TS, nullable=False),
    sa.Column('valid_to', TS, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('external_id', sa.String(length=128), nullable=True),
    sa.Column('body_hash', sa.String(length=64), nullable=True),
    sa.Column('batch_id', sa.BigInteger(), nullable=True),
    sa.Column('issued_by', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('redeemed_at', TS, nullable=True),
    sa.Column('redeemed_store_id', ID, nullable=True),
    sa.Column('redeemed_order_source', sa.String(length=64), nullable=True),
    sa.Column('redeemed_order_id', sa.String(length=128), nullable=True),
    sa.Column('discount_fen', sa.BigInteger(), nullable=True),
    sa.Column('voided_at', TS, nullable=True),
    sa.Column('void_reason', sa.String(length=200), nullable=True),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("status in ('issued','redeemed','expired','voided')", name=op.f('ck_coupons_status')),
    sa.CheckConstraint('valid_to > valid_from', name=op.f('ck_coupons_window')),
    sa.CheckConstraint("(status = 'redeemed' AND redeemed_at IS NOT NULL AND redeemed_order_id IS NOT NULL) OR "
                       "(status <> 'redeemed' AND redeemed_at IS NULL AND redeemed_order_id IS NULL)",
                       name=op.f('ck_coupons_redeemed_iff_status')),
    sa.CheckConstraint("(status = 'voided' AND voided_at IS NOT NULL) OR (status <> 'voided' AND voided_at IS NULL)",
                       name=op.f('ck_coupons_voided_iff_status')),
    sa.CheckConstraint('discount_fen IS NULL OR discount_fen >= 0', name=op.f('ck_coupons_discount_nonneg')),
    sa.ForeignKeyConstraint(['template_id'], ['coupon_templates.id'],
                            name=op.f('fk_coupons_template_id_coupon_templates')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_coupons_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['redeemed_store_id'], ['org_units.id'],
                            name=op.f('fk_coupons_redeemed_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons')),
    sa.UniqueConstraint('code', name=op.f('uq_coupons_code'))
    )
    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.create_index('uq_coupons_source_external_id', ['source', 'external_id'], unique=True,
                              postgresql_where=sa.text('external_id IS NOT NULL'),
                              sqlite_where=sa.text('external_id IS NOT NULL'))
        batch_op.create_index('ix_coupons_member_id_template_id', ['member_id', 'template_id'], unique=False)

    op.create_table('coupon_redemptions',
    sa.Column('id', ID, nullable=False),
    sa.Column('coupon_id', ID, nullable=False),
    sa.Column('order_source', sa.String(length=64), nullable=False),
    sa.Column('order_id', sa.String(length=128), nullable=False),
    sa.Column('store_id', ID, nullable=True),
    sa.Column('channel', sa.String(length=32), nullable=True),
    sa.Column('order_amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('eligible_fen', sa.BigInteger(), nullable=False),
    sa.Column('discount_fen', sa.BigInteger(), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('redeemed_at', TS, nullable=False),
    sa.Column('cancelled_at', TS, nullable=True),
    sa.Column('cancel_reason', sa.String(length=200), nullable=True),
    sa.Column('cancelled_by', sa.String(length=64), nullable=True),
    sa.CheckConstraint('order_amount_fen >= 0 AND eligible_fen >= 0 AND discount_fen >= 0 '
                       'AND discount_fen <= eligible_fen', name=op.f('ck_coupon_redemptions_amounts')),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupons.id'], name=op.f('fk_coupon_redemptions_coupon_id_coupons'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['org_units.id'], name=op.f('fk_coupon_redemptions_store_id_org_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupon_redemptions')),
    sa.UniqueConstraint('coupon_id', 'order_source', 'order_id',
                        name=op.f('uq_coupon_redemptions_coupon_id_order_source_order_id'))
    )
    with op.batch_alter_table('coupon_redemptions', schema=None) as batch_op:
        batch_op.create_index('ix_coupon_redemptions_order_source_order_id', ['order_source', 'order_id'],
                              unique=False)


def downgrade() -> None:
    op.drop_table('coupon_redemptions')
    op.drop_table('coupons')
    op.drop_table('coupon_batches')
    op.drop_table('coupon_templates')
