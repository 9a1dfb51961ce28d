"""``handle_webhook`` end to end with Mailivery mocked in-process (httpx.MockTransport).

    .venv/bin/python benchmarks/handle_webhook.py [--mailboxes 500] [--rounds 3] [--no-postgres]

Each delivery: store it in the inbox, match it (email + correlation token), re-read the campaign
(GET), mark pending, claim, start warmup (PATCH), commit warming, finish the delivery: two Mailivery
calls and two transitions. A duplicate of each is sent too. Prints deliveries per second (medians).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mailbox_flow import MailboxFlow, MailiveryClient
from mailbox_flow.audit import configure_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transition import pg_schema

EMAIL = re.compile(r"/campaigns/(\d+)$")


def mock_mailivery(emails: dict[int, str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/campaigns/microsoft"):
            return httpx.Response(200, json={"data": {"url": "https://login.example.com/o?c=1"}})
        if path.endswith("/start-warmup"):
            return httpx.Response(200, json={"success": True})
        match = EMAIL.search(path)
        if match:
            cid = int(match.group(1))
            return httpx.Response(200, json={"data": {"id": cid, "email": emails[cid],
                                                      "status_code": "pending"}})
        return httpx.Response(404, json={"code": "NOT_FOUND", "message": "?"})

    return httpx.MockTransport(answer)


SECRET = "s" * 32


def one_round(url: str, mailboxes: int) -> float:
    emails: dict[int, str] = {}
    client = MailiveryClient("k", "https://mailivery.test/api/v1", rate_per_second=0,
                             transport=mock_mailivery(emails))
    flow = MailboxFlow(url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    bodies = []
    for i in range(mailboxes):
        email = f"user{i}-{time.perf_counter_ns()}@example.com"
        mb = flow.request_connection(owner_id=f"o{i}", email=email, first_name="U")
        cid = 10_000 + i + int(time.time_ns() % 1_000_000) * 1000
        emails[cid] = email
        bodies.append(json.dumps({"type": "campaign.pending", "action": "pending", "account": {
            "campaign_id": cid, "email": email, "first_name": "U",
            "meta": f"mailbox_flow_token={mb.correlation_token}"}}).encode())
    started = time.perf_counter()
    for body in bodies:
        assert flow.handle_webhook(body, secret=SECRET).outcome == "started"
        assert flow.handle_webhook(body, secret=SECRET).outcome == "duplicate"
    rate = 2 * len(bodies) / (time.perf_counter() - started)
    flow.close()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    sqlite: list[float] = []
    postgres: list[float] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            sqlite.append(one_round(f"sqlite:///{Path(tmp) / 'w.db'}", args.mailboxes))
        if not args.no_postgres:
            with pg_schema() as url:
                postgres.append(one_round(url, args.mailboxes))
    print(f"handle_webhook, SQLite:     {statistics.median(sqlite):7.0f} deliveries/s "
          "(half new: 2 calls + 2 transitions; half duplicates)")
    if postgres:
        print(f"handle_webhook, PostgreSQL: {statistics.median(postgres):7.0f} deliveries/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
