"""In-memory state of the Mailivery simulator: campaigns, consents, call log, faults, webhooks.

Everything here is plain Python and thread-safe (one re-entrant lock for the campaigns and consents,
one condition for the webhook outbox, one lock inside `Faults`), so tests may drive the simulator
from their own thread while the HTTP app (see `app.py`) serves requests on uvicorn's thread.

Status rules (the same for the HTTP API and the Python helpers), `status_code` in
{"pending", "active", "paused"}:

=================  =====================  ===============================================  =====
call               from                   result                                           HTTP
=================  =====================  ===============================================  =====
start-warmup       pending                connection check, then active                    200
start-warmup       active                 unchanged (idempotent, no check)                 200
start-warmup       paused                 422 ``INVALID_CAMPAIGN_STATUS`` (use resume)     422
resume-warmup      paused, pending        connection check, then active                    200
resume-warmup      active                 unchanged (idempotent, no check)                 200
pause-warmup       active                 paused (no check)                                200
pause-warmup       paused                 unchanged (idempotent)                           200
pause-warmup       pending                422 ``INVALID_CAMPAIGN_STATUS`` (never started)  422
=================  =====================  ===============================================  =====

The connection check fails (422 ``CONNECTION_CHECK_FAILED``, status unchanged) while the campaign
has a connection problem (`Simulator.connection_problem`, cleared by `Simulator.reconnect`) or
while a `Faults.start_fails` rule for its email or id has attempts left (one used per failure).

Webhooks are delivered by one background thread, in emission order, one POST each, no retries; the
outcome of every attempt is kept in `Simulator.webhooks_sent`. Account payloads follow
mailivery-api.md §3: `campaign.pending` (provider_type, tags, meta as a query string),
`campaign.created` (meta null when none), `campaign.updated` (meta ""), `campaign.deleted`
(`type` holds the campaign's provider type instead of `provider_type`; meta null) and
`campaign.connection_problem` (the real type string is undocumented; the simulator picks this one).
"""

from __future__ import annotations

import copy
import json
import random
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import httpx

from ..mailivery.client import shared_tls_context

__all__ = [
    "CAMPAIGN_STATUSES",
    "Call",
    "CampaignNotFound",
    "ConsentNotFound",
    "Faults",
    "SentWebhook",
    "SimulatedApiError",
    "Simulator",
    "meta_query_string",
]

CAMPAIGN_STATUSES: tuple[str, ...] = ("pending", "active", "paused")
DEFAULT_TIMEZONE = "America/Chicago"
DEFAULT_EMAIL_PER_DAY = 20
DEFAULT_RESPONSE_RATE = 30
FIRST_CAMPAIGN_ID = 101

_CONSENT_PATH = re.compile(r"/oauth/consent/([^/?#]+)")


# --------------------------------------------------------------------------------------------------
# Records and errors
# --------------------------------------------------------------------------------------------------


class Call(NamedTuple):
    """One API request the simulator answered: ``(method, path, request_id, status)``."""

    method: str
    path: str
    request_id: str | None
    status: int


class SentWebhook(NamedTuple):
    """One webhook delivery attempt: the exact body, and the receiver's status code or an error."""

    body: bytes
    result: int | str

    def __repr__(self) -> str:  # the body carries the correlation token: its size only
        return f"SentWebhook(body=<{len(self.body)} bytes>, result={self.result!r})"

    @property
    def ok(self) -> bool:
        """True when the receiver answered 2xx."""
        return isinstance(self.result, int) and 200 <= self.result < 300

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class SimulatedApiError(Exception):
    """An error the fake API answers with the documented ``{code, message}`` envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class CampaignNotFound(SimulatedApiError, LookupError):
    """No campaign with that id (HTTP 404 ``CAMPAIGN_NOT_FOUND``)."""

    def __init__(self, campaign_id: object) -> None:
        super().__init__(404, "CAMPAIGN_NOT_FOUND", f"Campaign {campaign_id} was not found.")
        self.campaign_id = campaign_id


class ConsentNotFound(LookupError):
    """The consent token is unknown or was already used."""


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


@dataclass
class _FailRule:
    remaining: int
    status: int
    retry_after: float | None
    path_contains: str | None
    method: str | None
    after_effect: bool


class InjectedFailure(NamedTuple):
    """A failure the API must answer instead of (or after) doing the work."""

    status: int
    retry_after: float | None
    after_effect: bool


def _as_int(
    value: object, name: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _as_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not 0 <= seconds <= 3600:
        raise ValueError(f"{name} must be between 0 and 3600 seconds, got {value}")
    return seconds


def _as_opt_str(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{name} must be a string or null, got {value!r}")


def _as_status(value: object) -> int:
    return _as_int(value, "status", 400, 599)


def _matches(method: str, path: str, want_method: str | None, path_contains: str | None) -> bool:
    if want_method is not None and want_method.upper() != method.upper():
        return False
    return path_contains is None or path_contains in path


class Faults:
    """Fault injection for the API and the webhook deliveries. All methods are thread-safe.

    API faults apply to ``/api/v1`` requests after authentication (a 401 stays a 401). Webhook
    faults apply when an event is emitted. `clear` removes every fault; held (reordered) webhooks
    are then released.
    """

    def __init__(self, on_release: Callable[[], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_release = on_release
        self._rules: list[_FailRule] = []
        self._error_p = 0.0
        self._error_statuses: tuple[int, ...] = (429, 500)
        self._error_path: str | None = None
        self._rng = random.Random()
        self._latency = 0.0
        self._latency_path: str | None = None
        self._start_fails: dict[str | int, int] = {}
        self._drop = 0
        self._duplicate = 1
        self._delay = 0.0
        self._reorder = False

    # -- API faults -------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        retry_after: float | None = None,
        path_contains: str | None = None,
        *,
        method: str | None = None,
        after_effect: bool = False,
    ) -> None:
        """Answer the next `n` matching API calls with `status` and the ``{code, message}`` body.

        429 uses code ``RATE_LIMIT_EXCEEDED``; `retry_after` adds a ``Retry-After`` header (whole
        seconds written as an integer, fractions kept, e.g. ``0.2``). `path_contains` and `method`
        narrow which calls match. With `after_effect=True` the call is carried out first and only
        the answer is replaced (the client sees an error although the change happened).
        """
        rule = _FailRule(
            remaining=_as_int(n, "n", 0),
            status=_as_status(status),
            retry_after=None if retry_after is None else _as_seconds(retry_after, "retry_after"),
            path_contains=_as_opt_str(path_contains, "path_contains"),
            method=_as_opt_str(method, "method"),
            after_effect=bool(after_effect),
        )
        if rule.remaining:
            with self._lock:
                self._rules.append(rule)

    def error_rate(
        self,
        p: float,
        statuses: Iterable[int] = (429, 500),
        seed: int | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Fail each API call with probability `p`, choosing a status from `statuses` (seeded)."""
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability between 0 and 1, got {p!r}")
        if isinstance(statuses, str | bytes):
            raise ValueError("statuses must be a list of HTTP status codes")
        chosen = tuple(_as_status(s) for s in statuses)
        if not chosen:
            raise ValueError("statuses must not be empty")
        if seed is not None:
            seed = _as_int(seed, "seed")
        with self._lock:
            self._error_p = float(p)
            self._error_statuses = chosen
            self._error_path = _as_opt_str(path_contains, "path_contains")
            self._rng = random.Random(seed)

    def latency(self, seconds: float, path_contains: str | None = None) -> None:
        """Delay every (matching) API response by `seconds` (0 turns it off)."""
        value = _as_seconds(seconds, "seconds")
        path = _as_opt_str(path_contains, "path_contains")
        with self._lock:
            self._latency = value
            self._latency_path = path

    def start_fails(self, email_or_campaign_id: str | int, times: int = 1) -> None:
        """Make the next `times` connection checks (start/resume-warmup) fail for that mailbox."""
        key = _fault_key(email_or_campaign_id)
        count = _as_int(times, "times", 0)
        with self._lock:
            if count:
                self._start_fails[key] = self._start_fails.get(key, 0) + count
            else:
                self._start_fails.pop(key, None)

    # -- webhook faults ---------------------------------------------------------------------------

    def drop_next_webhooks(self, n: int = 1) -> None:
        """Silently drop the next `n` webhooks (recorded in `Simulator.webhooks_dropped`)."""
        count = _as_int(n, "n", 0)
        with self._lock:
            self._drop += count

    def duplicate_webhooks(self, times: int = 2) -> None:
        """Send every following webhook `times` times (1 turns it off)."""
        count = _as_int(times, "times", 1, 100)
        with self._lock:
            self._duplicate = count

    def delay_webhooks(self, seconds: float) -> None:
        """Deliver every following webhook `seconds` after it was emitted (0 turns it off)."""
        value = _as_seconds(seconds, "seconds")
        with self._lock:
            self._delay = value

    def reorder_webhooks(self, enabled: bool = True) -> None:
        """Hold webhooks; `Simulator.flush_webhooks` (or switching off) sends them newest first."""
        with self._lock:
            was = self._reorder
            self._reorder = bool(enabled)
        if was and not enabled and self._on_release is not None:
            self._on_release()

    def clear(self) -> None:
        """Remove every fault (held webhooks are released, newest first)."""
        with self._lock:
            was_reordering = self._reorder
            self._rules.clear()
            self._error_p = 0.0
            self._error_statuses = (429, 500)
            self._error_path = None
            self._rng = random.Random()
            self._latency = 0.0
            self._latency_path = None
            self._start_fails.clear()
            self._drop = 0
            self._duplicate = 1
            self._delay = 0.0
            self._reorder = False
        if was_reordering and self._on_release is not None:
            self._on_release()

    def snapshot(self) -> dict[str, Any]:
        """The active faults, JSON-ready."""
        with self._lock:
            return {
                "fail_next": [
                    {
                        "remaining": r.remaining,
                        "status": r.status,
                        "retry_after": r.retry_after,
                        "path_contains": r.path_contains,
                        "method": r.method,
                        "after_effect": r.after_effect,
                    }
                    for r in self._rules
                ],
                "error_rate": {
                    "p": self._error_p,
                    "statuses": list(self._error_statuses),
                    "path_contains": self._error_path,
                },
                "latency": {"seconds": self._latency, "path_contains": self._latency_path},
                "start_fails": {str(k): v for k, v in self._start_fails.items()},
                "drop_next_webhooks": self._drop,
                "duplicate_webhooks": self._duplicate,
                "delay_webhooks": self._delay,
                "reorder_webhooks": self._reorder,
            }

    # -- used by the simulator --------------------------------------------------------------------

    def latency_for(self, method: str, path: str) -> float:
        """Seconds to wait before answering this call."""
        with self._lock:
            if self._latency and _matches(method, path, None, self._latency_path):
                return self._latency
            return 0.0

    def pick_failure(self, method: str, path: str) -> InjectedFailure | None:
        """The failure to inject for this call, if any (consumes one `fail_next` attempt)."""
        with self._lock:
            for rule in self._rules:
                if _matches(method, path, rule.method, rule.path_contains):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return InjectedFailure(rule.status, rule.retry_after, rule.after_effect)
            if (
                self._error_p
                and _matches(method, path, None, self._error_path)
                and self._rng.random() < self._error_p
            ):
                return InjectedFailure(self._rng.choice(self._error_statuses), None, False)
            return None

    def consume_start_failure(self, campaign_id: int, email: str) -> bool:
        """True if a `start_fails` rule matches this campaign (uses one attempt)."""
        with self._lock:
            for key in (campaign_id, email.strip().lower()):
                left = self._start_fails.get(key, 0)
                if left > 0:
                    if left == 1:
                        del self._start_fails[key]
                    else:
                        self._start_fails[key] = left - 1
                    return True
            return False

    def webhook_plan(self) -> tuple[int, float, bool]:
        """For the next webhook: (copies to send, 0 = drop; delay in seconds; hold it)."""
        with self._lock:
            if self._drop > 0:
                self._drop -= 1
                return 0, 0.0, False
            return self._duplicate, self._delay, self._reorder


def _fault_key(value: str | int) -> str | int:
    if isinstance(value, bool):
        raise ValueError("email_or_campaign_id must be an email or a campaign id")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if text.isdigit() else text.lower()
    raise ValueError(f"email_or_campaign_id must be an email or a campaign id, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _now() -> str:
    """Laravel-style UTC timestamp, e.g. ``2024-05-01T12:00:00.000000Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def meta_query_string(
    meta: Mapping[str, object] | str | None,
    tags: Iterable[str] = (),
    include_tags: bool = False,
) -> str:
    """Re-serialise a partner's meta the way Mailivery echoes it: a URL query string.

    A mapping becomes ``urlencode(meta)`` (``{"mailbox_flow_token": "abc"}`` ->
    ``"mailbox_flow_token=abc"``); a string is echoed as given; ``None`` becomes ``""``. With
    `include_tags` the tags are appended like the documented example (``tags=a,%20b``).
    """
    if meta is None:
        text = ""
    elif isinstance(meta, str):
        text = meta
    else:
        text = urllib.parse.urlencode(
            [(str(k), "" if v is None else str(v)) for k, v in meta.items()]
        )
    tag_list = list(tags)
    if include_tags and tag_list:
        encoded = "tags=" + urllib.parse.quote(", ".join(tag_list), safe=",")
        text = f"{text}&{encoded}" if text else encoded
    return text


def _consent_token(url_or_token: str) -> str:
    text = url_or_token.strip()
    match = _CONSENT_PATH.search(text)
    if match:
        return urllib.parse.unquote(match.group(1))
    return text


@dataclass
class _Consent:
    token: str
    state: str
    kind: Literal["connect", "reconnect"]
    email: str
    first_name: str
    last_name: str | None
    email_per_day: int = DEFAULT_EMAIL_PER_DAY
    response_rate: int = DEFAULT_RESPONSE_RATE
    timezone: str = DEFAULT_TIMEZONE
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] | str | None = None
    owner_email: str | None = None
    campaign_id: int | None = None
    created_at: str = field(default_factory=_now)


@dataclass
class _Private:
    """What Mailivery knows about a campaign but does not show in the campaign object."""

    meta: dict[str, str] | str | None
    owner_email: str | None
    provider_type: str


@dataclass
class _Outgoing:
    body: bytes
    not_before: float


# --------------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------------


class Simulator:
    """The fake Mailivery account: state, call log, faults and the webhook outbox.

    `public_url` is the simulator's own base URL (``http://127.0.0.1:PORT``), used to build consent
    and dashboard URLs; `SimulatorServer` fills it in when it starts. `webhook_url` may be changed
    at any time; each delivery reads it when it is sent.
    """

    def __init__(
        self,
        api_key: str = "sim-key",
        webhook_url: str | None = None,
        public_url: str | None = None,
        *,
        webhook_timeout: float = 5.0,
        meta_includes_tags: bool = False,
        request_id_header: str = "X-Request-ID",
    ) -> None:
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.public_url = public_url
        self.webhook_timeout = webhook_timeout
        self.meta_includes_tags = meta_includes_tags
        self.request_id_header = request_id_header
        self.faults = Faults(on_release=self.flush_webhooks)
        self.calls: list[Call] = []
        self.webhooks_sent: list[SentWebhook] = []
        self.webhooks_dropped: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._campaigns: dict[int, dict[str, Any]] = {}
        self._private: dict[int, _Private] = {}
        self._consents: dict[str, _Consent] = {}
        self._next_id = FIRST_CAMPAIGN_ID
        self._out = threading.Condition()
        self._outbox: deque[_Outgoing] = deque()
        self._held: list[bytes] = []
        self._in_flight = 0
        self._generation = 0
        self._closing = False
        self._worker: threading.Thread | None = None

    # -- call log ---------------------------------------------------------------------------------

    def record_call(self, call: Call) -> None:
        """Append one answered API request to `calls`."""
        with self._lock:
            self.calls.append(call)

    def count(
        self, method: str | None = None, path_suffix: str = "", status: int | None = None
    ) -> int:
        """Count API calls by `method` (None: any), path ending in `path_suffix`, `status`."""
        with self._lock:
            return sum(
                1
                for c in self.calls
                if (method is None or c.method == method.upper())
                and c.path.endswith(path_suffix)
                and (status is None or c.status == status)
            )

    # -- read -------------------------------------------------------------------------------------

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        """A copy of the campaign object; raises `CampaignNotFound`."""
        with self._lock:
            return copy.deepcopy(self._get(campaign_id))

    def campaigns(self) -> list[dict[str, Any]]:
        """Copies of every campaign, by id."""
        with self._lock:
            return [copy.deepcopy(self._campaigns[k]) for k in sorted(self._campaigns)]

    def consents(self) -> list[dict[str, Any]]:
        """The consents not yet accepted or declined (token, kind, email, campaign_id)."""
        with self._lock:
            return [
                {"token": c.token, "kind": c.kind, "email": c.email, "campaign_id": c.campaign_id}
                for c in self._consents.values()
            ]

    def consent_email(self, url_or_token: str) -> str:
        """The mailbox address a pending consent is for; raises `ConsentNotFound`."""
        with self._lock:
            return self._consent(url_or_token).email

    def _get(self, campaign_id: object) -> dict[str, Any]:
        if isinstance(campaign_id, bool) or not isinstance(campaign_id, int):
            raise CampaignNotFound(campaign_id)
        campaign = self._campaigns.get(campaign_id)
        if campaign is None:
            raise CampaignNotFound(campaign_id)
        return campaign

    def _consent(self, url_or_token: str) -> _Consent:
        consent = self._consents.get(_consent_token(url_or_token))
        if consent is None:
            raise ConsentNotFound("unknown or already used consent token")
        return consent

    # -- connect / consent ------------------------------------------------------------------------

    def connect(
        self,
        *,
        email: str,
        first_name: str,
        last_name: str | None = None,
        email_per_day: int = DEFAULT_EMAIL_PER_DAY,
        response_rate: int = DEFAULT_RESPONSE_RATE,
        timezone: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | str | None = None,
        owner_email: str | None = None,
        base_url: str | None = None,
    ) -> str:
        """What ``POST /campaigns/microsoft`` does after validation: mint a consent URL.

        No campaign exists until the consent is accepted.
        """
        consent = _Consent(
            token=secrets.token_urlsafe(32),
            state=secrets.token_urlsafe(16),
            kind="connect",
            email=email,
            first_name=first_name,
            last_name=last_name,
            email_per_day=email_per_day,
            response_rate=response_rate,
            timezone=timezone or DEFAULT_TIMEZONE,
            tags=list(tags),
            meta=dict(meta) if isinstance(meta, Mapping) else meta,
            owner_email=owner_email,
        )
        with self._lock:
            self._consents[consent.token] = consent
        return self._consent_url(consent, base_url)

    def reconnect_url(self, campaign_id: int, base_url: str | None = None) -> str:
        """A consent URL that, when accepted, reconnects the campaign (Microsoft re-auth)."""
        with self._lock:
            campaign = self._get(campaign_id)
            consent = _Consent(
                token=secrets.token_urlsafe(32),
                state=secrets.token_urlsafe(16),
                kind="reconnect",
                email=campaign["email"],
                first_name=campaign["first_name"],
                last_name=campaign["last_name"],
                campaign_id=campaign_id,
            )
            self._consents[consent.token] = consent
        return self._consent_url(consent, base_url)

    def _base(self, base_url: str | None = None) -> str:
        return (base_url or self.public_url or "http://127.0.0.1").rstrip("/")

    def _consent_url(self, consent: _Consent, base_url: str | None) -> str:
        query = urllib.parse.urlencode({"state": consent.state})
        return f"{self._base(base_url)}/oauth/consent/{consent.token}?{query}"

    def accept(self, url_or_token: str) -> dict[str, Any]:
        """Accept a consent (as the mailbox owner would): returns the campaign, sends the webhook.

        A connect consent creates a campaign in ``pending`` and posts ``campaign.pending``; a
        reconnect consent clears the campaign's connection problem and posts ``campaign.updated``.
        Raises `ConsentNotFound` for an unknown or used token.
        """
        with self._lock:
            consent = self._consent(url_or_token)
            del self._consents[consent.token]
            if consent.kind == "reconnect" and consent.campaign_id is not None:
                if consent.campaign_id not in self._campaigns:
                    raise ConsentNotFound("the campaign of this consent was deleted")
                return self.reconnect(consent.campaign_id)
            return self._create(
                email=consent.email,
                first_name=consent.first_name,
                last_name=consent.last_name,
                email_per_day=consent.email_per_day,
                response_rate=consent.response_rate,
                timezone=consent.timezone,
                tags=consent.tags,
                status="pending",
                meta=consent.meta,
                owner_email=consent.owner_email,
                provider_type="office",
                event="campaign.pending",
            )

    def decline(self, url_or_token: str) -> None:
        """Decline a consent: no campaign, no webhook. Raises `ConsentNotFound`."""
        with self._lock:
            consent = self._consent(url_or_token)
            del self._consents[consent.token]

    # -- campaigns --------------------------------------------------------------------------------

    def create_campaign(
        self,
        email: str,
        first_name: str = "Sim",
        last_name: str | None = None,
        *,
        meta: Mapping[str, str] | str | None = None,
        status: str = "pending",
        send_webhook: bool = True,
        tags: Iterable[str] = (),
        email_per_day: int = DEFAULT_EMAIL_PER_DAY,
        response_rate: int = DEFAULT_RESPONSE_RATE,
        timezone: str = DEFAULT_TIMEZONE,
        provider_type: str = "office",
        event: str | None = None,
    ) -> dict[str, Any]:
        """Create a campaign nobody asked for (e.g. through Mailivery's UI or a stray form).

        Posts `event` when `send_webhook` (default: ``campaign.pending`` for a pending campaign,
        else ``campaign.created``).
        """
        if status not in CAMPAIGN_STATUSES:
            raise ValueError(f"status must be one of {CAMPAIGN_STATUSES}, got {status!r}")
        if event is None:
            event = "campaign.pending" if status == "pending" else "campaign.created"
        with self._lock:
            return self._create(
                email=email,
                first_name=first_name,
                last_name=last_name,
                email_per_day=email_per_day,
                response_rate=response_rate,
                timezone=timezone,
                tags=list(tags),
                status=status,
                meta=dict(meta) if isinstance(meta, Mapping) else meta,
                owner_email=None,
                provider_type=provider_type,
                event=event if send_webhook else None,
            )

    def _create(
        self,
        *,
        email: str,
        first_name: str,
        last_name: str | None,
        email_per_day: int,
        response_rate: int,
        timezone: str,
        tags: list[str],
        status: str,
        meta: dict[str, str] | str | None,
        owner_email: str | None,
        provider_type: str,
        event: str | None,
    ) -> dict[str, Any]:
        campaign_id = self._next_id
        self._next_id += 1
        now = _now()
        campaign: dict[str, Any] = {
            "id": campaign_id,
            "first_name": first_name,
            "last_name": last_name,
            "name": " ".join(p for p in (first_name, last_name) if p),
            "email": email,
            "status_code": status,
            "timezone": timezone,
            "email_per_day": email_per_day,
            "response_rate": response_rate,
            "dashboard_url": f"{self._base()}/dashboard/campaigns/{campaign_id}",
            "created_at": now,
            "updated_at": now,
            "connection_problem": False,
            "tags": list(tags),
        }
        self._campaigns[campaign_id] = campaign
        self._private[campaign_id] = _Private(meta, owner_email, provider_type)
        if event is not None:
            self._emit(event, campaign)
        return copy.deepcopy(campaign)

    def set_status(self, campaign_id: int, status: str) -> dict[str, Any]:
        """Force a status (no checks, no webhook)."""
        if status not in CAMPAIGN_STATUSES:
            raise ValueError(f"status must be one of {CAMPAIGN_STATUSES}, got {status!r}")
        with self._lock:
            campaign = self._get(campaign_id)
            self._touch(campaign, status_code=status)
            return copy.deepcopy(campaign)

    def connection_problem(self, campaign_id: int) -> dict[str, Any]:
        """Mailivery found a connection problem: pause, post ``campaign.connection_problem``."""
        with self._lock:
            campaign = self._get(campaign_id)
            self._touch(campaign, status_code="paused", connection_problem=True)
            self._emit("campaign.connection_problem", campaign)
            return copy.deepcopy(campaign)

    def reconnect(self, campaign_id: int) -> dict[str, Any]:
        """The owner re-authorised the mailbox: clear the problem, post ``campaign.updated``.

        The status is left as it is (a problem-paused campaign stays paused until resumed).
        """
        with self._lock:
            campaign = self._get(campaign_id)
            self._touch(campaign, connection_problem=False)
            self._emit("campaign.updated", campaign)
            return copy.deepcopy(campaign)

    def update_campaign(self, campaign_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply already validated field changes and post ``campaign.updated``."""
        with self._lock:
            campaign = self._get(campaign_id)
            self._touch(campaign, **changes)
            if "first_name" in changes or "last_name" in changes:
                parts = (campaign["first_name"], campaign["last_name"])
                campaign["name"] = " ".join(p for p in parts if p)
            self._emit("campaign.updated", campaign)
            return copy.deepcopy(campaign)

    def delete_campaign(self, campaign_id: int, send_webhook: bool = True) -> dict[str, Any]:
        """Delete a campaign (posts ``campaign.deleted``); returns the deleted object."""
        with self._lock:
            campaign = self._get(campaign_id)
            del self._campaigns[campaign_id]
            if send_webhook:
                self._emit("campaign.deleted", campaign)
            self._private.pop(campaign_id, None)
            return copy.deepcopy(campaign)

    def _touch(self, campaign: dict[str, Any], **changes: Any) -> None:
        campaign.update(changes)
        campaign["updated_at"] = _now()

    # -- warm-up (the API's rules, see the module docstring) --------------------------------------

    def start_warmup(self, campaign_id: int) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/start-warmup``; raises `SimulatedApiError`."""
        with self._lock:
            campaign = self._get(campaign_id)
            status = campaign["status_code"]
            if status == "active":
                return copy.deepcopy(campaign)
            if status != "pending":
                raise SimulatedApiError(
                    422,
                    "INVALID_CAMPAIGN_STATUS",
                    f"Campaign {campaign_id} is {status}; only a pending campaign can be started "
                    "(use resume-warmup for a paused one).",
                )
            self._check_connection(campaign)
            self._touch(campaign, status_code="active")
            return copy.deepcopy(campaign)

    def resume_warmup(self, campaign_id: int) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/resume-warmup``; raises `SimulatedApiError`."""
        with self._lock:
            campaign = self._get(campaign_id)
            if campaign["status_code"] == "active":
                return copy.deepcopy(campaign)
            self._check_connection(campaign)
            self._touch(campaign, status_code="active")
            return copy.deepcopy(campaign)

    def pause_warmup(self, campaign_id: int) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/pause-warmup``; raises `SimulatedApiError`."""
        with self._lock:
            campaign = self._get(campaign_id)
            status = campaign["status_code"]
            if status == "pending":
                raise SimulatedApiError(
                    422,
                    "INVALID_CAMPAIGN_STATUS",
                    f"Campaign {campaign_id} is pending; warm-up was never started.",
                )
            if status != "paused":
                self._touch(campaign, status_code="paused")
            return copy.deepcopy(campaign)

    def _check_connection(self, campaign: dict[str, Any]) -> None:
        failed = self.faults.consume_start_failure(campaign["id"], campaign["email"])
        if failed or campaign["connection_problem"]:
            raise SimulatedApiError(
                422,
                "CONNECTION_CHECK_FAILED",
                f"Could not connect to {campaign['email']} over SMTP/IMAP; "
                "warm-up was not started.",
            )

    # -- webhooks ---------------------------------------------------------------------------------

    def payload(self, event: str, campaign: Mapping[str, Any]) -> dict[str, Any]:
        """The documented webhook body for `event` about `campaign`."""
        private = self._private.get(campaign["id"]) or _Private(None, None, "office")
        account: dict[str, Any] = {
            "campaign_id": campaign["id"],
            "first_name": campaign["first_name"],
            "last_name": campaign["last_name"],
            "email": campaign["email"],
        }
        action = event.removeprefix("campaign.")
        if event == "campaign.updated":
            account["meta"] = ""
        elif event == "campaign.deleted":
            account["type"] = private.provider_type
            account["meta"] = None
        else:
            account["provider_type"] = private.provider_type
            account["tags"] = list(campaign["tags"])
            if event == "campaign.connection_problem":
                account["meta"] = ""
            elif event == "campaign.created" and private.meta is None:
                account["meta"] = None
            else:
                account["meta"] = meta_query_string(
                    private.meta, campaign["tags"], self.meta_includes_tags
                )
        return {"type": event, "action": action, "account": account}

    def _emit(self, event: str, campaign: Mapping[str, Any]) -> None:
        payload = self.payload(event, campaign)
        self.events.append(payload)
        body = json.dumps(payload, separators=(",", ":")).encode()
        copies, delay, hold = self.faults.webhook_plan()
        if copies == 0:
            self.webhooks_dropped.append(body)
            return
        with self._out:
            for _ in range(copies):
                if hold:
                    self._held.append(body)
                else:
                    self._outbox.append(_Outgoing(body, time.monotonic() + delay))
            self._ensure_worker()
            self._out.notify_all()

    def emit(self, event: str, campaign_id: int) -> dict[str, Any]:
        """Post any event about an existing campaign (faults apply); returns the payload."""
        with self._lock:
            campaign = self._get(campaign_id)
            self._emit(event, campaign)
            return self.payload(event, campaign)

    def flush_webhooks(self) -> int:
        """Send the webhooks held by `Faults.reorder_webhooks`, newest first; returns how many."""
        with self._out:
            held, self._held = self._held, []
            now = time.monotonic()
            for body in reversed(held):
                self._outbox.append(_Outgoing(body, now))
            if held:
                self._ensure_worker()
                self._out.notify_all()
            return len(held)

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until every queued webhook was attempted (held ones excluded); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._out:
            while self._outbox or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._out.wait(left)
            return True

    def sent_payloads(self, event: str | None = None) -> list[dict[str, Any]]:
        """Parsed bodies of the attempted deliveries (optionally only one event type), in order."""
        with self._out:
            sent = list(self.webhooks_sent)
        payloads = [s.json() for s in sent]
        return [p for p in payloads if event is None or p.get("type") == event]

    def _ensure_worker(self) -> None:
        # Called with self._out held.
        if self._worker is None or not self._worker.is_alive():
            self._closing = False
            self._worker = threading.Thread(
                target=self._deliver_loop, name="mailivery-sim-webhooks", daemon=True
            )
            self._worker.start()

    def _deliver_loop(self) -> None:
        with httpx.Client(timeout=self.webhook_timeout, verify=shared_tls_context()) as client:
            while True:
                with self._out:
                    while True:
                        if self._closing:
                            return
                        if self._outbox:
                            wait = self._outbox[0].not_before - time.monotonic()
                            if wait <= 0:
                                item = self._outbox.popleft()
                                self._in_flight += 1
                                generation = self._generation
                                break
                            self._out.wait(wait)
                        else:
                            self._out.wait(0.5)
                result = self._deliver(client, item.body)
                with self._out:
                    if generation == self._generation:
                        self.webhooks_sent.append(SentWebhook(item.body, result))
                    self._in_flight -= 1
                    self._out.notify_all()

    def _deliver(self, client: httpx.Client, body: bytes) -> int | str:
        url = self.webhook_url
        if not url:
            return "not sent: no webhook_url configured"
        try:
            response = client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", "User-Agent": "mailivery-simulator"},
            )
        except Exception as exc:  # delivery failures are recorded, never raised
            return f"{type(exc).__name__}: {exc}"
        return response.status_code

    # -- lifecycle --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: campaigns (ids restart at 101), consents, calls, webhooks, faults."""
        with self._lock, self._out:
            self._campaigns.clear()
            self._private.clear()
            self._consents.clear()
            self._next_id = FIRST_CAMPAIGN_ID
            self.calls.clear()
            self.events.clear()
            self._held.clear()
            self._outbox.clear()
            self._generation += 1
            self.webhooks_sent.clear()
            self.webhooks_dropped.clear()
            self._out.notify_all()
        self.faults.clear()

    def close(self, timeout: float = 1.0) -> None:
        """Give queued webhooks up to `timeout` seconds, then stop the delivery thread."""
        self.wait_for_webhooks(timeout)
        with self._out:
            self._closing = True
            worker = self._worker
            self._out.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=self.webhook_timeout + 1)
        with self._out:
            if self._worker is worker:
                self._worker = None

    def snapshot(self) -> dict[str, Any]:
        """Everything observable, JSON-ready (``GET /_sim/state``)."""
        with self._lock, self._out:
            sent = []
            for s in self.webhooks_sent:
                body: Any
                try:
                    body = s.json()
                except ValueError:
                    body = s.body.decode("utf-8", "replace")
                sent.append({"body": body, "result": s.result})
            return {
                "api_key_set": bool(self.api_key),
                "webhook_url": self.webhook_url,
                "public_url": self.public_url,
                "campaigns": [copy.deepcopy(self._campaigns[k]) for k in sorted(self._campaigns)],
                "consents": self.consents(),
                "calls": [c._asdict() for c in self.calls],
                "events": copy.deepcopy(self.events),
                "webhooks_sent": sent,
                "webhooks_dropped": len(self.webhooks_dropped),
                "webhooks_held": len(self._held),
                "webhooks_queued": len(self._outbox) + self._in_flight,
                "faults": self.faults.snapshot(),
            }
