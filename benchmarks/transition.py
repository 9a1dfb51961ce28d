"""A pure-database transition (``flow.expire``) against the same statements in the raw driver.

    .venv/bin/python benchmarks/transition.py [--rows 2000] [--rounds 3] [--no-postgres]

Library: ``flow.expire(id)`` — read the mailbox, check the table, fire the shared machine, one guarded
UPDATE ... RETURNING plus the audit INSERT in one transaction, one log event (filtered at WARNING).
Baseline: the raw driver doing the same work per mailbox in one transaction: SELECT, UPDATE, INSERT,
COMMIT (sqlite3 in WAL mode with synchronous=NORMAL; psycopg 3 on PostgreSQL). Rounds are interleaved
and the medians compared. Also: the share of a transition spent in the state machine trigger.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from mailbox_flow import MailboxFlow, State
from mailbox_flow.audit import configure_logging
from mailbox_flow.states import Subject, fire
from mailbox_flow.store import MAILBOX
from mailbox_flow.testing import postgres_schema

PG = os.environ.get("MAILBOX_FLOW_TEST_POSTGRES_URL",
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def seed(flow: MailboxFlow, rows: int) -> list[uuid.UUID]:
    """Insert ``rows`` mailboxes in oauth_sent with one bulk statement."""
    now = datetime.now(UTC)
    values = [
        {"id": uuid.uuid4(), "email": f"bench{i}-{uuid.uuid4().hex[:6]}@example.com",
         "state": State.OAUTH_SENT.value, "version": 1, "attempts": 0, "created_at": now,
         "updated_at": now, "state_changed_at": now}
        for i in range(rows)
    ]
    with flow.store.engine.begin() as conn:
        conn.execute(sa.insert(MAILBOX), values)
    return [v["id"] for v in values]


def time_it(ids: list[uuid.UUID], step: Callable[[uuid.UUID], object]) -> float:
    started = time.perf_counter()
    for mailbox_id in ids:
        step(mailbox_id)
    return len(ids) / (time.perf_counter() - started)


def raw_sqlite_step(path: str) -> tuple[Callable[[uuid.UUID], object], Callable[[], None]]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")

    def step(mailbox_id: uuid.UUID) -> None:
        key = mailbox_id.hex
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
        conn.execute("BEGIN IMMEDIATE")
        state, version = conn.execute("SELECT state, version FROM mailbox WHERE id = ?", (key,)).fetchone()
        conn.execute(
            "UPDATE mailbox SET state = 'expired', version = version + 1, state_changed_at = ?, "
            "updated_at = ? WHERE id = ? AND version = ?", (now, now, key, version))
        conn.execute(
            "INSERT INTO mailbox_transition (mailbox_id, trigger, from_state, to_state, at, source, "
            "request_id, detail) VALUES (?, 'expire', ?, 'expired', ?, 'api', NULL, ?)",
            (key, state, now, json.dumps({})))
        conn.execute("COMMIT")

    return step, conn.close


def raw_psycopg_step(url: str) -> tuple[Callable[[uuid.UUID], object], Callable[[], None]]:
    import psycopg

    dsn = sa.make_url(url).set(drivername="postgresql")
    conn = psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=False)

    def step(mailbox_id: uuid.UUID) -> None:
        now = datetime.now(UTC)
        with conn.cursor() as cur:
            cur.execute("SELECT state, version FROM mailbox WHERE id = %s", (mailbox_id,))
            state, version = cur.fetchone()  # type: ignore[misc]
            cur.execute(
                "UPDATE mailbox SET state = 'expired', version = version + 1, state_changed_at = %s, "
                "updated_at = %s WHERE id = %s AND version = %s", (now, now, mailbox_id, version))
            cur.execute(
                "INSERT INTO mailbox_transition (mailbox_id, trigger, from_state, to_state, at, source, "
                "request_id, detail) VALUES (%s, 'expire', %s, 'expired', %s, 'api', NULL, %s)",
                (mailbox_id, state, now, json.dumps({})))
        conn.commit()

    return step, conn.close


def pg_schema() -> AbstractContextManager[str]:
    return postgres_schema(PG, prefix="mf_bench")


def compare(label: str, url: str, raw: Callable[[], tuple[Callable[[uuid.UUID], object],
                                                          Callable[[], None]]],
            rows: int, rounds: int) -> float:
    flow = MailboxFlow(url, webhook_secret="x" * 32)
    flow.create_schema()
    lib_rates: list[float] = []
    raw_rates: list[float] = []
    raw_step, close = raw()
    for _ in range(rounds):
        lib_rates.append(time_it(seed(flow, rows), flow.expire))
        raw_rates.append(time_it(seed(flow, rows), raw_step))
    close()
    flow.close()
    lib, base = statistics.median(lib_rates), statistics.median(raw_rates)
    print(f"{label}: library expire {lib:9.0f}/s   raw driver {base:9.0f}/s   ratio {lib / base:.2f}x")
    return lib


def machine_share(rows: int) -> None:
    started = time.perf_counter()
    for _ in range(rows):
        fire("expire", Subject(State.OAUTH_SENT))
    per_fire = (time.perf_counter() - started) / rows
    print(f"state machine trigger: {per_fire * 1e6:.1f} µs per transition")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.db")
        sqlite_rate = compare("SQLite    ", f"sqlite:///{path}", lambda: raw_sqlite_step(path),
                              args.rows, args.rounds)
    pg_rate = None
    if not args.no_postgres:
        with pg_schema() as url:
            pg_rate = compare("PostgreSQL", url, lambda: raw_psycopg_step(url), args.rows, args.rounds)
    started = time.perf_counter()
    for _ in range(args.rows):
        fire("expire", Subject(State.OAUTH_SENT))
    per_fire = (time.perf_counter() - started) / args.rows
    for label, rate in (("SQLite", sqlite_rate), ("PostgreSQL", pg_rate)):
        if rate:
            print(f"state machine trigger: {per_fire * 1e6:.1f} µs = {per_fire * rate:.1%} of a "
                  f"{label} transition")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
