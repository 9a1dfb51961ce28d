"""`AsyncMailiveryClient` over real HTTP to the simulator: the same calls awaited, and an event loop
that never stalls while Mailivery is slow or failing (its waits and retries all yield).

The contract tests of tests/test_client.py also run on the async client (its ``face`` fixture); these
are the checks only an event loop can make.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import stamina

from mailbox_flow import AsyncMailiveryClient, MailiveryClient
from mailbox_flow.errors import MailiveryRateLimited, MailiveryTransportError
from mailbox_flow.mailivery.client import call_deadline
from tools import unasync

from .helpers import API_KEY

T = TypeVar("T")
#: The longest the event loop may go without running a ready task.
MAX_STALL = 0.25


async def _watched(work: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """Run ``work`` beside a ticker; returns its result, the ticker's longest gap and the seconds taken."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - before - 0.01)

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        result = await work()
    finally:
        done.set()
        await ticker
    return result, max(gaps, default=0.0), time.monotonic() - started


def test_awaited_calls_reach_mailivery(sim: Any, api_url: str) -> None:
    """Every call of the client, awaited, reaches the simulator and reads its answer."""
    campaign = sim.create_campaign("ada@contoso.com", send_webhook=False)

    async def run() -> list[Any]:
        async with AsyncMailiveryClient(API_KEY, api_url, rate_per_second=0) as client:
            connect = await client.connect_microsoft(first_name="Bob", email="bob@contoso.com")
            listed = await client.list_campaigns()
            got = await client.get_campaign(campaign["id"])
            await client.start_warmup(campaign["id"], request_id="rid-start")
            await client.pause_warmup(campaign["id"])
            await client.resume_warmup(campaign["id"])
            await client.delete_campaign(campaign["id"])
            return [connect, listed, got, client.closed]

    connect, listed, got, closed_inside = asyncio.run(run())
    assert connect.url.startswith("http")
    assert [c.id for c in listed] == [campaign["id"]] and got.email == "ada@contoso.com"
    assert closed_inside is False
    paths = [(c.method, c.path) for c in sim.calls]
    assert ("PATCH", f"/api/v1/campaigns/{campaign['id']}/start-warmup") in paths
    assert ("DELETE", f"/api/v1/campaigns/{campaign['id']}") in paths
    assert any(c.request_id == "rid-start" for c in sim.calls)


def test_event_loop_never_stalls_while_mailivery_is_slow_or_failing(sim: Any, api_url: str) -> None:
    """Slow answers, 429s with Retry-After, 5xx with backoff and the rate limiter's waits all yield:
    the loop keeps running other tasks (gap under 0.25 s) while the calls take seconds."""
    campaign = sim.create_campaign("ada@contoso.com", send_webhook=False)
    sim.faults.latency(0.3)
    sim.faults.fail_next(2, status=429, retry_after=0.6)
    sim.faults.fail_next(2, status=500)

    async def calls() -> list[Any]:
        async with AsyncMailiveryClient(API_KEY, api_url, rate_per_second=3, backoff_initial=0.2,
                                        backoff_max=0.6, max_attempts=6) as client:
            return list(await asyncio.gather(*(client.get_campaign(campaign["id"]) for _ in range(6))))

    with stamina.set_testing(False):
        results, stall, took = asyncio.run(_watched(calls))
    assert [r.id for r in results] == [campaign["id"]] * 6
    statuses = [c.status for c in sim.calls]
    assert statuses.count(429) == 2 and statuses.count(500) == 2  # the retries really happened
    assert took > 1.5, took  # 6 calls at 3/s plus a 0.6 s Retry-After and backoff: real waiting
    assert stall < MAX_STALL, f"the event loop stalled {stall:.3f} s"


def test_rate_limit_exhausted_raises_without_stalling(sim: Any, api_url: str) -> None:
    """A 429 on every attempt ends in `MailiveryRateLimited` after the awaited Retry-After waits."""
    sim.faults.fail_next(10, status=429, retry_after=0.3)

    async def call() -> BaseException:
        async with AsyncMailiveryClient(API_KEY, api_url, rate_per_second=0, max_attempts=3) as client:
            try:
                await client.list_campaigns()
            except MailiveryRateLimited as exc:
                return exc
            raise AssertionError("no error")

    with stamina.set_testing(False):
        error, stall, took = asyncio.run(_watched(call))
    assert isinstance(error, MailiveryRateLimited) and error.retry_after == 0.3
    assert took >= 0.6 and stall < MAX_STALL


def test_call_deadline_bounds_an_awaited_call(sim: Any, api_url: str) -> None:
    """Under `call_deadline` an awaited call gives up in time (its attempt's timeout shrinks) and the
    loop runs meanwhile."""
    sim.faults.latency(2.0)

    async def call() -> BaseException:
        async with AsyncMailiveryClient(API_KEY, api_url, rate_per_second=0) as client:
            with call_deadline(time.monotonic() + 0.4):
                try:
                    await client.list_campaigns()
                except MailiveryTransportError as exc:
                    return exc
            raise AssertionError("no error")

    error, stall, took = asyncio.run(_watched(call))
    assert isinstance(error, MailiveryTransportError)
    assert took < 1.5 and stall < MAX_STALL


def test_sync_and_async_clients_share_the_key_budget(api_url: str) -> None:
    """One rate limiter per API key and base URL in a process, whichever face asks for it."""
    sync = MailiveryClient(API_KEY, api_url, rate_per_second=2.0)
    async_client = AsyncMailiveryClient(API_KEY, api_url, rate_per_second=2.0)
    try:
        assert sync.rate_limiter is not None and sync.rate_limiter is async_client.rate_limiter
    finally:
        sync.close()
        asyncio.run(async_client.aclose())


def test_closed_async_client_refuses_calls(api_url: str) -> None:
    async def run() -> None:
        client = AsyncMailiveryClient(API_KEY, api_url, rate_per_second=0)
        await client.aclose()
        assert client.closed
        with pytest.raises(RuntimeError, match="closed"):
            await client.list_campaigns()

    asyncio.run(run())


# -- the sync face is generated from the async source ---------------------------------------------


def test_generated_sync_code_is_fresh() -> None:
    """`python -m tools.unasync --check` finds nothing stale (CI runs it too)."""
    assert unasync.stale() == [], f"run `{unasync.COMMAND}`"


def test_a_changed_async_source_makes_its_twin_stale(tmp_path: Path) -> None:
    """The check can fail: an edit of the async source that is not regenerated is reported."""
    package = tmp_path / "mailbox_flow"
    shutil.copytree(unasync.ROOT / "mailbox_flow" / "mailivery", package / "mailivery")
    assert unasync.stale(tmp_path) == []
    source = package / "mailivery" / "_async" / "client.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    assert unasync.stale(tmp_path) == ["mailbox_flow/mailivery/_sync/client.py"]
    assert unasync.write(tmp_path) == ["mailbox_flow/mailivery/_sync/client.py"]
    assert unasync.stale(tmp_path) == []


@pytest.mark.parametrize(("line", "expected"), [
    ("    async def get(self) -> AsyncMailiveryClient:", "    def get(self) -> MailiveryClient:"),
    ("        answer = await self._call(x)", "        answer = self._call(x)"),
    ("            async for attempt in retry():", "            for attempt in retry():"),
    ("        await self._http.aclose()", "        self._http.close()"),
    ("    _http: httpx.AsyncClient", "    _http: httpx.Client"),
    ("await self.rate_limiter.aacquire()", "self.rate_limiter.acquire()"),
    ("# awaited, nothing blocks", "# awaited, nothing blocks"),
])
def test_unasync_substitutions(line: str, expected: str) -> None:
    assert unasync.unasync_line(line) == expected
