"""Shared fixtures: a database per test on SQLite and on PostgreSQL, and the Mailivery simulator.

Every storage test takes ``database_url`` and so runs twice: on a fresh SQLite file and on a fresh
PostgreSQL schema (``MAILBOX_FLOW_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``).
When PostgreSQL cannot be reached the PostgreSQL cases are skipped on a laptop, but fail under ``CI=true``
(or ``MAILBOX_FLOW_REQUIRE_POSTGRES=1``): CI must never pass by skipping them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import stamina
import structlog

from mailbox_flow import MailboxFlow, MailiveryClient
from mailbox_flow.testing import postgres_schema

from .helpers import API_KEY, SECRET

PG_URL = os.environ.get(
    "MAILBOX_FLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(
    os.environ.get("MAILBOX_FLOW_REQUIRE_POSTGRES")
)

# Commits need not wait for the disk in tests: nothing a test can observe changes (only what a crash of
# the server itself would lose), and the suite runs thousands of small transactions.
TEST_PG_SETTINGS = {"synchronous_commit": "off"}

_pg_state: dict[str, object] = {}


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    if "error" not in _pg_state:
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            engine.dispose()
            _pg_state["error"] = None
        except Exception as exc:
            _pg_state["error"] = f"{type(exc).__name__}: {exc}"
    return _pg_state["error"]  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that configures logging hands the next one the set-up it found: structlog unconfigured
    again (``capture_logs`` leaves it marked configured; the library then logs through the standard
    library), and the ``mailbox_flow`` loggers' levels, handlers and switches as they were (a docs
    snippet sets ``logging.getLogger("mailbox_flow")``'s level, as a host would)."""
    configured = structlog.is_configured()
    names = ["mailbox_flow", *(n for n in logging.root.manager.loggerDict if n.startswith("mailbox_flow."))]
    saved = {n: (lg.level, lg.disabled, lg.propagate, list(lg.handlers))
             for n in names for lg in [logging.getLogger(n)]}
    yield
    if not configured:
        structlog.reset_defaults()
    for name, logger in [(n, logging.getLogger(n)) for n in logging.root.manager.loggerDict
                         if n == "mailbox_flow" or n.startswith("mailbox_flow.")]:
        level, disabled, propagate, handlers = saved.get(name, (logging.NOTSET, False, True, []))
        logger.setLevel(level)
        logger.disabled, logger.propagate, logger.handlers[:] = disabled, propagate, handlers


@pytest.fixture(autouse=True)
def _no_retry_sleep() -> Iterator[None]:
    """Retries happen without real waiting in tests (stamina's testing mode keeps the attempt count)."""
    stamina.set_testing(True, attempts=4)
    yield
    stamina.set_testing(False)


def _postgres_schema_url() -> Iterator[str]:
    error = _pg_reachable()
    if error is not None:
        message = f"PostgreSQL is not reachable at {PG_URL}: {error}"
        if REQUIRE_PG:
            pytest.fail(message + " (CI requires it)", pytrace=False)
        pytest.skip(message)
    with postgres_schema(PG_URL, settings=TEST_PG_SETTINGS) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "mailbox_flow.db"
        yield f"sqlite:///{path}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (for tests that only make sense with many processes)."""
    yield from _postgres_schema_url()


# -- Mailivery: the simulator over real loopback HTTP ------------------------------------------
# The simulator itself is the one our pytest plugin (mailbox_flow.testing) gives partners: one
# server for the session, reset before every test. Ours accepts our API key and, unless a test
# wires a real receiver, posts its webhooks to a receiver that just answers 200 (most tests feed
# the captured bodies to flow.handle_webhook themselves).


@pytest.fixture(scope="session")
def mailivery_api_key() -> str:
    """Our tests' API key (overrides the plugin's default, so every reset restores it)."""
    return API_KEY


@pytest.fixture(scope="session")
def _null_receiver() -> Iterator[str]:
    """The URL of a webhook receiver that reads the body and answers 200."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from mailbox_flow.simulator import serve_in_thread

    async def hook(_request: Any) -> Response:
        await _request.body()
        return Response(status_code=200)

    receiver_url, stop_receiver = serve_in_thread(
        Starlette(routes=[Route("/hook", hook, methods=["POST"])]), "127.0.0.1", 0
    )
    yield f"{receiver_url}/hook"
    stop_receiver()


@pytest.fixture(scope="session")
def _sim_server(mailivery_server: Any) -> Any:
    """The plugin's session simulator server (``mailivery_server``)."""
    return mailivery_server


@pytest.fixture
def sim(mailivery_sim: Any, _null_receiver: str) -> Iterator[Any]:
    """The simulator, reset for this test (no campaigns, no calls, no faults)."""
    mailivery_sim.webhook_url = _null_receiver
    yield mailivery_sim
    mailivery_sim.wait_for_webhooks()


@pytest.fixture
def api_url(_sim_server: Any) -> str:
    """The simulator's API base URL (``http://127.0.0.1:PORT/api/v1``)."""
    return str(_sim_server.api_url)


@pytest.fixture
def client(api_url: str) -> Iterator[MailiveryClient]:
    """A Mailivery client pointed at the simulator, without client-side throttling."""
    with MailiveryClient(API_KEY, api_url, rate_per_second=0, timeout=5.0) as c:
        yield c


@pytest.fixture
def flow(database_url: str, client: MailiveryClient, sim: Any) -> Iterator[MailboxFlow]:
    """A flow on a fresh database, wired to the simulator."""
    f = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    f.create_schema()
    yield f
    f.store.dispose()
