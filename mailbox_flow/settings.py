"""Configuration from ``MAILBOX_FLOW_*`` environment variables (and an optional ``.env`` file)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._durations import parse_duration, seconds
from ._redact import hide_password
from ._security import clear_text_base_url

__all__ = ["LOG_LEVELS", "Settings"]

#: The log level names `Settings.log_level` and `audit.configure_logging` accept (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: A duration: ``90m``, ``1h``, ``7d``, ``1h30m`` (as the CLI's options take them), ISO 8601 (``PT1H``)
#: or a plain number of seconds.
Duration = Annotated[timedelta, BeforeValidator(
    lambda v: parse_duration(v, bare_seconds=True) if isinstance(v, str) else v)]
#: A number of seconds, or a duration as `Duration` takes it (``90s``, ``2m``).
Seconds = Annotated[float, BeforeValidator(lambda v: seconds(v) if isinstance(v, str) else v)]


class Settings(BaseSettings):
    """Everything a flow needs to run. Secrets are `SecretStr`, and the repr masks the database URL's
    password: none of them shows in reprs or logs (the attributes keep the values)."""

    model_config = SettingsConfigDict(
        env_prefix="MAILBOX_FLOW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default="sqlite:///mailbox_flow.db",
        description="SQLAlchemy URL. SQLite (the default, a file in the working directory) or "
        "PostgreSQL (postgresql://user@host/db, or the postgres://... of hosting providers, driven by "
        "psycopg 3) for many workers.",
    )
    mailivery_api_key: SecretStr | None = Field(default=None, description="Mailivery API key.")
    mailivery_base_url: str = Field(
        default="https://app.mailivery.io/api/v1",
        description="Mailivery API base URL: https (http only on a loopback host, for a local simulator).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The secret path segment of the webhook URL configured in Mailivery's admin panel "
        "(32 bytes or more: a shorter one warns).",
    )
    webhook_background_workers: int = Field(
        default=0, ge=0, le=256,
        description="Webhook receiver: 0 acts on each delivery before answering it; N > 0 answers "
        "202 as soon as the delivery is stored and acts on it in N background threads.",
    )
    request_id_header: str = Field(default="X-Request-ID", description="Header carrying request ids.")
    rate_per_second: float = Field(
        default=4.0, ge=0, description="Client-side rate limit (4/s = Mailivery's 240/minute); 0 = off."
    )
    timeout: Seconds = Field(default=10.0, gt=0, description="Per-request timeout in seconds.")
    max_attempts: int = Field(default=4, ge=1, le=20, description="Attempts per Mailivery call.")
    db_pool_size: int = Field(
        default=20, ge=1,
        description="PostgreSQL: connections each process keeps open. The webhook receiver handles up "
        "to 40 deliveries at once (a thread each), each holding a connection for one statement at a "
        "time; beyond this many, connections are opened and closed per use, which costs more than "
        "the statement.",
    )
    db_max_overflow: int = Field(
        default=10, ge=0, description="PostgreSQL: connections opened beyond the pool at busy moments."
    )
    lease_seconds: Seconds = Field(
        default=60.0, gt=0, description="How long a worker may hold a mailbox while calling Mailivery."
    )
    orphan_policy: Literal["keep", "delete"] = Field(
        default="keep",
        description="What to do at Mailivery with a campaign nobody asked for: keep it pending "
        "(it costs nothing) or delete it.",
    )
    stuck_after: Duration = Field(
        default=timedelta(hours=1), description="A mailbox pending longer than this is stuck."
    )
    expire_after: Duration = Field(
        default=timedelta(days=7), description="An OAuth not completed after this is abandoned."
    )
    log_format: Literal["console", "json"] = Field(
        default="console", description="Log rendering at the edges (CLI, examples)."
    )
    log_level: str = Field(
        default="INFO",
        description="Log level of `configure_logging`: the CLI and the examples (DEBUG, INFO, WARNING, "
        "ERROR or CRITICAL). A host application sets the library's level in its own logging "
        "configuration (the mailbox_flow logger) instead.",
    )
    log_hash_emails: bool = Field(
        default=False,
        description="Log a keyed hash of each email address (field email_hash) instead of the address "
        "(field email), for partners who treat addresses as personal data.",
    )
    log_email_salt: SecretStr | None = Field(
        default=None,
        description="Per-deployment key of the email hashes in logs; the webhook secret when unset.",
    )

    @field_validator("mailivery_base_url")
    @classmethod
    def _not_in_clear(cls, value: str) -> str:
        problem = clear_text_base_url(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        name = value.strip().upper() if isinstance(value, str) else value
        if name not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return name

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, hide_password(value) if name == "database_url" and isinstance(value, str) else value
