"""Masking secrets and addresses in text: reprs, log records, error messages (a leaf: imports nothing).

- `hide_password` masks a URL's password (``user:***@host``) and password-like query values.
- `scrub` masks URL query strings (OAuth and reconnect URLs carry tokens there) and bearer values.
- `mask_email` keeps an address's first character and its domain: ``a***@contoso.com``.
"""

from __future__ import annotations

import re

__all__ = ["hide_password", "mask_email", "mask_emails", "scrub"]

MASK = "***"

_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^@/\s]*@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pwd|secret|token|api_?key|sslpassword)=)[^&;#\s]*"
)
_EMAIL = re.compile(
    r"(?P<first>[A-Za-z0-9_%+-])[A-Za-z0-9._%+-]*@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)


def hide_password(url: str) -> str:
    """``postgresql://mf:s3cret@db/mf?password=x`` -> ``postgresql://mf:***@db/mf?password=***``."""
    url = _USERINFO_PASSWORD.sub(rf"\g<head>:{MASK}@", url)
    return _QUERY_SECRET.sub(rf"\g<key>{MASK}", url)


def scrub(value: str) -> str:
    """Mask URL query strings and bearer values in ``value``."""
    if "?" in value:
        value = _URL_QUERY.sub(r"\1?<redacted>", value)
    if "earer" in value:
        value = _BEARER.sub(r"\1<redacted>", value)
    return value


def mask_email(email: str) -> str:
    """``ada.lovelace@contoso.com`` -> ``a***@contoso.com`` (text that is no address: ``***``)."""
    local, at, domain = email.strip().rpartition("@")
    if not at or not local:
        return MASK
    return f"{local[0]}{MASK}@{domain}"


def mask_emails(value: str) -> str:
    """Every address in ``value`` masked as `mask_email` does."""
    if "@" not in value:
        return value
    return _EMAIL.sub(rf"\g<first>{MASK}@\g<domain>", value)
