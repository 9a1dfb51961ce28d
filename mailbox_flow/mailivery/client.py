"""`MailiveryClient` and `AsyncMailiveryClient`: the Mailivery calls mailbox_flow needs, over one
long-lived `httpx.Client` (or `httpx.AsyncClient`), with the same arguments, checks and guarantees.

Every call validates its input before any traffic, carries ``Authorization: Bearer``,
``Accept: application/json`` and a request id (the same id on every retry of one call), throttles
itself with a thread-safe `RateLimiter` (one per API key and base URL in a process, shared by every
client for that key unless one is passed explicitly), retries 429 / 5xx / transport failures with `stamina`
(exponential backoff with jitter, ``Retry-After`` honoured on 429 and 503) and maps Mailivery's
``{code, message}`` envelope to the typed errors of `mailbox_flow.errors`.

A caller that must not have a call in flight after some moment (the flow, whose claim on a mailbox
expires) wraps it in `call_deadline`: every attempt, retries and waits included, then ends before it,
each attempt's timeout shrinking to the time left, and no retry starts without time to finish.

One ``mailbox_flow.api_call`` log event is emitted per HTTP attempt; it never carries the API key,
headers, bodies or any URL returned by Mailivery.

The async client is the one source (``_async/client.py``); the sync one is generated from it
(``python -m tools.unasync``), and everything without I/O is shared (``_base.py``).
"""

from __future__ import annotations

from ._async.client import AsyncMailiveryClient
from ._base import (
    PATHS,
    ClientBase,
    RateLimiter,
    call_deadline,
    parse_retry_after,
    shared_rate_limiter,
    shared_tls_context,
)
from ._sync.client import MailiveryClient

__all__ = [
    "PATHS",
    "AsyncMailiveryClient",
    "ClientBase",
    "MailiveryClient",
    "RateLimiter",
    "call_deadline",
    "parse_retry_after",
    "shared_rate_limiter",
    "shared_tls_context",
]
