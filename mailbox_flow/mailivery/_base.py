"""What `MailiveryClient` and `AsyncMailiveryClient` share: everything but the I/O.

Input checks, the request id, the rate limiter (one per API key and base URL in a process, shared by
both faces), the caller's deadline (`call_deadline`), the retry decisions given to `stamina`, the
mapping of Mailivery's ``{code, message}`` envelope to typed errors, response parsing and the
``mailbox_flow.api_call`` log event. The two clients (``_async/client.py`` is the source,
``_sync/client.py`` is generated from it by ``tools/unasync.py``) only send requests and wait.
"""


from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib import metadata
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
    "ClientBase",
    "RateLimiter",
    "call_deadline",
    "parse_retry_after",
    "shared_rate_limiter",
    "shared_tls_context",
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

    Each caller reserves the next free slot under a lock and waits outside it, so concurrent threads
    and tasks queue up fairly without holding the lock while waiting (`acquire` sleeps, `aacquire`
    awaits); one limiter serves sync and async clients alike. ``clock`` must be monotonic;
    ``sleep``/``asleep`` (default `time.sleep`/`asyncio.sleep`) are the waits, replaceable in tests.
    """

    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not (isinstance(rate_per_second, int | float) and math.isfinite(rate_per_second)):
            raise ConfigurationError("rate_per_second must be a finite number")
        if rate_per_second <= 0:
            raise ConfigurationError("rate_per_second must be positive")
        self.rate_per_second = float(rate_per_second)
        self._interval = 1.0 / self.rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
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

    def reserve(self) -> float:
        """Take the next slot without waiting; returns the seconds until it (0.0: now)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        return max(0.0, slot - now)

    def acquire(self) -> float:
        """Wait for the next slot (blocking the thread); returns the seconds waited (0.0 when none)."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    async def aacquire(self) -> float:
        """Wait for the next slot without blocking the event loop; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            await (self._asleep or asyncio.sleep)(wait)
        return wait


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


class ClientBase:
    """The part of a Mailivery client that does no I/O: configuration, checks, decisions, parsing.

    `MailiveryClient` and `AsyncMailiveryClient` add the HTTP client (`_make_http`), the calls and the
    waiting. Constructor arguments are those of both clients.
    """

    _http: Any

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
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
        self._http = self._make_http(transport, {
            "base_url": base_url,
            "verify": shared_tls_context(),
            "timeout": timeout,
            "follow_redirects": False,
            "headers": {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": user_agent or _default_user_agent(),
            },
        })

    def _make_http(self, transport: Any, options: dict[str, Any]) -> Any:
        """The face's httpx client (``httpx.Client`` or ``httpx.AsyncClient``)."""
        raise NotImplementedError

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
        return f"{type(self).__name__}(base_url={hide_password(self.base_url)!r})"


    @property
    def closed(self) -> bool:
        """True once the client was closed."""
        return bool(self._http.is_closed)

    # -- requests and answers (no I/O) ---------------------------------------------------------

    def _path(self, operation: str, campaign_id: int | None) -> str:
        if self._http.is_closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        return PATHS[operation].format(campaign_id=campaign_id)

    @staticmethod
    def _connect_parts(
        *,
        first_name: str,
        email: str,
        last_name: str | None,
        email_per_day: int,
        response_rate: int,
        meta: Mapping[str, str] | None,
        owner_email: str | None,
        timezone: str | None,
        tags: Sequence[str] | None,
    ) -> list[tuple[str, tuple[None, bytes]]]:
        """The multipart form of a connect call, validated (`InvalidInput` before any traffic)."""
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
        # Every field as a filename-less part: httpx then always sends multipart/form-data.
        return [(name, (None, value.encode("utf-8"))) for name, value in fields.items()]

    def _connect_result(self, answer: _Answer) -> ConnectResult:
        try:
            return ConnectResult.from_api(
                answer.json(), allow_loopback_http=self._allow_loopback_http
            )
        except MailiveryResponseError as exc:
            raise answer.error(exc.message) from None

    @staticmethod
    def _campaign_result(answer: _Answer) -> Campaign:
        payload = _unwrap(answer.json())
        if isinstance(payload, Mapping) and isinstance(payload.get("campaign"), Mapping):
            payload = payload["campaign"]
        if not isinstance(payload, Mapping):
            raise answer.error("the campaign response is not a JSON object")
        try:
            return Campaign.from_api(payload)
        except MailiveryResponseError as exc:
            raise answer.error(exc.message) from None

    @classmethod
    def _campaign_list(cls, answer: _Answer) -> list[Campaign]:
        items = cls._campaign_items(answer.json())
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


    @staticmethod
    def _simple_result(answer: _Answer) -> dict[str, Any]:
        payload = _unwrap(answer.json())
        return (
            {str(key): value for key, value in payload.items()}
            if isinstance(payload, Mapping)
            else {}
        )

    # -- retries, deadlines, errors -------------------------------------------------------------

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


    def _retry_options(self, deadline: float | None) -> dict[str, Any]:
        """The arguments of `stamina.retry_context` for one call."""
        return {
            "on": self._retry_hook if deadline is None else self._deadline_hook(deadline),
            "attempts": self.max_attempts,
            "timeout": None,
            "wait_initial": self.backoff_initial,
            "wait_max": self.backoff_max,
            "wait_jitter": self.backoff_initial,
        }

    @staticmethod
    def _out_of_time(last: list[MailiveryUnavailable], context: Mapping[str, Any]) -> Exception:
        """What to raise when the caller's deadline leaves no time for another attempt."""
        if last:  # the previous attempt's failure is the answer
            error = last[-1]
            return error
        return MailiveryTransportError(
            "no time left to call Mailivery before the caller's deadline", **context
        )

    @staticmethod
    def _attempt_timeout(deadline: float | None) -> float | None:
        """The timeout of one attempt under the caller's deadline (None: the client's own);
        `_OutOfTime` when too little time is left to start one."""
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left < _MIN_ATTEMPT_SECONDS:
            raise _OutOfTime
        return left

    def _transport_failure(self, exc: httpx.HTTPError, operation: str, context: Mapping[str, Any],
                           attempt: int, started: float) -> Exception:
        """The error for an attempt that got no answer: retryable when the transport failed."""
        self._log(operation, context, None, attempt, started, error=type(exc).__name__)
        if isinstance(exc, httpx.TransportError):
            error = MailiveryTransportError(
                self._scrub(f"could not reach Mailivery ({type(exc).__name__}: {exc})"), **context
            )
            error.__cause__ = exc
            return _Retryable(error, None)
        return MailiveryResponseError(
            self._scrub(f"unreadable answer from Mailivery ({type(exc).__name__})"), **context
        )

    def _answered(self, response: httpx.Response, operation: str, context: Mapping[str, Any],
                  attempt: int, started: float) -> httpx.Response:
        """``response`` when it is a 2xx, else raise its typed error (`_Retryable` when retryable)."""
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

