"""Configuration that would weaken security: refused (an API key sent in clear) or warned about (a
short webhook secret). A leaf: `settings` and the client both use it."""

from __future__ import annotations

import ipaddress
import warnings
from urllib.parse import urlsplit

from .errors import InsecureConfigurationWarning

__all__ = ["MIN_SECRET_BYTES", "clear_text_base_url", "is_loopback_host", "warn_short_secret"]

#: A webhook secret shorter than this (in UTF-8 bytes) is guessable enough to warn about: the secret
#: is the only thing that authenticates a delivery. ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_SECRET_BYTES = 32


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback IP addresses (never Mailivery)."""
    if not host:
        return False
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def clear_text_base_url(url: str) -> str | None:
    """Why ``url`` may not be Mailivery's base URL (``http://`` off loopback), or None."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None  # not a URL at all: for the caller's own checks to say
    if parts.scheme.lower() == "http" and host and not is_loopback_host(host):
        return ("the Mailivery base URL must use https: over http:// the API key would cross the "
                f"network in clear (http:// is only for a loopback host such as a local simulator, "
                f"not {host})")
    return None


def warn_short_secret(secret: str | None, *, stacklevel: int = 2) -> None:
    """Warn (`InsecureConfigurationWarning` and a ``mailbox_flow.insecure_configuration`` log event)
    when a webhook secret is set but shorter than `MIN_SECRET_BYTES`. The secret is never shown."""
    if not secret or len(secret.encode()) >= MIN_SECRET_BYTES:
        return  # none (or empty): every delivery is refused, nothing to guess
    from .audit import get_logger  # audit imports settings, which imports this module

    length = len(secret.encode())
    get_logger("mailbox_flow.security").warning(
        "mailbox_flow.insecure_configuration", setting="webhook_secret", length=length,
        minimum=MIN_SECRET_BYTES)
    warnings.warn(
        f"the webhook secret is {length} bytes long; use at least {MIN_SECRET_BYTES} bytes (e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))'): it is all that authenticates "
        "a delivery",
        InsecureConfigurationWarning, stacklevel=stacklevel + 1)
