"""Logs: one event per transition, and no secret in any log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import structlog
from structlog.testing import capture_logs

from mailbox_flow import MailboxFlow, MailiveryClient, WebhookAuthError
from mailbox_flow.audit import configure_logging, redact_secrets
from mailbox_flow.errors import MailiveryServerError

from .helpers import API_KEY, SECRET, consent, webhook_body


@pytest.fixture
def json_logs() -> Iterator[None]:
    """Logging configured as an application would, restored afterwards."""
    configure_logging("json", "DEBUG")
    yield
    structlog.reset_defaults()


def test_one_log_event_per_transition(flow: MailboxFlow, sim: Any) -> None:
    """Each transition emits one mailbox_flow.transition event matching its audit row."""
    with capture_logs() as events:
        mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
        flow.handle_webhook(consent(sim, mb), secret=SECRET)
    logged = [e for e in events if e["event"] == "mailbox_flow.transition"]
    trail = flow.history(mb.id)
    assert [(e["trigger"], e["from_state"], e["to_state"], e["source"], e["request_id"])
            for e in logged] == [
        (a.trigger, a.from_state.value, a.to_state.value, a.source.value, a.request_id)
        for a in trail
    ]
    assert all(e["mailbox_id"] == str(mb.id) for e in logged)


def test_no_secret_reaches_any_log_line(capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture, json_logs: None,
                                        database_url: str, api_url: str, sim: Any) -> None:
    """A full run (happy path, failures, bad secret, orphan, reconcile) logs no secret."""
    caplog.set_level(logging.DEBUG)
    client = MailiveryClient(API_KEY, api_url, rate_per_second=0)
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()

    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    body = consent(sim, mb)
    with pytest.raises(WebhookAuthError):
        flow.handle_webhook(body, secret="wrong-" + SECRET)
    sim.faults.fail_next(1, status=429, retry_after=1)
    flow.handle_webhook(body, secret=SECRET)
    flow.pause_warmup(mb.id)
    flow.resume_warmup(mb.id)
    other = sim.create_campaign(email="eve@example.com", first_name="Eve", send_webhook=False)
    flow.handle_webhook(webhook_body(other["id"], "eve@example.com"), secret=SECRET)
    sim.faults.fail_next(10, status=500)
    with pytest.raises(MailiveryServerError):
        flow.request_connection(owner_id="u", email="bob@contoso.com", first_name="Bob")
    sim.faults.clear()
    flow.reconcile(stuck_after=timedelta(0), expire_after=timedelta(0), fix=True, remote=True)
    flow.close()

    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert "mailbox_flow.transition" in text and "mailbox_flow.api_call" in text
    oauth = urlsplit(mb.oauth_url or "")
    url_tokens = [v for _k, v in parse_qsl(oauth.query) if len(v) >= 8]
    url_tokens.append(oauth.path.rsplit("/", 1)[-1])
    secrets = [API_KEY, SECRET, mb.oauth_url, flow.get(mb.id).correlation_token, *url_tokens]
    for secret in secrets:
        assert secret and secret not in text


def test_redaction_processor_masks_urls_and_bearer_tokens() -> None:
    """The edge processor masks URL query strings and bearer values in any event."""
    event = {"event": "x", "url": "https://login.example.com/authorize?code=abc123&state=s",
             "auth": "Bearer sk_live_123", "n": 3}
    out = redact_secrets(None, "info", dict(event))
    assert out["url"] == "https://login.example.com/authorize?<redacted>"
    assert out["auth"] == "Bearer <redacted>"
    assert out["n"] == 3
