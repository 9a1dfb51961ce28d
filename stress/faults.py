"""30% of Mailivery calls fail (429, 500, timeouts, lost answers) across 300 connections (full size).

    .venv/bin/python stress/faults.py --mailboxes 300 --p 0.3

Every webhook is delivered twice, concurrently; then the reconciler runs (faults still on) until clean.
Prints warmup calls made vs intended, deliveries stored vs sent, and the reconcile rounds needed.
"""

from __future__ import annotations

import sys

from _common import API_KEY, SECRET, parser, postgres_schema, report, setup_logging, simulator

from tools.resilience import run_faults


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--mailboxes", type=int, default=300)
    p.add_argument("--p", type=float, default=0.3, help="share of calls that fail")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup_logging()
    with simulator() as (sim, api_url), postgres_schema() as url:
        fig = run_faults(url, api_url, API_KEY, SECRET, sim, mailboxes=args.mailboxes, p=args.p,
                         threads=args.threads, seed=args.seed)
    return report(fig, args.json)


if __name__ == "__main__":
    sys.exit(main())
