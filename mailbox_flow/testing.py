"""pytest fixtures for testing a `mailbox_flow` integration against a local Mailivery simulator.

This module is a pytest plugin, registered through the ``pytest11`` entry point ``mailbox_flow``:
once ``mailbox-flow`` is installed in the environment its fixtures are available in every test, with
nothing to import or configure (``pytest -p no:mailbox_flow`` turns it off). With plugin autoloading
disabled (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``), enable it with ``-p mailbox_flow``. Do not also list
it in ``pytest_plugins`` while autoloading is on: pytest refuses to register one plugin twice.

================================  ========  ====================================================
fixture                           scope     what it is
================================  ========  ====================================================
``mailivery_server``              session   a `SimulatorServer` (fake Mailivery) on a free
                                            loopback port, shared by the whole session
``mailivery_sim``                 function  its `Simulator`, reset for this test: no campaigns,
                                            calls, consents, webhooks or faults; ``api_key`` back
                                            to ``mailivery_api_key``, ``webhook_url`` unset
``mailivery_simulator``           function  the same server as ``mailivery_server``, reset as
                                            above (for code that wants ``.url``/``.api_url``)
``mailivery_api_key``             session   the key the simulator accepts (``"sim-key"``;
                                            override it to use your own)
``mailivery_client``              function  a `MailiveryClient` on the simulator: no client-side
                                            throttling, short retry back-off
``mailbox_flow_db``               function  a fresh SQLite URL in a temporary directory
                                            (override it to test on PostgreSQL)
``mailbox_flow_webhook_secret``   function  a random webhook secret for this test
``mailbox_flow``                  function  a `MailboxFlow` on ``mailbox_flow_db`` with
                                            ``mailivery_client`` and the secret, schema created,
                                            and the simulator's webhooks delivered over HTTP to a
                                            receiver running ``create_app(flow)``
================================  ========  ====================================================

Webhooks travel on other threads (the simulator's sender, the receiver's server), so wait for them
rather than sleep: ``mailivery_sim.wait_for_webhooks()`` returns once every queued webhook was
answered, and the receiver answers only after the flow processed it; `wait_for_state` polls until
a mailbox reaches a state (use it for a final state: ``pending`` is also a stop on the way to
``warming``).

Example (a partner's test file; nothing else is needed)::

    from mailbox_flow import State
    from mailbox_flow.testing import wait_for_state


    def test_connected_mailbox_starts_warming(mailbox_flow, mailivery_sim):
        mb = mailbox_flow.request_connection(owner_id="user-1", email="ada@contoso.com",
                                             first_name="Ada")
        mailivery_sim.accept(mb.oauth_url)         # the user consents; Mailivery posts the webhook
        warm = wait_for_state(mailbox_flow, mb.id, State.WARMING)
        assert mailivery_sim.campaign(warm.campaign_id)["status_code"] == "active"


    def test_failed_start_stays_pending(mailbox_flow, mailivery_sim):
        mailivery_sim.faults.start_fails("grace@contoso.com")      # the next start-warmup fails
        mb = mailbox_flow.request_connection(owner_id="user-2", email="grace@contoso.com",
                                             first_name="Grace")
        mailivery_sim.accept(mb.oauth_url)
        assert mailivery_sim.wait_for_webhooks()                   # answered = processed
        mb = mailbox_flow.get(mb.id)
        assert mb.state is State.PENDING and "CONNECTION_CHECK_FAILED" in mb.last_error

Faults (``mailivery_sim.faults``: ``fail_next``, ``error_rate``, ``latency``, ``start_fails``,
``drop_next_webhooks``, ``duplicate_webhooks``, ``delay_webhooks``, ``reorder_webhooks``) are
cleared before every test. See ``docs/testing.md`` and ``docs/simulator.md``.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from mailbox_flow.flow import MailboxFlow
    from mailbox_flow.mailivery import MailiveryClient
    from mailbox_flow.simulator import Simulator, SimulatorServer
    from mailbox_flow.states import State
    from mailbox_flow.types import Mailbox

__all__ = [
    "DEFAULT_API_KEY",
    "mailbox_flow",
    "mailbox_flow_db",
    "mailbox_flow_webhook_secret",
    "mailivery_api_key",
    "mailivery_client",
    "mailivery_server",
    "mailivery_sim",
    "mailivery_simulator",
    "postgres_schema",
    "wait_for_state",
]

#: The API key the session simulator accepts unless ``mailivery_api_key`` is overridden.
DEFAULT_API_KEY = "sim-key"


@contextmanager
def postgres_schema(
    base_url: str, prefix: str = "mf_test", *, settings: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test or run, dropped afterwards.

    Yields ``base_url`` with ``options=-csearch_path=<schema>`` added, so every connection made from
    it (by a flow, a subprocess, Alembic) works inside that schema only. ``settings`` adds further
    server settings to every such connection, e.g. ``{"synchronous_commit": "off"}`` for tests: each
    commit then returns without waiting for the disk, which changes nothing a test can see (only what
    a crash of the server itself would lose) and makes a suite of many small transactions faster.
    """
    import sqlalchemy as sa

    from .store import make_engine

    for name, value in (settings or {}).items():
        if (name == "search_path" or not re.fullmatch(r"[a-z_.]+", name)
                or not re.fullmatch(r"[A-Za-z0-9_.:-]+", value)):
            raise ValueError(f"not a PostgreSQL setting this helper passes on: {name}={value}")
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    options = {"search_path": schema, **(settings or {})}
    admin = make_engine(base_url, pool_size=1)  # postgres:// and postgresql:// too
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in base_url else "?"
        try:
            flags = " ".join(f"-c{name}={value}" for name, value in options.items())
            yield f"{base_url}{sep}options={quote(flags)}"
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def wait_for_state(
    flow: MailboxFlow, mailbox_id: uuid.UUID | str, state: State | str, timeout: float = 5.0
) -> Mailbox:
    """Poll ``flow`` until the mailbox is in ``state``; return it, or fail the test after ``timeout`` s.

    Webhooks are delivered by the simulator's thread to the receiver's thread, so a test that
    accepts a consent must wait for the outcome; this polls every few milliseconds. Wait for a
    state the mailbox stays in: a mailbox passes through ``pending`` on its way to ``warming``.
    """
    __tracebackhide__ = True
    from mailbox_flow.states import State

    wanted = State(state)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        mailbox = flow.get(mailbox_id)
        if mailbox.state is wanted:
            return mailbox
        if time.monotonic() >= deadline:
            detail = f"; last error: {mailbox.last_error}" if mailbox.last_error else ""
            pytest.fail(
                f"mailbox {mailbox.email} is {mailbox.state.value}, not {wanted.value}, "
                f"after {timeout:g} s{detail}",
                pytrace=False,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class _Receiver:
    """One webhook receiver for the session that forwards to the current test's ``create_app(flow)``.

    Starting a server per test costs ~0.1 s on shutdown; swapping the app behind one is free.
    Without a current app it answers 503 (the simulator records the attempt).
    """

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        app = self.app
        if app is not None:
            await app(scope, receive, send)
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"no mailbox_flow fixture active"})


@pytest.fixture(scope="session")
def mailivery_api_key() -> str:
    """The API key the simulator accepts (override this fixture to use another one)."""
    return DEFAULT_API_KEY


@pytest.fixture(scope="session")
def mailivery_server(mailivery_api_key: str) -> Iterator[SimulatorServer]:
    """A Mailivery simulator served on a free loopback port for the whole session."""
    from mailbox_flow.simulator import Simulator, SimulatorServer

    with SimulatorServer(Simulator(api_key=mailivery_api_key)) as server:
        yield server


def _reset(sim: Simulator, api_key: str) -> None:
    sim.reset()
    sim.api_key = api_key
    sim.webhook_url = None
    sim.meta_includes_tags = False


@pytest.fixture
def mailivery_sim(mailivery_server: SimulatorServer, mailivery_api_key: str) -> Iterator[Simulator]:
    """The session's simulator, reset for this test (campaigns, calls, webhooks, faults, webhook URL)."""
    sim = mailivery_server.sim
    _reset(sim, mailivery_api_key)
    yield sim
    sim.wait_for_webhooks(timeout=5.0)


@pytest.fixture
def mailivery_simulator(
    mailivery_server: SimulatorServer, mailivery_sim: Simulator
) -> SimulatorServer:
    """The running `SimulatorServer` (``.url``, ``.api_url``, ``.client()``, ``.sim``), reset."""
    return mailivery_server


@pytest.fixture
def mailivery_client(
    mailivery_server: SimulatorServer, mailivery_sim: Simulator
) -> Iterator[MailiveryClient]:
    """A `MailiveryClient` pointed at the simulator, without throttling and with a short back-off."""
    from mailbox_flow.mailivery import MailiveryClient

    with MailiveryClient(mailivery_sim.api_key, mailivery_server.api_url, rate_per_second=0,
                         timeout=5.0, backoff_initial=0.01, backoff_max=0.2) as client:
        yield client


@pytest.fixture
def mailbox_flow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLAlchemy URL of a fresh SQLite file (override this fixture to test on PostgreSQL)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mailbox_flow_db') / 'mailbox_flow.db'}"


@pytest.fixture
def mailbox_flow_webhook_secret() -> str:
    """A random webhook secret (the last segment of the receiver's URL)."""
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def _mailbox_flow_receiver() -> Iterator[_Receiver]:
    from mailbox_flow.simulator import serve_in_thread

    receiver = _Receiver()
    receiver.url, stop = serve_in_thread(receiver, "127.0.0.1", 0)
    yield receiver
    stop()


@pytest.fixture
def mailbox_flow(
    mailbox_flow_db: str,
    mailivery_client: MailiveryClient,
    mailivery_sim: Simulator,
    mailbox_flow_webhook_secret: str,
    _mailbox_flow_receiver: _Receiver,
) -> Iterator[MailboxFlow]:
    """A `MailboxFlow` wired to the simulator, whose webhooks reach ``create_app(flow)`` over HTTP."""
    from mailbox_flow.flow import MailboxFlow
    from mailbox_flow.web import create_app

    flow = MailboxFlow(mailbox_flow_db, client=mailivery_client,
                       webhook_secret=mailbox_flow_webhook_secret)
    flow.create_schema()
    _mailbox_flow_receiver.app = create_app(flow)
    mailivery_sim.webhook_url = (
        f"{_mailbox_flow_receiver.url}/webhooks/mailivery/{mailbox_flow_webhook_secret}"
    )
    try:
        yield flow
    finally:
        mailivery_sim.wait_for_webhooks(timeout=5.0)
        mailivery_sim.webhook_url = None
        _mailbox_flow_receiver.app = None
        flow.store.dispose()
