"""Flood the webhook receiver on PostgreSQL and compare it with the floor of "store it durably".

    .venv/bin/python benchmarks/webhook_load.py [--mailboxes 250] [--copies 2] [--connections 20] [--rounds 3]

Each round: a fresh PostgreSQL schema, N mailboxes connected against the simulator, their consents
accepted, and every webhook body sent `copies` times (shuffled) over `connections` concurrent connections
to the receiver running in its own process (uvicorn, as `mailbox-flow webhook serve` runs it). Baseline:
a bare Starlette endpoint in its own process that only INSERTs the raw body (one statement, one commit).
Both use the same connection pool size (`MAILBOX_FLOW_DB_POOL_SIZE`). Checks: every delivery stored,
exactly one start-warmup call per mailbox. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx

from mailbox_flow import MailboxFlow, MailiveryClient, Settings, State
from mailbox_flow.audit import configure_logging
from mailbox_flow.loadtest import prepare_deliveries, send_concurrently
from mailbox_flow.simulator import Simulator, SimulatorServer
from mailbox_flow.testing import postgres_schema

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
    url, api, key, secret, port = sys.argv[1:6]
    flow = MailboxFlow(url, client=MailiveryClient(key, api, rate_per_second=0), webhook_secret=secret)
    serve(flow, "127.0.0.1", int(port), workers_log_level="warning")
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


def run_library(server: SimulatorServer, args: argparse.Namespace) -> tuple[float, bool, str]:
    sim = server.sim
    sim.reset()
    sim.webhook_url = None
    with schema() as url:
        flow = MailboxFlow(url, client=MailiveryClient(API_KEY, server.api_url, rate_per_second=0),
                           webhook_secret=SECRET)
        flow.create_schema()
        mailboxes, deliveries = prepare_deliveries(flow, sim, mailboxes=args.mailboxes,
                                                   copies=args.copies, seed=1)
        with process(RECEIVER, url, server.api_url, API_KEY, SECRET, port=free_port()) as base:
            result = send_concurrently(f"{base}/webhooks/mailivery/{SECRET}", deliveries,
                                       connections=args.connections)
        stored = flow.store.count("webhook_delivery")
        starts = sim.count("PATCH", "/start-warmup")
        warming = sum(1 for m in mailboxes if flow.get(m.id).state is State.WARMING)
        flow.close()
    ok = stored == len(deliveries) and starts == len(mailboxes) and warming == len(mailboxes)
    summary = (f"{len(deliveries)} sent, {stored} stored, statuses {dict(result.statuses)}, "
               f"start calls {starts} for {len(mailboxes)} mailboxes, {warming} warming")
    return result.per_second, ok, summary


def run_baseline(deliveries: list[bytes], args: argparse.Namespace) -> float:
    pool = str(Settings().db_pool_size)
    with schema() as url, process(BASELINE, url, pool, port=free_port()) as base:
        result = send_concurrently(f"{base}/webhooks/mailivery/x", deliveries,
                                   connections=args.connections)
    return result.per_second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=250)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    library: list[float] = []
    baseline: list[float] = []
    all_ok = True
    sample = [b'{"type":"campaign.pending","account":{"campaign_id":%d,"email":"x%d@example.com"}}'
              % (i, i) for i in range(args.mailboxes)] * args.copies
    with SimulatorServer(Simulator(api_key=API_KEY)) as server:
        for round_no in range(1, args.rounds + 1):
            rate, ok, summary = run_library(server, args)
            library.append(rate)
            all_ok &= ok
            base = run_baseline(sample, args)
            baseline.append(base)
            print(f"round {round_no}: library {rate:8.1f}/s  baseline {base:8.1f}/s  "
                  f"{'OK' if ok else 'MISMATCH'}  ({summary})")
    lib, bas = statistics.median(library), statistics.median(baseline)
    print(f"\nwebhook intake (median of {args.rounds}): {lib:.1f} deliveries/s")
    print(f"bare durable-insert endpoint:              {bas:.1f} deliveries/s")
    print(f"ratio library / baseline:                  {lib / bas:.2f}x")
    print("every delivery stored, one start-warmup per mailbox:", "yes" if all_ok else "NO")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
