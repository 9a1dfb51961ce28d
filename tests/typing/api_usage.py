"""Uses the public API the way a partner would; checked with ``mypy --strict`` (never run by pytest).

Every ``assert_type`` pins what a caller gets back: when a signature or a return type changes, mypy fails
here before a partner's type checker does.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, assert_type

from starlette.applications import Starlette

import mailbox_flow
from mailbox_flow import (
    AsyncMailiveryClient,
    AuditEntry,
    ConcurrentUpdate,
    Delivery,
    DuplicateMailbox,
    Finding,
    InvalidInput,
    InvalidTransition,
    Mailbox,
    MailboxFlow,
    MailboxFlowError,
    MailiveryClient,
    MailiveryError,
    Outcome,
    ReconcileReport,
    Settings,
    Source,
    State,
    WebhookAuthError,
    WebhookPayloadError,
    WebhookResult,
    diagram,
    migrate,
)
from mailbox_flow.errors import MailiveryRateLimited, MailiveryUnavailable
from mailbox_flow.mailivery import Campaign, ConnectResult
from mailbox_flow.web import DEFAULT_MAX_BODY_BYTES, create_app


def build_flow() -> MailboxFlow:
    settings = Settings(database_url="sqlite:///typed.db", webhook_secret="s3cret-of-at-least-32-bytes-0123")
    assert_type(settings.database_url, str)
    assert_type(settings.stuck_after, timedelta)
    client = MailiveryClient(api_key="key", base_url="https://app.mailivery.io/api/v1", timeout=5.0)
    return MailboxFlow(client=client, settings=settings)


def connect(flow: MailboxFlow) -> str | None:
    try:
        mailbox = flow.request_connection(owner_id="user-42", email="ada@contoso.com", first_name="Ada",
                                          last_name="Lovelace", emails_per_day=40, response_rate=30)
    except InvalidInput as exc:
        assert_type(exc.field, str)
        return None
    except DuplicateMailbox as exc:
        assert_type(exc.email, str)
        return None
    except MailiveryError as exc:
        assert_type(exc.code, str | None)
        assert_type(exc.request_id, str | None)
        return None
    assert_type(mailbox, Mailbox)
    assert_type(mailbox.id, uuid.UUID)
    assert_type(mailbox.state, State)
    return mailbox.oauth_url


def receive(flow: MailboxFlow, body: bytes, secret: str) -> int:
    try:
        result = flow.handle_webhook(body, secret=secret, headers={"X-Request-ID": "r-1"})
    except WebhookAuthError:
        return 401
    except WebhookPayloadError as exc:
        assert_type(exc.message, str)
        return 400
    assert_type(result, WebhookResult)
    assert_type(result.outcome, Outcome)
    mailbox = result.mailbox
    if mailbox is not None:
        assert_type(mailbox.state, State)
    return 202 if result.outcome is Outcome.DEFERRED else 200


def receive_then_act(flow: MailboxFlow, body: bytes, secret: str) -> int | None:
    accepted = flow.accept_webhook(body, secret=secret)
    assert_type(accepted, WebhookResult)
    if accepted.outcome is not Outcome.ACCEPTED or accepted.delivery_id is None:
        return None
    assert_type(accepted.delivery_id, int)
    done = flow.process_delivery(accepted.delivery_id)
    assert_type(done.outcome, Outcome)
    return done.delivery_id


def commands(flow: MailboxFlow, mailbox_id: uuid.UUID) -> list[AuditEntry]:
    try:
        assert_type(flow.pause_warmup(mailbox_id), Mailbox)
        assert_type(flow.resume_warmup(str(mailbox_id), source=Source.CLI), Mailbox)
        assert_type(flow.reject(mailbox_id, delete_remote=True), Mailbox)
    except (InvalidTransition, ConcurrentUpdate):
        pass
    except MailiveryUnavailable as exc:
        if isinstance(exc, MailiveryRateLimited):
            assert_type(exc.retry_after, float | None)
    except MailboxFlowError:
        raise
    assert_type(flow.get(mailbox_id), Mailbox)
    assert_type(flow.find_by_email("ada@contoso.com"), Mailbox | None)
    assert_type(flow.list(state=State.WARMING, owner_id="user-42"), list[Mailbox])
    assert_type(flow.list("pending", limit=100), list[Mailbox])
    assert_type(flow.deliveries("received", limit=10), list[Delivery])
    history = flow.history(mailbox_id)
    assert_type(history[0].to_state, State)
    return history


def nightly(flow: MailboxFlow) -> int:
    report = flow.reconcile(stuck_after=timedelta(hours=1), expire_after=timedelta(days=7),
                            remote=True, fix=True)
    assert_type(report, ReconcileReport)
    findings: list[Finding] = report.findings
    for finding in findings:
        assert_type(finding.mailbox_id, uuid.UUID | None)
        assert_type(finding.age, timedelta)
    assert_type(report.to_dict(), dict[str, Any])
    return 0 if report.clean else 1


def edges(flow: MailboxFlow) -> Starlette:
    assert_type(diagram.mermaid(), str)
    assert_type(diagram.render("svg"), str)
    assert_type(migrate.upgrade("sqlite:///typed.db"), str | None)
    assert_type(mailbox_flow.__version__, str)
    create_app(flow, background_workers=4, max_queued=500, drain_seconds=5.0, sweep_seconds=30.0)
    return create_app(flow, max_body_bytes=DEFAULT_MAX_BODY_BYTES)


async def awaited_client() -> list[Campaign]:
    async with AsyncMailiveryClient(api_key="key", rate_per_second=4.0) as client:
        assert_type(await client.connect_microsoft(first_name="Ada", email="ada@contoso.com"),
                    ConnectResult)
        assert_type(await client.get_campaign(42), Campaign)
        assert_type(await client.start_warmup(42, request_id="rid"), dict[str, Any])
        assert_type(client.closed, bool)
        return await client.list_campaigns()
