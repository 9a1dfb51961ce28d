"""A faithful local fake of Mailivery for demos, our tests and partners' tests.

>>> from mailbox_flow.simulator import Simulator, SimulatorServer   # doctest: +SKIP
>>> with SimulatorServer(Simulator(webhook_url="http://127.0.0.1:9000/hook")) as server:
...     ...  # client = MailiveryClient(api_key="sim-key", base_url=server.api_url)

`Simulator` holds the state (campaigns, consents, call log, faults, webhook outbox), `create_app`
serves it as Mailivery's API plus consent pages and ``/_sim`` controls, `SimulatorServer` runs it on
loopback in a thread and `run` in the foreground. Behaviour rules are documented in
`mailbox_flow.simulator.state` (statuses, webhooks) and `mailbox_flow.simulator.app` (HTTP).
"""

from mailbox_flow.simulator.app import API_PREFIX, create_app, validate_connect_form
from mailbox_flow.simulator.server import SimulatorServer, run, serve_in_thread
from mailbox_flow.simulator.state import (
    CAMPAIGN_STATUSES,
    Call,
    CampaignNotFound,
    ConsentNotFound,
    Faults,
    SentWebhook,
    SimulatedApiError,
    Simulator,
    meta_query_string,
)

__all__ = [
    "API_PREFIX",
    "CAMPAIGN_STATUSES",
    "Call",
    "CampaignNotFound",
    "ConsentNotFound",
    "Faults",
    "SentWebhook",
    "SimulatedApiError",
    "Simulator",
    "SimulatorServer",
    "create_app",
    "meta_query_string",
    "run",
    "serve_in_thread",
    "validate_connect_form",
]
