"""mailbox_flow: connect Microsoft/Outlook mailboxes to Mailivery warmup, correctly by construction.

    from mailbox_flow import MailboxFlow, MailiveryClient, State

    flow = MailboxFlow(database_url="sqlite:///mailbox_flow.db",
                       client=MailiveryClient(api_key="..."), webhook_secret=secrets.token_urlsafe(32))
    flow.create_schema()
    mb = flow.request_connection(owner_id="user-42", email="ada@contoso.com", first_name="Ada")
    # send the user to mb.oauth_url; then, in the webhook route:
    result = flow.handle_webhook(body, secret=secret_from_url)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .mailivery import AsyncMailiveryClient, Campaign, MailiveryClient, WebhookEvent
    from .reconcile import Action, Finding, Reason, ReconcileReport
    from .settings import Settings
    from .states import State
    from .types import AuditEntry, Delivery, Mailbox, Outcome, Source, WebhookResult

#: Where each public name lives. The package imports a module only when one of its names is first
#: used, so ``import mailbox_flow`` (and the CLI's ``--help``) do not pay for SQLAlchemy, httpx and
#: Starlette up front; ``from mailbox_flow import MailboxFlow`` works as usual.
_HOMES = {
    **dict.fromkeys(
        ("ConcurrentUpdate", "ConfigurationError", "DuplicateMailbox", "InvalidInput",
         "InvalidTransition", "MailboxFlowError", "MailboxNotFound", "MailiveryError", "StorageError",
         "WebhookAuthError", "WebhookPayloadError"),
        "errors",
    ),
    "MailboxFlow": "flow",
    **dict.fromkeys(("AsyncMailiveryClient", "Campaign", "MailiveryClient", "WebhookEvent"), "mailivery"),
    **dict.fromkeys(("Action", "Finding", "Reason", "ReconcileReport"), "reconcile"),
    "Settings": "settings",
    "State": "states",
    **dict.fromkeys(("AuditEntry", "Delivery", "Mailbox", "Outcome", "Source", "WebhookResult"), "types"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mailbox_flow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__version__ = "0.1.0"

__all__ = [
    "Action",
    "AsyncMailiveryClient",
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
