"""Pure Mailivery data handling: input validation, lenient response parsing, webhook parsing.

Nothing here touches the network or the database. Facts and ambiguities behind each rule are in
``mailivery-api.md`` (sections 2, 3 and 6). Parsing is lenient about shape (``data`` envelope or
bare, unknown fields kept, ``lalst_name``/``campaignId`` spellings) and strict about what matters
(an integer campaign id, an ``https`` OAuth URL, a readable event type).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
import unicodedata
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from .._bounds import MAX_EXACT_FLOAT_ID, MAX_ID, MAX_ID_DIGITS, is_id
from ..errors import InvalidInput, MailiveryResponseError, WebhookPayloadError

__all__ = [
    "CORRELATION_META_KEY",
    "DEFAULT_BASE_URL",
    "MAX_FIELD_LENGTH",
    "MAX_WEBHOOK_BYTES",
    "Campaign",
    "ConnectResult",
    "WebhookEvent",
    "is_loopback_host",
    "normalize_email",
    "parse_meta",
    "parse_webhook",
    "validate_connect",
    "validate_meta",
    "validate_owner_id",
]

DEFAULT_BASE_URL: Final = "https://app.mailivery.io/api/v1"
#: The meta key carrying our correlation token through the OAuth round trip.
CORRELATION_META_KEY: Final = "mailbox_flow_token"
#: Mailivery's documented limit for every string field of a connect call.
MAX_FIELD_LENGTH: Final = 255
#: Bodies larger than this are refused before decoding (the web edge answers 413 earlier).
MAX_WEBHOOK_BYTES: Final = 1024 * 1024

_MAX_EMAILS_PER_DAY: Final = 2000
_MAX_RESPONSE_RATE: Final = 100
_MAX_META_ITEMS: Final = 50
_MAX_URL_LENGTH: Final = 8192
_META_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_BRACKET_KEY_RE: Final = re.compile(r"meta\[([^\[\]]+)\]")
# Characters never allowed in an address we accept (quoted local parts are not supported).
_EMAIL_SPECIALS: Final = frozenset('<>()[]\\,;:"')
# Control characters, unpaired surrogates and line/paragraph separators.
_BAD_TEXT_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BAD_EMAIL_CATEGORIES: Final = _BAD_TEXT_CATEGORIES | {"Cf", "Zs"}

_ACTIVE_STATUSES: Final = frozenset({"active", "warming", "warming_up", "running", "in_progress"})
_PAUSED_STATUSES: Final = frozenset({"inactive", "stopped", "disabled"})
_DELETED_STATUSES: Final = frozenset({"deleted", "archived"})


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def _has_bad_chars(value: str, categories: frozenset[str]) -> bool:
    return any(unicodedata.category(ch) in categories for ch in value)


def _text(value: Any, field: str, *, required: bool) -> str | None:
    """A stripped string ≤255 chars without control characters; None when optional and blank."""
    if value is None:
        if required:
            raise InvalidInput(field, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    text: str = value.strip()
    if not text:
        if required:
            raise InvalidInput(field, "must not be empty")
        return None
    if len(text) > MAX_FIELD_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_FIELD_LENGTH} characters")
    if _has_bad_chars(text, _BAD_TEXT_CATEGORIES):
        raise InvalidInput(field, "must not contain control characters")
    return text


def _bounded_int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, "must be an integer")
    if not low <= value <= high:
        raise InvalidInput(field, f"must be between {low} and {high}")
    return value


def validate_owner_id(value: Any) -> str:
    """The partner's owner id, as given: non-empty text of at most 255 characters, no control
    characters (NUL included) and no lone surrogates; `InvalidInput` naming ``owner_id`` if not."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD_LENGTH:
        raise InvalidInput("owner_id", "must be a non-empty string of at most 255 characters")
    if _has_bad_chars(value, _BAD_TEXT_CATEGORIES):
        raise InvalidInput("owner_id", "must not contain control characters")
    return value


def normalize_email(value: str, field: str = "email") -> str:
    """Strip, lowercase and syntax-check an address; `InvalidInput` naming ``field`` if bad.

    Only ASCII addresses are accepted, checked before lowercasing (so that a look-alike such as
    the Kelvin sign, which lowercases to ``k``, is refused too): Mailivery refuses the rest with a
    422, and Microsoft 365 mailboxes have ASCII addresses. An internationalized domain is given in
    its ASCII (punycode, ``xn--``) form.
    """
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    stripped = value.strip()
    if not stripped:
        raise InvalidInput(field, "must not be empty")
    if _has_bad_chars(stripped, _BAD_EMAIL_CATEGORIES):
        raise InvalidInput(field, "must not contain whitespace or control characters")
    if not stripped.isascii():
        raise InvalidInput(
            field, "must be an ASCII address (give an international domain in its xn-- form)"
        )
    email = stripped.lower()
    if len(email) > MAX_FIELD_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_FIELD_LENGTH} characters")
    if any(ch.isspace() for ch in email) or _has_bad_chars(email, _BAD_EMAIL_CATEGORIES):
        raise InvalidInput(field, "must not contain whitespace or control characters")
    if email.count("@") != 1:
        raise InvalidInput(field, "must contain exactly one @")
    local, domain = email.split("@")
    if not local:
        raise InvalidInput(field, "is missing the part before @")
    if len(local) > 64:
        raise InvalidInput(field, "has a local part longer than 64 characters")
    if any(ch in _EMAIL_SPECIALS for ch in email):
        raise InvalidInput(field, "contains a character not allowed in an email address")
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidInput(field, "must have a domain with a dot")
    for label in labels:
        if not label or label.startswith("-") or label.endswith("-"):
            raise InvalidInput(field, "has an invalid domain")
        if not all(ch.isalnum() or ch == "-" for ch in label):
            raise InvalidInput(field, "has an invalid domain")
    return email


@functools.lru_cache(maxsize=1)
def _known_timezones() -> frozenset[str]:
    try:
        return frozenset(zoneinfo.available_timezones())
    except Exception:  # pragma: no cover - no tz database at all
        return frozenset()


def _timezone(value: Any) -> str | None:
    tz = _text(value, "timezone", required=False)
    if tz is None:
        return None
    known = _known_timezones()
    if known and tz not in known:
        raise InvalidInput("timezone", "must be an IANA time zone name such as Europe/Paris")
    return tz


def _tags(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput("tags", "must be a list of strings")
    items: list[str] = []
    for item in value:
        tag = _text(item, "tags", required=True)
        assert tag is not None
        if "," in tag:
            raise InvalidInput("tags", "a tag must not contain a comma")
        items.append(tag)
    if not items:
        return None
    joined = ",".join(items)
    if len(joined) > 4 * MAX_FIELD_LENGTH:
        raise InvalidInput("tags", "too many tags")
    return joined


def validate_connect(
    *,
    first_name: str,
    last_name: str | None,
    email: str,
    email_per_day: int,
    response_rate: int,
    owner_email: str | None = None,
    timezone: str | None = None,
    tags: Sequence[str] | None = None,
) -> dict[str, str]:
    """Check the connect-call input and return the snake_case form fields to send.

    ``last_name``, ``owner_email``, ``timezone`` and ``tags`` appear only when given. Every failure
    raises `InvalidInput` naming the field; nothing else is raised.
    """
    fields: dict[str, str] = {}
    first = _text(first_name, "first_name", required=True)
    assert first is not None
    fields["first_name"] = first
    last = _text(last_name, "last_name", required=False)
    if last is not None:
        fields["last_name"] = last
    fields["email"] = normalize_email(email, "email")
    fields["email_per_day"] = str(
        _bounded_int(email_per_day, "email_per_day", 0, _MAX_EMAILS_PER_DAY)
    )
    fields["response_rate"] = str(
        _bounded_int(response_rate, "response_rate", 0, _MAX_RESPONSE_RATE)
    )
    if owner_email is not None:
        fields["owner_email"] = normalize_email(owner_email, "owner_email")
    tz = _timezone(timezone)
    if tz is not None:
        fields["timezone"] = tz
    joined = _tags(tags)
    if joined is not None:
        fields["tags"] = joined
    return fields


def validate_meta(meta: Mapping[str, str] | None) -> dict[str, str]:
    """Check partner meta for a connect call: keys ``[A-Za-z0-9_.-]{1,64}``, values short text."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidInput("meta", "must be a mapping of strings")
    if len(meta) > _MAX_META_ITEMS:
        raise InvalidInput("meta", f"must have at most {_MAX_META_ITEMS} items")
    out: dict[str, str] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not _META_KEY_RE.fullmatch(key):
            raise InvalidInput("meta", "keys must be 1-64 letters, digits, '_', '.' or '-'")
        text = _text(value, "meta", required=True)
        assert text is not None
        out[key] = text
    return out


# ---------------------------------------------------------------------------------------------
# Lenient value readers (never raise)
# ---------------------------------------------------------------------------------------------


def _as_id(value: Any) -> int | None:
    """An id in ``1..MAX_ID`` (`mailbox_flow._bounds`) from an int, an integral float below 2**53
    (above, a float no longer names one integer) or a string of ASCII digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if is_id(value) else None
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and 0 < value < MAX_EXACT_FLOAT_ID:
            return int(value)
        return None
    if isinstance(value, str):
        text = value.strip()
        if 0 < len(text) <= MAX_ID_DIGITS and text.isascii() and text.isdigit():
            number = int(text)
            return number if 0 < number <= MAX_ID else None
    return None


def _as_str(value: Any) -> str | None:
    """A stripped non-empty string, or None."""
    if isinstance(value, str):
        text = value.strip()
        return text or None
    return None


def _as_email(value: Any) -> str | None:
    try:
        return normalize_email(value)
    except InvalidInput:
        return None


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return mapping[key]
    return None


def _plain(data: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(key): value for key, value in data.items()}


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Campaign:
    """One Mailivery campaign (= one connected mailbox), as returned by the API."""

    id: int
    email: str | None = None
    status: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def lifecycle(self) -> str:
        """``pending``, ``active``, ``paused``, ``deleted`` or ``unknown`` (open status strings)."""
        if self.status is None:
            return "unknown"
        status = self.status.strip().lower().replace("-", "_").replace(" ", "_")
        if status == "pending":
            return "pending"
        if status in _ACTIVE_STATUSES:
            return "active"
        if "pause" in status or status in _PAUSED_STATUSES:
            return "paused"
        if status in _DELETED_STATUSES:
            return "deleted"
        return "unknown"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Campaign:
        """Read a campaign object leniently; `MailiveryResponseError` if it has no usable id."""
        if not isinstance(data, Mapping):
            raise MailiveryResponseError("a campaign in the response is not an object")
        campaign_id = _as_id(_first(data, "id", "campaign_id", "campaignId"))
        if campaign_id is None:
            raise MailiveryResponseError("a campaign in the response has no usable id")
        status = _first(data, "status_code", "status")
        if isinstance(status, int | float) and not isinstance(status, bool):
            status = str(status)
        return cls(
            id=campaign_id,
            email=_as_email(data.get("email")),
            status=_as_str(status),
            first_name=_as_str(data.get("first_name")),
            last_name=_as_str(_first(data, "last_name", "lalst_name")),
            raw=_plain(data),
        )


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses (a local simulator, never Mailivery)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _oauth_url(value: Any, *, allow_loopback_http: bool) -> str | None:
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > _MAX_URL_LENGTH:
        return None
    if any(ch.isspace() for ch in url) or _has_bad_chars(url, _BAD_EMAIL_CATEGORIES):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if not host:
        return None
    scheme = parts.scheme.lower()
    if scheme == "https":
        return url
    if scheme == "http" and allow_loopback_http and is_loopback_host(host):
        return url
    return None


@dataclass(frozen=True)
class ConnectResult:
    """The answer to a connect call: the OAuth consent URL to send the mailbox owner to.

    The URL carries tokens: it is left out of ``repr`` and never put in an error message.
    """

    url: str = field(repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @classmethod
    def from_api(cls, payload: Any, *, allow_loopback_http: bool = False) -> ConnectResult:
        """Read ``data.url`` (else top-level ``url``); `MailiveryResponseError` unless https.

        ``allow_loopback_http`` also accepts ``http://`` on a loopback host: the client sets it
        only when it talks to a local simulator over loopback http itself.
        """
        if not isinstance(payload, Mapping):
            raise MailiveryResponseError("the connect response is not a JSON object")
        data = payload.get("data")
        candidate = data.get("url") if isinstance(data, Mapping) else None
        if candidate is None:
            candidate = payload.get("url")
        if candidate is None:
            raise MailiveryResponseError("the connect response has no OAuth URL")
        url = _oauth_url(candidate, allow_loopback_http=allow_loopback_http)
        if url is None:
            raise MailiveryResponseError(
                "the connect response's OAuth URL is not an absolute https URL"
            )
        return cls(url=url, raw=_plain(payload))


# ---------------------------------------------------------------------------------------------
# Webhooks
# ---------------------------------------------------------------------------------------------


def _meta_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None


def _meta_from_pairs(pairs: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        if not isinstance(raw_key, str):
            continue
        key = raw_key.strip()
        value = _meta_value(raw_value)
        if not key or value is None or key in out:
            continue
        out[key] = value
        match = _BRACKET_KEY_RE.fullmatch(key)
        if match:
            inner = match.group(1).strip()
            if inner:
                aliases.setdefault(inner, value)
        if len(out) >= _MAX_META_ITEMS:
            break
    for key, value in aliases.items():
        out.setdefault(key, value)
    return out


def parse_meta(value: Any) -> dict[str, str]:
    """Read webhook ``meta`` (query string, JSON object string, dict, ``""`` or None); never raises.

    ``meta[key]`` keys are also exposed as ``key``. Anything unreadable gives ``{}``.
    """
    try:
        if value is None:
            return {}
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, Mapping):
            return _meta_from_pairs(value.items())
        if not isinstance(value, str):
            return {}
        text = value.strip()
        if not text or len(text) > MAX_WEBHOOK_BYTES:
            return {}
        if text.startswith("{"):
            decoded = json.loads(text, parse_constant=_reject_constant)
            return _meta_from_pairs(decoded.items()) if isinstance(decoded, dict) else {}
        text = text.removeprefix("?")
        pairs = parse_qsl(text, keep_blank_values=False, max_num_fields=10 * _MAX_META_ITEMS)
        return _meta_from_pairs(pairs)
    except Exception:
        return {}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _split_tags(value: str) -> tuple[str, ...]:
    return tuple(tag for tag in (part.strip() for part in value.split(",")) if tag)


def _tags_from(value: Any, meta: Mapping[str, str]) -> tuple[str, ...]:
    tags: tuple[str, ...] = ()
    if isinstance(value, list | tuple):
        items = (_meta_value(item) for item in value)
        tags = tuple(tag for tag in (item.strip() for item in items if item) if tag)
    elif isinstance(value, str):
        tags = _split_tags(value)
    if not tags and "tags" in meta:
        tags = _split_tags(meta["tags"])
    return tags


@dataclass(frozen=True)
class WebhookEvent:
    """One Mailivery webhook delivery, read leniently (see mailivery-api.md §3 and §6.12).

    ``meta`` (it carries our correlation token) and ``raw`` are left out of the repr.
    """

    type: str
    action: str | None
    campaign_id: int
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    provider_type: str | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict, hash=False, repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def correlation_token(self) -> str | None:
        """Our correlation token echoed back in ``meta``, if any."""
        return self.meta.get(CORRELATION_META_KEY) or None


def _decode_body(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return _plain(body)
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        if len(data) > MAX_WEBHOOK_BYTES:
            raise WebhookPayloadError("webhook body is too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookPayloadError("webhook body is not UTF-8") from None
    elif isinstance(body, str):
        text = body
        if len(text) > MAX_WEBHOOK_BYTES:
            raise WebhookPayloadError("webhook body is too large")
    else:
        raise WebhookPayloadError("webhook body must be bytes, str or a mapping")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise WebhookPayloadError("webhook body is empty")
    try:
        decoded = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise WebhookPayloadError("webhook body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, NaN/Infinity, oversized integers
        raise WebhookPayloadError("webhook body is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise WebhookPayloadError("webhook body is not a JSON object")
    return decoded


def _event_type(body: Mapping[str, Any]) -> tuple[str, str | None]:
    action = _as_str(body.get("action"))
    raw_type = _as_str(body.get("type"))
    if raw_type is None and action is not None:
        raw_type = action if action.startswith("campaign.") else f"campaign.{action}"
    if raw_type is None:
        raise WebhookPayloadError("webhook has no event type")
    event_type = raw_type.lower()
    if len(event_type) > 100 or _has_bad_chars(event_type, _BAD_EMAIL_CATEGORIES):
        raise WebhookPayloadError("webhook event type is not readable")
    if any(ch.isspace() for ch in event_type):
        raise WebhookPayloadError("webhook event type is not readable")
    return event_type, action


def _campaign_id(account: Mapping[str, Any], body: Mapping[str, Any]) -> int:
    for source in (account, body):
        for key in ("campaign_id", "campaignId"):
            if key in source:
                campaign_id = _as_id(source[key])
                if campaign_id is not None:
                    return campaign_id
    raise WebhookPayloadError("webhook has no valid campaign id")


def parse_webhook(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    """Decode one webhook delivery; `WebhookPayloadError` (and nothing else) when unreadable."""
    try:
        return _parse_webhook(body)
    except WebhookPayloadError:
        raise
    except RecursionError:
        raise WebhookPayloadError("webhook body is nested too deeply") from None
    except Exception as exc:  # defensive: a bug here must not become a 500 at the web edge
        raise WebhookPayloadError(
            f"webhook body could not be read ({type(exc).__name__})"
        ) from None


def _parse_webhook(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    decoded = _decode_body(body)
    event_type, action = _event_type(decoded)
    account_value = decoded.get("account")
    account: Mapping[str, Any] = account_value if isinstance(account_value, Mapping) else {}
    campaign_id = _campaign_id(account, decoded)

    def pick(*keys: str) -> Any:
        value = _first(account, *keys)
        return value if value is not None else _first(decoded, *keys)

    meta_value = account.get("meta") if "meta" in account else decoded.get("meta")
    meta = parse_meta(meta_value)
    provider = _as_str(_first(account, "provider_type", "type"))
    if provider is None:
        provider = _as_str(decoded.get("provider_type"))
    return WebhookEvent(
        type=event_type,
        action=action,
        campaign_id=campaign_id,
        email=_as_email(pick("email")),
        first_name=_as_str(pick("first_name")),
        last_name=_as_str(pick("last_name", "lalst_name")),
        provider_type=provider,
        tags=_tags_from(pick("tags"), meta),
        meta=meta,
        raw=decoded,
    )
