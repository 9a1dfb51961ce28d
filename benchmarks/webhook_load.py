"""Flood the webhook receiver on PostgreSQL and compare it with the floor of "store it durably".

    .venv/bin/python benchmarks/webhook_load.py [--mailboxes 250] [--copies 2] [--connections 20]
        [--rounds 3] [--background-workers 4]

Two receivers are measured: acting on each delivery before answering it (the default), and answering
as soon as it is stored and de-duplicated, with ``--background-workers`` threads acting on it
(``create_app(flow, background_workers=N)``). For each: deliveries answered per second (the intake), and
deliveries acted on per second until the last one was (the two Mailivery calls and transitions done).

Each round: a fresh PostgreSQL schema, N mailboxes connected against the simulator, their consents
accepted, and every webhook body sent `copies` times (shuffled) over `connections` concurrent connections
to the receiver running in its own process (uvicorn, as `mailbox-flow webhook serve` runs it). Baseline:
a bare Starlette endpoint in its own process that only INSERTs the raw body (one statement, one commit).
Both use the same connection pool size (`MAILBOX_FLOW_DB_POOL_SIZE`). The load generator runs in a process
of its own (the simulator, which answers the library's Mailivery calls, stays in this one: sharing an
interpreter lock with it throttled the load offered to the library's receiver only). Checks: every
delivery stored, exactly one start-warmup call per mailbox. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from mailbox_flow import MailboxFlow, MailiveryClient, Settings, State
from mailbox_flow.audit import configure_logging
from mailbox_flow.simulator import Simulator, SimulatorServer
from mailbox_flow.testing import postgres_schema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's tools/
from tools.loadtest import LoadResult, prepare_deliveries, send_concurrently  # noqa: E402

PG = os.environ.get("MAILBOX_FLOW_TEST_POSTGRES_URL",
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret-" + uuid.uuid4().hex
API_KEY = "bench-key"

RECEIVER = textwrap.dedent("""
    import sys
    from mailbox_flow import MailboxFlow, MailiveryClient
    from mailbox_flow.audit import configure_logging
    from mailbox_flow.web import serve
    configure_logging("console", "WARNING")
    url, api, key, secret, workers, port = sys.argv[1:7]
    flow = MailboxFlow(url, client=MailiveryClient(key, api, rate_per_second=0), webhook_secret=secret)
    serve(flow, "127.0.0.1", int(port), workers_log_level="warning", background_workers=int(workers))
""")

BASELINE = textwrap.dedent("""
    import sys
    import sqlalchemy as sa
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    url, pool, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url, pool_size=pool, max_overflow=10)  # the library's pool, for fairness
    meta = sa.MetaData()
    raw = sa.Table("raw_delivery", meta, sa.Column("id", sa.BigInteger, primary_key=True),
                   sa.Column("body", sa.LargeBinary, nullable=False))
    meta.create_all(engine)
    insert = raw.insert()
    def store(body):
        with engine.begin() as conn:
            conn.execute(insert, {"body": body})
    async def hook(request):
        await run_in_threadpool(store, await request.body())
        return JSONResponse({"outcome": "stored"})
    app = Starlette(routes=[Route("/webhooks/mailivery/{secret}", hook, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schema() -> AbstractContextManager[str]:
    return postgres_schema(PG, prefix="mf_bench")


@contextmanager
def process(script: str, *args: str, port: int) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args, str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def send(url: str, deliveries: list[bytes], connections: int) -> LoadResult:
    """`send_concurrently` in a fresh process (its own interpreter lock; its start is not timed)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(send_concurrently, url, deliveries, connections=connections).result()


@dataclass
class Run:
    intake: float  # deliveries answered per second
    processed: float  # deliveries acted on per second, until the last one was
    ok: bool
    summary: str


def run_library(server: SimulatorServer, args: argparse.Namespace, workers: int) -> Run:
    sim = server.sim
    sim.reset()
    sim.webhook_url = None
    with schema() as url:
        flow = MailboxFlow(url, client=MailiveryClient(API_KEY, server.api_url, rate_per_second=0),
                           webhook_secret=SECRET)
        flow.create_schema()
        mailboxes, deliveries = prepare_deliveries(flow, sim, mailboxes=args.mailboxes,
                                                   copies=args.copies, seed=1)
        with process(RECEIVER, url, server.api_url, API_KEY, SECRET, str(workers),
                     port=free_port()) as base:
            result = send(f"{base}/webhooks/mailivery/{SECRET}", deliveries, args.connections)
            answered = time.perf_counter()
            deadline = answered + 120
            while next(iter(flow.store.scan_deliveries("received", batch_size=1)), None) is not None:
                if time.perf_counter() > deadline:
                    break
                time.sleep(0.005)
            drained = time.perf_counter() - answered
        stored = flow.store.count("webhook_delivery")
        starts = sim.count("PATCH", "/start-warmup")
        warming = sum(1 for m in mailboxes if flow.get(m.id).state is State.WARMING)
        flow.close()
    ok = stored == len(deliveries) and starts == len(mailboxes) and warming == len(mailboxes)
    summary = (f"{len(deliveries)} sent, {stored} stored, statuses {dict(result.statuses)}, "
               f"start calls {starts} for {len(mailboxes)} mailboxes, {warming} warming")
    processed = len(deliveries) / (result.seconds + drained)
    return Run(result.per_second, processed, ok, summary)


def run_baseline(deliveries: list[bytes], args: argparse.Namespace) -> float:
    pool = str(Settings().db_pool_size)
    with schema() as url, process(BASELINE, url, pool, port=free_port()) as base:
        result = send(f"{base}/webhooks/mailivery/x", deliveries, args.connections)
    return result.per_second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=250)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--background-workers", type=int, default=4,
                        help="workers of the answer-first receiver (0: measure acting first only)")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    modes = [0] + ([args.background_workers] if args.background_workers else [])
    runs: dict[int, list[Run]] = {mode: [] for mode in modes}
    baseline: list[float] = []
    sample = [b'{"type":"campaign.pending","account":{"campaign_id":%d,"email":"x%d@example.com"}}'
              % (i, i) for i in range(args.mailboxes)] * args.copies
    with SimulatorServer(Simulator(api_key=API_KEY)) as server:
        for round_no in range(1, args.rounds + 1):  # interleaved: each mode, then the baseline
            for mode in modes:
                run = run_library(server, args, mode)
                runs[mode].append(run)
                print(f"round {round_no}, {_label(mode)}: answered {run.intake:7.1f}/s, acted on "
                      f"{run.processed:7.1f}/s  {'OK' if run.ok else 'MISMATCH'}  ({run.summary})")
            base = run_baseline(sample, args)
            baseline.append(base)
            print(f"round {round_no}, bare durable insert: {base:7.1f}/s")
    bas = statistics.median(baseline)
    print(f"\nbare durable-insert endpoint (median of {args.rounds}): {bas:.1f} deliveries/s")
    for mode in modes:
        intake = statistics.median(r.intake for r in runs[mode])
        processed = statistics.median(r.processed for r in runs[mode])
        print(f"{_label(mode)}: intake {intake:.1f}/s = {intake / bas:.2f}x the bare insert; "
              f"every delivery acted on at {processed:.1f}/s = {processed / bas:.2f}x")
    all_ok = all(r.ok for mode in modes for r in runs[mode])
    print("every delivery stored, one start-warmup per mailbox:", "yes" if all_ok else "NO")
    return 0 if all_ok else 1


def _label(workers: int) -> str:
    return f"answer first, {workers} workers" if workers else "act, then answer"


if __name__ == "__main__":
    raise SystemExit(main())
