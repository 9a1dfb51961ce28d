"""Resilience harness (private): chaos for the simulator, worker processes, convergence and call accounting.

The scenarios of issue 5, sized by their callers: ``tests/test_resilience.py`` runs them small on every
build, ``stress/*.py`` at full size, printing their `Figures`.

- `run_same_deliveries`: N processes (from a fork server, each with its own `MailboxFlow` on one
  PostgreSQL schema) receive the same webhook deliveries at the same moment.
- `run_faults`: a share of every Mailivery call fails (`ChaosFaults`: 429, 500, a 500 after the work was
  done, timeouts whose work still lands late), deliveries arrive twice and concurrently, then the
  reconciler runs until clean.
- `run_crashes`: a worker process handling deliveries (and pausing/resuming mailboxes) is killed with
  SIGKILL at random moments and restarted; then the reconciler runs until clean.

Every scenario returns `Figures`: calls made vs intended, deliveries stored vs sent, convergence, and the
violations found by `check_exactly_once` (empty when all is well).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from mailbox_flow.errors import ConcurrentUpdate, MailboxFlowError, MailiveryError
from mailbox_flow.flow import MailboxFlow
from mailbox_flow.mailivery import MailiveryClient
from mailbox_flow.simulator.state import Faults, InjectedFailure, Simulator
from mailbox_flow.states import State
from mailbox_flow.types import Mailbox

__all__ = [
    "ChaosFaults",
    "Figures",
    "WarmupCalls",
    "chaos",
    "check_exactly_once",
    "converge",
    "quiet_logs",
    "run_crashes",
    "run_faults",
    "run_same_deliveries",
    "warmup_calls",
]

_EFFECT_PATH = re.compile(r"/campaigns/(\d+)/(start|resume|pause)-warmup$")


# -- chaos ---------------------------------------------------------------------------------------


class ChaosFaults(Faults):
    """`Faults` that also fail a share ``p`` of all API calls, seeded.

    A quarter of the failures are timeouts: the simulator waits ``timeout_latency`` (more than the
    client's timeout) and then still does the work, whose answer nobody reads any more. The others are,
    in equal parts, 429 (with ``Retry-After``), 500, and 500 *after* the work was done (the answer lost).
    ``injected`` counts what was injected; ``enabled`` switches the chaos off and on.
    """

    def __init__(
        self,
        p: float,
        *,
        timeout_latency: float,
        seed: int = 0,
        retry_after: float = 0.05,
        on_release: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(on_release)
        if not 0 <= p < 1:
            raise ValueError("p must be in [0, 1)")
        self.p = p
        self.timeout_latency = timeout_latency
        self.retry_after = retry_after
        self.enabled = True
        self.injected: Counter[str] = Counter()
        self._p_timeout = p / 4
        self._p_other = (p - self._p_timeout) / (1 - self._p_timeout)
        self._chaos = random.Random(seed)
        self._chaos_lock = threading.Lock()

    def latency_for(self, method: str, path: str) -> float:
        base = super().latency_for(method, path)
        with self._chaos_lock:
            if self.enabled and self._chaos.random() < self._p_timeout:
                self.injected["timeout"] += 1
                return max(base, self.timeout_latency)
        return base

    def pick_failure(self, method: str, path: str) -> InjectedFailure | None:
        failure = super().pick_failure(method, path)
        if failure is not None:
            return failure
        with self._chaos_lock:
            if not self.enabled or self._chaos.random() >= self._p_other:
                return None
            kind = self._chaos.choice(("429", "500", "500_after_effect"))
            self.injected[kind] += 1
        if kind == "429":
            return InjectedFailure(429, self.retry_after, False)
        return InjectedFailure(500, None, kind == "500_after_effect")


@contextmanager
def chaos(sim: Simulator, p: float, *, timeout_latency: float, seed: int = 0) -> Iterator[ChaosFaults]:
    """Install `ChaosFaults` on ``sim`` for the duration of the block (the old faults come back after)."""
    original = sim.faults
    faults = ChaosFaults(p, timeout_latency=timeout_latency, seed=seed,
                         on_release=sim.flush_webhooks)
    sim.faults = faults
    try:
        yield faults
    finally:
        faults.enabled = False
        sim.faults = original


def quiet_logs(level: int = logging.WARNING) -> None:
    """Keep structlog's default printer, but only from ``level`` up (worker processes, stress runs)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


# -- accounting ------------------------------------------------------------------------------------


@dataclass
class WarmupCalls:
    """The start/resume/pause calls Mailivery answered for one campaign."""

    attempts: Counter[str] = field(default_factory=Counter)  # HTTP requests per call kind
    ok: Counter[str] = field(default_factory=Counter)  # 2xx answers per call kind
    ok_ids: dict[str, set[str]] = field(default_factory=dict)  # request ids answered 2xx, per kind
    ids: dict[str, set[str]] = field(default_factory=dict)  # every request id, per kind

    def successful(self, *kinds: str) -> set[str]:
        """Request ids answered 2xx for any of ``kinds`` (one per logical call: retries share it)."""
        return set().union(*(self.ok_ids.get(k, set()) for k in kinds))


def warmup_calls(sim: Simulator) -> dict[int, WarmupCalls]:
    """Per campaign id: the start/resume/pause requests in the simulator's call log."""
    with sim._lock:
        calls = list(sim.calls)
    result: dict[int, WarmupCalls] = {}
    for call in calls:
        match = _EFFECT_PATH.search(call.path)
        if match is None or call.method != "PATCH":
            continue
        entry = result.setdefault(int(match.group(1)), WarmupCalls())
        kind = match.group(2)
        entry.attempts[kind] += 1
        entry.ids.setdefault(kind, set()).add(call.request_id or "")
        if 200 <= call.status < 300:
            entry.ok[kind] += 1
            entry.ok_ids.setdefault(kind, set()).add(call.request_id or "")
    return result


def check_exactly_once(flow: MailboxFlow, sim: Simulator, mailboxes: Sequence[Mailbox], *,
                       exact: bool = True) -> list[str]:
    """Violations of the exactly-once and convergence rules for ``mailboxes`` (empty: all is well).

    - every mailbox is linked to a campaign, warming or paused, without intent or lease, and
      Mailivery agrees (warming ↔ active, paused ↔ paused);
    - the audit trail chains (each row leaves the state the previous one entered) and ends in the
      current state; exactly one ``start`` row;
    - per campaign, Mailivery answered 2xx to at most one start-warmup, and to no more logical
      start/resume/pause calls (distinct request ids) than the audit trail has such transitions (the
      scenarios change nothing at Mailivery behind the flow's back, so each of them stands for a call
      of ours, possibly one whose answer was lost); with ``exact``, to exactly as many (when answers
      are only lost by crashes, each transition recorded without a call stands for a dead worker's
      successful call);
    - every request id of a calling audit row was answered 2xx by Mailivery.
    """
    problems: list[str] = []
    calls = warmup_calls(sim)
    for before in mailboxes:
        mb = flow.get(before.id)
        name = f"{mb.email} ({mb.state.value})"
        if mb.campaign_id is None:
            problems.append(f"{name}: not linked to a campaign")
            continue
        if mb.intent_trigger is not None or mb.lease_until is not None:
            problems.append(f"{name}: intent {mb.intent_trigger!r} / lease left")
        try:
            remote = sim.campaign(mb.campaign_id)["status_code"]
        except LookupError:
            remote = "missing"
        expected = {State.WARMING: "active", State.PAUSED: "paused"}.get(mb.state)
        if expected is None or remote != expected:
            problems.append(f"{name}: Mailivery says {remote!r}")
        trail = flow.history(mb.id)
        for previous, row in itertools.pairwise(trail):
            if row.from_state is not previous.to_state:
                problems.append(f"{name}: audit row {row.id} leaves {row.from_state.value}, "
                                f"previous entered {previous.to_state.value}")
        if trail and trail[-1].to_state is not mb.state:
            problems.append(f"{name}: audit ends in {trail[-1].to_state.value}")
        # (in these scenarios Mailivery changes nothing on its own: every such row stands for a call)
        effects = [r for r in trail if r.trigger in ("start", "resume", "pause")]
        if sum(1 for r in trail if r.trigger == "start") != 1:
            problems.append(f"{name}: {sum(1 for r in trail if r.trigger == 'start')} start rows")
        entry = calls.get(mb.campaign_id, WarmupCalls())
        ok_effects = entry.successful("start", "resume", "pause")
        if len(ok_effects) > len(effects) or (exact and len(ok_effects) != len(effects)):
            problems.append(f"{name}: {len(ok_effects)} successful warmup calls at Mailivery "
                            f"({dict(entry.ok)}), {len(effects)} such transitions audited")
        if len(entry.successful("start")) > 1:
            problems.append(f"{name}: {len(entry.successful('start'))} successful start-warmup calls")
        for row in effects:
            if row.request_id is not None and row.request_id not in ok_effects:
                problems.append(f"{name}: audited {row.trigger} request {row.request_id} "
                                "was not answered 2xx")
    return problems


@dataclass
class Figures:
    """What a scenario did, for assertions and for the stress scripts' output."""

    scenario: str
    mailboxes: int = 0
    deliveries_sent: int = 0
    deliveries_stored: int = 0
    deliveries_unprocessed: int = 0
    warmups_intended: int = 0
    warmup_calls_successful: int = 0  # start-warmup: distinct request ids answered 2xx
    warmup_http_requests: int = 0  # every start-warmup request Mailivery saw, retries included
    campaigns_with_two_successful_warmups: int = 0
    reconcile_rounds: int = 0
    converged: bool = False
    states: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    delivery_statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable figures."""
        out = [
            f"scenario: {self.scenario}",
            f"  mailboxes: {self.mailboxes}; final states: {dict(sorted(self.states.items()))}",
            f"  start-warmup calls: intended {self.warmups_intended}, successful logical calls "
            f"{self.warmup_calls_successful} (distinct request ids answered 2xx), HTTP requests "
            f"{self.warmup_http_requests} (retries included), campaigns with two successful "
            f"calls: {self.campaigns_with_two_successful_warmups}",
            f"  deliveries: sent {self.deliveries_sent}, stored {self.deliveries_stored}, left "
            f"unprocessed {self.deliveries_unprocessed}; "
            f"statuses {dict(sorted(self.delivery_statuses.items()))}",
            f"  outcomes: {dict(sorted(self.outcomes.items()))}",
            f"  converged: {self.converged} after {self.reconcile_rounds} reconcile round(s); "
            f"wall time {self.seconds:.1f} s",
        ]
        out += [f"  {key}: {value}" for key, value in self.extra.items()]
        out.append(f"  violations: {len(self.violations)}")
        out += [f"    - {v}" for v in self.violations[:20]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _finish_figures(fig: Figures, flow: MailboxFlow, sim: Simulator, mailboxes: Sequence[Mailbox],
                    *, exact: bool = True) -> Figures:
    calls = warmup_calls(sim)
    ids = {m.campaign_id for m in (flow.get(m.id) for m in mailboxes)}
    fig.warmups_intended = len(mailboxes)
    fig.warmup_calls_successful = sum(len(calls[c].successful("start")) for c in ids if c in calls)
    fig.warmup_http_requests = sum(calls[c].attempts["start"] for c in ids if c in calls)
    fig.campaigns_with_two_successful_warmups = sum(
        1 for c in ids if c in calls and len(calls[c].successful("start")) > 1
    )
    fig.states = dict(Counter(m.state.value for m in flow.list()))
    deliveries = flow.deliveries()
    fig.deliveries_stored = len(deliveries)
    fig.delivery_statuses = dict(Counter(d.status for d in deliveries))
    fig.deliveries_unprocessed = sum(1 for d in deliveries if d.status in ("received", "failed"))
    fig.extra["transitions recorded without a call (the effect was already at Mailivery)"] = sum(
        1 for m in mailboxes for r in flow.history(m.id)
        if r.detail.get("effect_seen_at_mailivery") or r.detail.get("already_active_at_mailivery")
        or (r.trigger in ("start", "resume", "pause") and r.detail.get("reported_by_mailivery")))
    fig.violations = check_exactly_once(flow, sim, mailboxes, exact=exact)
    return fig


# -- convergence -----------------------------------------------------------------------------------


def converge(flow: MailboxFlow, *, rounds: int = 20, wait: float = 0.2) -> tuple[bool, int]:
    """Run ``reconcile(fix=True, stuck_after=0)`` until a run is clean (bounded); (clean, runs)."""
    for n in range(1, rounds + 1):
        report = flow.reconcile(stuck_after=timedelta(0), fix=True)
        if report.clean:
            return True, n
        time.sleep(wait)
    return False, rounds


def connect_all(flow: MailboxFlow, n: int, *, prefix: str, tries: int = 40) -> list[Mailbox]:
    """``request_connection`` for ``n`` mailboxes, retried as a partner would while Mailivery fails."""
    connected: list[Mailbox] = []
    for i in range(n):
        for attempt in range(tries):
            try:
                connected.append(flow.request_connection(
                    owner_id=f"{prefix}-{i}", email=f"{prefix}{i}@example.com",
                    first_name=f"User{i}"))
                break
            except (MailiveryError, ConcurrentUpdate):
                if attempt == tries - 1:
                    raise
                time.sleep(0.05)
    return connected


def consent_all(sim: Simulator, mailboxes: Sequence[Mailbox]) -> list[bytes]:
    """Accept every mailbox's consent at the simulator; the webhook bodies it sent, in order."""
    sim.wait_for_webhooks()
    start = len(sim.webhooks_sent)
    for mailbox in mailboxes:
        assert mailbox.oauth_url is not None
        sim.accept(mailbox.oauth_url)
    sim.wait_for_webhooks(timeout=30)
    return [bytes(sent.body) for sent in sim.webhooks_sent[start:]]


def _client(api_key: str, api_url: str, *, timeout: float = 10.0, attempts: int = 4
            ) -> MailiveryClient:
    return MailiveryClient(api_key, api_url, rate_per_second=0, timeout=timeout,
                           max_attempts=attempts, backoff_initial=0.01, backoff_max=0.2)


# -- scenario 1: the same deliveries to many processes at once ----------------------------------


def _same_deliveries_worker(database_url: str, api_url: str, api_key: str, secret: str,
                            bodies: list[bytes], seed: int, barrier: Any, results: Any) -> None:
    quiet_logs()
    flow = MailboxFlow(database_url, client=_client(api_key, api_url), webhook_secret=secret)
    order = list(range(len(bodies)))
    random.Random(seed).shuffle(order)
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    barrier.wait(timeout=120)
    for i in order:
        try:
            outcomes[flow.handle_webhook(bodies[i], secret=secret).outcome.value] += 1
        except Exception as exc:  # reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")
    results.put((seed, dict(outcomes), errors))
    flow.close()


def _worker_context() -> Any:
    """Where worker processes come from: a fork server that imported this module (and so SQLAlchemy,
    psycopg, httpx) once, so each worker starts in milliseconds instead of importing them all again;
    spawn where there is no fork server. Either way a worker starts clean: no thread, connection or
    lock of the parent."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def run_same_deliveries(database_url: str, api_url: str, api_key: str, secret: str, sim: Simulator,
                        *, mailboxes: int, processes: int = 8) -> Figures:
    """``processes`` worker processes handle the same ``mailboxes`` deliveries at the same moment."""
    started = time.perf_counter()
    fig = Figures(f"{processes} processes receive the same deliveries at once", mailboxes=mailboxes)
    flow = MailboxFlow(database_url, client=_client(api_key, api_url), webhook_secret=secret)
    flow.create_schema()
    try:
        connected = connect_all(flow, mailboxes, prefix="same")
        bodies = consent_all(sim, connected)
        ctx = _worker_context()
        barrier = ctx.Barrier(processes)
        results = ctx.Queue()
        workers = [
            ctx.Process(target=_same_deliveries_worker,
                        args=(database_url, api_url, api_key, secret, bodies, seed, barrier, results))
            for seed in range(processes)
        ]
        for worker in workers:
            worker.start()
        outcomes: Counter[str] = Counter()
        errors: list[str] = []
        for _ in workers:
            _seed, counted, failed = results.get(timeout=300)
            outcomes.update(counted)
            errors += failed
        for worker in workers:
            worker.join(timeout=60)
        fig.deliveries_sent = len(bodies) * processes
        fig.outcomes = dict(outcomes)
        fig.converged = all(flow.get(m.id).state is State.WARMING for m in connected)
        fig.extra["worker errors"] = errors
        fig.extra["exit codes"] = sorted({w.exitcode for w in workers}, key=str)
        _finish_figures(fig, flow, sim, connected)
        calls = warmup_calls(sim)
        fig.extra["start-warmup HTTP requests per campaign"] = dict(
            Counter(calls.get(m.campaign_id or 0, WarmupCalls()).attempts["start"]
                    for m in (flow.get(c.id) for c in connected)))
    finally:
        flow.close()
    fig.seconds = time.perf_counter() - started
    return fig


# -- scenario 2: a share of every call fails --------------------------------------------------------


def run_faults(database_url: str, api_url: str, api_key: str, secret: str, sim: Simulator, *,
               mailboxes: int, p: float = 0.3, copies: int = 2, threads: int = 8,
               client_timeout: float = 0.5, attempts: int = 2, seed: int = 0) -> Figures:
    """Connect ``mailboxes`` while a share ``p`` of Mailivery's answers fail, deliver every webhook
    ``copies`` times from ``threads`` threads, then reconcile until clean (chaos still on).

    The client makes only ``attempts`` attempts per call, so that whole calls fail often and the
    flow's own recovery (deferred deliveries, kept intents, the reconciler) does the work, not the
    client's retries."""
    started = time.perf_counter()
    fig = Figures(f"{p:.0%} of Mailivery calls fail", mailboxes=mailboxes)
    late = client_timeout + 0.1  # a timed-out request's work lands this long after it was sent
    client = _client(api_key, api_url, timeout=client_timeout, attempts=attempts)
    flow = MailboxFlow(database_url, client=client, webhook_secret=secret)
    flow.create_schema()
    try:
        with chaos(sim, p, timeout_latency=late, seed=seed) as faults:
            connected = connect_all(flow, mailboxes, prefix="chaos")
            bodies = consent_all(sim, connected)
            deliveries = [b for b in bodies for _ in range(copies)]
            random.Random(seed).shuffle(deliveries)
            outcomes: Counter[str] = Counter()
            lock = threading.Lock()

            def deliver(body: bytes) -> None:
                outcome = flow.handle_webhook(body, secret=secret).outcome.value
                with lock:
                    outcomes[outcome] += 1

            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(deliver, deliveries))
            time.sleep(late)  # let the work of timed-out requests land before anyone re-reads
            fig.converged, fig.reconcile_rounds = converge(flow, rounds=25, wait=client_timeout)
            fig.extra["faults injected"] = dict(faults.injected)
        api_calls = len(sim.calls)
        fig.extra["Mailivery API requests"] = api_calls
        fig.deliveries_sent = len(deliveries)
        fig.outcomes = dict(outcomes)
        _finish_figures(fig, flow, sim, connected, exact=False)
    finally:
        flow.close()
    fig.seconds = time.perf_counter() - started
    return fig


# -- scenario 3: a worker killed at random moments --------------------------------------------------


def _read_acks(path: Path) -> set[int]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    return {int(line) for line in text.split("\n")[:-1] if line.strip().isdigit()}


def _lease_owner(flow: MailboxFlow, mailbox: Mailbox) -> str | None:
    import sqlalchemy as sa

    from mailbox_flow.store import MAILBOX

    with flow.store.engine.connect() as conn:
        owner = conn.execute(
            sa.select(MAILBOX.c.lease_owner).where(MAILBOX.c.id == mailbox.id)).scalar()
    return str(owner) if owner is not None else None


def _crash_worker(database_url: str, api_url: str, api_key: str, secret: str, bodies: list[bytes],
                  mailbox_ids: list[str], ack_path: str, lease_seconds: float, seed: int,
                  ready: Any) -> None:
    """Handle every delivery not yet acknowledged, in order, pausing or resuming a random mailbox
    after each; acknowledge each handled delivery with one append to ``ack_path``."""
    quiet_logs(logging.ERROR)
    flow = MailboxFlow(database_url, client=_client(api_key, api_url, timeout=5.0),
                       webhook_secret=secret, lease=timedelta(seconds=lease_seconds),
                       worker_id=f"crash-{seed}-{os.getpid()}")
    done = _read_acks(Path(ack_path))
    rng = random.Random(seed)
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    ready.set()
    for i, body in enumerate(bodies):
        if i in done:
            continue
        try:
            flow.handle_webhook(body, secret=secret)
        except MailboxFlowError:
            continue  # not acknowledged: sent again by the next run
        os.write(fd, f"{i}\n".encode())
        if rng.random() < 0.6:
            _toggle(flow, rng.choice(mailbox_ids))
    os.close(fd)
    flow.close()


def _toggle(flow: MailboxFlow, mailbox_id: str) -> None:
    try:
        mailbox = flow.get(mailbox_id)
        if mailbox.state is State.WARMING:
            flow.pause_warmup(mailbox.id)
        elif mailbox.state is State.PAUSED:
            flow.resume_warmup(mailbox.id)
    except MailboxFlowError:
        pass  # held by a dead worker's lease, or moved meanwhile: the reconciler finishes it


def run_crashes(database_url: str, api_url: str, api_key: str, secret: str, sim: Simulator, *,
                mailboxes: int, kills: int, workdir: Path, lease: float = 1.0,
                latency: float = 0.08, max_kill_delay: float = 0.9, seed: int = 0) -> Figures:
    """A worker process handles the deliveries and is killed (SIGKILL) ``kills`` times at random
    moments; a last run finishes, then the reconciler runs (short leases) until clean."""
    started = time.perf_counter()
    fig = Figures(f"worker killed {kills} times", mailboxes=mailboxes)
    flow = MailboxFlow(database_url, client=_client(api_key, api_url), webhook_secret=secret,
                       lease=timedelta(seconds=lease))
    flow.create_schema()
    rng = random.Random(seed)
    ack_path = workdir / f"acks-{uuid.uuid4().hex[:8]}.txt"
    try:
        connected = connect_all(flow, mailboxes, prefix="crash")
        bodies = consent_all(sim, connected)
        ids = [str(m.id) for m in connected]
        ctx = _worker_context()
        sim.faults.latency(latency)  # every call is slow: kills land in the middle of calls
        killed = 0
        runs = 0
        kill_points: list[float] = []
        mid_call = mid_delivery = 0
        unfinished: set[int] = set()
        while killed < kills and len(_read_acks(ack_path)) < len(bodies):
            ready = ctx.Event()
            worker = ctx.Process(target=_crash_worker, args=(
                database_url, api_url, api_key, secret, bodies, ids, str(ack_path), lease,
                seed * 1000 + runs, ready))
            worker.start()
            runs += 1
            ready.wait(timeout=60)
            delay = rng.uniform(0.02, max_kill_delay)
            worker.join(timeout=delay)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=30)
                killed += 1
                kill_points.append(round(delay, 2))
                # what the kill interrupted: a claimed mailbox (between claim and commit, i.e. around
                # a Mailivery call), a stored delivery not yet finished
                owner = f"crash-{seed * 1000 + runs - 1}-{worker.pid}"
                mid_call += sum(1 for m in flow.list() if m.intent_trigger is not None
                                and _lease_owner(flow, m) == owner)
                received = {d.id for d in flow.deliveries("received")}
                mid_delivery += bool(received - unfinished)
                unfinished |= received
            worker.join(timeout=30)
        ready = ctx.Event()
        last = ctx.Process(target=_crash_worker, args=(
            database_url, api_url, api_key, secret, bodies, ids, str(ack_path), lease,
            seed * 1000 + runs, ready))
        last.start()
        last.join(timeout=600)
        runs += 1
        sim.faults.latency(0)
        acked = _read_acks(ack_path)
        time.sleep(lease)  # the dead workers' leases run out
        fig.converged, fig.reconcile_rounds = converge(flow, rounds=20, wait=lease / 2)
        fig.deliveries_sent = len(bodies)
        fig.extra["kills"] = killed
        fig.extra["kills that interrupted a claimed mailbox (claim → call → commit)"] = mid_call
        fig.extra["kills that left a stored delivery unfinished"] = mid_delivery
        originals = [d for d in flow.deliveries() if d.dedupe_key is not None]
        fig.extra["original deliveries stored (one per distinct delivery sent)"] = len(originals)
        if len(originals) != len(bodies):
            fig.violations.append(f"{len(originals)} original deliveries for {len(bodies)} sent")
        fig.extra["worker runs"] = runs
        fig.extra["kill delays (s)"] = kill_points
        fig.extra["deliveries acknowledged by workers"] = len(acked)
        fig.extra["last worker exit code"] = last.exitcode
        _finish_figures(fig, flow, sim, connected)
        # every delivery sent is in the inbox, and finished
        stored = {json.dumps(json.loads(d.body), sort_keys=True) for d in flow.deliveries()}
        missing = [b for b in bodies if json.dumps(json.loads(b), sort_keys=True) not in stored]
        if missing:
            fig.violations.append(f"{len(missing)} deliveries never stored")
        fig.extra["pause/resume transitions"] = sum(
            1 for m in connected for r in flow.history(m.id) if r.trigger in ("pause", "resume"))
    finally:
        sim.faults.latency(0)
        flow.close()
        ack_path.unlink(missing_ok=True)
    fig.seconds = time.perf_counter() - started
    return fig
