"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from rich.console import Console

from mailbox_flow import MailboxFlow

SECRET = "test-webhook-secret-3f9a-7c41d2e8b6a05f93"  # >= 32 bytes: shorter ones warn
API_KEY = "sim-api-key-7d1e0c55"


def counts(flow: MailboxFlow) -> tuple[int, int, int]:
    """Rows in (mailbox, mailbox_transition, webhook_delivery)."""
    return tuple(  # type: ignore[return-value]
        flow.store.count(t) for t in ("mailbox", "mailbox_transition", "webhook_delivery")
    )


def webhook_body(campaign_id: int, email: str, *, meta: Any = "", type_: str = "campaign.pending",
                 first_name: str = "Ada") -> bytes:
    """A webhook body in Mailivery's documented shape."""
    action = type_.split(".", 1)[-1]
    return json.dumps({
        "type": type_,
        "action": action,
        "account": {"campaign_id": campaign_id, "first_name": first_name, "last_name": "L",
                    "email": email, "provider_type": "office", "tags": [], "meta": meta},
    }).encode()


def last_webhook(sim: Any) -> bytes:
    """The body of the last webhook the simulator sent."""
    sim.wait_for_webhooks()
    return bytes(sim.webhooks_sent[-1][0])


def consent(sim: Any, mailbox: Any) -> bytes:
    """Accept the mailbox's OAuth consent at the simulator; return the webhook it sent."""
    sim.accept(mailbox.oauth_url)
    return last_webhook(sim)


def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_url: str, width: int) -> Iterator[None]:
    """For a CLI test: its own directory, settings from the environment only (the simulator, this
    suite's key and secret, no throttling), consoles ``width`` columns wide; structlog's set-up put
    back afterwards. Used as ``yield from cli_env(...)`` in an autouse fixture."""
    from mailbox_flow import cli

    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("MAILBOX_FLOW_"):
            monkeypatch.delenv(key)
    for key, value in {
        "MAILBOX_FLOW_MAILIVERY_API_KEY": API_KEY,
        "MAILBOX_FLOW_MAILIVERY_BASE_URL": api_url,
        "MAILBOX_FLOW_RATE_PER_SECOND": "0",
        "MAILBOX_FLOW_WEBHOOK_SECRET": SECRET,
        "MAILBOX_FLOW_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "console", Console(width=width))
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, width=width))
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
