"""Resilience (issue 5): exactly-once side effects under concurrency, faults and crashes; safe logs.

- intent before effect: whatever point a worker dies at (after its claim, after its call, before its
  commit), the mailbox is recovered by re-reading the campaign first and repeating the call only if
  its effect is not at Mailivery; no call outlives its claim; a timed-out call keeps the claim while
  its request may still land;
- the rate limiter is shared by every client of one API key in a process;
- on real PostgreSQL, small versions of the full-size runs in ``stress/``: 8 processes receiving the
  same deliveries, 30% of Mailivery calls failing, a worker killed with SIGKILL at random moments;
- logs: no secret in any line of a chaotic run, and email addresses hashed on request.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import stamina
import structlog
from structlog.testing import capture_logs

from mailbox_flow import (
    ConcurrentUpdate,
    MailboxFlow,
    MailiveryClient,
    Outcome,
    Settings,
    Source,
    State,
    WebhookAuthError,
)
from mailbox_flow._hashing import email_hash
from mailbox_flow.audit import configure_logging
from mailbox_flow.errors import (
    ConfigurationError,
    MailiveryError,
    MailiveryRateLimited,
    MailiveryServerError,
    MailiveryTransportError,
)
from mailbox_flow.mailivery._base import _forget_shared_rate_limiters
from mailbox_flow.mailivery.client import RateLimiter, call_deadline, shared_rate_limiter
from mailbox_flow.models import utcnow
from mailbox_flow.simulator.state import Faults
from tools.resilience import (
    check_exactly_once,
    run_crashes,
    run_faults,
    run_same_deliveries,
    warmup_calls,
)

from .helpers import API_KEY, SECRET, consent

pytestmark = pytest.mark.timeout(120)


def connect(flow: MailboxFlow, email: str = "ada@contoso.com") -> Any:
    return flow.request_connection(owner_id="u-" + email, email=email, first_name="Ada")


def warming(flow: MailboxFlow, sim: Any, email: str = "ada@contoso.com") -> Any:
    result = flow.handle_webhook(consent(sim, connect(flow, email)), secret=SECRET)
    assert result.outcome is Outcome.STARTED and result.mailbox is not None
    return result.mailbox


def pending(flow: MailboxFlow, sim: Any, email: str = "ada@contoso.com") -> Any:
    """A verified, linked mailbox left pending (its first start-warmup was refused)."""
    sim.faults.start_fails(email, times=1)
    result = flow.handle_webhook(consent(sim, connect(flow, email)), secret=SECRET)
    assert result.outcome is Outcome.PENDING and result.mailbox is not None
    mb = flow.get(result.mailbox.id)
    assert mb.intent_trigger is None  # a refusal is an answer: nothing in doubt
    return mb


def effect_calls(sim: Any, campaign_id: int, kind: str) -> list[Any]:
    return [c for c in sim.calls if c.method == "PATCH"
            and c.path.endswith(f"/campaigns/{campaign_id}/{kind}-warmup")]


# -- intent before effect: a lost answer is not followed by a second call ------------------------


def test_lost_start_answer_is_not_repeated(flow: MailboxFlow, sim: Any) -> None:
    """Mailivery started the campaign but every answer was lost: the next start records it, no call.

    (Before the fix the next start_warmup called start-warmup again.)
    """
    mb = pending(flow, sim)
    sim.faults.fail_next(4, status=500, path_contains="start-warmup", after_effect=True)
    with pytest.raises(MailiveryServerError):
        flow.start_warmup(mb.id)
    in_doubt = flow.get(mb.id)
    assert in_doubt.state is State.PENDING and in_doubt.intent_trigger == "start"
    assert sim.campaign(mb.campaign_id)["status_code"] == "active"
    calls_before = len(effect_calls(sim, mb.campaign_id, "start"))

    done = flow.start_warmup(mb.id)
    assert done.state is State.WARMING and done.intent_trigger is None
    assert len(effect_calls(sim, mb.campaign_id, "start")) == calls_before
    last = flow.history(mb.id)[-1]
    assert last.trigger == "start" and last.request_id is None
    assert last.detail["effect_seen_at_mailivery"] is True
    assert last.detail["intent_request_id"] == in_doubt.intent_request_id


def test_lost_pause_answer_is_not_repeated(flow: MailboxFlow, sim: Any) -> None:
    """The same for pause: Mailivery paused it, the answer was lost; the next pause makes no call."""
    mb = warming(flow, sim)
    sim.faults.fail_next(4, status=503, path_contains="pause-warmup", after_effect=True)
    with pytest.raises(MailiveryServerError):
        flow.pause_warmup(mb.id)
    assert flow.get(mb.id).intent_trigger == "pause"
    calls_before = len(effect_calls(sim, mb.campaign_id, "pause"))
    assert flow.pause_warmup(mb.id).state is State.PAUSED
    assert len(effect_calls(sim, mb.campaign_id, "pause")) == calls_before
    # and when the effect did NOT happen (plain 500s), the next pause does call
    resumed = flow.resume_warmup(mb.id)
    sim.faults.fail_next(4, status=500, path_contains="pause-warmup")
    with pytest.raises(MailiveryServerError):
        flow.pause_warmup(resumed.id)
    assert sim.campaign(mb.campaign_id)["status_code"] == "active"
    assert flow.pause_warmup(mb.id).state is State.PAUSED
    assert effect_calls(sim, mb.campaign_id, "pause")[-1].status == 200


# -- recovery after a crash at any point -----------------------------------------------------------

CASES = [
    # (trigger, state before, Mailivery status before, state after, Mailivery status after)
    ("start", State.PENDING, "pending", State.WARMING, "active"),
    ("resume", State.PAUSED, "paused", State.WARMING, "active"),
    ("pause", State.WARMING, "active", State.PAUSED, "paused"),
    ("delete", State.WARMING, "active", State.DELETED, None),
]


def _in_state(flow: MailboxFlow, sim: Any, state: State) -> Any:
    if state is State.PENDING:
        return pending(flow, sim)
    mb = warming(flow, sim)
    if state is State.PAUSED:
        mb = flow.pause_warmup(mb.id)
    return mb


def _dead_worker(flow: MailboxFlow, sim: Any, api_url: str, mb: Any, trigger: str,
                 crash: str) -> str:
    """What a worker killed at ``crash`` leaves behind: its claim (expired), maybe its call's effect."""
    request_id = str(uuid.uuid4())
    claimed = flow.store.claim(mb, owner="dead-worker", until=utcnow() - timedelta(milliseconds=1),
                               trigger=trigger, request_id=request_id)
    assert claimed is not None
    if crash == "after_call":  # the call went through; the worker died before its commit
        with MailiveryClient(API_KEY, api_url, rate_per_second=0) as client:
            call = {"start": client.start_warmup, "resume": client.resume_warmup,
                    "pause": client.pause_warmup, "delete": client.delete_campaign}[trigger]
            call(mb.campaign_id, request_id=request_id)
    return request_id


@pytest.mark.parametrize("crash", ["after_claim", "after_call"])
@pytest.mark.parametrize(("trigger", "before", "remote_before", "after", "remote_after"), CASES,
                         ids=[c[0] for c in CASES])
def test_recover_after_a_crash(flow: MailboxFlow, sim: Any, api_url: str, crash: str, trigger: str,
                               before: State, remote_before: str, after: State,
                               remote_after: str | None) -> None:
    """recover() re-reads the campaign: effect there → commit without a call; else call once."""
    mb = _in_state(flow, sim, before)
    assert mb.state is before and sim.campaign(mb.campaign_id)["status_code"] == remote_before
    request_id = _dead_worker(flow, sim, api_url, mb, trigger, crash)
    calls_before = len(sim.calls)

    result = flow.recover(mb.id, source=Source.RECONCILER)

    assert result.mailbox.state is after and result.mailbox.intent_trigger is None
    new_calls = [(c.method, c.path.rsplit("/", 1)[-1]) for c in sim.calls[calls_before:]]
    effect_made = [c for c in new_calls if c[0] in ("PATCH", "DELETE")]
    assert new_calls[0][0] == "GET"  # re-read first, always
    if crash == "after_call":
        assert result.action == "completed" and effect_made == []
        last = flow.history(mb.id)[-1]
        assert last.detail["effect_seen_at_mailivery"] is True
        assert last.detail["intent_request_id"] == request_id
    else:
        assert result.action == "retried" and len(effect_made) == 1, new_calls
    if remote_after is None:
        with pytest.raises(LookupError):
            sim.campaign(mb.campaign_id)
    else:
        assert sim.campaign(mb.campaign_id)["status_code"] == remote_after
    trail = flow.history(mb.id)
    assert trail[-1].trigger == trigger and trail[-1].source is Source.RECONCILER
    assert [r for r in trail if r.from_state is before and r.to_state is after][-1] == trail[-1]
    assert flow.recover(mb.id).action == "none"


def test_recover_waits_for_a_live_claim(flow: MailboxFlow, sim: Any) -> None:
    """While the claim of a (maybe slow, maybe dead) worker is live, nobody recovers: no call."""
    mb = pending(flow, sim)
    flow.store.claim(mb, owner="slow-worker", until=utcnow() + timedelta(seconds=30),
                     trigger="start", request_id=str(uuid.uuid4()))
    calls = len(sim.calls)
    with pytest.raises(ConcurrentUpdate):
        flow.recover(mb.id)
    with pytest.raises(ConcurrentUpdate):
        flow.start_warmup(mb.id)
    assert len(sim.calls) == calls


def test_interrupted_connect_is_cleared_then_retried(flow: MailboxFlow, sim: Any) -> None:
    """A connect whose worker died is not repeated by recover(); the partner's next request is."""
    sim.faults.fail_next(4, status=500, path_contains="/campaigns/microsoft")
    with pytest.raises(MailiveryServerError):
        connect(flow)
    mb = flow.find_by_email("ada@contoso.com")
    assert mb is not None and mb.state is State.REQUESTED and mb.intent_trigger == "send_oauth"
    result = flow.recover(mb.id)
    assert result.action == "cleared" and result.mailbox.intent_trigger is None
    assert connect(flow).state is State.OAUTH_SENT


def test_recover_when_the_campaign_is_gone(flow: MailboxFlow, sim: Any, api_url: str) -> None:
    """A pause interrupted, then the campaign deleted at Mailivery: nothing to repeat, flagged."""
    mb = warming(flow, sim)
    _dead_worker(flow, sim, api_url, mb, "pause", "after_claim")
    sim.delete_campaign(mb.campaign_id, send_webhook=False)
    result = flow.recover(mb.id)
    assert result.action == "failed" and result.mailbox.intent_trigger is None
    assert flow.get(mb.id).flag_reason == "remote_missing"


@pytest.mark.parametrize("crash", ["after_claim", "after_call"])
def test_reconciler_recovers_stale_intents(flow: MailboxFlow, sim: Any, api_url: str,
                                           crash: str) -> None:
    """The reconciler finds the stale intents and recovers them the same way (no second effect)."""
    paused = flow.pause_warmup(warming(flow, sim, "p@example.com").id)
    started = pending(flow, sim, "s@example.com")
    _dead_worker(flow, sim, api_url, paused, "resume", crash)
    _dead_worker(flow, sim, api_url, started, "start", crash)
    report = flow.reconcile(stuck_after=timedelta(0), fix=True)
    assert report.clean, report.to_dict()
    for mb in (paused, started):
        assert flow.get(mb.id).state is State.WARMING
        assert sim.campaign(mb.campaign_id)["status_code"] == "active"
    calls = warmup_calls(sim)
    assert len(calls[paused.campaign_id].successful("resume")) == 1
    assert len(calls[started.campaign_id].successful("start")) == 1
    assert flow.reconcile(stuck_after=timedelta(0), fix=True).findings == []


# -- no call outlives its claim; a timed-out call keeps it while its request may land -----------


@pytest.mark.postgres
def test_a_call_never_outlives_its_lease(postgres_url: str, api_url: str, sim: Any) -> None:
    """A slow, retried call is given up before the lease ends, so a second worker taking over after
    the lease cannot make a second successful start-warmup.

    (Before the fix the first worker's third attempt landed after its lease had expired, while the
    second worker, having re-read a still pending campaign, called start-warmup too: two 2xx.)
    """
    lease = timedelta(seconds=1)
    first = MailboxFlow(postgres_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                        webhook_secret=SECRET, lease=lease)
    first.create_schema()
    second = MailboxFlow(postgres_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                         webhook_secret=SECRET, lease=lease)
    mb = pending(first, sim)
    sim.faults.latency(0.6, path_contains="start-warmup")
    sim.faults.fail_next(2, status=429, path_contains="start-warmup")
    errors: list[BaseException] = []

    def slow_start() -> None:
        try:
            first.start_warmup(mb.id)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_start)
    thread.start()
    time.sleep(1.3)  # the first worker's lease has expired; its call is (was) still being retried
    second.reconcile(stuck_after=timedelta(0), fix=True)
    thread.join()
    sim.faults.latency(0)
    time.sleep(0.7)  # whatever was still in flight has landed
    second.reconcile(stuck_after=timedelta(0), fix=True)
    assert first.get(mb.id).state is State.WARMING
    ok = warmup_calls(sim)[mb.campaign_id].successful("start")
    assert len(ok) == 1, f"{len(ok)} successful start-warmup calls"
    assert len(errors) == 1 and isinstance(errors[0], MailiveryError)
    first.close()
    second.close()


class _ScriptedLatency(Faults):
    """Faults whose latency for matching calls is taken, in order, from a script."""

    def __init__(self, path: str, script: list[float], on_release: Any) -> None:
        super().__init__(on_release)
        self._path, self._script = path, list(script)

    def latency_for(self, method: str, path: str) -> float:
        if self._path in path and self._script:
            return self._script.pop(0)
        return super().latency_for(method, path)


def test_timed_out_call_keeps_its_claim_while_it_may_land(
        database_url: str, api_url: str, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a timeout the request may still be running at Mailivery: the claim is kept for one
    client timeout, so nobody re-reads (too early) and calls again meanwhile.

    (Before the fix the reconciler, right after the timeout, re-read a still pending campaign and
    called start-warmup again; then the late request landed too: two successful calls.)
    """
    client = MailiveryClient(API_KEY, api_url, rate_per_second=0, timeout=0.3)
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    other = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                        webhook_secret=SECRET)
    mb = pending(flow, sim)
    faults = _ScriptedLatency("start-warmup", [0.0, 0.0, 0.0, 0.5], sim.flush_webhooks)
    monkeypatch.setattr(sim, "faults", faults)
    faults.fail_next(3, status=500, path_contains="start-warmup")
    with pytest.raises(MailiveryTransportError):
        flow.start_warmup(mb.id)  # 3 x 500, then a timeout: the 4th request lands 0.2 s later
    held = other.get(mb.id)
    assert held.intent_trigger == "start" and held.lease_until is not None
    early = other.reconcile(stuck_after=timedelta(0), fix=True)  # while the request may still land
    time.sleep(0.45)
    late = other.reconcile(stuck_after=timedelta(0), fix=True)
    ok = warmup_calls(sim)[mb.campaign_id].successful("start")
    assert len(ok) == 1, f"{len(ok)} successful start-warmup calls"
    if early.started_at < held.lease_until:  # (a loaded machine may start it after the hold)
        assert not early.clean and {f.action.value for f in early.findings} == {"skipped"}
        assert late.clean, late.to_dict()
        assert [(f.reason.value, f.action.value) for f in late.findings] == [
            ("stale_intent", "completed")]
    else:  # the hold was over and the late request had landed: the re-read sees it active and
        # records warming without a call (the one-successful-call assertion above holds either way)
        assert early.clean and {f.action.value for f in early.findings} <= {"completed", "started"}
    assert other.get(mb.id).state is State.WARMING
    flow.close()
    other.close()


def test_timed_out_connect_may_be_retried_at_once(flow: MailboxFlow, api_url: str, sim: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect only mints a consent URL, so a timed-out one keeps no claim: the user may retry."""
    flow._client = MailiveryClient(API_KEY, api_url, rate_per_second=0, timeout=0.3)
    faults = _ScriptedLatency("/campaigns/microsoft", [0.0, 0.0, 0.0, 0.5], sim.flush_webhooks)
    monkeypatch.setattr(sim, "faults", faults)
    faults.fail_next(3, status=500, path_contains="/campaigns/microsoft")
    with pytest.raises(MailiveryTransportError):
        connect(flow)
    assert connect(flow).state is State.OAUTH_SENT
    # The timed-out request is still sleeping in the simulator; let it finish here, or it would read
    # the next test's faults when it wakes and use up one of that test's injected failures.
    time.sleep(0.5)


# -- the client's deadline ------------------------------------------------------------------------


def _mock_client(handler: Any, **kwargs: Any) -> MailiveryClient:
    kwargs.setdefault("rate_per_second", 0)
    return MailiveryClient(API_KEY, "https://api.test/v1", transport=httpx.MockTransport(handler),
                           **kwargs)


def test_deadline_shrinks_timeouts_and_stops_retrying() -> None:
    """Under call_deadline each attempt's timeout is the time left, and no attempt starts too late."""
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        time.sleep(0.15)
        return httpx.Response(500, json={"code": "BOOM", "message": "down"})

    client = _mock_client(handler, timeout=10.0, max_attempts=10)
    started = time.monotonic()
    with call_deadline(time.monotonic() + 0.4), pytest.raises(MailiveryServerError):
        client.start_warmup(7)
    elapsed = time.monotonic() - started
    assert 2 <= len(seen) <= 3 and elapsed < 0.6
    assert seen[0] <= 0.4 and all(b < a for a, b in itertools.pairwise(seen))
    with call_deadline(time.monotonic() - 1), pytest.raises(MailiveryTransportError):
        client.start_warmup(7)  # no time at all: nothing is sent
    assert len(seen) <= 3
    seen.clear()
    with call_deadline(time.monotonic() + 5), call_deadline(time.monotonic() + 0.2), \
            pytest.raises(MailiveryServerError):
        client.start_warmup(7)  # the nested, earlier deadline wins
    assert len(seen) <= 2 and seen[0] <= 0.2


def test_deadline_skips_a_retry_after_wait_it_cannot_afford() -> None:
    """A 429 asking to wait beyond the deadline is not waited for: its error is raised at once."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, headers={"Retry-After": "5"}, json={"message": "slow down"})

    client = _mock_client(handler, max_attempts=4)
    stamina.set_testing(False)
    try:
        started = time.monotonic()
        with call_deadline(time.monotonic() + 1.0), pytest.raises(MailiveryRateLimited):
            client.pause_warmup(3)
        assert time.monotonic() - started < 0.5 and calls == [1]
    finally:
        stamina.set_testing(True, attempts=4)


# -- one rate limiter per API key in a process -----------------------------------------------------


@pytest.fixture
def fresh_limiters() -> Iterator[None]:
    _forget_shared_rate_limiters()
    yield
    _forget_shared_rate_limiters()


def _ok(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"data": {"id": 1}})


def test_clients_of_one_key_share_one_limiter(fresh_limiters: None) -> None:
    """Same key and base URL → one limiter; another key or URL → another; explicit/zero respected."""
    a = MailiveryClient("key-1", "https://api.test/v1", rate_per_second=4)
    b = MailiveryClient("key-1", "https://api.test/v1/", rate_per_second=4)
    c = MailiveryClient("key-2", "https://api.test/v1", rate_per_second=4)
    d = MailiveryClient("key-1", "https://other.test/v1", rate_per_second=4)
    own = RateLimiter(1)
    e = MailiveryClient("key-1", "https://api.test/v1", rate_limiter=own)
    f = MailiveryClient("key-1", "https://api.test/v1", rate_per_second=0)
    assert a.rate_limiter is b.rate_limiter
    assert len({id(a.rate_limiter), id(c.rate_limiter), id(d.rate_limiter)}) == 3
    assert e.rate_limiter is own and f.rate_limiter is None
    slower = MailiveryClient("key-1", "https://api.test/v1", rate_per_second=2)
    assert slower.rate_limiter is a.rate_limiter and a.rate_limiter is not None
    assert a.rate_limiter.rate_per_second == 2  # the lowest configured rate wins
    MailiveryClient("key-1", "https://api.test/v1", rate_per_second=8)
    assert a.rate_limiter.rate_per_second == 2
    for client in (a, b, c, d, e, f, slower):
        client.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_shared_limiter_keeps_a_process_under_the_rate(fresh_limiters: None) -> None:
    """Three clients of one key, used in turn: together they stay at 4 requests per second."""
    clock = FakeClock()
    shared_rate_limiter(API_KEY, "https://api.test/v1", 4, clock=clock, sleep=clock.sleep)
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now)
        return _ok(request)

    clients = [_mock_client(handler, rate_per_second=4) for _ in range(3)]
    for i in range(40):
        clients[i % 3].get_campaign(1)
    assert len(sent) == 40
    per_window = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert per_window <= 4
    assert sent[-1] - sent[0] == pytest.approx(39 * 0.25)
    # without the registry each client would have had its own limiter: 3 times the rate
    clock2 = FakeClock()
    sent.clear()
    own = [_mock_client(handler, rate_limiter=RateLimiter(4, clock=clock2, sleep=clock2.sleep))
           for _ in range(3)]
    clock.now = clock2.now
    for i in range(12):
        own[i % 3].get_campaign(1)
        clock.now = clock2.now
    assert max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent) == 12
    for client in clients + own:
        client.close()


def test_shared_limiter_across_threads_and_clients(fresh_limiters: None) -> None:
    """Real clock: 3 clients x 3 threads hammering one key never exceed the rate in any window."""
    sent: list[float] = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            sent.append(time.monotonic())
        return _ok(request)

    rate = 200.0
    clients = [_mock_client(handler, rate_per_second=rate) for _ in range(3)]

    def hammer(client: MailiveryClient) -> None:
        for _ in range(10):
            client.get_campaign(1)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in clients for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent.sort()
    assert len(sent) == 90
    # 9 threads on 3 clients could not go faster than one client alone; a thread woken late by the
    # scheduler may bunch up with the next one, hence a little slack in the windowed count
    assert sent[-1] - sent[0] >= 89 / rate * 0.98
    window = 0.1
    busiest = max(sum(1 for t in sent if s <= t < s + window) for s in sent)
    assert busiest <= rate * window + 4, busiest
    for client in clients:
        client.close()


# -- the full scenarios, small (PostgreSQL) ----------------------------------------------------------


@pytest.mark.postgres
def test_eight_processes_receive_the_same_deliveries(postgres_url: str, api_url: str, sim: Any
                                                     ) -> None:
    """8 processes, same 20 deliveries at the same moment: one start-warmup per mailbox, all stored."""
    fig = run_same_deliveries(postgres_url, api_url, API_KEY, SECRET, sim, mailboxes=20,
                              processes=8)
    assert fig.extra["worker errors"] == [] and fig.extra["exit codes"] == [0]
    assert fig.extra["start-warmup HTTP requests per campaign"] == {1: 20}
    assert fig.states == {"warming": 20}
    assert fig.deliveries_stored == fig.deliveries_sent == 160
    assert fig.delivery_statuses == {"processed": 20, "duplicate": 140}
    assert fig.outcomes == {"started": 20, "duplicate": 140}
    assert fig.violations == []


@pytest.fixture
def two_attempts() -> Iterator[None]:
    """Two attempts per call (not four): whole calls fail often, the flow's recovery does the work."""
    stamina.set_testing(True, attempts=2)
    yield
    stamina.set_testing(True, attempts=4)


@pytest.mark.postgres
def test_thirty_percent_of_calls_fail(postgres_url: str, api_url: str, sim: Any,
                                      two_attempts: None) -> None:
    """30% of calls fail (429, 500, timeouts, lost answers), 40 mailboxes, every delivery twice:
    after reconciling, all warm, no campaign got two successful start-warmups, no delivery lost."""
    fig = run_faults(postgres_url, api_url, API_KEY, SECRET, sim, mailboxes=40, p=0.3, threads=8,
                     client_timeout=0.3, attempts=2, seed=5)
    assert fig.converged, fig.lines()
    assert fig.violations == [], fig.lines()
    assert fig.states == {"warming": 40}, fig.lines()
    assert fig.campaigns_with_two_successful_warmups == 0, fig.lines()
    assert fig.deliveries_stored == fig.deliveries_sent == 80, fig.lines()
    assert fig.deliveries_unprocessed == 0, fig.lines()
    assert set(fig.extra["faults injected"]) == {"429", "500", "500_after_effect", "timeout"}, fig.lines()
    assert fig.outcomes.get("deferred", 0) + fig.outcomes.get("pending", 0) > 0, fig.lines()  # it hurt


@pytest.mark.postgres
def test_worker_killed_at_random_points(postgres_url: str, api_url: str, sim: Any,
                                        tmp_path: Path) -> None:
    """A worker killed with SIGKILL 5 times mid-work: after a restart and reconciling (1 s leases),
    everything converged, every delivery is stored and finished, each effect happened once."""
    fig = run_crashes(postgres_url, api_url, API_KEY, SECRET, sim, mailboxes=16, kills=5,
                      workdir=tmp_path, lease=1.0, seed=3)
    assert fig.extra["kills"] == 5, fig.lines()
    assert fig.converged and fig.violations == [], fig.lines()
    assert fig.deliveries_unprocessed == 0
    assert fig.extra["original deliveries stored (one per distinct delivery sent)"] == 16
    assert sum(fig.states.values()) == 16 and set(fig.states) <= {"warming", "paused"}
    assert fig.campaigns_with_two_successful_warmups == 0


def test_exactly_once_check_catches_a_second_call(flow: MailboxFlow, sim: Any, api_url: str
                                                  ) -> None:
    """The checker used above does report a second successful start-warmup (it is not vacuous)."""
    mb = warming(flow, sim)
    assert check_exactly_once(flow, sim, [mb]) == []
    with MailiveryClient(API_KEY, api_url, rate_per_second=0) as client:
        client.start_warmup(mb.campaign_id)
    problems = check_exactly_once(flow, sim, [mb])
    assert any("2 successful start-warmup calls" in p for p in problems), problems


# -- logs --------------------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[None]:
    configure_logging("json", "DEBUG")
    yield
    structlog.reset_defaults()


def _chaotic_run(flow: MailboxFlow, sim: Any, api_url: str) -> list[Any]:
    """Everything that logs: connects (one failing), consents, a bad secret, duplicates, lost
    answers, a timeout, a crash recovered, an orphan, pause/resume/delete, a fixing reconcile."""
    first = connect(flow, "Ada.Lovelace@Contoso.com")
    body = consent(sim, first)
    with pytest.raises(WebhookAuthError):
        flow.handle_webhook(body, secret="wrong-" + SECRET)
    sim.faults.fail_next(1, status=429, retry_after=0)
    flow.handle_webhook(body, secret=SECRET)
    flow.handle_webhook(body, secret=SECRET)  # duplicate
    second = pending(flow, sim, "grace@navy.mil")
    sim.faults.fail_next(4, status=500, path_contains="start-warmup", after_effect=True)
    with pytest.raises(MailiveryServerError):
        flow.start_warmup(second.id)
    flow.start_warmup(second.id)
    third = warming(flow, sim, "alan@bletchley.uk")
    _dead_worker(flow, sim, api_url, third, "pause", "after_call")
    flow.reconcile(stuck_after=timedelta(0), fix=True, remote=True)
    sim.faults.fail_next(10, status=500, path_contains="/campaigns/microsoft")
    with pytest.raises(MailiveryServerError):
        connect(flow, "bob@contoso.com")
    sim.faults.clear()
    other = sim.create_campaign(email="eve@example.com", first_name="Eve")
    sim.wait_for_webhooks()
    flow.handle_webhook(bytes(sim.webhooks_sent[-1].body), secret=SECRET)
    flow.pause_warmup(first.id)
    flow.resume_warmup(first.id)
    flow.delete(third.id)
    flow.reconcile(stuck_after=timedelta(0), expire_after=timedelta(0), fix=True, remote=True)
    assert other["email"] == "eve@example.com"
    return [first, second, third]


def test_no_secret_in_any_log_line_of_a_chaotic_run(
        database_url: str, api_url: str, sim: Any, json_logs: None,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Every line logged (ours, stamina's, stdlib's) over a run full of failures and recoveries:
    no API key, webhook secret, OAuth URL or token, correlation token."""
    caplog.set_level(logging.DEBUG)
    flow = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                       webhook_secret=SECRET)
    flow.create_schema()
    mailboxes = _chaotic_run(flow, sim, api_url)
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert "mailbox_flow.transition" in text and "mailbox_flow.effect_failed" in text
    assert "stamina.retry_scheduled" in text or "retry" in text
    secrets = [API_KEY, SECRET]
    for mb in mailboxes:
        stored = flow.get(mb.id)
        secrets.append(stored.correlation_token)
        if mb.oauth_url:
            url = urlsplit(mb.oauth_url)
            secrets += [mb.oauth_url, url.path.rsplit("/", 1)[-1]]
            secrets += [v for _k, v in parse_qsl(url.query) if len(v) >= 8]
    for secret in secrets:
        assert secret and secret not in text, "a secret reached the logs"
    flow.close()


def test_emails_are_hashed_in_logs_on_request(database_url: str, api_url: str, sim: Any,
                                              json_logs: None,
                                              capsys: pytest.CaptureFixture[str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    """hash_emails_in_logs=True: no address (any case) in any line; email_hash fields instead, keyed
    with the webhook secret when no salt is configured, stable per mailbox."""
    caplog.set_level(logging.DEBUG)
    flow = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                       webhook_secret=SECRET, hash_emails_in_logs=True)
    flow.create_schema()
    with capture_logs() as events:
        mailboxes = _chaotic_run(flow, sim, api_url)
    captured = capsys.readouterr()
    text = (captured.out + captured.err + caplog.text + json.dumps(events, default=str)).lower()
    addresses = [mb.email for mb in mailboxes] + ["eve@example.com", "bob@contoso.com"]
    for address in addresses:
        assert address.lower() not in text
    assert "lovelace" not in text and "bletchley" not in text
    assert not any("email" in e for e in events)
    hashed = Counter(e["email_hash"] for e in events if "email_hash" in e)
    key = SECRET.encode()
    for mb in mailboxes:
        assert hashed[email_hash(mb.email, key)] >= 2  # every transition of it, one stable value
    assert hashed[email_hash("eve@example.com", key)] == 1  # the orphan
    flow.close()


def test_email_hash_key_comes_from_settings(database_url: str, api_url: str, sim: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILBOX_FLOW_LOG_HASH_EMAILS / _LOG_EMAIL_SALT turn hashing on with a per-deployment key."""
    monkeypatch.setenv("MAILBOX_FLOW_LOG_HASH_EMAILS", "true")
    monkeypatch.setenv("MAILBOX_FLOW_LOG_EMAIL_SALT", "deployment-salt-7")
    flow = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                       webhook_secret=SECRET, settings=Settings())
    flow.create_schema()
    with capture_logs() as events:
        connect(flow, "Ada@Contoso.com")
    [transition] = [e for e in events if e["event"] == "mailbox_flow.transition"]
    assert transition["email_hash"] == email_hash("ada@contoso.com", b"deployment-salt-7")
    assert "email" not in transition
    plain = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                        webhook_secret=SECRET, settings=Settings(), hash_emails_in_logs=False)
    with capture_logs() as events:
        connect(plain, "grace@navy.mil")
    assert [e["email"] for e in events if e["event"] == "mailbox_flow.transition"] == [
        "grace@navy.mil"]
    flow.close()
    plain.close()


def test_email_hash_needs_a_key_and_is_keyed(database_url: str) -> None:
    """No salt and no webhook secret: refused. The hash ignores case and spaces and depends on the key."""
    with pytest.raises(ConfigurationError):
        MailboxFlow(database_url, webhook_secret="", hash_emails_in_logs=True,
                    settings=Settings(webhook_secret=None, log_email_salt=None))
    one = email_hash(" Ada@Contoso.com ", b"k1")
    assert one == email_hash("ada@contoso.com", b"k1") != email_hash("ada@contoso.com", b"k2")
    assert len(one) == 32 and int(one, 16) >= 0
    with pytest.raises(ValueError):
        email_hash("ada@contoso.com", b"")


def test_reconciler_orphan_log_respects_email_hashing(database_url: str, api_url: str,
                                                      sim: Any) -> None:
    """An orphan recorded by a fixing reconcile logs email_hash, never the address, when hashing is on."""
    flow = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                       webhook_secret=SECRET, hash_emails_in_logs=True)
    flow.create_schema()
    sim.create_campaign(email="stray@example.com", first_name="Stray", send_webhook=False)
    with capture_logs() as events:
        flow.reconcile(remote=True, fix=True, delete_orphans=True)
    rejects = [e for e in events if e.get("event") == "mailbox_flow.transition"
               and e.get("trigger") == "reject"]
    assert len(rejects) == 1 and "email" not in rejects[0]
    assert rejects[0]["email_hash"] == email_hash("stray@example.com", SECRET.encode())
    assert "stray@example.com" not in json.dumps(events, default=str)
    flow.close()
