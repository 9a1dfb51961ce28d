"""Who may have a campaign that a rejected record holds: the rules the intake and the reconciler share.

Webhooks are unsigned, so a refused delivery (a correlation token that is not the waiting mailbox's, a
partner check that says no) may be a forged copy of the genuine one. Its campaign is recorded as a
``rejected`` mailbox all the same (so that nobody takes the campaign by email alone later), but that
record must never pre-empt the mailbox that really expected the campaign: it gives the campaign up
(audit row ``release_campaign``) to the mailbox waiting for the same address when proof comes, either a
delivery carrying that mailbox's own token or Mailivery's campaign showing it in its ``meta``.
"""

from __future__ import annotations

import hmac
from typing import Final

from .mailivery import CORRELATION_META_KEY, Campaign, parse_meta
from .states import State
from .types import Mailbox

__all__ = ["RELEASE_TRIGGER", "WAITING_STATES", "campaign_token", "may_take_over", "same_token"]

#: The states of a mailbox waiting for its campaign (the OAuth round trip not finished).
WAITING_STATES: Final = (State.REQUESTED, State.OAUTH_SENT)
#: The audit trigger of a rejected record giving its campaign up (not a state change).
RELEASE_TRIGGER: Final = "release_campaign"


def same_token(given: str | None, ours: str | None) -> bool:
    """True when ``given`` is our correlation token ``ours`` (constant time; None matches nothing)."""
    if given is None or not ours:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), ours.encode("utf-8"))


def campaign_token(campaign: Campaign) -> str | None:
    """Our correlation token as Mailivery's own copy of the campaign shows it, if it shows its
    ``meta`` (undocumented: usually it does not, and then this is None)."""
    raw = campaign.raw
    if not hasattr(raw, "get"):
        return None
    return parse_meta(raw.get("meta")).get(CORRELATION_META_KEY) or None


def may_take_over(record: Mailbox, waiting: Mailbox | None) -> bool:
    """True when ``waiting`` may take the campaign ``record`` holds, given proof: ``record`` is a
    rejected mailbox nobody requested (an orphan) of the same address, recorded while ``waiting``
    was already waiting for its campaign (a mailbox requested later never had a claim to it)."""
    return (
        waiting is not None
        and waiting.state in WAITING_STATES
        and record.state is State.REJECTED
        and record.owner_id is None
        and record.campaign_id is not None
        and record.email == waiting.email
        and record.created_at >= waiting.created_at
    )
