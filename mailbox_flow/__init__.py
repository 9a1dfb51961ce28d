"""mailbox_flow: connect Microsoft/Outlook mailboxes to Mailivery warmup, correctly by construction.

    from mailbox_flow import MailboxFlow, MailiveryClient, State

    flow = MailboxFlow(database_url="sqlite:///mailbox_flow.db",
                       client=MailiveryClient(api_key="..."), webhook_secret="s3cret")
    flow.create_schema()
    mb = flow.request_connection(owner_id="user-42", email="ada@contoso.com", first_name="Ada")
    # send the user to mb.oauth_url; then, in the webhook route:
    result = flow.handle_webhook(body, secret=secret_from_url)
"""

from __future__ import annotations

from .errors import (
    ConcurrentUpdate,
    ConfigurationError,
    DuplicateMailbox,
    InvalidInput,
    InvalidTransition,
    MailboxFlowError,
    MailboxNotFound,
    MailiveryError,
    StorageError,
    WebhookAuthError,
    WebhookPayloadError,
)
from .flow import MailboxFlow
from .mailivery import Campaign, MailiveryClient, WebhookEvent
from .reconcile import Action, Finding, Reason, ReconcileReport
from .settings import Settings
from .states import State
from .types import AuditEntry, Delivery, Mailbox, Outcome, Source, WebhookResult

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AuditEntry",
    "Campaign",
    "ConcurrentUpdate",
    "ConfigurationError",
    "Delivery",
    "DuplicateMailbox",
    "Finding",
    "InvalidInput",
    "InvalidTransition",
    "Mailbox",
    "MailboxFlow",
    "MailboxFlowError",
    "MailboxNotFound",
    "MailiveryClient",
    "MailiveryError",
    "Outcome",
    "Reason",
    "ReconcileReport",
    "Settings",
    "Source",
    "State",
    "StorageError",
    "WebhookAuthError",
    "WebhookEvent",
    "WebhookPayloadError",
    "WebhookResult",
    "__version__",
]
