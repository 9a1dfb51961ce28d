"""initial schema: mailbox, mailbox_transition, webhook_delivery

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mailbox_flow.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("first_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("last_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("emails_per_day", sa.Integer(), nullable=True),
        sa.Column("response_rate", sa.Integer(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("oauth_url", sa.Text(), nullable=True),
        sa.Column("correlation_token", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("warmed_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("lease_until", mailbox_flow.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("intent_trigger", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("intent_request_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("intent_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("flag_reason", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("flagged_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id"),
    )
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mailbox_email"), ["email"], unique=False)
        batch_op.create_index(batch_op.f("ix_mailbox_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index("ix_mailbox_state_changed", ["state", "state_changed_at"], unique=False)
        batch_op.create_index(
            "ix_mailbox_intent",
            ["id"],
            unique=False,
            sqlite_where=sa.text("intent_trigger IS NOT NULL"),
            postgresql_where=sa.text("intent_trigger IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_mailbox_active_email",
            ["email"],
            unique=True,
            sqlite_where=sa.text("state IN ('oauth_sent', 'paused', 'pending', 'requested', 'warming')"),
            postgresql_where=sa.text("state IN ('oauth_sent', 'paused', 'pending', 'requested', 'warming')"),
        )

    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("received_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("dedupe_key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("event_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("mailbox_id", sa.Uuid(), nullable=True),
        sa.Column("duplicate_of", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("processed_at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_delivery_campaign_id"), ["campaign_id"], unique=False)
        batch_op.create_index("ix_webhook_delivery_status", ["status", "received_at"], unique=False)

    op.create_table(
        "mailbox_transition",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("mailbox_id", sa.Uuid(), nullable=False),
        sa.Column("trigger", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("from_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("to_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("at", mailbox_flow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailbox.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mailbox_transition", schema=None) as batch_op:
        batch_op.create_index("ix_mailbox_transition_mailbox", ["mailbox_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mailbox_transition", schema=None) as batch_op:
        batch_op.drop_index("ix_mailbox_transition_mailbox")

    op.drop_table("mailbox_transition")
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_delivery_status")
        batch_op.drop_index(batch_op.f("ix_webhook_delivery_campaign_id"))

    op.drop_table("webhook_delivery")
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_mailbox_active_email",
            sqlite_where=sa.text("state IN ('oauth_sent', 'paused', 'pending', 'requested', 'warming')"),
            postgresql_where=sa.text("state IN ('oauth_sent', 'paused', 'pending', 'requested', 'warming')"),
        )
        batch_op.drop_index("ix_mailbox_state_changed")
        batch_op.drop_index(
            "ix_mailbox_intent",
            sqlite_where=sa.text("intent_trigger IS NOT NULL"),
            postgresql_where=sa.text("intent_trigger IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_mailbox_owner_id"))
        batch_op.drop_index(batch_op.f("ix_mailbox_email"))

    op.drop_table("mailbox")
