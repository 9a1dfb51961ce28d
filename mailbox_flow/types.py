"""The plain, detached values the library hands to its callers."""

from __future__ import annotations

import enum
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .states import State

__all__ = ["AuditEntry", "Delivery", "Mailbox", "Outcome", "Source", "WebhookResult"]


class Source(enum.StrEnum):
    """Who caused a transition (stored in the audit row)."""

    API = "api"
    WEBHOOK = "webhook"
    RECONCILER = "reconciler"
    CLI = "cli"


class Outcome(enum.StrEnum):
    """What `MailboxFlow.handle_webhook` did with a delivery."""

    STARTED = "started"
    RESUMED = "resumed"
    PENDING = "pending"
    PAUSED = "paused"
    DELETED = "deleted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEFERRED = "deferred"
    #: stored and de-duplicated by `MailboxFlow.accept_webhook`, to be acted on later
    ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A snapshot of one mailbox, detached from the database."""

    id: uuid.UUID
    owner_id: str | None
    email: str
    first_name: str | None
    last_name: str | None
    emails_per_day: int | None
    response_rate: int | None
    state: State
    version: int
    campaign_id: int | None
    oauth_url: str | None
    created_at: datetime
    updated_at: datetime
    state_changed_at: datetime
    warmed_at: datetime | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    flag_reason: str | None
    flagged_at: datetime | None
    intent_trigger: str | None
    intent_request_id: str | None
    lease_until: datetime | None
    correlation_token: str | None

    @property
    def is_terminal(self) -> bool:
        from .states import TERMINAL_STATES

        return self.state in TERMINAL_STATES

    def __repr__(self) -> str:  # the OAuth URL carries tokens: keep it out of reprs and logs
        return (
            f"Mailbox(id={self.id!s}, email={self.email!r}, state={self.state.value!r}, "
            f"campaign_id={self.campaign_id!r}, version={self.version})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, without the OAuth URL."""
        data = asdict(self)
        data.pop("oauth_url")
        data.pop("correlation_token")
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
            elif isinstance(value, uuid.UUID | enum.Enum):
                data[key] = str(value.value if isinstance(value, enum.Enum) else value)
        return data


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of a mailbox's audit trail."""

    id: int
    mailbox_id: uuid.UUID
    trigger: str
    from_state: State
    to_state: State
    at: datetime
    source: Source
    request_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stored webhook delivery (the inbox). ``body`` (the raw delivery, with its correlation token)
    is left out of the repr."""

    id: int
    received_at: datetime
    dedupe_key: str | None
    event_type: str | None
    campaign_id: int | None
    email: str | None
    body: bytes = field(repr=False)
    status: str
    outcome: str | None
    mailbox_id: uuid.UUID | None
    duplicate_of: int | None
    attempts: int
    error: str | None
    processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What `MailboxFlow.handle_webhook` did: the outcome, the mailbox after it, the stored delivery."""

    outcome: Outcome
    mailbox: Mailbox | None
    delivery_id: int | None
    detail: str | None = None
