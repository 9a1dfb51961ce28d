"""Hostile input at the webhook edge: generated bodies, secrets and headers over real HTTP.

Invariants for every request: never a 500; a bad secret or an oversized body stores nothing; every other
(authenticated) delivery is stored exactly once in the inbox; an invalid delivery changes no mailbox.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbox_flow import MailboxFlow, MailiveryClient
from mailbox_flow.simulator import serve_in_thread
from mailbox_flow.store import MAILBOX
from mailbox_flow.web import create_app

from .helpers import SECRET

LIMIT = 2048
# Generated deliveries per run on SQLite (more for a deeper run: MAILBOX_FLOW_HOSTILE_EXAMPLES=5000).
SQLITE_EXAMPLES = int(os.environ.get("MAILBOX_FLOW_HOSTILE_EXAMPLES", "600"))
EXPECTED_EMAIL = "ada@contoso.com"
REAL_CAMPAIGN = 777


def fake_mailivery(request: httpx.Request) -> httpx.Response:
    """Mailivery knows one campaign (777, Ada's, pending); everything else is 404."""
    if request.url.path.endswith(f"/campaigns/{REAL_CAMPAIGN}"):
        return httpx.Response(200, json={"data": {"id": REAL_CAMPAIGN, "email": EXPECTED_EMAIL,
                                                  "status_code": "pending"}})
    if request.url.path.endswith("/start-warmup"):
        return httpx.Response(200, json={"success": True})
    if request.url.path.endswith("/campaigns/microsoft"):
        return httpx.Response(200, json={"data": {"url": "https://login.example.com/o?code=c"}})
    return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no such campaign"})


def _serve(database_url: str, background_workers: int = 0) -> Iterator[tuple[MailboxFlow, httpx.Client]]:
    client = MailiveryClient("k", "https://mailivery.test/api/v1", rate_per_second=0,
                             transport=httpx.MockTransport(fake_mailivery))
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    flow.request_connection(owner_id="u", email=EXPECTED_EMAIL, first_name="Ada")
    app = create_app(flow, max_body_bytes=LIMIT, background_workers=background_workers)
    url, stop = serve_in_thread(app, "127.0.0.1", 0)
    with httpx.Client(base_url=url, timeout=10) as http:
        yield flow, http
    stop()
    flow.close()


@pytest.fixture
def hostile_sqlite(tmp_path: Any) -> Iterator[tuple[MailboxFlow, httpx.Client]]:
    """A receiver on SQLite with one expected mailbox, Mailivery faked in-process."""
    yield from _serve(f"sqlite:///{tmp_path}/hostile.db")


@pytest.fixture
def hostile_postgres(postgres_url: str) -> Iterator[tuple[MailboxFlow, httpx.Client]]:
    """The same receiver on PostgreSQL."""
    yield from _serve(postgres_url)


@pytest.fixture
def hostile_background(tmp_path: Any) -> Iterator[tuple[MailboxFlow, httpx.Client]]:
    """A receiver on SQLite that answers first and acts in two background threads."""
    yield from _serve(f"sqlite:///{tmp_path}/hostile-bg.db", background_workers=2)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                      max_size=4),
    max_leaves=12,
)
campaign_ids = st.one_of(st.just(REAL_CAMPAIGN), st.integers(-5, 10**12), st.text(max_size=12),
                         st.floats(), st.none(), st.booleans())
emails = st.one_of(st.just(EXPECTED_EMAIL), st.just("ADA@Contoso.COM"), st.emails(), st.text(max_size=40))
metas = st.one_of(st.none(), st.just(""), st.text(max_size=60), json_values,
                  st.just("mailbox_flow_token=wrong"), st.just("meta=a&tags=1,%202"))
event_types = st.one_of(
    st.sampled_from(["campaign.pending", "campaign.created", "campaign.updated", "campaign.deleted",
                     "campaign.connection_problem"]),
    st.text(max_size=80),
)
webhook_like = st.builds(
    lambda t, cid, email, meta, extra: {
        "type": t, "action": t.rsplit(".", 1)[-1],
        "account": {"campaign_id": cid, "email": email, "meta": meta, "first_name": "Ada", **extra},
    },
    event_types, campaign_ids, emails, metas,
    st.dictionaries(st.sampled_from(["lalst_name", "campaignId", "tags", "type", "provider_type"]),
                    json_values, max_size=3),
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    webhook_like.map(lambda v: json.dumps(v).encode()),
    st.binary(min_size=LIMIT + 1, max_size=LIMIT + 50),
)
secrets = st.one_of(st.just(SECRET), st.just(SECRET), st.just(SECRET),
                    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                                   exclude_characters="/?#%"), min_size=1, max_size=40))
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(
    lambda n: n not in {"content-length", "host", "transfer-encoding", "connection", "expect"}
    and not n.startswith("-")
)
headers = st.dictionaries(header_names,
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                  max_size=60).map(str.strip), max_size=4)


def snapshot(flow: MailboxFlow) -> list[tuple[Any, ...]]:
    with flow.store.engine.connect() as conn:
        rows = conn.execute(sa.select(MAILBOX.c.id, MAILBOX.c.state, MAILBOX.c.version)
                            .order_by(MAILBOX.c.id))
        return [tuple(r) for r in rows]


def settled(flow: MailboxFlow) -> None:
    """Wait until background workers have acted on every accepted delivery."""
    deadline = time.monotonic() + 10
    while next(iter(flow.store.scan_deliveries("received", batch_size=1)), None) is not None:
        assert time.monotonic() < deadline, "a delivery was never acted on"
        time.sleep(0.005)


def check(flow: MailboxFlow, http: httpx.Client, body: bytes, secret: str,
          extra_headers: dict[str, str]) -> None:
    settled(flow)
    before_inbox = flow.store.count("webhook_delivery")
    before_audit = flow.store.count("mailbox_transition")
    before_rows = snapshot(flow)
    response = http.post(f"/webhooks/mailivery/{secret}", content=body, headers=extra_headers)
    # 404: a secret such as "." or ".." is folded away by URL normalization and never routed
    assert response.status_code in (200, 202, 400, 401, 404, 413), (response.status_code, response.text)
    if response.status_code != 404:
        response.json()  # always a JSON answer
    inbox = flow.store.count("webhook_delivery")
    if response.status_code in (401, 404, 413):
        assert inbox == before_inbox
        assert snapshot(flow) == before_rows
    else:
        assert secret == SECRET and len(body) <= LIMIT
        assert inbox == before_inbox + 1
    if response.status_code == 400:
        assert snapshot(flow) == before_rows
        assert flow.store.count("mailbox_transition") == before_audit


@settings(max_examples=SQLITE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, secret=secrets, extra_headers=headers)
def test_hostile_deliveries_sqlite(hostile_sqlite: tuple[MailboxFlow, httpx.Client], body: bytes,
                                   secret: str, extra_headers: dict[str, str]) -> None:
    """600 generated deliveries on SQLite: never a 500, every authenticated one stored once."""
    check(*hostile_sqlite, body, secret, extra_headers)


@pytest.mark.postgres
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, secret=secrets, extra_headers=headers)
def test_hostile_deliveries_postgres(hostile_postgres: tuple[MailboxFlow, httpx.Client], body: bytes,
                                     secret: str, extra_headers: dict[str, str]) -> None:
    """300 generated deliveries on PostgreSQL: the same invariants."""
    check(*hostile_postgres, body, secret, extra_headers)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, secret=secrets, extra_headers=headers)
def test_hostile_deliveries_answered_first(hostile_background: tuple[MailboxFlow, httpx.Client],
                                           body: bytes, secret: str, extra_headers: dict[str, str]) -> None:
    """300 generated deliveries to a receiver with background workers: the same invariants (an
    accepted delivery is stored before it is answered), and every one is acted on afterwards."""
    check(*hostile_background, body, secret, extra_headers)
    settled(hostile_background[0])
