"""8 processes receive the same webhook deliveries at the same moment (full size).

    .venv/bin/python stress/same_deliveries.py --mailboxes 400 --processes 8

Prints start-warmup calls per mailbox (must all be 1) and deliveries stored vs sent.
"""

from __future__ import annotations

import sys

from _common import API_KEY, SECRET, parser, postgres_schema, report, setup_logging, simulator

from tools.resilience import run_same_deliveries


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--mailboxes", type=int, default=400)
    p.add_argument("--processes", type=int, default=8)
    args = p.parse_args()
    setup_logging()
    with simulator() as (sim, api_url), postgres_schema() as url:
        fig = run_same_deliveries(url, api_url, API_KEY, SECRET, sim, mailboxes=args.mailboxes,
                                  processes=args.processes)
    return report(fig, args.json)


if __name__ == "__main__":
    sys.exit(main())
