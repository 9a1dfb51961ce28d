"""A worker process is killed with SIGKILL at random moments, 20 times (full size).

    .venv/bin/python stress/crashes.py --mailboxes 80 --kills 20

The worker handles webhook deliveries and pauses/resumes mailboxes, every Mailivery call slowed down so
that kills land in the middle of calls; after the kills a last run finishes, then the reconciler (1 s
leases) runs until clean. Prints whether everything converged and every delivery is accounted for.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import API_KEY, SECRET, parser, postgres_schema, report, setup_logging, simulator

from tools.resilience import run_crashes


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--mailboxes", type=int, default=80)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup_logging()
    with simulator() as (sim, api_url), postgres_schema() as url, \
            tempfile.TemporaryDirectory() as tmp:
        fig = run_crashes(url, api_url, API_KEY, SECRET, sim, mailboxes=args.mailboxes,
                          kills=args.kills, workdir=Path(tmp), seed=args.seed)
    return report(fig, args.json)


if __name__ == "__main__":
    sys.exit(main())
