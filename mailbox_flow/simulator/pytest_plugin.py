"""pytest fixtures for partners' tests.

Enable with ``pytest_plugins = ["mailbox_flow.simulator.pytest_plugin"]`` in a root conftest.py.

``mailivery_simulator`` yields a started `SimulatorServer` (fresh state per test): point your
`MailiveryClient` at ``server.api_url`` with ``server.sim.api_key``, set ``server.sim.webhook_url``
to your webhook endpoint, and drive consents and faults through ``server.sim``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailbox_flow.simulator.server import SimulatorServer
from mailbox_flow.simulator.state import Simulator

__all__ = ["mailivery_simulator"]


@pytest.fixture
def mailivery_simulator() -> Iterator[SimulatorServer]:
    """A Mailivery simulator served on a free loopback port for one test."""
    with SimulatorServer(Simulator()) as server:
        yield server
