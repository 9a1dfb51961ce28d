"""`MailiveryClient`: the Mailivery calls mailbox_flow needs, over one long-lived `httpx.Client`.

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
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib import metadata
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import stamina

from .._bounds import MAX_ID, is_id
from .._redact import hide_password
from .._security import clear_text_base_url
from ..audit import get_logger
from ..errors import (
    ConfigurationError,
    InvalidInput,
    MailiveryAuthError,
    MailiveryError,
    MailiveryNotFound,
    MailiveryRateLimited,
    MailiveryResponseError,
    MailiveryServerError,
    MailiveryTransportError,
    MailiveryUnavailable,
    MailiveryValidationError,
)
from .schemas import (
    DEFAULT_BASE_URL,
    Campaign,
    ConnectResult,
    is_loopback_host,
    validate_connect,
    validate_meta,
)

__all__ = [
    "PATHS",
    "MailiveryClient",
    "RateLimiter",
    "call_deadline",
    "parse_retry_after",
    "shared_rate_limiter",
]

log = get_logger("mailbox_flow.mailivery.client")

#: Every path this client calls, relative to the base URL (mailivery-api.md §2.1 and §6.6).
PATHS: Final[Mapping[str, str]] = {
    "connect_microsoft": "/campaigns/microsoft",
    "list_campaigns": "/campaigns",
    "get_campaign": "/campaigns/{campaign_id}",
    "delete_campaign": "/campaigns/{campaign_id}",
    "start_warmup": "/campaigns/{campaign_id}/start-warmup",
    "resume_warmup": "/campaigns/{campaign_id}/resume-warmup",
    "pause_warmup": "/campaigns/{campaign_id}/pause-warmup",
}

_MAX_ERROR_MESSAGE: Final = 500
_MAX_REQUEST_ID: Final = 200
#: An attempt is not started with less time than this left before the caller's deadline.
_MIN_ATTEMPT_SECONDS: Final = 0.05

_DEADLINE: ContextVar[float | None] = ContextVar("mailbox_flow_call_deadline", default=None)


@contextmanager
def call_deadline(at: float | None) -> Iterator[None]:
    """Calls made inside must be over before ``at`` (a `time.monotonic` value); None: no deadline.

    Each attempt's timeout shrinks to the time left, a retry (or a ``Retry-After`` wait) that could
    not finish in time is not started, and the last error is raised instead: `MailiveryTransportError`
    when not even a first attempt fits. Nested deadlines keep the earliest. Used by the flow so that no
    call of a worker is still in flight once its claim on the mailbox has expired.
    """
    current = _DEADLINE.get()
    if at is not None and current is not None:
        at = min(at, current)
    token = _DEADLINE.set(at if at is not None else current)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _default_user_agent() -> str:
    try:
        return f"mailbox-flow/{metadata.version('mailbox-flow')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "mailbox-flow"


class RateLimiter:
    """At most ``rate_per_second`` acquisitions per second, spaced evenly; thread-safe.

    Each caller reserves the next free slot under a lock and sleeps outside it, so concurrent
    threads queue up fairly without holding the lock while waiting. ``clock`` must be monotonic.
    """

    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (isinstance(rate_per_second, int | float) and math.isfinite(rate_per_second)):
            raise ConfigurationError("rate_per_second must be a finite number")
        if rate_per_second <= 0:
            raise ConfigurationError("rate_per_second must be positive")
        self.rate_per_second = float(rate_per_second)
        self._interval = 1.0 / self.rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = -math.inf

    def __repr__(self) -> str:
        return f"RateLimiter(rate_per_second={self.rate_per_second!r})"

    def slow_down_to(self, rate_per_second: float) -> None:
        """Lower the rate to ``rate_per_second`` (a higher value changes nothing)."""
        if not (isinstance(rate_per_second, int | float) and math.isfinite(rate_per_second)):
            raise ConfigurationError("rate_per_second must be a finite number")
        if rate_per_second <= 0:
            raise ConfigurationError("rate_per_second must be positive")
        with self._lock:
            if rate_per_second < self.rate_per_second:
                self.rate_per_second = float(rate_per_second)
                self._interval = 1.0 / self.rate_per_second

    def acquire(self) -> float:
        """Wait for the next slot; returns the seconds waited (0.0 when none)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


_SHARED_LIMITERS: dict[str, RateLimiter] = {}
_SHARED_LIMITERS_LOCK = threading.Lock()


def _limiter_key(api_key: str, base_url: str) -> str:
    """A digest of (base URL, API key): the registry never holds the key itself."""
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key.strip()}".encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    if cert_file:
        return ssl.create_default_context(cafile=cert_file)
    if cert_dir:
        return ssl.create_default_context(capath=cert_dir)
    return httpx.create_ssl_context()


def shared_tls_context() -> ssl.SSLContext:
    """The process's TLS context for Mailivery connections, built once (per ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` setting) and shared by every `MailiveryClient`.

    It verifies certificates against certifi's bundle, or the file or directory those variables name,
    as httpx does by default (an unreadable one is a `ConfigurationError`). Loading a bundle costs tens
    of milliseconds, which httpx would pay again for every new client; an `ssl.SSLContext` is safe to
    share between threads and clients.
    """
    cert_file = os.environ.get("SSL_CERT_FILE") or None
    cert_dir = os.environ.get("SSL_CERT_DIR") or None
    try:
        return _tls_context(cert_file, cert_dir)
    except (OSError, ssl.SSLError) as exc:
        where = f"SSL_CERT_FILE={cert_file}" if cert_file else f"SSL_CERT_DIR={cert_dir}"
        raise ConfigurationError(
            f"cannot load the certificates for Mailivery's TLS connections from {where}: {exc}"
        ) from None


def shared_rate_limiter(
    api_key: str,
    base_url: str,
    rate_per_second: float,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> RateLimiter:
    """The process-wide `RateLimiter` for one API key at one base URL, created on first use.

    Every `MailiveryClient` of the process for the same key and base URL shares it (unless it was given
    a limiter of its own), so several clients together stay under the rate. When clients ask for
    different rates the lowest one wins. ``clock``/``sleep`` only apply when the limiter is created
    (tests use them to drive a fake clock).
    """
    key = _limiter_key(api_key, base_url)
    with _SHARED_LIMITERS_LOCK:
        limiter = _SHARED_LIMITERS.get(key)
        if limiter is None:
            limiter = RateLimiter(
                rate_per_second, clock=clock or time.monotonic, sleep=sleep or time.sleep
            )
            _SHARED_LIMITERS[key] = limiter
            return limiter
    limiter.slow_down_to(rate_per_second)
    return limiter


def _forget_shared_rate_limiters() -> None:
    """Drop every shared limiter (tests only)."""
    with _SHARED_LIMITERS_LOCK:
        _SHARED_LIMITERS.clear()


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


class _Retryable(Exception):
    """Internal: a retryable failure carrying the typed error to raise after the last attempt."""

    def __init__(self, error: MailiveryUnavailable, wait: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait

    def __repr__(self) -> str:
        return f"{type(self.error).__name__}({str(self.error)!r})"


class _OutOfTime(Exception):
    """Internal: the caller's deadline leaves no time for another attempt."""


def _check_campaign_id(campaign_id: Any) -> int:
    if not is_id(campaign_id):
        raise InvalidInput("campaign_id", f"must be an integer from 1 to {MAX_ID}")
    return campaign_id


def _check_request_id(request_id: Any) -> str:
    if request_id is None:
        return str(uuid.uuid4())
    if (
        not isinstance(request_id, str)
        or not 0 < len(request_id) <= _MAX_REQUEST_ID
        or not request_id.isascii()
        or not request_id.isprintable()
    ):
        raise InvalidInput("request_id", f"must be 1-{_MAX_REQUEST_ID} printable ASCII characters")
    return request_id


def _json_or_none(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


class _Answer:
    """A 2xx response plus the call's context, to build `MailiveryResponseError` from."""

    __slots__ = ("method", "path", "request_id", "response")

    def __init__(self, response: httpx.Response, method: str, path: str, request_id: str) -> None:
        self.response = response
        self.method = method
        self.path = path
        self.request_id = request_id

    def json(self) -> Any:
        return _json_or_none(self.response)

    def error(self, message: str) -> MailiveryResponseError:
        return MailiveryResponseError(
            message,
            status_code=self.response.status_code,
            request_id=self.request_id,
            method=self.method,
            path=self.path,
        )


def _unwrap(payload: Any) -> Any:
    """``payload["data"]`` when ``payload`` is an object with an object/array ``data``."""
    if isinstance(payload, Mapping) and isinstance(payload.get("data"), Mapping | list):
        return payload["data"]
    return payload


class MailiveryClient:
    """A small, safe client for Mailivery's campaign API (one per API key, shared by threads)."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        rate_per_second: float | None = 4.0,
        request_id_header: str = "X-Request-ID",
        max_attempts: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        user_agent: str | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError("the Mailivery API key is empty")
        api_key = api_key.strip()
        if not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise ConfigurationError("the Mailivery API key contains invalid characters")
        base_url = self._check_base_url(base_url)
        if not isinstance(request_id_header, str) or not request_id_header.strip():
            raise ConfigurationError("request_id_header must be a header name")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError("max_attempts must be an integer >= 1")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigurationError("timeout must be a positive number of seconds")
        if not (0 <= backoff_initial <= backoff_max and math.isfinite(backoff_max)):
            raise ConfigurationError("backoff must satisfy 0 <= backoff_initial <= backoff_max")
        self._api_key = api_key
        self.base_url = base_url
        if rate_limiter is None and rate_per_second:
            rate_limiter = shared_rate_limiter(api_key, base_url, rate_per_second)
        self.timeout = float(timeout)
        # Only a local simulator reached over loopback http may hand out http consent URLs.
        base_parts = urlsplit(base_url)
        self._allow_loopback_http = base_parts.scheme == "http" and is_loopback_host(
            base_parts.hostname
        )
        self.request_id_header = request_id_header.strip()
        self.max_attempts = max_attempts
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.rate_limiter = rate_limiter
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            verify=shared_tls_context(),
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": user_agent or _default_user_agent(),
            },
        )

    @staticmethod
    def _check_base_url(base_url: Any) -> str:
        if not isinstance(base_url, str):
            raise ConfigurationError("base_url must be a string")
        try:
            parts = urlsplit(base_url.strip())
            host = parts.hostname
        except ValueError:
            raise ConfigurationError("base_url is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ConfigurationError("base_url must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ConfigurationError("base_url must not have a query string or fragment")
        problem = clear_text_base_url(base_url)
        if problem is not None:
            raise ConfigurationError(problem)
        return base_url.strip().rstrip("/")

    def __repr__(self) -> str:
        return f"MailiveryClient(base_url={hide_password(self.base_url)!r})"

    def __enter__(self) -> MailiveryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HTTP connection pool (idempotent)."""
        self._http.close()

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._http.is_closed

    # -- public calls ---------------------------------------------------------------------------

    def connect_microsoft(
        self,
        *,
        first_name: str,
        email: str,
        last_name: str | None = None,
        email_per_day: int = 40,
        response_rate: int = 30,
        meta: Mapping[str, str] | None = None,
        owner_email: str | None = None,
        timezone: str | None = None,
        tags: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> ConnectResult:
        """``POST /campaigns/microsoft`` (multipart): mint the OAuth consent URL for a mailbox."""
        fields = validate_connect(
            first_name=first_name,
            last_name=last_name,
            email=email,
            email_per_day=email_per_day,
            response_rate=response_rate,
            owner_email=owner_email,
            timezone=timezone,
            tags=tags,
        )
        for key, value in validate_meta(meta).items():
            fields[f"meta[{key}]"] = value
        rid = _check_request_id(request_id)
        # Every field as a filename-less part: httpx then always sends multipart/form-data.
        parts = [(name, (None, value.encode("utf-8"))) for name, value in fields.items()]
        answer = self._call("POST", "connect_microsoft", request_id=rid, files=parts)
        try:
            return ConnectResult.from_api(
                answer.json(), allow_loopback_http=self._allow_loopback_http
            )
        except MailiveryResponseError as exc:
            raise answer.error(exc.message) from None

    def get_campaign(self, campaign_id: int, *, request_id: str | None = None) -> Campaign:
        """``GET /campaigns/{id}``: one campaign (``data`` envelope or bare)."""
        cid = _check_campaign_id(campaign_id)
        rid = _check_request_id(request_id)
        answer = self._call("GET", "get_campaign", campaign_id=cid, request_id=rid)
        payload = _unwrap(answer.json())
        if isinstance(payload, Mapping) and isinstance(payload.get("campaign"), Mapping):
            payload = payload["campaign"]
        if not isinstance(payload, Mapping):
            raise answer.error("the campaign response is not a JSON object")
        try:
            return Campaign.from_api(payload)
        except MailiveryResponseError as exc:
            raise answer.error(exc.message) from None

    def list_campaigns(self, *, request_id: str | None = None) -> list[Campaign]:
        """``GET /campaigns``: every campaign of the account (entries without an id are skipped)."""
        rid = _check_request_id(request_id)
        answer = self._call("GET", "list_campaigns", request_id=rid)
        items = self._campaign_items(answer.json())
        if items is None:
            raise answer.error("the campaign list response has no list")
        campaigns: list[Campaign] = []
        for item in items:
            try:
                campaigns.append(Campaign.from_api(item))
            except MailiveryResponseError:
                continue
        return campaigns

    @staticmethod
    def _campaign_items(payload: Any) -> list[Any] | None:
        candidates = [payload]
        if isinstance(payload, Mapping):
            data = payload.get("data")
            candidates += [data, payload.get("campaigns")]
            if isinstance(data, Mapping):
                candidates += [data.get("data"), data.get("campaigns")]
        for candidate in candidates:
            if isinstance(candidate, list):
                return candidate
        return None

    def start_warmup(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/start-warmup`` (Mailivery checks SMTP/IMAP first)."""
        return self._simple("PATCH", "start_warmup", campaign_id, request_id)

    def resume_warmup(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/resume-warmup``: resume a paused campaign."""
        return self._simple("PATCH", "resume_warmup", campaign_id, request_id)

    def pause_warmup(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/pause-warmup``."""
        return self._simple("PATCH", "pause_warmup", campaign_id, request_id)

    def delete_campaign(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``DELETE /campaigns/{id}`` (a retried delete may answer 404: the first one worked)."""
        return self._simple("DELETE", "delete_campaign", campaign_id, request_id)

    def _simple(
        self, method: str, operation: str, campaign_id: int, request_id: str | None
    ) -> dict[str, Any]:
        cid = _check_campaign_id(campaign_id)
        rid = _check_request_id(request_id)
        answer = self._call(method, operation, campaign_id=cid, request_id=rid)
        payload = _unwrap(answer.json())
        return (
            {str(key): value for key, value in payload.items()}
            if isinstance(payload, Mapping)
            else {}
        )

    # -- transport, retries, errors -------------------------------------------------------------

    def _retry_hook(self, exc: Exception) -> bool | float:
        """stamina's ``on=``: retry `_Retryable`; a float means "wait exactly this long"."""
        if not isinstance(exc, _Retryable):
            return False
        if exc.wait is None:
            return True
        return min(max(exc.wait, 0.0), self.backoff_max)

    def _deadline_hook(self, deadline: float) -> Callable[[Exception], bool | float]:
        """`_retry_hook`, except that no retry is planned whose wait would end past ``deadline``."""
        failures = 0

        def hook(exc: Exception) -> bool | float:
            nonlocal failures
            decision = self._retry_hook(exc)
            if decision is False:
                return False
            failures += 1
            if stamina.is_testing():  # no real waiting in tests: only the attempt itself must fit
                wait = 0.0
            elif isinstance(decision, float):
                wait = decision
            else:  # stamina's own exponential backoff, without its jitter: a lower bound
                wait = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
            if deadline - time.monotonic() - wait < _MIN_ATTEMPT_SECONDS:
                return False
            return decision

        return hook

    def _call(
        self,
        method: str,
        operation: str,
        *,
        request_id: str,
        campaign_id: int | None = None,
        files: list[tuple[str, tuple[None, bytes]]] | None = None,
    ) -> _Answer:
        if self._http.is_closed:
            raise RuntimeError("this MailiveryClient is closed")
        path = PATHS[operation].format(campaign_id=campaign_id)
        deadline = _DEADLINE.get()
        last: list[MailiveryUnavailable] = []
        try:
            for attempt in stamina.retry_context(
                on=self._retry_hook if deadline is None else self._deadline_hook(deadline),
                attempts=self.max_attempts,
                timeout=None,
                wait_initial=self.backoff_initial,
                wait_max=self.backoff_max,
                wait_jitter=self.backoff_initial,
            ):
                with attempt:
                    try:
                        response = self._attempt(
                            method, path, operation, request_id, attempt.num, files, deadline
                        )
                    except _Retryable as exc:
                        last.append(exc.error)
                        raise
                    except _OutOfTime:
                        if last:  # the previous attempt's failure is the answer
                            raise last[-1] from last[-1].__cause__
                        raise MailiveryTransportError(
                            "no time left to call Mailivery before the caller's deadline",
                            request_id=request_id, method=method, path=path,
                        ) from None
                    return _Answer(response, method, path, request_id)
        except _Retryable as exc:
            raise exc.error from exc.error.__cause__
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self,
        method: str,
        path: str,
        operation: str,
        request_id: str,
        attempt: int,
        files: list[tuple[str, tuple[None, bytes]]] | None,
        deadline: float | None = None,
    ) -> httpx.Response:
        if deadline is not None and deadline - time.monotonic() < _MIN_ATTEMPT_SECONDS:
            raise _OutOfTime
        if self.rate_limiter is not None:
            self.rate_limiter.acquire()
        timeout: float | None = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left < _MIN_ATTEMPT_SECONDS:
                raise _OutOfTime
            timeout = min(self.timeout, left)
        context: dict[str, Any] = {"request_id": request_id, "method": method, "path": path}
        started = time.perf_counter()
        try:
            response = self._http.request(
                method,
                path,
                headers={self.request_id_header: request_id},
                files=files,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            self._log(operation, context, None, attempt, started, error=type(exc).__name__)
            error = MailiveryTransportError(
                self._scrub(f"could not reach Mailivery ({type(exc).__name__}: {exc})"), **context
            )
            error.__cause__ = exc
            raise _Retryable(error, None) from exc
        except httpx.HTTPError as exc:
            self._log(operation, context, None, attempt, started, error=type(exc).__name__)
            raise MailiveryResponseError(
                self._scrub(f"unreadable answer from Mailivery ({type(exc).__name__})"), **context
            ) from exc
        status = response.status_code
        self._log(operation, context, status, attempt, started)
        if 200 <= status < 300:
            return response
        raise self._status_error(response, context)

    def _log(
        self,
        operation: str,
        context: Mapping[str, Any],
        status: int | None,
        attempt: int,
        started: float,
        *,
        error: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            **context,
            "operation": operation,
            "status": status,
            "attempt": attempt,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if error is not None:
            fields["error"] = error
        if status is not None and 200 <= status < 300:
            log.info("mailbox_flow.api_call", **fields)
        else:
            log.warning("mailbox_flow.api_call", **fields)

    def _scrub(self, text: str) -> str:
        text = text.replace(self._api_key, "***")
        return text[:_MAX_ERROR_MESSAGE]

    def _error_envelope(self, response: httpx.Response) -> tuple[str | None, str | None]:
        payload = _json_or_none(response)
        if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
            payload = {**payload, **payload["error"]}
        if not isinstance(payload, Mapping):
            return None, None
        code = payload.get("code")
        code_text = str(code).strip()[:100] if isinstance(code, str | int) and code != "" else None
        message = payload.get("message")
        message_text = message.strip() if isinstance(message, str) and message.strip() else None
        errors = payload.get("errors")
        if isinstance(errors, Mapping) and errors:
            details = []
            for name, problems in list(errors.items())[:10]:
                first = problems[0] if isinstance(problems, list) and problems else problems
                details.append(f"{name}: {first}" if isinstance(first, str) else str(name))
            message_text = f"{message_text or 'invalid input'} ({'; '.join(details)})"
        return code_text or None, self._scrub(message_text) if message_text else None

    def _status_error(self, response: httpx.Response, context: Mapping[str, Any]) -> Exception:
        status = response.status_code
        code, message = self._error_envelope(response)
        text = message or f"Mailivery answered HTTP {status} {response.reason_phrase}".strip()
        kwargs: dict[str, Any] = {**context, "code": code, "status_code": status}
        if status in (401, 403):
            return MailiveryAuthError(text, **kwargs)
        if status == 404:
            return MailiveryNotFound(text, **kwargs)
        if status in (400, 409, 422):
            return MailiveryValidationError(text, **kwargs)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return _Retryable(
                MailiveryRateLimited(text, retry_after=retry_after, **kwargs), retry_after
            )
        if 500 <= status < 600:
            wait = parse_retry_after(response.headers.get("Retry-After")) if status == 503 else None
            return _Retryable(MailiveryServerError(text, **kwargs), wait)
        return MailiveryError(text, **kwargs)
