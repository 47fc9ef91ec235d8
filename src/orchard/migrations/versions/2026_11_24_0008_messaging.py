"""messaging: templates, the outbox of messages (sent and suppressed), the contact policy, short links

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 06:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
CHANNELS = "'sms','wechat_template','wechat_subscribe','app_push','email','webhook','wecom','log'"
PURPOSES = "'marketing','service'"
STATUSES = "'queued','sending','sent','delivered','failed','dead','suppressed','cancelled'"


def upgrade() -> None:
    op.create_table('message_templates',
    sa.Column('id', ID, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('channel', sa.String(length=24), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('provider_template', sa.String(length=128), nullable=True),
    sa.Column('sign_name', sa.String(length=32), nullable=True),
    sa.Column('subject', sa.String(length=200), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('variables', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.Column('published_at', TS, nullable=True),
    sa.CheckConstraint(f"channel in ({CHANNELS})", name=op.f('ck_message_templates_channel')),
    sa.CheckConstraint(f"purpose in ({PURPOSES})", name=op.f('ck_message_templates_purpose')),
    sa.CheckConstraint("status in ('draft','published','retired')", name=op.f('ck_message_templates_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_message_templates')),
    sa.UniqueConstraint('code', name=op.f('uq_message_templates_code'))
    )
    op.create_table('messages',
    sa.Column('id', ID, nullable=False),
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('member_id', ID, nullable=False),
    sa.Column('template_id', ID, nullable=True),
    sa.Column('channel', sa.String(length=24), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('recipient', sa.String(length=255), nullable=True),
    sa.Column('payload', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('journey_id', ID, nullable=True),
    sa.Column('run_id', ID, nullable=True),
    sa.Column('step', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', TS, nullable=True),
    sa.Column('locked_by', sa.String(length=64), nullable=True),
    sa.Column('locked_until', TS, nullable=True),
    sa.Column('provider', sa.String(length=32), nullable=True),
    sa.Column('provider_message_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('sent_at', TS, nullable=True),
    sa.Column('delivered_at', TS, nullable=True),
    sa.Column('clicked_at', TS, nullable=True),
    sa.CheckConstraint(f"channel in ({CHANNELS})", name=op.f('ck_messages_channel')),
    sa.CheckConstraint(f"purpose in ({PURPOSES})", name=op.f('ck_messages_purpose')),
    sa.CheckConstraint(f"status in ({STATUSES})", name=op.f('ck_messages_status')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_messages_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['template_id'], ['message_templates.id'],
                            name=op.f('fk_messages_template_id_message_templates')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('key', name=op.f('uq_messages_key'))
    )
    op.create_index('ix_messages_due', 'messages', ['next_attempt_at'], unique=False,
                    postgresql_where=sa.text("status = 'queued'"), sqlite_where=sa.text("status = 'queued'"))
    op.create_index('ix_messages_member_time', 'messages', ['member_id', 'created_at'], unique=False)
    op.create_index('ix_messages_recipient_time', 'messages', ['channel', 'recipient', 'created_at'], unique=False)
    op.create_index('ix_messages_journey', 'messages', ['journey_id', 'created_at'], unique=False)
    op.create_index('ix_messages_status_time', 'messages', ['status', 'created_at'], unique=False)
    op.create_index(op.f('ix_messages_provider_message_id'), 'messages', ['provider_message_id'], unique=False)
    op.create_table('contact_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy', JSON, nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_contact_policy_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_policy'))
    )
    op.create_table('short_links',
    sa.Column('code', sa.String(length=16), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('message_id', ID, nullable=True),
    sa.Column('member_id', ID, nullable=True),
    sa.Column('clicks', sa.Integer(), nullable=False),
    sa.Column('first_click_at', TS, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_short_links_member_id_members'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_short_links_message_id_messages'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_short_links'))
    )
    op.create_index(op.f('ix_short_links_message_id'), 'short_links', ['message_id'], unique=False)


def downgrade() -> None:
    for table in ('short_links', 'contact_policy', 'messages', 'message_templates'):
        op.drop_table(table)
