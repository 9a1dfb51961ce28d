"""Answer first, act later: `accept_webhook`, `process_delivery` and the receiver's background workers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from mailbox_flow import InvalidInput, MailboxFlow, Outcome, State, WebhookAuthError, WebhookPayloadError
from mailbox_flow.models import utcnow
from mailbox_flow.simulator import serve_in_thread
from mailbox_flow.store import INBOX
from mailbox_flow.web import create_app

from .helpers import SECRET, counts, webhook_body

Serve = Callable[..., str]


@pytest.fixture
def serve(flow: MailboxFlow) -> Iterator[Serve]:
    """Start the flow's receiver with the given create_app options; stopped (lifespan run) at the end."""
    stops: list[Callable[[], None]] = []

    def start(**options: Any) -> str:
        url, stop = serve_in_thread(create_app(flow, **options), "127.0.0.1", 0)
        stops.append(stop)
        return url

    start.stops = stops  # type: ignore[attr-defined]
    yield start
    for stop in stops:
        stop()


def post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/webhooks/mailivery/{SECRET}", content=body, timeout=10)


def consented(flow: MailboxFlow, sim: Any, n: int) -> list[tuple[Any, bytes]]:
    """``n`` mailboxes whose consent was accepted, with the webhook body each produced."""
    sim.webhook_url = None  # nothing is delivered on its own: the test posts the bodies
    out = []
    for i in range(n):
        mailbox = flow.request_connection(owner_id="u", email=f"bg{i}@contoso.com", first_name="Ada")
        sim.accept(mailbox.oauth_url)
        sim.wait_for_webhooks()
        out.append((mailbox, bytes(sim.webhooks_sent[-1].body)))
    return out


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def statuses(flow: MailboxFlow) -> list[str]:
    return [d.status for d in flow.store.scan_deliveries("received")]


# -- the flow's two halves -----------------------------------------------------------------------


def test_accept_stores_and_process_acts(flow: MailboxFlow, sim: Any) -> None:
    """accept_webhook stores the delivery and calls nothing; process_delivery then warms the mailbox."""
    [(mailbox, body)] = consented(flow, sim, 1)
    calls = len(sim.calls)
    accepted = flow.accept_webhook(body, SECRET)
    assert accepted.outcome is Outcome.ACCEPTED and accepted.mailbox is None
    assert len(sim.calls) == calls  # nothing asked of Mailivery yet
    stored = flow.store.get_delivery(accepted.delivery_id or 0)
    assert stored is not None and (stored.status, stored.attempts) == ("received", 0)
    assert flow.get(mailbox.id).state is State.OAUTH_SENT

    result = flow.process_delivery(accepted.delivery_id or 0)
    assert result.outcome is Outcome.STARTED and result.mailbox is not None
    assert result.mailbox.state is State.WARMING
    done = flow.store.get_delivery(accepted.delivery_id or 0)
    assert done is not None and (done.status, done.attempts) == ("processed", 1)
    assert sim.count("PATCH", "/start-warmup") == 1


def test_a_handled_delivery_is_not_acted_on_again(flow: MailboxFlow, sim: Any) -> None:
    """process_delivery on a delivery already handled answers duplicate and calls nothing."""
    [(mailbox, body)] = consented(flow, sim, 1)
    accepted = flow.accept_webhook(body, SECRET)
    flow.process_delivery(accepted.delivery_id or 0)
    calls = len(sim.calls)
    again = flow.process_delivery(accepted.delivery_id or 0)
    assert again.outcome is Outcome.DUPLICATE and "already handled" in (again.detail or "")
    assert again.mailbox is not None and again.mailbox.id == mailbox.id
    assert len(sim.calls) == calls
    with pytest.raises(InvalidInput):
        flow.process_delivery(10_000_000)


def test_accept_repeats_are_duplicates_and_bad_input_is_refused(flow: MailboxFlow, sim: Any) -> None:
    """A repeat of an accepted delivery is a duplicate; a bad secret stores nothing; a bad body is
    stored as invalid, exactly as with handle_webhook."""
    [(_mailbox, body)] = consented(flow, sim, 1)
    first = flow.accept_webhook(body, SECRET)
    repeat = flow.accept_webhook(body, SECRET)
    assert (first.outcome, repeat.outcome) == (Outcome.ACCEPTED, Outcome.DUPLICATE)
    before = counts(flow)
    with pytest.raises(WebhookAuthError):
        flow.accept_webhook(body, "wrong")
    assert counts(flow) == before
    with pytest.raises(WebhookPayloadError) as info:
        flow.accept_webhook(b"{not json", SECRET)
    invalid = flow.store.get_delivery(info.value.delivery_id or 0)
    assert invalid is not None and invalid.status == "invalid"


# -- the receiver with background workers ---------------------------------------------------------


def test_receiver_answers_202_and_warms_in_the_background(flow: MailboxFlow, sim: Any,
                                                          serve: Serve) -> None:
    """With background workers the sender gets 202 accepted at once; the mailbox then warms."""
    url = serve(background_workers=2)
    [(mailbox, body)] = consented(flow, sim, 1)
    response = post(url, body)
    assert response.status_code == 202
    assert response.json()["outcome"] == "accepted" and response.json()["mailbox_id"] is None
    assert wait_for(lambda: flow.get(mailbox.id).state is State.WARMING)
    delivery = flow.store.get_delivery(response.json()["delivery_id"])
    assert delivery is not None and delivery.status == "processed"
    again = post(url, body)
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    assert sim.count("PATCH", "/start-warmup") == 1


def test_flood_in_the_background_warms_each_mailbox_once(flow: MailboxFlow, sim: Any,
                                                         serve: Serve) -> None:
    """Every body twice, 8 connections at once: one start per mailbox, every delivery stored."""
    url = serve(background_workers=3)
    pairs = consented(flow, sim, 12)
    bodies = [body for _m, body in pairs for _ in range(2)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post(url, b), bodies))
    assert {r.status_code for r in answers} <= {200, 202}
    assert sum(r.json()["outcome"] == "accepted" for r in answers) == len(pairs)
    assert wait_for(lambda: all(flow.get(m.id).state is State.WARMING for m, _b in pairs))
    assert wait_for(lambda: not statuses(flow))
    assert sim.count("PATCH", "/start-warmup") == len(pairs)
    assert flow.store.count("webhook_delivery") == len(bodies)


def test_a_full_queue_processes_before_answering(flow: MailboxFlow, sim: Any, serve: Serve) -> None:
    """When max_queued deliveries already wait, the next is acted on before it is answered (200)."""
    url = serve(background_workers=1, max_queued=1)
    pairs = consented(flow, sim, 4)
    sim.faults.latency(0.3, "/start-warmup")  # the one worker is busy for a while with each delivery
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda pair: post(url, pair[1]), pairs))
    codes = sorted(r.status_code for r in answers)
    assert 202 in codes and 200 in codes, codes
    inline = [r.json() for r in answers if r.status_code == 200]
    assert all(a["outcome"] == "started" and a["state"] == "warming" for a in inline)
    assert wait_for(lambda: all(flow.get(m.id).state is State.WARMING for m, _b in pairs))
    assert sim.count("PATCH", "/start-warmup") == len(pairs)


def test_shutdown_out_of_time_leaves_deliveries_for_a_replay(flow: MailboxFlow, sim: Any,
                                                             serve: Serve) -> None:
    """Deliveries still waiting when the drain time is up stay received; processing them later
    finishes the job, with one start call per mailbox."""
    url = serve(background_workers=1, drain_seconds=0)
    pairs = consented(flow, sim, 3)
    sim.faults.latency(0.4, "/start-warmup")
    answers = [post(url, body) for _m, body in pairs]
    assert [r.status_code for r in answers] == [202, 202, 202]
    serve.stops[-1]()  # type: ignore[attr-defined]  # lifespan shutdown: no time to drain
    left = [d.id for d in flow.store.scan_deliveries("received")]
    assert 1 <= len(left) <= 2, left  # the first was being processed; the others were not started
    sim.faults.latency(0)
    for delivery_id in left:
        assert flow.process_delivery(delivery_id).outcome is Outcome.STARTED
    assert all(flow.get(m.id).state is State.WARMING for m, _b in pairs)
    assert sim.count("PATCH", "/start-warmup") == len(pairs)


def test_background_options_are_checked(flow: MailboxFlow) -> None:
    """Nonsense options are refused when the app is built, not on the first delivery."""
    for options in ({"background_workers": -1}, {"max_queued": 0}, {"drain_seconds": -1},
                    {"background_workers": 1, "sweep_seconds": 0}):
        with pytest.raises(ValueError):
            create_app(flow, **options)


def test_healthz_and_invalid_bodies_unchanged_in_background(flow: MailboxFlow, serve: Serve) -> None:
    """The health check and a malformed body answer as they do without background workers."""
    url = serve(background_workers=1)
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    bad = post(url, b"[]")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_payload"
    body = webhook_body(991, "nobody@contoso.com")
    answer = post(url, body)
    assert answer.status_code == 202
    assert wait_for(lambda: not statuses(flow))
    delivery = flow.store.get_delivery(answer.json()["delivery_id"])
    assert delivery is not None and delivery.outcome == "rejected", json.dumps(
        {"status": delivery.status if delivery else None})


def test_a_delivery_handed_out_twice_is_acted_on_once(flow: MailboxFlow, sim: Any) -> None:
    """Two workers given the same accepted delivery at once (a queue that delivers twice): one acts,
    the other answers duplicate; and one taken by another worker within its lease is left to it."""
    [(mailbox, body)] = consented(flow, sim, 1)
    accepted = flow.accept_webhook(body, SECRET)
    sim.faults.latency(0.3, "/start-warmup")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(flow.process_delivery, [accepted.delivery_id or 0] * 2))
    assert sorted(r.outcome.value for r in results) == ["duplicate", "started"]
    assert sim.count("PATCH", "/start-warmup") == 1
    assert flow.get(mailbox.id).state is State.WARMING
    done = flow.store.get_delivery(accepted.delivery_id or 0)
    assert done is not None and done.status == "processed"

    taken = flow.accept_webhook(webhook_body(4242, "x@y.co"), SECRET)
    stored = flow.store.get_delivery(taken.delivery_id or 0)
    assert stored is not None and flow.store.claim_delivery(stored)  # another worker took it just now
    left = flow.process_delivery(taken.delivery_id or 0)
    assert left.outcome is Outcome.DUPLICATE and left.detail == "another worker is handling it"


def _age(flow: MailboxFlow, delivery_id: int, seconds: float) -> None:
    """Make a stored delivery look received ``seconds`` ago."""
    with flow.store.engine.begin() as conn:
        conn.execute(sa.update(INBOX).where(INBOX.c.id == delivery_id)
                     .values(received_at=utcnow() - timedelta(seconds=seconds)))


def test_the_sweep_acts_on_deliveries_left_received(flow: MailboxFlow, sim: Any, serve: Serve) -> None:
    """Deliveries a dead process left received are acted on by a running receiver's sweep once they
    are older than the lease; a younger one is left alone (its own worker may still be on it)."""
    (old_mb, old_body), (young_mb, young_body) = consented(flow, sim, 2)
    old = flow.accept_webhook(old_body, SECRET).delivery_id or 0
    young = flow.accept_webhook(young_body, SECRET).delivery_id or 0
    _age(flow, old, flow.lease.total_seconds() + 5)
    url = serve(background_workers=1, sweep_seconds=0.1)
    assert wait_for(lambda: flow.get(old_mb.id).state is State.WARMING)
    time.sleep(0.4)  # a few more sweeps
    young_stored = flow.store.get_delivery(young)
    assert young_stored is not None and young_stored.status == "received"
    assert flow.get(young_mb.id).state is State.OAUTH_SENT
    _age(flow, young, flow.lease.total_seconds() + 5)
    assert wait_for(lambda: flow.get(young_mb.id).state is State.WARMING)
    assert sim.count("PATCH", "/start-warmup") == 2
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_a_repeat_of_a_deferred_delivery_is_acted_on(flow: MailboxFlow, sim: Any) -> None:
    """Mailivery down: the accepted delivery ends failed (deferred). Its redelivery is accepted with
    the original's id, and acting on it then warms the mailbox, as handle_webhook would."""
    [(mailbox, body)] = consented(flow, sim, 1)
    first = flow.accept_webhook(body, SECRET)
    sim.faults.fail_next(20, status=503)
    assert flow.process_delivery(first.delivery_id or 0).outcome is Outcome.DEFERRED
    sim.faults.clear()
    stored = flow.store.get_delivery(first.delivery_id or 0)
    assert stored is not None and stored.status == "failed"
    again = flow.accept_webhook(body, SECRET)
    assert again.outcome is Outcome.ACCEPTED and again.delivery_id == first.delivery_id
    assert flow.process_delivery(again.delivery_id or 0).outcome is Outcome.STARTED
    assert flow.get(mailbox.id).state is State.WARMING
