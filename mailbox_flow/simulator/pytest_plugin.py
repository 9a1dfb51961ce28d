"""Kept for compatibility: the partner fixtures live in `mailbox_flow.testing`.

That module is a pytest plugin registered by the ``pytest11`` entry point, so its fixtures
(``mailivery_sim``, ``mailivery_simulator``, ``mailbox_flow``, ...) are available without this
import. ``pytest_plugins = ["mailbox_flow.simulator.pytest_plugin"]`` keeps working (it registers
the same fixtures) for environments that disable plugin autoloading.
"""

from __future__ import annotations

from mailbox_flow.testing import (
    _mailbox_flow_receiver,
    mailbox_flow,
    mailbox_flow_db,
    mailbox_flow_webhook_secret,
    mailivery_api_key,
    mailivery_client,
    mailivery_server,
    mailivery_sim,
    mailivery_simulator,
    wait_for_state,
)

__all__ = [
    "_mailbox_flow_receiver",
    "mailbox_flow",
    "mailbox_flow_db",
    "mailbox_flow_webhook_secret",
    "mailivery_api_key",
    "mailivery_client",
    "mailivery_server",
    "mailivery_sim",
    "mailivery_simulator",
    "wait_for_state",
]
