"""The webhook edge over real HTTP: status codes, event types, lenient payloads."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mailbox_flow import MailboxFlow, MailiveryClient, State
from mailbox_flow.simulator import serve_in_thread
from mailbox_flow.web import create_app

from .helpers import SECRET, counts, webhook_body

LIMIT = 4096


@pytest.fixture
def receiver(flow: MailboxFlow, sim: Any) -> Iterator[str]:
    """The flow's webhook app on loopback; the simulator posts its webhooks there."""
    url, stop = serve_in_thread(create_app(flow, max_body_bytes=LIMIT), "127.0.0.1", 0)
    previous = sim.webhook_url
    sim.webhook_url = f"{url}/webhooks/mailivery/{SECRET}"
    yield url
    sim.wait_for_webhooks()
    sim.webhook_url = previous
    stop()


def post(url: str, body: bytes, secret: str = SECRET, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/webhooks/mailivery/{secret}", content=body, timeout=10, **kwargs)


def wait_state(flow: MailboxFlow, mailbox_id: Any, state: State, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        mb = flow.get(mailbox_id)
        if mb.state is state or time.monotonic() > deadline:
            return mb
        time.sleep(0.01)


def connect(flow: MailboxFlow, email: str = "ada@contoso.com") -> Any:
    return flow.request_connection(owner_id="u-1", email=email, first_name="Ada")


def test_consent_drives_the_mailbox_to_warming(flow: MailboxFlow, sim: Any, receiver: str) -> None:
    """The simulator's webhook, received over HTTP, ends the mailbox in warming."""
    mb = connect(flow)
    sim.accept(mb.oauth_url)
    sim.wait_for_webhooks()
    assert wait_state(flow, mb.id, State.WARMING).state is State.WARMING
    assert sim.webhooks_sent[-1].result == 200
    assert json.loads(sim.webhooks_sent[-1].body)["type"] == "campaign.pending"


def test_answers_outcome_and_ids(flow: MailboxFlow, sim: Any, receiver: str) -> None:
    """A processed delivery answers 200 with its outcome, delivery id, mailbox id and state."""
    mb = connect(flow)
    campaign = sim.accept(mb.oauth_url)
    assert sim.wait_for_webhooks()
    body = sim.webhooks_sent[-1].body
    again = post(receiver, body)
    assert again.status_code == 200
    assert again.json() == {"outcome": "duplicate", "delivery_id": again.json()["delivery_id"],
                            "mailbox_id": str(mb.id), "state": "warming"}
    assert campaign["id"] == flow.get(mb.id).campaign_id


def test_bad_secret_is_401_and_stores_nothing(flow: MailboxFlow, receiver: str) -> None:
    """A wrong secret in the path answers 401 and stores nothing."""
    before = counts(flow)
    response = post(receiver, webhook_body(5, "a@b.co"), secret="nope")
    assert response.status_code == 401
    assert counts(flow) == before


def test_malformed_is_400_and_stored_invalid(flow: MailboxFlow, receiver: str) -> None:
    """A malformed body answers 400 and is kept in the inbox as invalid."""
    response = post(receiver, b"{not json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_payload"
    stored = flow.deliveries("invalid")
    assert [d.id for d in stored] == [response.json()["delivery_id"]]
    assert stored[0].body == b"{not json"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_too_large_is_413_and_stores_nothing(flow: MailboxFlow, receiver: str, chunked: bool) -> None:
    """A body over the limit answers 413, declared or streamed, and stores nothing."""
    payload = b"x" * (LIMIT + 1)
    content: Any = iter([payload[:1000], payload[1000:]]) if chunked else payload
    response = post(receiver, content)
    assert response.status_code == 413
    assert counts(flow) == (0, 0, 0)


def test_deferred_is_202(flow: MailboxFlow, sim: Any, receiver: str) -> None:
    """When Mailivery cannot be asked the delivery answers 202 and stays to be finished."""
    mb = connect(flow)
    sim.webhook_url = None
    sim.accept(mb.oauth_url)
    sim.wait_for_webhooks()
    body = sim.webhooks_sent[-1].body
    sim.faults.fail_next(10, status=503)
    response = post(receiver, body)
    assert response.status_code == 202 and response.json()["outcome"] == "deferred"
    sim.faults.clear()
    assert post(receiver, body).json()["outcome"] == "started"


def test_wrong_method_and_unknown_path(receiver: str) -> None:
    """GET on the webhook path is 405; an unknown path is 404; neither is a 500."""
    assert httpx.get(f"{receiver}/webhooks/mailivery/{SECRET}").status_code == 405
    assert httpx.post(f"{receiver}/webhooks/other").status_code == 404


def test_healthz(flow: MailboxFlow, receiver: str, tmp_path: Any) -> None:
    """/healthz is 200 when the database answers and 503 when it does not."""
    assert httpx.get(f"{receiver}/healthz").json() == {"status": "ok"}
    broken = MailboxFlow(f"sqlite:///{tmp_path}/missing/dir/x.db",
                         client=MailiveryClient("k", "http://127.0.0.1:9/api/v1"),
                         webhook_secret=SECRET)
    url, stop = serve_in_thread(create_app(broken), "127.0.0.1", 0)
    try:
        response = httpx.get(f"{url}/healthz")
        assert response.status_code == 503
        hook = post(url, webhook_body(5, "a@b.co"))
        assert hook.status_code == 503
    finally:
        stop()


@pytest.mark.parametrize("background_workers", [0, 1])
def test_unexpected_error_is_a_503_logged_without_secrets(
    flow: MailboxFlow, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    background_workers: int,
) -> None:
    """A bug inside the flow answers 503 (the sender retries) and logs its type and where it was
    raised, rendered by the console renderer: no traceback, no local variables, no message, so
    neither the webhook secret nor the body reaches the log."""
    from mailbox_flow.audit import configure_logging

    def broken(self: MailboxFlow, delivery_id: int) -> Any:
        raise RuntimeError("boom with the body inside: correlation-token-xyz")

    body = webhook_body(5, "a@b.co")
    configure_logging("console", "INFO")
    try:
        if background_workers:
            monkeypatch.setattr(MailboxFlow, "process_delivery", broken)
        else:
            monkeypatch.setattr(MailboxFlow, "handle_webhook",
                                lambda self, body, secret, headers=None: broken(self, 0))
        app = create_app(flow, background_workers=background_workers)
        url, stop = serve_in_thread(app, "127.0.0.1", 0)
        try:
            response = post(url, body)
            if background_workers:  # acted on in the background; stop() waits for it
                assert response.status_code == 202
            else:
                assert response.status_code == 503 and response.json() == {"error": "unavailable"}
        finally:
            stop()
    finally:
        import structlog

        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "mailbox_flow.webhook_error" in err and "RuntimeError" in err, err
    assert "tests/test_web.py" in err and "in broken" in err, err
    for secret in (SECRET, "correlation-token-xyz", body.decode()[:20], "Traceback"):
        assert secret not in err, err


# -- every event type ----------------------------------------------------------------------------


def warming(flow: MailboxFlow, sim: Any) -> Any:
    mb = connect(flow)
    sim.accept(mb.oauth_url)
    sim.wait_for_webhooks()
    return wait_state(flow, mb.id, State.WARMING)


def test_created_event_starts_like_pending(flow: MailboxFlow, sim: Any, receiver: str) -> None:
    """campaign.created for an expected Microsoft mailbox is matched and started too."""
    mb = connect(flow)
    sim.webhook_url = None
    sim.accept(mb.oauth_url)
    sim.wait_for_webhooks()
    body = json.loads(sim.webhooks_sent[-1].body)
    body["type"], body["action"] = "campaign.created", "created"
    assert post(receiver, json.dumps(body).encode()).json()["outcome"] == "started"


def test_connection_problem_then_reconnect(flow: MailboxFlow, sim: Any, receiver: str) -> None:
    """An unknown (connection-problem) event pauses; campaign.updated after reconnect resumes."""
    mb = warming(flow, sim)
    sim.connection_problem(mb.campaign_id)
    sim.wait_for_webhooks()
    assert wait_state(flow, mb.id, State.PAUSED).state is State.PAUSED
    assert sim.count("PATCH", "/pause-warmup") == 0
    sim.reconnect(mb.campaign_id)
    sim.wait_for_webhooks()
    assert wait_state(flow, mb.id, State.WARMING).state is State.WARMING
    assert sim.count("PATCH", "/resume-warmup") == 1


def test_deleted_event(flow: MailboxFlow, sim: Any, receiver: str) -> None:
    """campaign.deleted (verified gone at Mailivery) ends the mailbox deleted, with no call."""
    mb = warming(flow, sim)
    sim.delete_campaign(mb.campaign_id)
    sim.wait_for_webhooks()
    assert wait_state(flow, mb.id, State.DELETED).state is State.DELETED
    assert sim.count("DELETE", "") == 0


def test_unknown_event_for_unknown_campaign_is_ignored(flow: MailboxFlow, receiver: str) -> None:
    """Any other campaign.* event for a campaign we do not know is stored and ignored."""
    response = post(receiver, webhook_body(4242, "x@y.co", type_="campaign.health_changed"))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert [d.status for d in flow.deliveries()] == ["ignored"]


# -- documented payload drift --------------------------------------------------------------------


def drift(body: dict[str, Any], variant: str) -> dict[str, Any]:
    account = body["account"]
    if variant == "lalst_name":
        account["lalst_name"] = account.pop("last_name", "L")
    elif variant == "campaignId":
        account["campaignId"] = account.pop("campaign_id")
    elif variant == "type_not_provider_type":
        account["type"] = account.pop("provider_type", "office")
    elif variant == "meta_json_string":
        account["meta"] = json.dumps(dict(
            kv.split("=", 1) for kv in account["meta"].split("&") if kv))
    elif variant == "meta_empty":
        account["meta"] = ""
    elif variant == "meta_null":
        account["meta"] = None
    elif variant == "no_tags":
        account.pop("tags", None)
    return body


@pytest.mark.parametrize("variant", ["lalst_name", "campaignId", "type_not_provider_type",
                                     "meta_json_string", "meta_empty", "meta_null", "no_tags"])
def test_documented_drift_still_matches(flow: MailboxFlow, sim: Any, receiver: str,
                                        variant: str) -> None:
    """Every documented variation of the payload is parsed and the mailbox starts."""
    mb = connect(flow)
    sim.webhook_url = None
    sim.accept(mb.oauth_url)
    sim.wait_for_webhooks()
    body = drift(json.loads(sim.webhooks_sent[-1].body), variant)
    response = post(receiver, json.dumps(body).encode())
    assert response.json()["outcome"] == "started", response.json()
    assert flow.get(mb.id).state is State.WARMING
