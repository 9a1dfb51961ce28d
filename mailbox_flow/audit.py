"""Structured logging: the library's event names, and log configuration for the edges.

The library itself only gets a logger (``structlog.get_logger("mailbox_flow")``) and emits dotted event
names: ``mailbox_flow.transition`` (one per transition, mirroring the audit row),
``mailbox_flow.effect_failed``, ``mailbox_flow.webhook`` and ``mailbox_flow.api_call``. It never passes
the API key, the webhook secret, OAuth URLs or correlation tokens to a logger. `configure_logging` is for
applications and the CLI; it adds `redact_secrets`, a last line of defence that masks OAuth-looking query
tokens and bearer values in any event.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "error_fields", "logger", "redact_secrets"]

logger = structlog.get_logger("mailbox_flow")

_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def _scrub(value: str) -> str:
    value = _URL_QUERY.sub(r"\1?<redacted>", value)
    return _BEARER.sub(r"\1<redacted>", value)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor masking URL query strings and bearer tokens in string values."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str) and ("?" in value or "earer" in value):
            event_dict[key] = _scrub(value)
    return event_dict


def error_fields(exc: BaseException, frames: int = 6) -> dict[str, str]:
    """Log fields for an unexpected exception that never carry a secret: its type, and where it was
    raised (the innermost ``frames`` frames as ``file:line in function``, innermost first).

    The library logs these instead of ``exc_info``: a rendered traceback holds the exception's message
    (a database error quotes the SQL and its parameters, a webhook body among them), and structlog's
    console renderer prints every frame's local variables (the webhook secret among them).
    """
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " < ".join(f"{_short_path(f.filename)}:{f.lineno} in {f.name}" for f in reversed(stack))
    return {"error": type(exc).__name__, "where": where}


def _short_path(filename: str) -> str:
    """``.../site-packages/sqlalchemy/pool/base.py`` -> ``sqlalchemy/pool/base.py``."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("mailbox_flow", "site-packages", "dist-packages"):
        if marker in parts[:-1]:
            at = len(parts) - 1 - parts[::-1].index(marker)
            return "/".join(parts[at + (marker != "mailbox_flow"):])
    return "/".join(parts[-2:])


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing (it may be swapped later)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: str = "console", level: str | int = "INFO") -> None:
    """Configure structlog (and the stdlib root logger) for an application or the CLI."""
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
