"""Keyed hashes of email addresses, for logs of partners who treat addresses as personal data.

``email_hash(email, key)`` is HMAC-SHA256 over the normalized address (trimmed, lowercased), keyed with a
per-deployment secret, as 32 hex characters: the same mailbox always gets the same value in every process
of a deployment (so log lines can still be correlated), another deployment gets another value, and
nobody without the key can test a guessed address against a log line (a plain sha256 would allow that).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["EMAIL_HASH_CHARS", "email_hash"]

#: Hex characters kept (128 bits): plenty to tell mailboxes apart, short enough for log lines.
EMAIL_HASH_CHARS = 32


def email_hash(email: str, key: bytes) -> str:
    """The keyed hash of ``email`` (case and surrounding spaces ignored) under ``key``."""
    if not key:
        raise ValueError("an email hash needs a non-empty key")
    normalized = email.strip().lower().encode("utf-8", "surrogatepass")
    return hmac.new(key, normalized, hashlib.sha256).hexdigest()[:EMAIL_HASH_CHARS]
