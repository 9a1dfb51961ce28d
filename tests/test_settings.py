"""Settings from MAILBOX_FLOW_* variables, and a flow built from them."""

from __future__ import annotations

from datetime import timedelta

import pytest

import mailbox_flow
from mailbox_flow import ConfigurationError, MailboxFlow, Settings


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MAILBOX_FLOW_* variable lands in its setting; secrets stay hidden in repr."""
    monkeypatch.setenv("MAILBOX_FLOW_DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("MAILBOX_FLOW_MAILIVERY_API_KEY", "key-123456")
    monkeypatch.setenv("MAILBOX_FLOW_WEBHOOK_SECRET", "hook-secret-9")
    monkeypatch.setenv("MAILBOX_FLOW_STUCK_AFTER", "PT30M")
    monkeypatch.setenv("MAILBOX_FLOW_RATE_PER_SECOND", "2.5")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "sqlite:///x.db"
    assert settings.mailivery_api_key is not None
    assert settings.mailivery_api_key.get_secret_value() == "key-123456"
    assert settings.stuck_after == timedelta(minutes=30)
    assert settings.rate_per_second == 2.5
    assert "key-123456" not in repr(settings) and "hook-secret-9" not in repr(settings)


def test_defaults_are_zero_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no environment, the database is a SQLite file and Mailivery is the real API."""
    for name in ("DATABASE_URL", "MAILIVERY_API_KEY", "WEBHOOK_SECRET", "MAILIVERY_BASE_URL"):
        monkeypatch.delenv(f"MAILBOX_FLOW_{name}", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "sqlite:///mailbox_flow.db"
    assert settings.mailivery_base_url == "https://app.mailivery.io/api/v1"
    assert settings.mailivery_api_key is None


def test_flow_from_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MailboxFlow(settings=...) builds its client and secret from the settings."""
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/s.db",  # type: ignore[call-arg]
                        mailivery_api_key="key-abc", webhook_secret="sec-abc-0123456789-0123456789-0123")
    with MailboxFlow(settings=settings) as flow:
        flow.create_schema()
        assert flow.client is not None
        flow.verify_secret("sec-abc-0123456789-0123456789-0123")


def test_flow_without_client_says_what_is_missing(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Using Mailivery with no API key configured raises ConfigurationError naming the variable."""
    monkeypatch.delenv("MAILBOX_FLOW_MAILIVERY_API_KEY", raising=False)
    with MailboxFlow(f"sqlite:///{tmp_path}/n.db") as flow:
        flow.create_schema()
        with pytest.raises(ConfigurationError, match="MAILBOX_FLOW_MAILIVERY_API_KEY"):
            flow.request_connection(owner_id="u", email="a@b.co", first_name="A")


def test_bad_orphan_policy_is_refused(tmp_path) -> None:
    """An unknown orphan policy is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        MailboxFlow(f"sqlite:///{tmp_path}/p.db", orphan_policy="burn")


def test_public_names_are_pinned() -> None:
    """mailbox_flow.__all__ is the public API; changing it is a deliberate act."""
    assert sorted(mailbox_flow.__all__) == sorted([
        "Action", "AsyncMailiveryClient", "AuditEntry", "Campaign", "ConcurrentUpdate", "ConfigurationError",
        "Delivery",
        "DuplicateMailbox", "Finding", "InvalidInput", "InvalidTransition", "MailboxFlow",
        "MailboxFlowError", "MailboxNotFound", "Mailbox", "MailiveryClient", "MailiveryError",
        "Outcome", "Reason", "ReconcileReport", "Settings", "Source", "State", "StorageError",
        "WebhookAuthError", "WebhookEvent", "WebhookPayloadError", "WebhookResult", "__version__",
    ])
    for name in mailbox_flow.__all__:
        assert hasattr(mailbox_flow, name)


@pytest.mark.postgres
def test_pool_size_comes_from_settings(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's connection pool is sized by MAILBOX_FLOW_DB_POOL_SIZE / _DB_MAX_OVERFLOW."""
    from sqlalchemy.pool import QueuePool

    monkeypatch.delenv("MAILBOX_FLOW_DB_POOL_SIZE", raising=False)
    default = MailboxFlow(postgres_url, webhook_secret="x" * 32, settings=Settings(_env_file=None))
    assert default.store.engine.pool.size() == 20  # type: ignore[attr-defined]
    default.close()
    monkeypatch.setenv("MAILBOX_FLOW_DB_POOL_SIZE", "3")
    monkeypatch.setenv("MAILBOX_FLOW_DB_MAX_OVERFLOW", "1")
    flow = MailboxFlow(postgres_url, webhook_secret="x" * 32)
    pool = flow.store.engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool._max_overflow) == (3, 1)
    flow.close()


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "not a database URL"),
    ("", "not a database URL"),
    ("nosuchdb://u:hunter2@h/db", "unknown database 'nosuchdb'"),
])
def test_bad_database_url_is_a_configuration_error(url: str, message: str) -> None:
    """A malformed or unknown database URL: a typed error that names the problem, never the password."""
    with pytest.raises(ConfigurationError, match=message) as caught:
        MailboxFlow(url or "://", webhook_secret="x" * 32)
    assert "hunter2" not in str(caught.value)


def test_missing_postgres_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if `pip install mailbox-flow` only
    with pytest.raises(ConfigurationError, match=r"pip install 'mailbox-flow\[postgres\]'"):
        MailboxFlow("postgresql://postgres@127.0.0.1:5432/test", webhook_secret="x" * 32)
