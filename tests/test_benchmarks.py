"""The in-process benchmarks still run, at tiny sizes (a smoke test: no figure is checked, only that each
script finishes and prints its figures; timings are never asserted). The multi-process ones,
``workers.py`` and ``webhook_load.py``, are exercised by ``benchmarks/run_all.py --quick``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PG_URL

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.postgres
@pytest.mark.parametrize(("script", "args", "expected"), [
    ("transition.py", ["--rows", "30", "--rounds", "1"],
     ["SQLite    : library expire", "PostgreSQL: library expire", "state machine trigger"]),
    ("handle_webhook.py", ["--mailboxes", "10", "--rounds", "1"],
     ["handle_webhook, SQLite:", "handle_webhook, PostgreSQL:"]),
    ("reconcile_scan.py", ["--rows", "2000", "--repeat", "1"],
     ["stuck mailboxes found:", "less memory streaming", "peak memory"]),
])
def test_benchmark_runs(script: str, args: list[str], expected: list[str], postgres_url: str) -> None:
    """The script exits 0 and prints each of its figure lines (``postgres_url``: PostgreSQL must answer;
    each script makes a schema of its own)."""
    env = {**os.environ, "MAILBOX_FLOW_TEST_POSTGRES_URL": PG_URL}
    done = subprocess.run([sys.executable, script, *args], cwd=BENCHMARKS, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    for line in expected:
        assert line in done.stdout, done.stdout
