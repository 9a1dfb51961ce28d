"""How fast, and in how much memory, does the reconciler find the mailboxes stuck in pending?

    python benchmarks/reconcile_scan.py                 # 1,000,000 mailboxes, 2% pending (about 2 min)
    python benchmarks/reconcile_scan.py --rows 20000    # a quick run

It builds a SQLite database of ``--rows`` mailboxes directly (bulk ``executemany`` inside one
transaction, indexes built afterwards; the flow is not involved), then measures the stuck-pending scan:

- streamed (`Store.scan_state`: keyset pagination, ``--batch-size`` rows per read) against loading the
  whole result at once (`Store.mailboxes`, one query, one list);
- with the ``(state, state_changed_at, id)`` index and without it (the index dropped);
- against a full scan, two ways: the library reading every mailbox as it reads the stuck ones
  (`scan_state` over every state: each row a `Mailbox` snapshot), which is what a reconciler without
  the targeted query would do, like for like; and raw sqlite3 reading every row of the table (all
  columns, no conversion to objects), the floor of any reconciler that looks at every mailbox;
- the stuck query alone: raw sqlite3 running the same WHERE and ORDER BY through the index, rows left
  as tuples (the database's share of the stuck scan);
- a whole dry-run ``flow.reconcile()`` (every phase; the first run also writes the stuck mailboxes'
  flags, the second finds them already set), and the stale-intent scan, which has no index of its own
  (and with the partial index ``ON mailbox (id) WHERE intent_trigger IS NOT NULL`` proposed for it).

Times are the best of ``--repeat`` runs (``time.perf_counter``); peak memory is what Python allocated
during one more run (``tracemalloc``), so it measures what the scan holds, not the interpreter. Each
figure is printed with its baseline and the ratio between them.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mailbox_flow import MailboxFlow, State
from mailbox_flow.audit import configure_logging
from mailbox_flow.store import MAILBOX, Store

STATE_INDEX = "ix_mailbox_state_scan"
INTENT_INDEX = "ix_mailbox_intent"  # the partial index on claimed mailboxes (models.py)
# how the non-pending rest is spread over the other states
OTHER_STATES = [(State.WARMING, 0.80), (State.PAUSED, 0.05), (State.DELETED, 0.05),
                (State.EXPIRED, 0.04), (State.OAUTH_SENT, 0.02), (State.REJECTED, 0.02),
                (State.REQUESTED, 0.02)]
_COLUMNS = ("id", "owner_id", "email", "state", "version", "campaign_id", "created_at", "updated_at",
            "state_changed_at", "attempts")


@dataclass
class Figure:
    name: str
    seconds: float
    peak_bytes: int
    rows: int


def build(path: Path, rows: int, pending_share: float, seed: int) -> tuple[float, int]:
    """Create the schema and ``rows`` mailboxes; returns (seconds, pending rows)."""
    started = time.perf_counter()
    flow = MailboxFlow(f"sqlite:///{path}")
    flow.create_schema()
    engine = flow.store.engine
    indexes = [ix for ix in MAILBOX.indexes]
    with engine.begin() as conn:
        for ix in indexes:
            conn.exec_driver_sql(f"DROP INDEX {ix.name}")
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(tzinfo=None)
    states = [s.value for s, _ in OTHER_STATES]
    weights = [w for _, w in OTHER_STATES]
    pending = 0
    sql = f"INSERT INTO mailbox ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"

    def chunk(first: int, count: int) -> list[tuple[Any, ...]]:
        nonlocal pending
        out = []
        for i in range(first, first + count):
            if rng.random() < pending_share:
                state = State.PENDING.value
                pending += 1
                changed = now - timedelta(seconds=rng.randrange(2 * 86400))  # up to 2 days
            else:
                state = rng.choices(states, weights)[0]
                changed = now - timedelta(seconds=rng.randrange(90 * 86400))
            linked = state in ("pending", "warming", "paused", "deleted", "rejected")
            stamp = changed.strftime("%Y-%m-%d %H:%M:%S.%f")
            out.append((uuid.uuid4().hex, f"owner-{i % 5000}", f"user{i}@example.com", state, 1,
                        i + 1 if linked else None, stamp, stamp, stamp, 0))
        return out

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("BEGIN")
        step = 50_000
        for first in range(0, rows, step):
            cursor.executemany(sql, chunk(first, min(step, rows - first)))
        cursor.execute("COMMIT")
        cursor.close()
    finally:
        raw.close()
    for ix in indexes:
        ix.create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    flow.close()
    return time.perf_counter() - started, pending


def measure(name: str, run: Callable[[], int], repeat: int) -> Figure:
    """Best time of ``repeat`` runs, then the peak of Python allocations during one more."""
    best = float("inf")
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = run()
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Figure(name, best, peak, count)


def plan(store: Store, cutoff: datetime) -> str:
    """SQLite's plan for the first batch of the streamed stuck-pending scan."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        captured.append((statement, params))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    next(iter(store.scan_state(State.PENDING, changed_before=cutoff, batch_size=1)), None)
    sa.event.remove(store.engine, "before_cursor_execute", capture)
    database = store.engine.url.database
    assert database
    with sqlite3.connect(database) as conn:  # a fresh connection: no cached statement plans
        rows = conn.execute("EXPLAIN QUERY PLAN " + captured[-1][0], captured[-1][1]).fetchall()
    return "; ".join(str(r[-1]) for r in rows)


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="mailboxes to generate")
    parser.add_argument("--pending-share", type=float, default=0.02, help="share of them pending")
    parser.add_argument("--batch-size", type=int, default=500, help="rows per read when streaming")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (best kept)")
    parser.add_argument("--seed", type=int, default=42, help="random seed for the data")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the database at this path and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")  # one reconcile log line per timed run is noise here

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.db"
        if path.exists():
            path.unlink()
        seconds, pending = build(path, args.rows, args.pending_share, args.seed)
        size = path.stat().st_size
        print(f"built {args.rows:,} mailboxes ({pending:,} pending) in {seconds:.1f} s, "
              f"{size / 2**20:.0f} MiB on disk  [python {sys.version.split()[0]}, "
              f"SQLite {sqlite3.sqlite_version}]")
        flow = MailboxFlow(f"sqlite:///{path}")
        store = flow.store
        cutoff = datetime.now(UTC) - timedelta(hours=1)

        def streamed() -> int:
            return sum(1 for _ in store.scan_state(State.PENDING, changed_before=cutoff,
                                                   batch_size=args.batch_size))

        def load_all() -> int:
            return len(store.mailboxes(states=[State.PENDING], changed_before=cutoff))

        def full_scan() -> int:
            columns = ", ".join(c.name for c in MAILBOX.columns)
            with sqlite3.connect(path) as conn:
                cursor = conn.execute(f"SELECT {columns} FROM mailbox")
                count = 0
                while batch := cursor.fetchmany(args.batch_size):
                    count += len(batch)
            return count

        def raw_stuck() -> int:
            columns = ", ".join(c.name for c in MAILBOX.columns)
            stamp = cutoff.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLite stores it
            with sqlite3.connect(path) as conn:
                cursor = conn.execute(f"SELECT {columns} FROM mailbox WHERE state = ? AND "
                                      "state_changed_at < ? ORDER BY state_changed_at, id",
                                      (State.PENDING.value, stamp))
                count = 0
                while batch := cursor.fetchmany(args.batch_size):
                    count += len(batch)
            return count

        def library_full_scan() -> int:  # every mailbox, streamed as snapshots the way the stuck scan is
            later = datetime.now(UTC) + timedelta(days=1)
            return sum(1 for state in State
                       for _ in store.scan_state(state, changed_before=later, batch_size=args.batch_size))

        def stale() -> int:
            return sum(1 for _ in store.scan_stale_intents(now=datetime.now(UTC),
                                                           batch_size=args.batch_size))

        def dry_run() -> int:
            return len(flow.reconcile(stuck_after=timedelta(hours=1)).findings)

        print(f"plan with the index:    {plan(store, cutoff)}")
        indexed_stream = measure("stuck scan, streamed, indexed", streamed, args.repeat)
        full = measure("full scan, raw sqlite3, every row", full_scan, args.repeat)
        stuck_raw = measure("stuck rows, raw sqlite3, same query", raw_stuck, args.repeat)
        library_full = measure("full scan, library, every mailbox", library_full_scan, 1)
        indexed_all = measure("stuck scan, load all, indexed", load_all, args.repeat)
        stale_indexed = measure("stale-intent scan, partial index on intents", stale, args.repeat)
        with store.engine.begin() as conn:  # pooled SQLite connections keep old plans: dispose
            conn.exec_driver_sql(f"DROP INDEX {INTENT_INDEX}")
        store.engine.dispose()
        stale_scan = measure("stale-intent scan without that index", stale, args.repeat)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE INDEX {INTENT_INDEX} ON mailbox (id) "
                                 "WHERE intent_trigger IS NOT NULL")
        store.engine.dispose()
        first_dry = measure("reconcile() dry run, first (writes flags)", dry_run, 1)
        dry = measure("reconcile() dry run, again (flags already set)", dry_run, args.repeat)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP INDEX {STATE_INDEX}")
        store.engine.dispose()  # new connections, new statement plans
        print(f"plan without the index: {plan(store, cutoff)}")
        plain_stream = measure("stuck scan, streamed, no index", streamed, 1)
        plain_all = measure("stuck scan, load all, no index", load_all, args.repeat)
        flow.close()

    assert indexed_stream.rows == indexed_all.rows == plain_stream.rows == plain_all.rows == stuck_raw.rows
    assert library_full.rows == full.rows
    print(f"\nstuck mailboxes found: {indexed_stream.rows:,} (batch size {args.batch_size})\n")
    rows = [
        # figure, its baseline, what the ratio says
        (indexed_stream, library_full, "time", "stuck scan / full scan, both as the library reads"),
        (indexed_stream, full, "time", "stuck scan / raw full scan (time)"),
        (stuck_raw, full, "time", "the stuck query alone / raw full scan (time)"),
        (indexed_stream, stuck_raw, "time", "library / raw driver, same rows (time)"),
        (indexed_stream, plain_stream, "time", "faster with the index"),
        (indexed_all, plain_all, "time", "faster with the index"),
        (indexed_stream, indexed_all, "time", "streamed / loaded (time)"),
        (indexed_stream, indexed_all, "memory", "less memory streaming"),
        (plain_stream, plain_all, "memory", "less memory streaming (no index)"),
        (dry, indexed_stream, "time", "whole dry run / stuck scan (time)"),
        (first_dry, dry, "time", "first dry run (flag writes) / later ones"),
        (stale_scan, indexed_stream, "time", "stale-intent scan / stuck scan (time)"),
        (stale_indexed, stale_scan, "time", "faster with a partial index on intents"),
    ]
    name_w = max(len(f.name) for f, _b, _k, _w in rows)
    print(f"{'measurement':<{name_w}}  {'figure':>12}  {'baseline':>12}  ratio  (baseline)")
    for figure, base, kind, what in rows:
        if kind == "time":
            value, ref = figure.seconds, base.seconds
            text, ref_text = f"{value:.3f} s", f"{ref:.3f} s"
            ratio = ref / value if what.startswith("faster") else value / ref
        else:
            value, ref = figure.peak_bytes, base.peak_bytes
            text, ref_text = mib(value), mib(ref)
            ratio = ref / max(value, 1)
        print(f"{figure.name:<{name_w}}  {text:>12}  {ref_text:>12}  {ratio:8.3f}x {what} "
              f"(vs {base.name})")
    print("\npeak memory (tracemalloc):")
    for figure in (indexed_stream, indexed_all, plain_stream, plain_all, full, stuck_raw, library_full,
                   stale_scan, first_dry, dry):
        print(f"  {figure.name:<{name_w}}  {mib(figure.peak_bytes):>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
