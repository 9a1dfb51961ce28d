"""The exceptions mailbox_flow raises. Every one derives from `MailboxFlowError`.

    MailboxFlowError
    ├── InvalidInput                 bad user input; names the field (nothing sent, nothing stored)
    ├── DuplicateMailbox             a non-terminal mailbox already exists for that email
    ├── MailboxNotFound              no mailbox with that id / email
    ├── InvalidTransition            the trigger is not allowed from the mailbox's current state
    ├── ConcurrentUpdate             another worker changed or holds the mailbox right now
    ├── WebhookAuthError             the webhook secret is missing or wrong (nothing stored)
    ├── WebhookPayloadError          the delivery is not a Mailivery webhook we can read (stored as invalid)
    ├── ConfigurationError           settings are missing or inconsistent
    ├── StorageError                 the database failed (wraps SQLAlchemy's error)
    └── MailiveryError               Mailivery answered with an error; carries code, message, request id
        ├── MailiveryAuthError           401 / 403
        ├── MailiveryNotFound            404
        ├── MailiveryValidationError     400 / 409 / 422
        ├── MailiveryResponseError       a 2xx answer we cannot use (e.g. no https OAuth URL)
        └── MailiveryUnavailable         Mailivery could not be asked: nothing is decided, try later
            ├── MailiveryRateLimited         429 after the retries (retry_after in seconds, if given)
            ├── MailiveryServerError         5xx after the retries
            └── MailiveryTransportError      timeouts and connection failures after the retries

    InsecureConfigurationWarning     (a `UserWarning`, not an error) a setting that works but is weak,
                                     e.g. a webhook secret shorter than 32 bytes

Errors carry their context as attributes (`mailbox_id`, `trigger`, `field`, `code`, `request_id`, ...) so
that callers can act on them without parsing messages. No error message ever includes the API key, the
webhook secret or an OAuth URL.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConcurrentUpdate",
    "ConfigurationError",
    "DuplicateMailbox",
    "InsecureConfigurationWarning",
    "InvalidInput",
    "InvalidTransition",
    "MailboxFlowError",
    "MailboxNotFound",
    "MailiveryAuthError",
    "MailiveryError",
    "MailiveryNotFound",
    "MailiveryRateLimited",
    "MailiveryResponseError",
    "MailiveryServerError",
    "MailiveryTransportError",
    "MailiveryUnavailable",
    "MailiveryValidationError",
    "StorageError",
    "WebhookAuthError",
    "WebhookPayloadError",
]


class MailboxFlowError(Exception):
    """The root of every error raised by mailbox_flow."""


class InvalidInput(MailboxFlowError, ValueError):
    """User input was rejected before anything was sent or stored."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DuplicateMailbox(MailboxFlowError):
    """A mailbox that is not terminal already exists for this email."""

    def __init__(self, email: str, existing_id: Any = None) -> None:
        self.email = email
        self.existing_id = existing_id
        super().__init__(f"a mailbox for {email} already exists (id {existing_id})")


class MailboxNotFound(MailboxFlowError, LookupError):
    """No mailbox matches the given id or email."""

    def __init__(self, key: Any) -> None:
        self.key = key
        super().__init__(f"no mailbox {key}")


class InvalidTransition(MailboxFlowError):
    """The trigger is not allowed from the mailbox's current state."""

    def __init__(self, trigger: str, state: str, mailbox_id: Any = None) -> None:
        self.trigger = trigger
        self.state = state
        self.mailbox_id = mailbox_id
        super().__init__(f"cannot {trigger} mailbox {mailbox_id} in state {state}")


class ConcurrentUpdate(MailboxFlowError):
    """Another worker changed the mailbox, or holds its claim, right now."""

    def __init__(self, mailbox_id: Any, trigger: str | None = None) -> None:
        self.mailbox_id = mailbox_id
        self.trigger = trigger
        super().__init__(f"mailbox {mailbox_id} was changed or is claimed by another worker")


class WebhookAuthError(MailboxFlowError):
    """The webhook delivery did not carry the configured secret."""


class WebhookPayloadError(MailboxFlowError, ValueError):
    """The webhook body is not a Mailivery event we can read."""

    def __init__(self, message: str, delivery_id: Any = None) -> None:
        self.message = message
        self.delivery_id = delivery_id
        super().__init__(message)


class ConfigurationError(MailboxFlowError):
    """A required setting is missing or invalid."""


class StorageError(MailboxFlowError):
    """The database failed; the original SQLAlchemy error is the `__cause__`."""


class InsecureConfigurationWarning(UserWarning):
    """A setting that works but weakens security (e.g. a short webhook secret): fix it, or silence it
    with ``warnings.filterwarnings("ignore", category=InsecureConfigurationWarning)``."""


class MailiveryError(MailboxFlowError):
    """Mailivery answered with an error (`{code, message}` envelope) or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.status_code = status_code
        self.request_id = request_id
        self.method = method
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        parts = [self.message]
        if self.code:
            parts.append(f"code={self.code}")
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.method and self.path:
            parts.append(f"call={self.method} {self.path}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class MailiveryAuthError(MailiveryError):
    """401 or 403: the API key is wrong, or the account may not do this."""


class MailiveryNotFound(MailiveryError):
    """404: the campaign does not exist (an answer, not a failure)."""


class MailiveryValidationError(MailiveryError):
    """400, 409 or 422: Mailivery refused the input."""


class MailiveryResponseError(MailiveryError):
    """A successful answer that cannot be used (e.g. no https OAuth URL in it)."""


class MailiveryUnavailable(MailiveryError):
    """Mailivery could not be asked (rate limit, 5xx, timeout) even after retries."""


class MailiveryRateLimited(MailiveryUnavailable):
    """429 even after the retries; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class MailiveryServerError(MailiveryUnavailable):
    """5xx even after the retries."""


class MailiveryTransportError(MailiveryUnavailable):
    """Timeouts and connection failures even after the retries."""
