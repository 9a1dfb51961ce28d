"""Shared set-up of the stress scripts: a fresh PostgreSQL schema and a simulator on loopback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailbox_flow.simulator import Simulator, SimulatorServer
from mailbox_flow.testing import postgres_schema as fresh_schema
from tools.resilience import Figures, quiet_logs

PG_URL = os.environ.get(
    "MAILBOX_FLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
API_KEY = "stress-api-key-2b7c"
SECRET = "stress-webhook-secret-91aa-5c0e7f3b2d94"


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on ``PG_URL`` (dropped afterwards); yields a URL whose search_path is it."""
    with fresh_schema(PG_URL, prefix="mf_stress") as url:
        yield url


@contextmanager
def simulator() -> Iterator[tuple[Simulator, str]]:
    """A simulator (no webhook URL: bodies are collected, not posted) served on loopback."""
    with SimulatorServer(Simulator(api_key=API_KEY)) as server:
        yield server.sim, server.api_url


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return p


def report(fig: Figures, json_path: str | None) -> int:
    """Print the figures (and write them as JSON); exit status 0 when nothing was violated."""
    print("\n".join(fig.lines()), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(fig.to_dict(), indent=2, default=str))
    ok = not fig.violations and fig.converged
    print("RESULT:", "OK" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def setup_logging() -> Any:
    import logging

    quiet_logs(logging.ERROR)  # the figures, not every retry, are the output
    logging.getLogger("stamina").setLevel(logging.ERROR)
