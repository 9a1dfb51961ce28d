"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
from typing import Any

from mailbox_flow import MailboxFlow

SECRET = "test-webhook-secret-3f9a-7c41d2e8b6a05f93"  # >= 32 bytes: shorter ones warn
API_KEY = "sim-api-key-7d1e0c55"


def counts(flow: MailboxFlow) -> tuple[int, int, int]:
    """Rows in (mailbox, mailbox_transition, webhook_delivery)."""
    return tuple(  # type: ignore[return-value]
        flow.store.count(t) for t in ("mailbox", "mailbox_transition", "webhook_delivery")
    )


def webhook_body(campaign_id: int, email: str, *, meta: Any = "", type_: str = "campaign.pending",
                 first_name: str = "Ada") -> bytes:
    """A webhook body in Mailivery's documented shape."""
    action = type_.split(".", 1)[-1]
    return json.dumps({
        "type": type_,
        "action": action,
        "account": {"campaign_id": campaign_id, "first_name": first_name, "last_name": "L",
                    "email": email, "provider_type": "office", "tags": [], "meta": meta},
    }).encode()


def last_webhook(sim: Any) -> bytes:
    """The body of the last webhook the simulator sent."""
    sim.wait_for_webhooks()
    return bytes(sim.webhooks_sent[-1][0])


def consent(sim: Any, mailbox: Any) -> bytes:
    """Accept the mailbox's OAuth consent at the simulator; return the webhook it sent."""
    sim.accept(mailbox.oauth_url)
    return last_webhook(sim)
