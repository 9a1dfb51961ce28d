"""Helpers to flood a webhook receiver with realistic deliveries (used by tests and benchmarks)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from mailbox_flow.flow import MailboxFlow
from mailbox_flow.mailivery.client import shared_tls_context
from mailbox_flow.types import Mailbox

__all__ = ["LoadResult", "prepare_deliveries", "send_concurrently"]


@dataclass
class LoadResult:
    """What a flood produced: status and outcome counts, and the wall time."""

    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        total = sum(self.statuses.values())
        return total / self.seconds if self.seconds else 0.0


def prepare_deliveries(
    flow: MailboxFlow, sim: Any, *, mailboxes: int, copies: int, seed: int = 0
) -> tuple[list[Mailbox], list[bytes]]:
    """Connect ``mailboxes`` mailboxes, accept each consent at the simulator and return the webhook
    bodies it produced, each repeated ``copies`` times and shuffled (``sim.webhook_url`` should be None,
    so that nothing is delivered on its own)."""
    connected = [
        flow.request_connection(owner_id=f"load-{i}", email=f"load{i}@example.com",
                                first_name=f"User{i}")
        for i in range(mailboxes)
    ]
    start = len(sim.webhooks_sent)
    for mailbox in connected:
        sim.accept(mailbox.oauth_url)
    sim.wait_for_webhooks()
    bodies = [bytes(sent.body) for sent in sim.webhooks_sent[start:]]
    deliveries = [body for body in bodies for _ in range(copies)]
    random.Random(seed).shuffle(deliveries)
    return connected, deliveries


def send_concurrently(url: str, deliveries: Sequence[bytes], *, connections: int) -> LoadResult:
    """POST every body to ``url`` over ``connections`` concurrent keep-alive connections."""
    result = LoadResult()
    lock = threading.Lock()
    local = threading.local()
    clients: list[httpx.Client] = []

    def post(body: bytes) -> None:
        client: httpx.Client | None = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30, verify=shared_tls_context())
            with lock:
                clients.append(client)
        response = client.post(url, content=body)
        outcome = response.json().get("outcome", "?") if response.status_code < 500 else "?"
        with lock:
            result.statuses[response.status_code] += 1
            result.outcomes[str(outcome)] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=connections) as pool:
        list(pool.map(post, deliveries))
    result.seconds = time.perf_counter() - started
    for client in clients:
        client.close()
    return result
