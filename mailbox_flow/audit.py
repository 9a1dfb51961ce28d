"""Structured logging: the library's loggers, its event names, and log configuration for the edges.

The library gets its loggers from `get_logger` (``get_logger("mailbox_flow.flow")``, one per module) and
emits dotted event names: ``mailbox_flow.transition`` (one per transition, mirroring the audit row),
``mailbox_flow.effect_failed``, ``mailbox_flow.webhook``, ``mailbox_flow.reconcile`` and
``mailbox_flow.api_call``. Where an event goes is the host's decision:

- the host configured structlog (``structlog.is_configured()``): the event goes through the host's
  structlog processors and logger factory (with ``structlog.stdlib.LoggerFactory`` it lands in the
  ``mailbox_flow.<module>`` standard library logger);
- otherwise it is a standard library record of the ``mailbox_flow.<module>`` logger, so the host's
  ``logging`` configuration decides levels and handlers. With no configuration at all nothing is
  printed below WARNING (Python's last-resort handler prints WARNING and above to stderr). The record's
  message is ``event key=value ...``; ``record.event`` is the event name and each field is a record
  attribute (``record.mailbox_id``, ...). Addresses are masked (``a***@contoso.com``), URL query strings
  and bearer values redacted.

The library never passes the API key, the webhook secret, OAuth URLs or correlation tokens to a logger.
`configure_logging` is for applications, the CLI and the examples; it adds `redact_secrets`, a last line
of defence that masks OAuth-looking query tokens and bearer values in any event, and it leaves a
structlog configuration made by someone else alone unless told ``force=True``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

from ._redact import mask_email, mask_emails, scrub
from .errors import ConfigurationError
from .settings import LOG_LEVELS

__all__ = ["LibraryLogger", "configure_logging", "error_fields", "get_logger", "logger", "redact_secrets"]

#: LogRecord attributes a field may not overwrite (such a field is kept as ``field_<name>``).
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "event"}
_NUMBERS = (int, float)  # (bool included)


class LibraryLogger:
    """A library logger: ``info(event, **fields)`` (and debug, warning, error, critical).

    Through structlog when the host configured structlog, else a standard library record (see the
    module docstring). Unconfigured and below the stdlib logger's level, a call costs one flag check
    and one ``isEnabledFor``.
    """

    __slots__ = ("_stdlib", "_structlog", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._stdlib = logging.getLogger(name)
        self._structlog = structlog.get_logger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit(logging.CRITICAL, "critical", event, fields)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog, method)(event, **fields)
        elif self._stdlib.isEnabledFor(level):
            self._record(level, event, fields)

    def _record(self, level: int, event: str, fields: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"event": event}
        parts = [event]
        for key, value in fields.items():
            if value is None:
                pass
            elif not isinstance(value, _NUMBERS):
                text = value if isinstance(value, str) else str(value)
                value = mask_email(text) if key == "email" else mask_emails(scrub(text))
                parts.append(f"{key}={_quoted(value)}")
            else:
                parts.append(f"{key}={value}")
            extra[f"field_{key}" if key in _RESERVED else key] = value
        # stacklevel 4: the record names the library function that logged (not this module)
        self._stdlib.log(level, " ".join(parts), extra=extra, stacklevel=4)


def _quoted(text: str) -> str:
    if text and " " not in text and '"' not in text and "=" not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def get_logger(name: str) -> LibraryLogger:
    """The logger the library's module ``name`` (``mailbox_flow.<module>``) emits its events to."""
    return LibraryLogger(name)


logger = get_logger("mailbox_flow")


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor masking URL query strings and bearer tokens in string values."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str) and ("?" in value or "earer" in value):
            event_dict[key] = scrub(value)
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


def configure_logging(fmt: str = "console", level: str | int = "INFO", *, force: bool = False) -> bool:
    """Configure structlog (and the stdlib root logger) for an application, the CLI or an example.

    ``fmt`` is ``"console"`` or ``"json"``; ``level`` a level name (``DEBUG``, ``INFO``, ``WARNING``,
    ``ERROR``, ``CRITICAL``, any case) or number; anything else raises `ConfigurationError`. Events are
    written to stderr. When structlog was already configured by someone else (a host application),
    nothing is changed and False is returned, unless ``force=True``; True when it configured.
    """
    if fmt not in ("console", "json"):
        raise ConfigurationError(f"log format must be 'console' or 'json', not {fmt!r}")
    numeric = _level_number(level)
    if structlog.is_configured() and not force:
        return False
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
    return True


def _level_number(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return level
    name = level.strip().upper() if isinstance(level, str) else ""
    if name not in LOG_LEVELS:
        raise ConfigurationError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return int(logging.getLevelName(name))
