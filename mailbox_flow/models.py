"""The tables: ``mailbox``, ``mailbox_transition`` (the audit trail) and ``webhook_delivery`` (the inbox).

They are SQLModel tables so that a partner can include ``metadata`` in their own Alembic environment
(``from mailbox_flow.models import metadata``). Callers of the library never get these rows: they get the
detached snapshots of ``mailbox_flow.types``.

Timestamps are stored as UTC and always come back timezone-aware (SQLite drops the offset, so the
`UTCDateTime` column type puts it back).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from .states import ACTIVE_STATES

__all__ = [
    "MailboxRow",
    "TransitionRow",
    "UTCDateTime",
    "WebhookDeliveryRow",
    "metadata",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and returned timezone-aware on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: mailbox_flow stores aware UTC timestamps only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


#: SQL for "the mailbox is active": the predicate of the one-active-mailbox-per-address unique index.
ACTIVE_PREDICATE = "state IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)))


class MailboxRow(SQLModel, table=True):
    """One mailbox being connected to Mailivery: the persisted state machine."""

    __tablename__ = "mailbox"
    __table_args__ = (
        sa.Index("ix_mailbox_state_scan", "state", "state_changed_at", "id"),
        sa.Index(
            "ix_mailbox_intent",
            "id",
            sqlite_where=sa.text("intent_trigger IS NOT NULL"),
            postgresql_where=sa.text("intent_trigger IS NOT NULL"),
        ),
        sa.Index(
            "uq_mailbox_active_email",
            "email",
            unique=True,
            sqlite_where=sa.text(ACTIVE_PREDICATE),
            postgresql_where=sa.text(ACTIVE_PREDICATE),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: str | None = Field(default=None, max_length=255, index=True)
    email: str = Field(max_length=255, index=True)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    emails_per_day: int | None = None
    response_rate: int | None = None
    state: str = Field(max_length=16)
    version: int = Field(default=1)
    campaign_id: int | None = Field(default=None, sa_type=sa.BigInteger, unique=True)
    oauth_url: str | None = Field(default=None, sa_type=sa.Text)
    correlation_token: str | None = Field(default=None, max_length=64)
    warmed_at: datetime | None = _ts()
    created_at: datetime | None = _ts(nullable=False)
    updated_at: datetime | None = _ts(nullable=False)
    state_changed_at: datetime | None = _ts(nullable=False)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    next_attempt_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _ts()
    intent_trigger: str | None = Field(default=None, max_length=32)
    intent_request_id: str | None = Field(default=None, max_length=64)
    intent_at: datetime | None = _ts()
    flag_reason: str | None = Field(default=None, max_length=64)
    flagged_at: datetime | None = _ts()


class TransitionRow(SQLModel, table=True):
    """The audit trail: one row per transition that happened."""

    __tablename__ = "mailbox_transition"
    __table_args__ = (sa.Index("ix_mailbox_transition_mailbox", "mailbox_id", "id"),)

    id: int | None = Field(default=None, sa_type=sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                           primary_key=True)
    mailbox_id: uuid.UUID = Field(foreign_key="mailbox.id")
    trigger: str = Field(max_length=32)
    from_state: str = Field(max_length=16)
    to_state: str = Field(max_length=16)
    at: datetime | None = _ts(nullable=False)
    source: str = Field(max_length=16)
    request_id: str | None = Field(default=None, max_length=64)
    detail: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)


class WebhookDeliveryRow(SQLModel, table=True):
    """The inbox: every authenticated webhook delivery, stored raw before it is parsed."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (sa.Index("ix_webhook_delivery_status", "status", "received_at"),)

    id: int | None = Field(default=None, sa_type=sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                           primary_key=True)
    received_at: datetime | None = _ts(nullable=False)
    dedupe_key: str | None = Field(default=None, max_length=128, unique=True)
    event_type: str | None = Field(default=None, max_length=64)
    campaign_id: int | None = Field(default=None, sa_type=sa.BigInteger, index=True)
    email: str | None = Field(default=None, max_length=255)
    body: bytes = Field(sa_type=sa.LargeBinary)
    status: str = Field(max_length=16)
    outcome: str | None = Field(default=None, max_length=16)
    mailbox_id: uuid.UUID | None = None
    duplicate_of: int | None = Field(default=None, sa_type=sa.BigInteger)
    attempts: int = Field(default=0)
    error: str | None = Field(default=None, sa_type=sa.Text)
    processed_at: datetime | None = _ts()


#: The tables' metadata, for ``create_all`` or a partner's own Alembic ``target_metadata``.
metadata = SQLModel.metadata
