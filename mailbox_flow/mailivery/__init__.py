"""The Mailivery side of mailbox_flow: the HTTP client, response and webhook parsing.

Knows nothing of the store or the state machine (see design.md §7).
"""

from __future__ import annotations

from .client import PATHS, AsyncMailiveryClient, MailiveryClient, RateLimiter, parse_retry_after
from .schemas import (
    CORRELATION_META_KEY,
    DEFAULT_BASE_URL,
    Campaign,
    ConnectResult,
    WebhookEvent,
    normalize_email,
    parse_meta,
    parse_webhook,
    validate_connect,
    validate_meta,
    validate_owner_id,
)

__all__ = [
    "CORRELATION_META_KEY",
    "DEFAULT_BASE_URL",
    "PATHS",
    "AsyncMailiveryClient",
    "Campaign",
    "ConnectResult",
    "MailiveryClient",
    "RateLimiter",
    "WebhookEvent",
    "normalize_email",
    "parse_meta",
    "parse_retry_after",
    "parse_webhook",
    "validate_connect",
    "validate_meta",
    "validate_owner_id",
]
