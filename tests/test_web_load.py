"""A small load test of the webhook edge on PostgreSQL (the full-size run is benchmarks/webhook_load.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mailbox_flow import MailboxFlow, MailiveryClient, State
from mailbox_flow.simulator import serve_in_thread
from mailbox_flow.web import create_app
from tools.loadtest import prepare_deliveries, send_concurrently

from .helpers import API_KEY, SECRET


@pytest.mark.postgres
def test_flood_of_deliveries_with_duplicates(postgres_url: str, api_url: str, sim: Any) -> None:
    """120 deliveries (40 mailboxes, duplicates, shuffled) over 20 connections: all stored, one start each."""
    client = MailiveryClient(API_KEY, api_url, rate_per_second=0)
    flow = MailboxFlow(postgres_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    sim.webhook_url, previous = None, sim.webhook_url
    try:
        mailboxes, deliveries = prepare_deliveries(flow, sim, mailboxes=40, copies=3, seed=7)
    finally:
        sim.webhook_url = previous
    url, stop = serve_in_thread(create_app(flow), "127.0.0.1", 0)
    try:
        result = send_concurrently(f"{url}/webhooks/mailivery/{SECRET}", deliveries, connections=20)
    finally:
        stop()
    assert result.statuses == {200: 120}
    assert flow.store.count("webhook_delivery") == 120
    assert sim.count("PATCH", "/start-warmup") == 40
    assert {flow.get(m.id).state for m in mailboxes} == {State.WARMING}
    outcomes = result.outcomes
    assert outcomes["started"] == 40 and outcomes["duplicate"] == 80
    flow.close()
