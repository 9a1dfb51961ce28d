"""The simulator's HTTP face: a Starlette app with a fake Mailivery API, consent pages, controls.

API under ``/api/v1``; every call needs ``Authorization: Bearer <api_key>``, else 401
``UNAUTHENTICATED``:

- ``POST /campaigns/microsoft``: multipart/form-data only (anything else: 422 ``VALIDATION_ERROR``),
  snake_case fields ``first_name`` (required, <=255), ``last_name`` (<=255), ``email`` (required,
  valid, <=255), ``email_per_day`` (int 0-2000, default 20), ``response_rate`` (int 0-100, default
  30), ``owner_email`` (valid email), ``timezone`` (IANA, default America/Chicago), ``tags`` (comma
  list), and meta as either one ``meta`` field (a JSON object is re-encoded as a query string, any
  other text is echoed verbatim) or ``meta[<key>]`` fields (not both). Unknown fields (e.g.
  ``with_rampup``) are ignored. Email uniqueness is not enforced (Mailivery does not document it).
  Answers ``{"success": true, "data": {"url": URL}}`` with
  URL = ``<public_url>/oauth/consent/<token>?state=<state>``.
  Validation errors: 422 ``{"code": "VALIDATION_ERROR", "message": ..., "errors": {field: [..]}}``.
- ``GET /campaigns`` -> ``{"data": [campaign, ...]}``;
  ``GET /campaigns/{id}`` -> ``{"data": campaign}``.
- ``PATCH /campaigns/{id}/start-warmup | pause-warmup | resume-warmup`` ->
  ``{"success": true, "data": campaign}``; status rules in `mailbox_flow.simulator.state`
  (start on active and pause on paused are idempotent 200s; start on paused and pause on pending
  are 422 ``INVALID_CAMPAIGN_STATUS``; a failed connection check is 422
  ``CONNECTION_CHECK_FAILED``).
- ``PATCH /campaigns/{id}``: an empty body is the Microsoft re-auth and answers
  ``{"success": true, "data": {"reconnectUrl": ...}}``; otherwise (form or JSON) ``email_per_day``/
  ``emailsPerDay``, ``response_rate``/``responseRate``, ``timezone``, ``tags`` are updated, the
  campaign is returned and ``campaign.updated`` is posted.
- ``DELETE /campaigns/{id}`` -> ``{"success": true, "data": {"id": id}}`` + ``campaign.deleted``.
- Unknown campaign: 404 ``CAMPAIGN_NOT_FOUND``; unknown path: 404 ``NOT_FOUND``; known path, wrong
  method: 405 ``METHOD_NOT_ALLOWED``. Bad input never produces a 500.

Consent (HTML): ``GET /oauth/consent/{token}``, ``POST /oauth/consent/{token}/accept|decline``.
Dashboard (HTML): ``GET /dashboard/campaigns/{id}``.

Controls (no auth, JSON): ``GET|POST|DELETE /_sim/faults`` (POST body: ``{"<fault method>": args}``
where args is an object of keyword arguments, a list of positional ones or a single value, e.g.
``{"fail_next": {"n": 2, "status": 429, "retry_after": 1}}``), ``GET /_sim/state``,
``POST /_sim/reset``, ``POST /_sim/config`` (``webhook_url``, ``public_url``,
``meta_includes_tags``), ``POST /_sim/webhooks/flush``, ``POST /_sim/campaigns`` (an unsolicited
campaign), ``POST /_sim/campaigns/{id}/connection-problem | reconnect | status``,
``POST /_sim/consents/{token}/accept | decline`` (JSON twins of the consent forms).
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import re
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send

from mailbox_flow.simulator.state import (
    CAMPAIGN_STATUSES,
    DEFAULT_EMAIL_PER_DAY,
    DEFAULT_RESPONSE_RATE,
    DEFAULT_TIMEZONE,
    Call,
    CampaignNotFound,
    ConsentNotFound,
    InjectedFailure,
    SimulatedApiError,
    Simulator,
)

__all__ = ["API_PREFIX", "create_app", "validate_connect_form"]

API_PREFIX = "/api/v1"
MAX_LEN = 255
MAX_BODY = 1024 * 1024

log = logging.getLogger("mailbox_flow.simulator")

_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_INT = re.compile(r"[+-]?\d{1,9}")
_TZ = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")
_META_FIELD = re.compile(r"meta\[(.*)\]", re.DOTALL)

_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}

_MESSAGES = {
    429: "Too many requests. Please slow down.",
    500: "Server error (injected by the simulator).",
    502: "Bad gateway (injected by the simulator).",
    503: "Service temporarily unavailable (injected by the simulator).",
}


def _error(
    status: int,
    code: str | None = None,
    message: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "code": code or _CODES.get(status, f"HTTP_{status}"),
        "message": message or _MESSAGES.get(status, f"Request failed with status {status}."),
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _failure_response(failure: InjectedFailure) -> JSONResponse:
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        value = failure.retry_after
        headers["Retry-After"] = str(int(value)) if value.is_integer() else repr(value)
    return _error(failure.status, headers=headers)


def _ok(data: Any) -> JSONResponse:
    return JSONResponse({"success": True, "data": data})


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    try:
        return frozenset(zoneinfo.available_timezones())
    except Exception:  # pragma: no cover - platform without tz data
        return frozenset()


def _valid_timezone(value: str) -> bool:
    zones = _timezones()
    if zones:
        return value in zones or value == "UTC"
    return bool(_TZ.fullmatch(value))


def _valid_email(value: str) -> bool:
    return len(value) <= MAX_LEN and bool(_EMAIL.fullmatch(value))


class _Errors:
    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.by_field.setdefault(name, []).append(message)

    def response(self) -> JSONResponse:
        first = next(iter(self.by_field.values()))[0]
        more = sum(len(v) for v in self.by_field.values()) - 1
        message = first if not more else f"{first} (and {more} more error{'s' * (more > 1)})"
        return _error(422, "VALIDATION_ERROR", message, errors=self.by_field)


def _label(name: str) -> str:
    return name.replace("_", " ")


def _text(values: Mapping[str, str], name: str, errors: _Errors, *, required: bool) -> str | None:
    raw = values.get(name)
    value = raw.strip() if raw is not None else ""
    if not value:
        if required:
            errors.add(name, f"The {_label(name)} field is required.")
        return None
    if len(value) > MAX_LEN:
        errors.add(name, f"The {_label(name)} may not be greater than {MAX_LEN} characters.")
        return None
    return value


def _email(values: Mapping[str, str], name: str, errors: _Errors, *, required: bool) -> str | None:
    value = _text(values, name, errors, required=required)
    if value is not None and not _valid_email(value):
        errors.add(name, f"The {_label(name)} must be a valid email address.")
        return None
    return value


def _integer(raw: object, name: str, low: int, high: int, errors: _Errors) -> int | None:
    if isinstance(raw, bool):
        value: int | None = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _INT.fullmatch(raw.strip()):
        value = int(raw.strip())
    else:
        value = None
    if value is None:
        errors.add(name, f"The {_label(name)} must be an integer.")
        return None
    if not low <= value <= high:
        errors.add(name, f"The {_label(name)} must be between {low} and {high}.")
        return None
    return value


def _tags(raw: object, errors: _Errors) -> list[str] | None:
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        items = list(raw)
    else:
        errors.add("tags", "The tags must be a comma-separated string or a list of strings.")
        return None
    tags = [t.strip() for t in items if t.strip()]
    if any(len(t) > MAX_LEN for t in tags):
        errors.add("tags", f"Each tag may not be greater than {MAX_LEN} characters.")
        return None
    return tags


def _timezone(raw: object, errors: _Errors) -> str | None:
    if not isinstance(raw, str) or not _valid_timezone(raw.strip()):
        errors.add("timezone", "The timezone must be a valid IANA timezone.")
        return None
    return raw.strip()


def _parse_meta_text(value: str) -> dict[str, str] | str:
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, dict):
        return {
            str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for k, v in parsed.items()
        }
    return value


def validate_connect_form(form: FormData) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Validate ``POST /campaigns/microsoft`` fields: (clean keyword arguments, errors by field)."""
    errors = _Errors()
    values: dict[str, str] = {}
    meta_fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            errors.add(key, f"The {_label(key)} must be a text field, not a file.")
            continue
        match = _META_FIELD.fullmatch(key)
        if match is None:
            values[key] = value
        elif not match.group(1):
            errors.add("meta", "Meta fields need a key: meta[<key>].")
        else:
            meta_fields[match.group(1)] = value

    clean: dict[str, Any] = {
        "first_name": _text(values, "first_name", errors, required=True),
        "last_name": _text(values, "last_name", errors, required=False),
        "email": _email(values, "email", errors, required=True),
        "owner_email": _email(values, "owner_email", errors, required=False),
        "email_per_day": DEFAULT_EMAIL_PER_DAY,
        "response_rate": DEFAULT_RESPONSE_RATE,
        "timezone": DEFAULT_TIMEZONE,
        "tags": [],
        "meta": None,
    }
    if values.get("email_per_day", "").strip():
        clean["email_per_day"] = _integer(values["email_per_day"], "email_per_day", 0, 2000, errors)
    if values.get("response_rate", "").strip():
        clean["response_rate"] = _integer(values["response_rate"], "response_rate", 0, 100, errors)
    if values.get("timezone", "").strip():
        clean["timezone"] = _timezone(values["timezone"], errors)
    if "tags" in values:
        clean["tags"] = _tags(values["tags"], errors) or []
    if "meta" in values and meta_fields:
        errors.add("meta", "Send meta either as one meta field or as meta[<key>] fields, not both.")
    elif meta_fields:
        clean["meta"] = meta_fields
    elif "meta" in values:
        clean["meta"] = _parse_meta_text(values["meta"])
    return clean, errors.by_field


# --------------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------------

_Handler = Callable[[Request, Simulator, str], Awaitable[Response]]


def _campaign_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise CampaignNotFound(raw)
    return int(raw)


async def _connect(request: Request, sim: Simulator, _: str) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = content_type.split(";")[0].strip() or "none"
        return _error(
            422,
            "VALIDATION_ERROR",
            "The request body must be multipart/form-data with snake_case fields "
            f"(got content type {shown}).",
        )
    try:
        form = await request.form(max_files=20, max_fields=500, max_part_size=64 * 1024)
    except SimulatedApiError:
        raise
    except HTTPException as exc:
        if exc.status_code == 413:
            return _error(413, message="The request body is too large.")
        return _error(422, "VALIDATION_ERROR", f"Malformed multipart body: {exc.detail}")
    except Exception as exc:
        return _error(422, "VALIDATION_ERROR", f"Malformed multipart body: {type(exc).__name__}")
    clean, errors = validate_connect_form(form)
    if errors:
        bag = _Errors()
        bag.by_field = errors
        return bag.response()
    url = sim.connect(**clean, base_url=sim.public_url or str(request.base_url))
    return _ok({"url": url})


async def _list(request: Request, sim: Simulator, _: str) -> Response:
    return JSONResponse({"data": sim.campaigns()})


async def _get(request: Request, sim: Simulator, raw_id: str) -> Response:
    return JSONResponse({"data": sim.campaign(_campaign_id(raw_id))})


async def _start(request: Request, sim: Simulator, raw_id: str) -> Response:
    return _ok(sim.start_warmup(_campaign_id(raw_id)))


async def _pause(request: Request, sim: Simulator, raw_id: str) -> Response:
    return _ok(sim.pause_warmup(_campaign_id(raw_id)))


async def _resume(request: Request, sim: Simulator, raw_id: str) -> Response:
    return _ok(sim.resume_warmup(_campaign_id(raw_id)))


async def _delete(request: Request, sim: Simulator, raw_id: str) -> Response:
    deleted = sim.delete_campaign(_campaign_id(raw_id))
    return _ok({"id": deleted["id"]})


async def _update(request: Request, sim: Simulator, raw_id: str) -> Response:
    campaign_id = _campaign_id(raw_id)
    sim.campaign(campaign_id)  # 404 before looking at the body
    body = await request.body()
    fields: dict[str, Any]
    if not body.strip():
        fields = {}
    elif request.headers.get("content-type", "").lower().startswith("application/json"):
        try:
            parsed = json.loads(body)
        except ValueError:
            return _error(422, "VALIDATION_ERROR", "The request body is not valid JSON.")
        if not isinstance(parsed, dict):
            return _error(422, "VALIDATION_ERROR", "The request body must be a JSON object.")
        fields = parsed
    else:
        try:
            form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
        except SimulatedApiError:
            raise
        except Exception:
            return _error(422, "VALIDATION_ERROR", "The request body could not be parsed.")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    if not fields:
        url = sim.reconnect_url(campaign_id, base_url=sim.public_url or str(request.base_url))
        return _ok({"reconnectUrl": url})
    errors = _Errors()
    changes: dict[str, Any] = {}
    for names, key, low, high in (
        (("email_per_day", "emailsPerDay"), "email_per_day", 0, 2000),
        (("response_rate", "responseRate"), "response_rate", 0, 100),
    ):
        for name in names:
            if name in fields:
                changes[key] = _integer(fields[name], key, low, high, errors)
    if "timezone" in fields:
        changes["timezone"] = _timezone(fields["timezone"], errors)
    if "tags" in fields:
        changes["tags"] = _tags(fields["tags"], errors)
    if errors.by_field:
        return errors.response()
    if not changes:
        return _error(422, "VALIDATION_ERROR", "No updatable field was given.")
    return _ok(sim.update_campaign(campaign_id, changes))


_ROUTES: list[tuple[str, re.Pattern[str], _Handler]] = [
    ("POST", re.compile(r"/campaigns/microsoft"), _connect),
    ("GET", re.compile(r"/campaigns"), _list),
    ("GET", re.compile(r"/campaigns/([^/]+)"), _get),
    ("PATCH", re.compile(r"/campaigns/([^/]+)"), _update),
    ("DELETE", re.compile(r"/campaigns/([^/]+)"), _delete),
    ("PATCH", re.compile(r"/campaigns/([^/]+)/start-warmup"), _start),
    ("PATCH", re.compile(r"/campaigns/([^/]+)/pause-warmup"), _pause),
    ("PATCH", re.compile(r"/campaigns/([^/]+)/resume-warmup"), _resume),
]


def _authorized(request: Request, sim: Simulator) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or not sim.api_key:
        return False
    return hmac.compare_digest(token.strip().encode(), sim.api_key.encode())


async def _dispatch(request: Request, sim: Simulator, method: str, path: str) -> Response:
    faults = sim.faults  # the faults in force when the request arrived, even after a slow sleep
    delay = faults.latency_for(method, path)
    if delay:
        await anyio.sleep(delay)
    if not _authorized(request, sim):
        return _error(
            401,
            "UNAUTHENTICATED",
            "Missing or invalid API key: send Authorization: Bearer <API_KEY>.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    failure = faults.pick_failure(method, path)
    if failure is not None and not failure.after_effect:
        return _failure_response(failure)
    relative = path[len(API_PREFIX) :].rstrip("/") or "/"
    allowed: list[str] = []
    response: Response | None = None
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(relative)
        if match is None:
            continue
        if route_method != method:
            allowed.append(route_method)
            continue
        arg = match.group(1) if pattern.groups else ""
        try:
            response = await handler(request, sim, arg)
        except SimulatedApiError as exc:
            response = _error(exc.status, exc.code, exc.message)
        break
    if response is None:
        if allowed:
            return _error(
                405,
                message=f"Method {method} is not allowed here.",
                headers={"Allow": ", ".join(sorted(set(allowed)))},
            )
        return _error(404, "NOT_FOUND", f"No API route {method} {path}.")
    if failure is not None:
        return _failure_response(failure)
    return response


class _TooLarge(SimulatedApiError):
    def __init__(self) -> None:
        super().__init__(413, "PAYLOAD_TOO_LARGE", f"The request body exceeds {MAX_BODY} bytes.")


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive` that raises `_TooLarge` once more than `limit` body bytes arrived."""
    total = 0

    async def wrapped() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise _TooLarge()
        return message

    return wrapped


def _declared_too_large(request: Request) -> bool:
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > MAX_BODY


def _api_app(sim: Simulator) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def api(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, _limited(receive, MAX_BODY))
        method = request.method.upper()
        path = request.url.path
        try:
            if _declared_too_large(request):
                raise _TooLarge()
            response = await _dispatch(request, sim, method, path)
        except SimulatedApiError as exc:
            response = _error(exc.status, exc.code, exc.message)
        except HTTPException as exc:
            response = _error(exc.status_code, message=str(exc.detail))
        except Exception:
            log.exception("simulator: unexpected error on %s %s", method, path)
            response = _error(500, "INTERNAL_SERVER_ERROR", "Unexpected simulator error.")
        sim.record_call(
            Call(method, path, request.headers.get(sim.request_id_header), response.status_code)
        )
        await response(scope, receive, send)

    return api


# --------------------------------------------------------------------------------------------------
# HTML pages
# --------------------------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem}}
form{{display:inline-block;margin-right:.5rem}}button{{font-size:1rem;padding:.5rem 1.2rem}}</style>
</head><body><h1>{title}</h1>
{body}
<p><small>Mailivery simulator (mailbox_flow). Nothing here talks to Microsoft.</small></p>
</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


def _consent_gone() -> HTMLResponse:
    return _page(
        "Link not valid",
        "<p>This consent link is unknown, expired or was already used.</p>",
        status=404,
    )


async def consent_page(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    token = request.path_params["token"]
    try:
        email = sim.consent_email(token)
    except ConsentNotFound:
        return _consent_gone()
    safe_token = html.escape(token, quote=True)
    state = html.escape(request.query_params.get("state", ""), quote=True)
    body = (
        f"<p><strong>Mailivery</strong> wants to send and read mail as "
        f'<strong id="email">{html.escape(email)}</strong> to warm the mailbox up.</p>'
        f"<p>Allow access to this Microsoft mailbox?</p>"
        f'<form method="post" action="/oauth/consent/{safe_token}/accept">'
        f'<input type="hidden" name="state" value="{state}">'
        f'<button type="submit" id="accept">Accept</button></form>'
        f'<form method="post" action="/oauth/consent/{safe_token}/decline">'
        f'<input type="hidden" name="state" value="{state}">'
        f'<button type="submit" id="decline">Decline</button></form>'
    )
    return _page("Connect your Microsoft mailbox", body)


async def consent_accept(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    try:
        campaign = sim.accept(request.path_params["token"])
    except ConsentNotFound:
        return _consent_gone()
    body = (
        f"<p>Connected <strong>{html.escape(campaign['email'])}</strong> "
        f"(campaign {campaign['id']}, status {html.escape(campaign['status_code'])}).</p>"
        "<p>You can close this window.</p>"
    )
    return _page("Mailbox connected", body)


async def consent_decline(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    try:
        sim.decline(request.path_params["token"])
    except ConsentNotFound:
        return _consent_gone()
    return _page("Access declined", "<p>No mailbox was connected. You can close this window.</p>")


async def dashboard(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    try:
        campaign = sim.campaign(_campaign_id(request.path_params["campaign_id"]))
    except CampaignNotFound:
        return _page("Campaign not found", "<p>No such campaign.</p>", status=404)
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in campaign.items()
    )
    return _page(f"Campaign {campaign['id']}", f"<table>{rows}</table>")


async def index(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    base = sim.public_url or str(request.base_url).rstrip("/")
    return JSONResponse(
        {"name": "mailivery-simulator", "api": f"{base}{API_PREFIX}", "state": f"{base}/_sim/state"}
    )


# --------------------------------------------------------------------------------------------------
# Control endpoints (no auth)
# --------------------------------------------------------------------------------------------------

_FAULT_METHODS = frozenset(
    {
        "fail_next",
        "error_rate",
        "latency",
        "start_fails",
        "drop_next_webhooks",
        "duplicate_webhooks",
        "delay_webhooks",
        "reorder_webhooks",
    }
)


async def _json_object(request: Request) -> dict[str, Any]:
    if _declared_too_large(request):
        raise _TooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge()
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise SimulatedApiError(400, "INVALID_JSON", "The body is not valid JSON.") from exc
    if not isinstance(parsed, dict):
        raise SimulatedApiError(400, "INVALID_JSON", "The body must be a JSON object.")
    return parsed


def _control(
    handler: Callable[[Request, Simulator], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        sim: Simulator = request.app.state.sim
        try:
            return await handler(request, sim)
        except SimulatedApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except ConsentNotFound as exc:
            return _error(404, "CONSENT_NOT_FOUND", str(exc))
        except (TypeError, ValueError) as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))

    return endpoint


async def _faults(request: Request, sim: Simulator) -> Response:
    if request.method == "DELETE":
        sim.faults.clear()
    elif request.method == "POST":
        body = await _json_object(request)
        unknown = sorted(set(body) - _FAULT_METHODS)
        if unknown:
            raise SimulatedApiError(
                400,
                "INVALID_FAULT",
                f"Unknown fault(s) {unknown}; known: {sorted(_FAULT_METHODS)}.",
            )
        for name, args in body.items():
            method = getattr(sim.faults, name)
            if isinstance(args, dict):
                method(**args)
            elif isinstance(args, list):
                method(*args)
            else:
                method(args)
    return _ok(sim.faults.snapshot())


async def _state(request: Request, sim: Simulator) -> Response:
    return JSONResponse(sim.snapshot())


async def _reset(request: Request, sim: Simulator) -> Response:
    sim.reset()
    return _ok({"reset": True})


async def _config(request: Request, sim: Simulator) -> Response:
    body = await _json_object(request)
    for key in ("webhook_url", "public_url"):
        if key in body:
            value = body[key]
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string or null")
            setattr(sim, key, value or None)
    if "meta_includes_tags" in body:
        sim.meta_includes_tags = bool(body["meta_includes_tags"])
    unknown = sorted(set(body) - {"webhook_url", "public_url", "meta_includes_tags"})
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}")
    return _ok(
        {
            "webhook_url": sim.webhook_url,
            "public_url": sim.public_url,
            "meta_includes_tags": sim.meta_includes_tags,
        }
    )


async def _flush(request: Request, sim: Simulator) -> Response:
    return _ok({"flushed": sim.flush_webhooks()})


_CREATE_KEYS = frozenset(
    {
        "email",
        "first_name",
        "last_name",
        "meta",
        "status",
        "send_webhook",
        "tags",
        "email_per_day",
        "response_rate",
        "timezone",
        "provider_type",
        "event",
    }
)


async def _create(request: Request, sim: Simulator) -> Response:
    body = await _json_object(request)
    unknown = sorted(set(body) - _CREATE_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}")
    email = body.get("email")
    if not isinstance(email, str) or not email:
        raise ValueError("email is required")
    if body.get("status", "pending") not in CAMPAIGN_STATUSES:
        raise ValueError(f"status must be one of {list(CAMPAIGN_STATUSES)}")
    for key in ("first_name", "timezone", "provider_type"):
        if key in body and not isinstance(body[key], str):
            raise ValueError(f"{key} must be a string")
    for key in ("last_name", "event"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ValueError(f"{key} must be a string or null")
    for key in ("email_per_day", "response_rate"):
        if key in body and (isinstance(body[key], bool) or not isinstance(body[key], int)):
            raise ValueError(f"{key} must be an integer")
    if "send_webhook" in body and not isinstance(body["send_webhook"], bool):
        raise ValueError("send_webhook must be true or false")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("tags must be a list of strings")
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, str | dict):
        raise ValueError("meta must be an object, a string or null")
    if isinstance(meta, dict):
        body["meta"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    return _ok(sim.create_campaign(**body))


async def _campaign_action(request: Request, sim: Simulator) -> Response:
    campaign_id = _campaign_id(request.path_params["campaign_id"])
    action = request.path_params["action"]
    if action == "connection-problem":
        return _ok(sim.connection_problem(campaign_id))
    if action == "reconnect":
        return _ok(sim.reconnect(campaign_id))
    if action == "status":
        body = await _json_object(request)
        status = body.get("status")
        if not isinstance(status, str):
            raise ValueError("status is required")
        return _ok(sim.set_status(campaign_id, status))
    raise SimulatedApiError(404, "NOT_FOUND", f"Unknown campaign action {action!r}.")


async def _consent_action(request: Request, sim: Simulator) -> Response:
    token = request.path_params["token"]
    if request.path_params["action"] == "accept":
        return _ok(sim.accept(token))
    if request.path_params["action"] == "decline":
        sim.decline(token)
        return _ok({"declined": True})
    raise SimulatedApiError(404, "NOT_FOUND", "Unknown consent action.")


# --------------------------------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------------------------------


async def _http_exception(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        code = _CODES.get(exc.status_code)
        if exc.status_code == 404:
            return _error(404, "NOT_FOUND", f"No route {request.method} {request.url.path}.")
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)
    return _error(500)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("simulator: unexpected error", exc_info=exc)
    return _error(500, "INTERNAL_SERVER_ERROR", "Unexpected simulator error.")


def create_app(sim: Simulator) -> Starlette:
    """The ASGI app serving `sim`: API under ``/api/v1``, consent pages, ``/_sim`` controls."""
    routes = [
        Route("/", index, methods=["GET"]),
        Mount(API_PREFIX, app=_api_app(sim)),
        Route("/oauth/consent/{token}", consent_page, methods=["GET"]),
        Route("/oauth/consent/{token}/accept", consent_accept, methods=["POST"]),
        Route("/oauth/consent/{token}/decline", consent_decline, methods=["POST"]),
        Route("/dashboard/campaigns/{campaign_id}", dashboard, methods=["GET"]),
        Route("/_sim/faults", _control(_faults), methods=["GET", "POST", "DELETE"]),
        Route("/_sim/state", _control(_state), methods=["GET"]),
        Route("/_sim/reset", _control(_reset), methods=["POST"]),
        Route("/_sim/config", _control(_config), methods=["POST"]),
        Route("/_sim/webhooks/flush", _control(_flush), methods=["POST"]),
        Route("/_sim/campaigns", _control(_create), methods=["POST"]),
        Route(
            "/_sim/campaigns/{campaign_id}/{action}", _control(_campaign_action), methods=["POST"]
        ),
        Route("/_sim/consents/{token}/{action}", _control(_consent_action), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_exception, Exception: _server_error},
    )
    app.state.sim = sim
    return app
