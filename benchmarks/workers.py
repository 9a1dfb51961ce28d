"""Two worker processes on different mailboxes vs one (PostgreSQL): the scaling factor.

    .venv/bin/python benchmarks/workers.py [--rows 2000] [--rounds 3]

Each worker is its own process with its own MailboxFlow on the same schema and runs ``flow.expire`` over
its own share of mailboxes (no contention on rows). One worker does ``rows`` transitions; two workers do
``rows`` each at the same time. Scaling = combined rate of two / rate of one (2.0 would be perfect; this
machine has 2 cores, and the PostgreSQL server shares them).

Baseline: the same, with workers running the raw psycopg transaction of ``transition.py`` (SELECT, UPDATE,
INSERT, COMMIT) instead of the library: how far this machine and its PostgreSQL let two writers scale at
all (the library cannot scale better than the server it waits on).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transition import pg_schema, raw_psycopg_step, seed

from mailbox_flow import MailboxFlow
from mailbox_flow.audit import configure_logging


def worker(url: str, ids: list[uuid.UUID], ready: mp.Queue, start: object,  # type: ignore[type-arg]
           done: mp.Queue, raw: bool) -> None:  # type: ignore[type-arg]
    configure_logging("console", "WARNING")
    flow = MailboxFlow(url, webhook_secret="x" * 32)
    flow.get(ids[0])  # warm the pool
    step, close = raw_psycopg_step(url) if raw else (flow.expire, flow.close)
    ready.put(os.getpid())
    start.wait()  # type: ignore[attr-defined]
    began = time.perf_counter()
    for mailbox_id in ids:
        step(mailbox_id)
    done.put((began, time.perf_counter()))
    close()
    flow.close()


def run(url: str, shares: list[list[uuid.UUID]], raw: bool = False) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    done: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=worker, args=(url, ids, ready, start, done, raw)) for ids in shares]
    for p in procs:
        p.start()
    for _ in procs:  # every worker has imported, connected and read once
        ready.get(timeout=120)
    start.set()
    spans = [done.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return sum(len(ids) for ids in shares) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    one: list[float] = []
    two: list[float] = []
    raw_one: list[float] = []
    raw_two: list[float] = []
    with pg_schema() as url:
        flow = MailboxFlow(url, webhook_secret="x" * 32)
        flow.create_schema()
        for _ in range(args.rounds):  # interleaved: library, raw, library, raw...
            one.append(run(url, [seed(flow, args.rows)]))
            two.append(run(url, [seed(flow, args.rows), seed(flow, args.rows)]))
            raw_one.append(run(url, [seed(flow, args.rows)], raw=True))
            raw_two.append(run(url, [seed(flow, args.rows), seed(flow, args.rows)], raw=True))
        flow.close()
    a, b = statistics.median(one), statistics.median(two)
    ra, rb = statistics.median(raw_one), statistics.median(raw_two)
    print(f"library, one worker:  {a:7.0f} transitions/s")
    print(f"library, two workers: {b:7.0f} transitions/s (different mailboxes)")
    print(f"raw psycopg, one:     {ra:7.0f} transitions/s")
    print(f"raw psycopg, two:     {rb:7.0f} transitions/s")
    print(f"scaling: library {b / a:.2f}x, raw psycopg {rb / ra:.2f}x  "
          f"(library / raw: {(b / a) / (rb / ra):.2f}; cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
