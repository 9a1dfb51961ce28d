"""Run every benchmark with its default sizes, one after the other (one command for all figures).

    .venv/bin/python benchmarks/run_all.py [--quick]

``--quick`` uses small sizes (a smoke run in about a minute); the default sizes are the ones quoted in
benchmarks/README.md. PostgreSQL must be reachable (MAILBOX_FLOW_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = [
    ["transition.py", "--rows", "2000", "--rounds", "3"],
    ["handle_webhook.py", "--mailboxes", "500", "--rounds", "3"],
    ["webhook_load.py", "--mailboxes", "250", "--copies", "2", "--connections", "20", "--rounds", "3"],
    ["reconcile_scan.py"],
    ["workers.py", "--rows", "2000", "--rounds", "3"],
]
QUICK = [
    ["transition.py", "--rows", "300", "--rounds", "3"],
    ["handle_webhook.py", "--mailboxes", "100", "--rounds", "3"],
    ["webhook_load.py", "--mailboxes", "40", "--copies", "2", "--connections", "20", "--rounds", "1"],
    ["reconcile_scan.py", "--rows", "50000"],
    ["workers.py", "--rows", "300", "--rounds", "1"],
]


def main() -> int:
    status = 0
    for args in QUICK if "--quick" in sys.argv[1:] else FULL:
        print(f"\n== {' '.join(args)}", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
