"""The reconciler: find mailboxes that are not where they should be, and heal what is safe to heal.

Reasons (``Finding.reason``):

- ``stuck_pending``: pending for longer than ``stuck_after`` (the "never started warmup" case);
  fixed by re-reading the campaign at Mailivery and starting (or resuming) it.
- ``abandoned_oauth``: ``requested``/``oauth_sent`` for longer than ``expire_after``; fixed by expiring.
- ``unprocessed_delivery``: a stored webhook delivery that failed or whose worker died; fixed by
  processing it again.
- with ``remote=True`` (Mailivery's campaign list): ``remote_pending_local_warming``, ``orphan_campaign``,
  ``remote_missing``, ``status_mismatch`` (flagged only, for now).

Actions (``Finding.action``): ``flagged`` (reported, nothing done), or what a fixing run did:
``started``, ``resumed``, ``expired``, ``reprocessed``; ``failed``/``deferred``/``skipped`` when it tried and
could not.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import ConcurrentUpdate, InvalidTransition, MailiveryError, MailiveryUnavailable
from .models import utcnow
from .states import State
from .types import Mailbox, Outcome, Source

if TYPE_CHECKING:
    from .flow import MailboxFlow

__all__ = ["Finding", "ReconcileReport", "reconcile"]

#: Actions that leave something for a person (or a later run) to do.
OPEN_ACTIONS = frozenset({"flagged", "failed", "deferred", "skipped"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the reconciler found, and what it did about it."""

    reason: str
    action: str
    mailbox_id: uuid.UUID | None = None
    email: str | None = None
    state: State | None = None
    age: timedelta = timedelta(0)
    campaign_id: int | None = None
    delivery_id: int | None = None
    detail: str | None = None

    @property
    def open(self) -> bool:
        """True when the finding still needs attention after this run."""
        return self.action in OPEN_ACTIONS

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "action": self.action,
            "open": self.open,
            "mailbox_id": str(self.mailbox_id) if self.mailbox_id else None,
            "email": self.email,
            "state": self.state.value if self.state else None,
            "age_seconds": round(self.age.total_seconds(), 3),
            "campaign_id": self.campaign_id,
            "delivery_id": self.delivery_id,
            "detail": self.detail,
        }


@dataclass(slots=True)
class ReconcileReport:
    """What one reconcile run found and did."""

    started_at: datetime
    stuck_after: timedelta
    expire_after: timedelta
    remote: bool
    fix: bool
    findings: list[Finding] = field(default_factory=list)
    finished_at: datetime | None = None

    @property
    def open_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.open]

    @property
    def clean(self) -> bool:
        """True when nothing is left for anyone to look at."""
        return not self.open_findings

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.reason] = counts.get(finding.reason, 0) + 1
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "stuck_after_seconds": self.stuck_after.total_seconds(),
            "expire_after_seconds": self.expire_after.total_seconds(),
            "remote": self.remote,
            "fix": self.fix,
            "clean": self.clean,
            "counts": counts,
            "findings": [f.to_dict() for f in self.findings],
        }


def _finding(mailbox: Mailbox, reason: str, action: str, now: datetime, detail: str | None = None,
             ) -> Finding:
    return Finding(
        reason=reason,
        action=action,
        mailbox_id=mailbox.id,
        email=mailbox.email,
        state=mailbox.state,
        age=now - mailbox.state_changed_at,
        campaign_id=mailbox.campaign_id,
        detail=detail,
    )


def reconcile(
    flow: MailboxFlow,
    *,
    stuck_after: timedelta,
    expire_after: timedelta,
    remote: bool = False,
    fix: bool = False,
) -> ReconcileReport:
    """Run one reconcile pass over ``flow``'s database (see the module docstring)."""
    now = utcnow()
    report = ReconcileReport(now, stuck_after, expire_after, remote, fix)
    store = flow.store

    for mailbox in store.mailboxes(states=[State.PENDING], changed_before=now - stuck_after):
        if not fix:
            store.flag(mailbox.id, "stuck_pending")
            report.findings.append(_finding(mailbox, "stuck_pending", "flagged", now))
            continue
        try:
            outcome, _after, detail = flow._verify_and_warm(mailbox, Source.RECONCILER)
        except ConcurrentUpdate:
            report.findings.append(_finding(mailbox, "stuck_pending", "skipped", now,
                                            "another worker holds this mailbox"))
            continue
        except MailiveryUnavailable as exc:
            report.findings.append(_finding(mailbox, "stuck_pending", "deferred", now, str(exc)))
            continue
        action = {Outcome.STARTED: "started", Outcome.RESUMED: "resumed"}.get(outcome, "failed")
        report.findings.append(_finding(mailbox, "stuck_pending", action, now, detail))

    for mailbox in store.mailboxes(states=[State.REQUESTED, State.OAUTH_SENT],
                              changed_before=now - expire_after):
        if not fix:
            store.flag(mailbox.id, "abandoned_oauth")
            report.findings.append(_finding(mailbox, "abandoned_oauth", "flagged", now))
            continue
        try:
            flow._apply(mailbox, "expire", source=Source.RECONCILER,
                        detail={"reason": "abandoned_oauth"})
            report.findings.append(_finding(mailbox, "abandoned_oauth", "expired", now))
        except (ConcurrentUpdate, InvalidTransition) as exc:
            report.findings.append(_finding(mailbox, "abandoned_oauth", "skipped", now, str(exc)))

    for delivery in store.list_deliveries(statuses=["received", "failed"]):
        if delivery.status == "received" and delivery.received_at > now - flow.lease:
            continue  # a worker is on it right now
        base = Finding(
            reason="unprocessed_delivery",
            action="flagged",
            campaign_id=delivery.campaign_id,
            email=delivery.email,
            delivery_id=delivery.id,
            age=now - delivery.received_at,
            detail=delivery.error,
        )
        if not fix:
            report.findings.append(base)
            continue
        try:
            result = flow.reprocess_delivery(delivery.id)
        except MailiveryError as exc:
            report.findings.append(replace(base, action="deferred", detail=str(exc)))
            continue
        action = "deferred" if result.outcome is Outcome.DEFERRED else "reprocessed"
        report.findings.append(
            replace(base, action=action, detail=result.outcome.value,
                     mailbox_id=result.mailbox.id if result.mailbox else None)
        )

    if remote:
        report.findings.extend(_remote_findings(flow, now))

    report.finished_at = utcnow()
    return report


def _remote_findings(flow: MailboxFlow, now: datetime) -> list[Finding]:
    """Compare our records with Mailivery's campaign list (flag only)."""
    findings: list[Finding] = []
    campaigns = {c.id: c for c in flow.client.list_campaigns()}
    local = {m.campaign_id: m for m in flow.store.mailboxes() if m.campaign_id is not None}
    for campaign_id, campaign in campaigns.items():
        mailbox = local.get(campaign_id)
        if mailbox is None:
            findings.append(Finding(reason="orphan_campaign", action="flagged", email=campaign.email,
                                    campaign_id=campaign_id, detail=f"status {campaign.status!r}"))
            continue
        if mailbox.state is State.WARMING and campaign.lifecycle == "pending":
            findings.append(_finding(mailbox, "remote_pending_local_warming", "flagged", now))
        elif (mailbox.state is State.WARMING and campaign.lifecycle == "paused") or (
            mailbox.state is State.PAUSED and campaign.lifecycle == "active"
        ):
            findings.append(_finding(mailbox, "status_mismatch", "flagged", now,
                                     f"Mailivery says {campaign.status!r}"))
    for campaign_id, mailbox in local.items():
        if campaign_id not in campaigns and mailbox.state in (
            State.PENDING, State.WARMING, State.PAUSED
        ):
            findings.append(_finding(mailbox, "remote_missing", "flagged", now))
    return findings
