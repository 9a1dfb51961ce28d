"""Configuration from ``MAILBOX_FLOW_*`` environment variables (and an optional ``.env`` file)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything a flow needs to run. Secrets are `SecretStr`: they never show in reprs or logs."""

    model_config = SettingsConfigDict(
        env_prefix="MAILBOX_FLOW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default="sqlite:///mailbox_flow.db",
        description="SQLAlchemy URL. SQLite (the default, a file in the working directory) or "
        "PostgreSQL (postgresql://user@host/db, driven by psycopg 3) for many workers.",
    )
    mailivery_api_key: SecretStr | None = Field(default=None, description="Mailivery API key.")
    mailivery_base_url: str = Field(
        default="https://app.mailivery.io/api/v1", description="Mailivery API base URL."
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The secret path segment of the webhook URL configured in Mailivery's admin panel.",
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
    timeout: float = Field(default=10.0, gt=0, description="Per-request timeout in seconds.")
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
    lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a worker may hold a mailbox while calling Mailivery."
    )
    orphan_policy: Literal["keep", "delete"] = Field(
        default="keep",
        description="What to do at Mailivery with a campaign nobody asked for: keep it pending "
        "(it costs nothing) or delete it.",
    )
    stuck_after: timedelta = Field(
        default=timedelta(hours=1), description="A mailbox pending longer than this is stuck."
    )
    expire_after: timedelta = Field(
        default=timedelta(days=7), description="An OAuth not completed after this is abandoned."
    )
    log_format: Literal["console", "json"] = Field(
        default="console", description="Log rendering at the edges (CLI, examples)."
    )
    log_level: str = Field(default="INFO", description="Log level at the edges.")
    log_hash_emails: bool = Field(
        default=False,
        description="Log a keyed hash of each email address (field email_hash) instead of the address "
        "(field email), for partners who treat addresses as personal data.",
    )
    log_email_salt: SecretStr | None = Field(
        default=None,
        description="Per-deployment key of the email hashes in logs; the webhook secret when unset.",
    )
