"""The reconciler: find mailboxes that are not where they should be, and heal what is safe to heal.

Every phase streams its rows from the database in batches (keyset pagination over an index, one short
read per batch, no transaction held while Mailivery is called), and a mailbox gets at most one finding
per run.

Reasons (``Finding.reason``), in the order a run looks for them, and what ``fix=True`` does:

- ``stale_intent``: a claim expired with its intent still set (a worker died, or Mailivery could not be
  asked, in the middle of a call), the intent older than ``stuck_after``. `MailboxFlow.recover`
  re-reads the campaign; if the effect happened there it finishes the transition without a call
  (``completed``), else it makes the call again (``started``/``resumed`` for a start or resume,
  ``retried`` for a pause or delete; an interrupted connect is not repeated: its intent is cleared).
- ``unprocessed_delivery``: a stored webhook delivery that failed, or whose worker died. Process it again.
- with ``remote=True`` (Mailivery's campaign list, read once):

  - ``lost_webhook``: Mailivery has a campaign for an address we are waiting on (requested/oauth_sent)
    and no webhook was processed (or only a refused one, whose rejected record holds the campaign: it
    may have been a forged copy of the genuine one). Re-read it, link it (→ pending) and start it, as
    the webhook would; never a campaign whose meta at Mailivery shows another correlation token, and
    one a rejected record holds only when Mailivery shows this mailbox's token (the record gives it
    up, audit row ``release_campaign``); otherwise only reported (``investigate``).
  - ``remote_pending_local_warming``: warming here, pending there (the never-started bug). Re-read it
    and send start-warmup again (audited, warming → warming).
  - ``status_mismatch``: warming here and paused there, or paused here and active there: follow
    Mailivery without a call. Other pairs (paused here and pending there, deleted here and present
    there) are only reported.
  - ``remote_missing``: linked here, absent there. Re-read it (404) and mark it deleted, no call.
  - ``orphan_campaign``: a campaign nobody asked for. Only with ``delete_orphans``, and only while it
    is still pending there with the same email: record it as a rejected mailbox, then delete it.
  - ``email_mismatch``: the campaign's email is not the mailbox's. Only reported.
- ``stuck_pending``: pending for longer than ``stuck_after``. Re-read the campaign; start or resume
  it (or record that Mailivery already did; or mark it deleted when Mailivery no longer has it).
- ``abandoned_oauth``: requested/oauth_sent for longer than ``expire_after``. Expire it (no call).

A fixing run re-reads the campaign (``GET /campaigns/{id}``) before any call and before any decision
taken on Mailivery's word, retries stuck mailboxes whatever retry time was scheduled, and takes the same
short claims as every other worker: a mailbox held by someone else is reported ``skipped``, and two
reconcilers running at once never act on the same mailbox twice. Healing is idempotent: a run right
after a fixing run finds nothing new and makes no call (with ``remote=True``, only the campaign list).

If Mailivery cannot be asked (or refuses the API key), the run stops calling it: the remaining findings
that need it are reported ``deferred`` and the report carries the error (`ReconcileReport.exit_code` 2).
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._takeover import campaign_token, may_take_over, same_token
from .audit import get_logger
from .errors import (
    ConcurrentUpdate,
    DuplicateMailbox,
    InvalidInput,
    InvalidTransition,
    MailiveryAuthError,
    MailiveryError,
    MailiveryTransportError,
    MailiveryUnavailable,
    WebhookPayloadError,
)
from .mailivery import Campaign, WebhookEvent
from .models import utcnow
from .states import State, Subject, fire, rule_for
from .types import Delivery, Mailbox, Outcome, Source

if TYPE_CHECKING:
    from .flow import MailboxFlow

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "OPEN_ACTIONS",
    "Action",
    "Finding",
    "ProgressCallback",
    "Reason",
    "ReconcileReport",
    "reconcile",
]

log = get_logger("mailbox_flow.reconcile")

#: Rows per database read while scanning.
DEFAULT_BATCH_SIZE = 500
#: The version of `ReconcileReport.to_dict`'s layout (bumped only when a key changes meaning or goes).
REPORT_SCHEMA = 1
#: The longest ``stuck_after``/``expire_after`` accepted (100 years).
_MAX_DURATION = timedelta(days=36500)
#: ``progress(phase, rows_examined_so_far)``, called as a run advances (for a progress display).
ProgressCallback = Callable[[str, int], None]


class Reason(enum.StrEnum):
    """Why a mailbox (or delivery, or campaign) was reported."""

    STALE_INTENT = "stale_intent"
    UNPROCESSED_DELIVERY = "unprocessed_delivery"
    LOST_WEBHOOK = "lost_webhook"
    REMOTE_PENDING_LOCAL_WARMING = "remote_pending_local_warming"
    STATUS_MISMATCH = "status_mismatch"
    REMOTE_MISSING = "remote_missing"
    ORPHAN_CAMPAIGN = "orphan_campaign"
    EMAIL_MISMATCH = "email_mismatch"
    STUCK_PENDING = "stuck_pending"
    ABANDONED_OAUTH = "abandoned_oauth"


class Action(enum.StrEnum):
    """What the run did about a finding."""

    FLAGGED = "flagged"  # reported, nothing done (see ``recommended``)
    SKIPPED = "skipped"  # another worker holds the mailbox (or the delivery) right now
    FAILED = "failed"  # Mailivery refused the healing call; retried by a later run
    DEFERRED = "deferred"  # Mailivery could not be asked; retried by a later run
    STARTED = "started"  # start-warmup called → warming
    RESUMED = "resumed"  # resume-warmup called → warming
    RESTARTED = "restarted"  # start-warmup sent again for a mailbox Mailivery still had pending
    COMPLETED = "completed"  # the effect had already happened at Mailivery: recorded without a call
    RETRIED = "retried"  # an interrupted pause or delete was made again (start/resume: started/resumed)
    FOLLOWED = "followed"  # local state brought in line with Mailivery's, without a call
    CLEARED = "cleared"  # an interrupted call with nothing to repeat: its intent dropped
    EXPIRED = "expired"  # abandoned OAuth given up (no call)
    DELETED = "deleted"  # marked deleted (gone at Mailivery) or an orphan deleted there
    REPROCESSED = "reprocessed"  # a stored delivery processed again


#: Actions that leave something for a person (or a later run) to do.
OPEN_ACTIONS: frozenset[Action] = frozenset(
    {Action.FLAGGED, Action.SKIPPED, Action.FAILED, Action.DEFERRED}
)

# What a fixing run does for each reason (``Finding.recommended`` while the finding is open).
_FIX = {
    Reason.STALE_INTENT: "finish_or_retry",
    Reason.UNPROCESSED_DELIVERY: "reprocess",
    Reason.LOST_WEBHOOK: "link_and_start",
    Reason.REMOTE_PENDING_LOCAL_WARMING: "start_again",
    Reason.STATUS_MISMATCH: "follow_remote",
    Reason.REMOTE_MISSING: "mark_deleted",
    Reason.ORPHAN_CAMPAIGN: "delete_orphan",
    Reason.EMAIL_MISMATCH: "investigate",
    Reason.STUCK_PENDING: "verify_and_start",
    Reason.ABANDONED_OAUTH: "expire",
}
_INVESTIGATE = "investigate"
# `MailboxFlow.recover`'s answers → actions ("none": nothing left to recover, no finding)
_RECOVERED = {
    "completed": Action.COMPLETED,
    "retried": Action.RETRIED,
    "cleared": Action.CLEARED,
    "failed": Action.FAILED,
}
_LIVE = (State.PENDING, State.WARMING, State.PAUSED)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the reconciler found, and what it did about it.

    ``state`` is the mailbox's state when found, ``state_after`` its state after this run's action (None
    when nothing moved it); ``recommended`` says what should happen next while the finding is open.
    """

    reason: Reason
    action: Action
    mailbox_id: uuid.UUID | None = None
    email: str | None = None
    state: State | None = None
    age: timedelta = timedelta(0)
    campaign_id: int | None = None
    delivery_id: int | None = None
    detail: str | None = None
    state_after: State | None = None
    remote_status: str | None = None
    recommended: str | None = None

    @property
    def open(self) -> bool:
        """True when the finding still needs attention after this run."""
        return self.action in OPEN_ACTIONS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, always with the same keys."""
        return {
            "reason": self.reason.value,
            "action": self.action.value,
            "open": self.open,
            "mailbox_id": str(self.mailbox_id) if self.mailbox_id else None,
            "email": self.email,
            "state": self.state.value if self.state else None,
            "state_after": self.state_after.value if self.state_after else None,
            "age_seconds": round(self.age.total_seconds(), 3),
            "campaign_id": self.campaign_id,
            "delivery_id": self.delivery_id,
            "remote_status": self.remote_status,
            "recommended": self.recommended,
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
    delete_orphans: bool = False
    findings: list[Finding] = field(default_factory=list)
    #: Problems that stopped part of the run (Mailivery unreachable, API key refused).
    errors: list[str] = field(default_factory=list)
    #: Rows examined per phase.
    scanned: dict[str, int] = field(default_factory=dict)
    finished_at: datetime | None = None

    @property
    def open_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.open]

    @property
    def clean(self) -> bool:
        """True when nothing is left for anyone to look at and nothing went wrong."""
        return not self.open_findings and not self.errors

    @property
    def exit_code(self) -> int:
        """0 clean, 1 findings remain, 2 part of the run could not be done (see ``errors``)."""
        if self.errors:
            return 2
        return 1 if self.open_findings else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with stable keys (every reason and action is counted, zero included)."""
        reasons = {r.value: 0 for r in Reason}
        actions = {a.value: 0 for a in Action}
        for finding in self.findings:
            reasons[finding.reason.value] += 1
            actions[finding.action.value] += 1
        finished = self.finished_at
        return {
            "schema": REPORT_SCHEMA,
            "started_at": self.started_at.isoformat(),
            "finished_at": finished.isoformat() if finished else None,
            "duration_seconds": round((finished - self.started_at).total_seconds(), 3)
            if finished
            else None,
            "stuck_after_seconds": self.stuck_after.total_seconds(),
            "expire_after_seconds": self.expire_after.total_seconds(),
            "remote": self.remote,
            "fix": self.fix,
            "delete_orphans": self.delete_orphans,
            "clean": self.clean,
            "exit_code": self.exit_code,
            "open": len(self.open_findings),
            "counts": reasons,
            "actions": actions,
            "scanned": dict(self.scanned),
            "errors": list(self.errors),
            "findings": [f.to_dict() for f in self.findings],
        }


def reconcile(
    flow: MailboxFlow,
    *,
    stuck_after: timedelta | float,
    expire_after: timedelta | float,
    remote: bool = False,
    fix: bool = False,
    delete_orphans: bool = False,
    progress: ProgressCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ReconcileReport:
    """Run one reconcile pass over ``flow``'s database (see the module docstring).

    ``stuck_after``/``expire_after``: a `timedelta` or a number of seconds (int or float). Raises
    `InvalidInput` naming the argument for a bad duration, `ConfigurationError` when ``fix`` or
    ``remote`` is asked without a Mailivery client, and `StorageError` when the database fails;
    Mailivery's failures are reported in the report instead.
    """
    stuck = _duration("stuck_after", stuck_after)
    expire = _duration("expire_after", expire_after)
    if batch_size < 1:
        raise InvalidInput("batch_size", "must be at least 1")
    if fix or remote:
        flow.client  # noqa: B018 - fail on a missing client before anything is done
    report = ReconcileReport(utcnow(), stuck, expire, remote, fix,
                             delete_orphans=delete_orphans)
    _Run(flow, report, batch_size, progress).execute()
    report.finished_at = utcnow()
    log.info(
        "mailbox_flow.reconcile",
        fix=fix,
        remote=remote,
        findings=len(report.findings),
        open=len(report.open_findings),
        errors=len(report.errors),
        scanned=sum(report.scanned.values()),
        seconds=round((report.finished_at - report.started_at).total_seconds(), 3),
    )
    return report


def _duration(name: str, value: object) -> timedelta:
    """A reconcile duration argument as a `timedelta`: a `timedelta`, or a number of seconds (an int
    or a float; not a bool), finite, not negative and at most `_MAX_DURATION`. Anything else raises
    `InvalidInput` naming the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise InvalidInput(name, "must be a timedelta or a number of seconds, "
                                 f"not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(name, f"must be a finite number of seconds, not {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if seconds < 0:
        raise InvalidInput(name, "must not be negative")
    if seconds > _MAX_DURATION.total_seconds():
        raise InvalidInput(name, f"must be at most {_MAX_DURATION.days} days")
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


@dataclass(frozen=True, slots=True)
class _Done:
    """The result of one healing attempt."""

    action: Action
    mailbox: Mailbox | None = None
    detail: str | None = None
    recommended: str | None = None


class _Run:
    """One reconcile pass: the phases, and the healing of each finding."""

    def __init__(self, flow: MailboxFlow, report: ReconcileReport, batch_size: int,
                 progress: ProgressCallback | None) -> None:
        self.flow = flow
        self.store = flow.store
        self.report = report
        self.now = report.started_at
        self.fix = report.fix
        self.batch_size = batch_size
        self.progress = progress
        self.seen: set[uuid.UUID] = set()
        self.down: str | None = None  # set once Mailivery cannot be asked: no more calls this run
        self.to_flag: dict[str, list[uuid.UUID]] = {}  # flags written a batch at a time

    def execute(self) -> None:
        try:
            self.stale_intents()
            self.deliveries()
            if self.report.remote:
                self.remote()
            self.stuck_pending()
            self.abandoned_oauth()
        finally:
            self.flush_flags()

    def flush_flags(self) -> None:
        for reason, ids in self.to_flag.items():
            self.store.flag_many(ids, reason)
        self.to_flag.clear()

    # -- bookkeeping -----------------------------------------------------------------------------

    def tick(self, phase: str) -> None:
        count = self.report.scanned.get(phase, 0) + 1
        self.report.scanned[phase] = count
        if self.progress is not None:
            self.progress(phase, count)

    def leased(self, mailbox: Mailbox) -> bool:
        return mailbox.lease_until is not None and mailbox.lease_until > utcnow()

    def finding(self, mailbox: Mailbox, reason: Reason, **extra: Any) -> Finding:
        values: dict[str, Any] = {
            "mailbox_id": mailbox.id,
            "email": mailbox.email,
            "state": mailbox.state,
            "age": max(self.now - mailbox.state_changed_at, timedelta(0)),
            "campaign_id": mailbox.campaign_id,
            "recommended": _FIX[reason],
            **extra,
        }
        return Finding(reason=reason, action=Action.FLAGGED, **values)

    def add(self, finding: Finding, flag_reason: str | None = None) -> None:
        """Record a finding; an open one on a mailbox also sets the mailbox's flag."""
        self.report.findings.append(finding)
        if finding.mailbox_id is None:
            return
        self.seen.add(finding.mailbox_id)
        if finding.action in (Action.FLAGGED, Action.FAILED, Action.DEFERRED) and (
            flag_reason != finding.reason.value
        ):
            ids = self.to_flag.setdefault(finding.reason.value, [])
            ids.append(finding.mailbox_id)
            if len(ids) >= self.batch_size:
                self.flush_flags()

    def skipped(self, base: Finding, why: str = "another worker holds this mailbox") -> None:
        self.add(replace(base, action=Action.SKIPPED, detail=why))

    def record(self, base: Finding, done: _Done | None, before: Mailbox | None) -> None:
        """Record the outcome of a healing attempt (None: re-verification found nothing to do)."""
        if done is None:
            if base.mailbox_id is not None:
                self.seen.add(base.mailbox_id)
            return
        after = done.mailbox
        is_open = done.action in OPEN_ACTIONS
        finding = replace(
            base,
            action=done.action,
            mailbox_id=base.mailbox_id or (after.id if after else None),
            state_after=after.state if after is not None and after.state is not base.state else None,
            detail=_short(done.detail or base.detail),
            recommended=(done.recommended or base.recommended) if is_open else None,
        )
        self.add(finding, before.flag_reason if before else None)

    def attempt(self, heal: Callable[..., _Done | None], *args: Any,
                needs_mailivery: bool = True) -> _Done | None:
        """Run one healing step, turning the expected failures into an action."""
        if needs_mailivery and self.down is not None:
            return _Done(Action.DEFERRED, detail=f"not tried: {self.down}")
        try:
            return heal(*args)
        except (ConcurrentUpdate, InvalidTransition, DuplicateMailbox) as exc:
            return _Done(Action.SKIPPED, detail=f"changed or held by another worker: {exc}")
        except (MailiveryUnavailable, MailiveryAuthError) as exc:
            self.mailivery_down(exc)
            return _Done(Action.DEFERRED, detail=_text(exc))
        except (MailiveryError, InvalidInput, WebhookPayloadError) as exc:
            return _Done(Action.FAILED, detail=_text(exc))

    def mailivery_down(self, exc: BaseException) -> None:
        if self.down is None:
            self.down = f"Mailivery could not be used ({type(exc).__name__})"
            self.report.errors.append(f"{self.down}: {exc}")

    def handle(self, mailbox: Mailbox, base: Finding, heal: Callable[[Mailbox], _Done | None], *,
               report_only: bool = False, needs_mailivery: bool = True) -> None:
        """One mailbox found by a scan: report it, or (fixing) re-read it and heal it under a claim."""
        if self.leased(mailbox):
            self.skipped(base)
            return
        if not self.fix or report_only:
            self.add(base, mailbox.flag_reason)
            return
        current = self.fresh(mailbox)
        if current is None:
            return
        if self.leased(current):
            self.skipped(base)
            return
        self.record(base, self.attempt(heal, current, needs_mailivery=needs_mailivery), current)

    def fresh(self, mailbox: Mailbox) -> Mailbox | None:
        """The mailbox re-read just before acting; None when its state moved on meanwhile."""
        current = self.store.get(mailbox.id)
        if current is None or current.state is not mailbox.state:
            return None
        return current

    # -- healing primitives ----------------------------------------------------------------------

    def read_campaign(self, campaign_id: int) -> Campaign | None:
        """Mailivery's view of the campaign (None: 404, or reported deleted)."""
        campaign = self.flow._read_campaign(campaign_id)
        if campaign is None or campaign.lifecycle == "deleted":
            return None
        return campaign

    def finish(self, mailbox: Mailbox, trigger: str, reason: str) -> Mailbox:
        """Record ``trigger`` whose effect Mailivery already shows: the transition, without the call.

        (`MailboxFlow._apply` skips only the calls the table marks optional; start is not one.)
        """
        if rule_for(trigger, mailbox.state) is None:
            raise InvalidTransition(trigger, mailbox.state.value, mailbox.id)
        to_state = fire(trigger, Subject(mailbox.state, skip_effect=True, warmed_before=True),
                        mailbox.id)
        moved = self.store.transition(
            mailbox, to_state=to_state, trigger=trigger, source=Source.RECONCILER, request_id=None,
            detail={"reason": reason, "reported_by_mailivery": True},
        )
        if moved is None:
            raise ConcurrentUpdate(mailbox.id, trigger)
        self.flow._log_transition(mailbox, moved, trigger, Source.RECONCILER, None)
        return moved

    def warm(self, mailbox: Mailbox, campaign: Campaign, reason: str) -> _Done:
        """Start (or resume) a verified ``pending`` mailbox, or record that Mailivery already did."""
        lifecycle = campaign.lifecycle
        warmed = mailbox.warmed_at is not None
        if lifecycle == "active":
            moved = self.finish(mailbox, "resume" if warmed else "start", reason)
            return _Done(Action.COMPLETED, moved,
                         "already warming at Mailivery: recorded without a call")
        if lifecycle not in ("pending", "paused"):
            return _Done(Action.FLAGGED, detail=f"campaign status at Mailivery is {campaign.status!r}",
                         recommended=_INVESTIGATE)
        trigger = "resume" if warmed or lifecycle == "paused" else "start"
        moved = self.flow._apply(mailbox, trigger, source=Source.RECONCILER, remote_checked=True,
                                 warmed_before=trigger == "resume", detail={"reason": reason})
        return _Done(Action.RESUMED if trigger == "resume" else Action.STARTED, moved)

    def mark_deleted(self, mailbox: Mailbox, reason: str) -> _Done:
        """Mailivery no longer has the campaign (just re-read): deleted here too, without a call."""
        moved = self.flow._apply(mailbox, "delete", source=Source.RECONCILER, skip_effect=True,
                                 detail={"reason": reason})
        return _Done(Action.DELETED, moved, "campaign not found at Mailivery: marked deleted, no call")

    def start_again(self, mailbox: Mailbox) -> Mailbox:
        """Send start-warmup again for a ``warming`` mailbox Mailivery still has pending (audited).

        Same claim → call → commit steps as every transition; the audit row goes warming → warming.
        """
        assert mailbox.campaign_id is not None
        client, store, flow = self.flow.client, self.store, self.flow
        request_id = str(uuid.uuid4())
        claimed = store.claim(mailbox, owner=flow.worker_id, until=utcnow() + flow.lease,
                              trigger="start", request_id=request_id)
        if claimed is None:
            raise ConcurrentUpdate(mailbox.id, "start")
        try:
            client.start_warmup(mailbox.campaign_id, request_id=request_id)
        except BaseException as exc:
            # No intent kept: the next run's remote comparison re-reads the campaign anyway. After a
            # timeout the request may still land: hold the claim one client timeout so that nobody
            # re-reads (still pending) and calls again meanwhile.
            hold = None
            if isinstance(exc, MailiveryTransportError):
                hold = utcnow() + min(timedelta(seconds=float(client.timeout)), flow.lease)
            store.release(claimed, lease_owner=flow.worker_id, error=_text(exc),
                          next_attempt_at=None, hold_until=hold)
            raise
        moved = store.transition(
            claimed, to_state=State.WARMING, trigger="start", source=Source.RECONCILER,
            request_id=request_id, lease_owner=flow.worker_id,
            detail={"reason": Reason.REMOTE_PENDING_LOCAL_WARMING.value, "repeat": True},
        )
        if moved is None:
            raise ConcurrentUpdate(mailbox.id, "start")
        flow._log_transition(mailbox, moved, "start", Source.RECONCILER, request_id)
        return moved

    # -- phase 1: stale intents ------------------------------------------------------------------

    def stale_intents(self) -> None:
        # Stale: nobody holds the lease any more, and the intent is older than ``stuck_after`` (a
        # call that failed moments ago, its error recorded, is not yet the reconciler's business).
        scan = self.store.scan_stale_intents(now=self.now, batch_size=self.batch_size,
                                             intent_before=self.now - self.report.stuck_after)
        for mailbox in scan:
            self.tick(Reason.STALE_INTENT.value)
            if mailbox.id in self.seen:
                continue
            base = self.finding(
                mailbox, Reason.STALE_INTENT,
                detail=f"{mailbox.intent_trigger} was interrupted (request id {mailbox.intent_request_id})",
            )
            if not self.fix:
                self.add(base, mailbox.flag_reason)
                continue
            current = self.store.get(mailbox.id)
            if current is None or current.intent_trigger is None:
                continue  # finished by someone else meanwhile
            if self.leased(current):
                self.skipped(base)
                continue
            self.record(base, self.attempt(self.recover, current), current)

    def recover(self, mailbox: Mailbox) -> _Done | None:
        """`MailboxFlow.recover`: finish the interrupted call without calling, or make it again."""
        result = self.flow.recover(mailbox.id, source=Source.RECONCILER)
        action = _RECOVERED.get(result.action)
        if action is None:  # nothing left to recover: someone else finished it meanwhile
            return None
        detail = result.detail or f"{mailbox.intent_trigger} {result.action}"
        if action is Action.RETRIED and result.mailbox.state is State.WARMING:
            # the call made again was start-warmup or resume-warmup: say which, as every phase does
            trail = self.store.history(mailbox.id)
            trigger = trail[-1].trigger if trail else None
            action = {"start": Action.STARTED, "resume": Action.RESUMED}.get(trigger or "", action)
            detail = f"{mailbox.intent_trigger} interrupted: {trigger or 'call'} made again"
        return _Done(action, result.mailbox, detail)

    # -- phase 2: unprocessed deliveries ---------------------------------------------------------

    def deliveries(self) -> None:
        # failed ones, then received ones no worker finished within a lease
        scans: list[Iterable[Delivery]] = [
            self.store.scan_deliveries("failed", batch_size=self.batch_size),
            self.store.scan_deliveries("received", received_before=self.now - self.flow.lease,
                                       batch_size=self.batch_size),
        ]
        for scan in scans:
            for delivery in scan:
                self.tick(Reason.UNPROCESSED_DELIVERY.value)
                self.delivery(delivery)

    def delivery(self, delivery: Delivery) -> None:
        base = Finding(
            reason=Reason.UNPROCESSED_DELIVERY,
            action=Action.FLAGGED,
            mailbox_id=delivery.mailbox_id,
            email=delivery.email,
            age=max(self.now - delivery.received_at, timedelta(0)),
            campaign_id=delivery.campaign_id,
            delivery_id=delivery.id,
            detail=_short(f"{delivery.event_type or 'event'} {delivery.status}"
                          + (f": {delivery.error}" if delivery.error else "")),
            recommended=_FIX[Reason.UNPROCESSED_DELIVERY],
        )
        if not self.fix:
            self.add(base)
            return
        if self.down is not None:
            self.record(base, _Done(Action.DEFERRED, detail=f"not tried: {self.down}"), None)
            return
        if not self.store.claim_delivery(delivery):
            self.skipped(base, "another worker is processing this delivery")
            return
        self.record(base, self.attempt(self.reprocess, delivery.id), None)

    def reprocess(self, delivery_id: int) -> _Done:
        result = self.flow.reprocess_delivery(delivery_id)
        detail = result.outcome.value + (f": {result.detail}" if result.detail else "")
        if result.outcome is Outcome.DEFERRED:
            self.mailivery_down(MailiveryUnavailable(result.detail or "Mailivery could not be asked"))
            return _Done(Action.DEFERRED, result.mailbox, detail)
        if result.outcome is Outcome.PENDING:  # matched, but the warmup call was refused
            return _Done(Action.FAILED, result.mailbox, detail, recommended="verify_and_start")
        return _Done(Action.REPROCESSED, result.mailbox, detail)

    # -- phase 3: Mailivery's campaign list ------------------------------------------------------

    def remote(self) -> None:
        try:
            listed = self.flow.client.list_campaigns()
        except (MailiveryUnavailable, MailiveryAuthError) as exc:
            self.mailivery_down(exc)
            return
        except MailiveryError as exc:
            self.report.errors.append(f"cannot list Mailivery's campaigns: {_text(exc)}")
            return
        campaigns = {c.id: c for c in listed if c.lifecycle != "deleted"}
        held: list[tuple[Mailbox, Campaign]] = []  # campaigns rejected records hold
        for mailbox in self.store.scan_linked(batch_size=self.batch_size):
            self.tick("remote")
            assert mailbox.campaign_id is not None
            campaign = campaigns.pop(mailbox.campaign_id, None)
            if mailbox.id in self.seen:
                continue
            drift = _drift(mailbox, campaign)
            if drift is not None:
                self.linked_drift(mailbox, campaign, drift)
            elif campaign is not None and mailbox.state is State.REJECTED and mailbox.owner_id is None:
                held.append((mailbox, campaign))
        for campaign_id in sorted(campaigns):  # what is left: campaigns no mailbox is linked to
            self.tick("remote")
            self.unlinked(campaigns[campaign_id])
        for record, campaign in held:  # after the unlinked ones: a campaign nobody disputes goes first
            self.held_by_record(record, campaign)

    def linked_drift(self, mailbox: Mailbox, campaign: Campaign | None,
                     drift: tuple[Reason, str]) -> None:
        reason, recommended = drift
        base = self.finding(mailbox, reason, recommended=recommended,
                            remote_status=campaign.status if campaign else None,
                            detail=_drift_text(mailbox, campaign))
        self.handle(mailbox, base, self.heal_drift, report_only=recommended == _INVESTIGATE)

    def heal_drift(self, mailbox: Mailbox) -> _Done | None:
        """Re-read the campaign, and act on the drift that is still there."""
        assert mailbox.campaign_id is not None
        campaign = self.read_campaign(mailbox.campaign_id)
        drift = _drift(mailbox, campaign)
        if drift is None:
            return None
        reason, recommended = drift
        if reason is Reason.REMOTE_MISSING:
            return self.mark_deleted(mailbox, reason.value)
        if reason is Reason.REMOTE_PENDING_LOCAL_WARMING:
            return _Done(Action.RESTARTED, self.start_again(mailbox), "start-warmup sent again")
        if reason is Reason.STATUS_MISMATCH and recommended == _FIX[reason]:
            trigger = "pause" if mailbox.state is State.WARMING else "resume"
            moved = self.flow._apply(mailbox, trigger, source=Source.RECONCILER, skip_effect=True,
                                     detail={"reason": reason.value})
            return _Done(Action.FOLLOWED, moved,
                         f"{_drift_text(mailbox, campaign)}: followed Mailivery without a call")
        return _Done(Action.FLAGGED, detail=_drift_text(mailbox, campaign), recommended=recommended)

    def unlinked(self, campaign: Campaign) -> None:
        candidate = self.store.find_active_by_email(campaign.email) if campaign.email else None
        if candidate is not None and candidate.state in (State.REQUESTED, State.OAUTH_SENT):
            if candidate.id not in self.seen:
                self.lost_webhook(candidate, campaign)
            return
        self.orphan(campaign)

    def held_by_record(self, record: Mailbox, campaign: Campaign) -> None:
        """A rejected record holds a campaign of an address a mailbox recorded before it is still
        waiting for: its delivery was refused (a token mismatch, the partner check) and may have been
        a forged copy of the genuine one, which never came. Reported as a lost webhook of the waiting
        mailbox; fixing, it is linked only on Mailivery's word (the campaign's meta shows its token)."""
        waiting = self.store.find_active_by_email(record.email)
        if waiting is None or waiting.id in self.seen or not may_take_over(record, waiting):
            return
        listed_token = campaign_token(campaign)
        if listed_token is not None and not same_token(listed_token, waiting.correlation_token):
            return  # Mailivery shows another token: the record is right, the campaign is not theirs
        trail = self.store.history(record.id)
        why = trail[0].detail.get("reason") if trail and trail[0].detail else None
        self.lost_webhook(waiting, campaign, held=record,
                          detail=f"Mailivery has a campaign for this address, held by rejected mailbox "
                                 f"{record.id} (its delivery was refused: {why or 'not expected'}); "
                                 "no matching webhook was processed")

    def lost_webhook(self, mailbox: Mailbox, campaign: Campaign, *, held: Mailbox | None = None,
                     detail: str = "Mailivery has a campaign for this address; no webhook was processed"
                     ) -> None:
        base = self.finding(mailbox, Reason.LOST_WEBHOOK, campaign_id=campaign.id,
                            remote_status=campaign.status, detail=detail)
        if self.leased(mailbox):
            self.skipped(base)
            return
        if not self.fix:
            self.add(base, mailbox.flag_reason)
            return
        self.record(base, self.attempt(self.link, mailbox, campaign.id, held), mailbox)

    def link(self, mailbox: Mailbox, campaign_id: int, held: Mailbox | None = None) -> _Done | None:
        """What the lost webhook would have done: verify, link (→ pending), start.

        Never for a campaign Mailivery shows with another correlation token (for one a rejected record
        ``held``, that proves the record right: nothing to do); a campaign a rejected record holds
        only when Mailivery shows this mailbox's token (then the record gives it up).
        """
        campaign = self.read_campaign(campaign_id)
        if campaign is None:
            return None
        if campaign.email != mailbox.email:
            return _Done(Action.FLAGGED, detail="campaign email at Mailivery differs",
                         recommended=_INVESTIGATE)
        remote_token = campaign_token(campaign)
        if remote_token is not None and not same_token(remote_token, mailbox.correlation_token):
            if held is not None:  # the rejected record is right: nothing to do
                return None
            return _Done(Action.FLAGGED, recommended=_INVESTIGATE,
                         detail="the campaign at Mailivery carries another correlation token: "
                                "not this mailbox's")
        if held is not None and remote_token is None:
            return _Done(Action.FLAGGED, recommended=_INVESTIGATE,
                         detail=f"campaign held by rejected mailbox {held.id}, and Mailivery does not "
                                "show the campaign's correlation token: a person decides whether it is "
                                "this mailbox's (reject or delete it, or have the user consent again)")
        if self.flow.expect is not None:
            event = WebhookEvent(type="campaign.pending", action="pending", campaign_id=campaign.id,
                                 email=campaign.email, first_name=campaign.first_name,
                                 last_name=campaign.last_name, raw=campaign.raw)
            if not self.flow.expect(mailbox, event):
                return _Done(Action.FLAGGED, detail="refused by the partner check",
                             recommended=_INVESTIGATE)
        detail: dict[str, Any] = {"campaign_id": campaign.id, "reason": Reason.LOST_WEBHOOK.value}
        if held is not None:
            record = self.store.get(held.id)
            if record is None or record.campaign_id != campaign.id or not may_take_over(record, mailbox):
                return None  # changed meanwhile
            self.flow._release_campaign(record, mailbox, Source.RECONCILER, "campaign_meta")
            detail["taken_from_mailbox_id"] = str(record.id)
        pending = self.flow._apply(
            mailbox, "mark_pending", source=Source.RECONCILER, values={"campaign_id": campaign.id},
            detail=detail,
        )
        try:
            return self.warm(pending, campaign, Reason.LOST_WEBHOOK.value)
        except MailiveryError as exc:  # linked (pending) all the same: a later run starts it
            action = Action.FAILED
            if isinstance(exc, MailiveryUnavailable | MailiveryAuthError):
                self.mailivery_down(exc)
                action = Action.DEFERRED
            return _Done(action, self.store.get(pending.id), _text(exc),
                         recommended=_FIX[Reason.STUCK_PENDING])

    def orphan(self, campaign: Campaign) -> None:
        pending = campaign.lifecycle == "pending"
        base = Finding(
            reason=Reason.ORPHAN_CAMPAIGN,
            action=Action.FLAGGED,
            email=campaign.email,
            campaign_id=campaign.id,
            remote_status=campaign.status,
            detail="a campaign nobody asked for"
            + ("" if pending else f" ({campaign.status}: not deleted automatically)"),
            recommended=_FIX[Reason.ORPHAN_CAMPAIGN] if pending and campaign.email else _INVESTIGATE,
        )
        if not (self.fix and self.report.delete_orphans) or base.recommended == _INVESTIGATE:
            self.add(base)
            return
        self.record(base, self.attempt(self.delete_orphan, campaign), None)

    def delete_orphan(self, listed: Campaign) -> _Done | None:
        """Re-read it; still pending with the same email: record it as rejected, then delete it."""
        campaign = self.read_campaign(listed.id)
        if campaign is None:
            return None
        if campaign.email != listed.email or campaign.lifecycle != "pending" or not campaign.email:
            return _Done(Action.FLAGGED, detail=f"re-read: {campaign.status}, not deleted",
                         recommended=_INVESTIGATE)
        detail = {"reason": Reason.ORPHAN_CAMPAIGN.value, "campaign_id": campaign.id}
        orphan = self.flow._insert_orphan(
            campaign.id, campaign.email, campaign.first_name, campaign.last_name, Source.RECONCILER,
            Reason.ORPHAN_CAMPAIGN.value,
        )
        try:
            moved = self.flow._apply(orphan, "delete", source=Source.RECONCILER, remote_checked=True,
                                     detail=detail)
        except MailiveryError as exc:
            if isinstance(exc, MailiveryUnavailable | MailiveryAuthError):
                self.mailivery_down(exc)
                return _Done(Action.DEFERRED, self.store.get(orphan.id), _text(exc))
            return _Done(Action.FAILED, self.store.get(orphan.id), _text(exc))
        return _Done(Action.DELETED, moved, "recorded as rejected, then deleted at Mailivery")

    # -- phase 4: stuck in pending ---------------------------------------------------------------

    def stuck_pending(self) -> None:
        scan = self.store.scan_state(State.PENDING, changed_before=self.now - self.report.stuck_after,
                                     batch_size=self.batch_size)
        for mailbox in scan:
            self.tick(Reason.STUCK_PENDING.value)
            if mailbox.id in self.seen:
                continue
            base = self.finding(mailbox, Reason.STUCK_PENDING, detail=_short(mailbox.last_error))
            self.handle(mailbox, base, self.heal_pending)

    def heal_pending(self, mailbox: Mailbox) -> _Done:
        if mailbox.campaign_id is None:
            return _Done(Action.FLAGGED, detail="pending without a campaign", recommended=_INVESTIGATE)
        campaign = self.read_campaign(mailbox.campaign_id)
        if campaign is None:
            return self.mark_deleted(mailbox, Reason.STUCK_PENDING.value)
        if campaign.email != mailbox.email:
            return _Done(Action.FLAGGED, detail="campaign email at Mailivery differs",
                         recommended=_INVESTIGATE)
        return self.warm(mailbox, campaign, Reason.STUCK_PENDING.value)

    # -- phase 5: abandoned OAuth ----------------------------------------------------------------

    def abandoned_oauth(self) -> None:
        cutoff = self.now - self.report.expire_after
        for state in (State.REQUESTED, State.OAUTH_SENT):
            for mailbox in self.store.scan_state(state, changed_before=cutoff,
                                                 batch_size=self.batch_size):
                self.tick(Reason.ABANDONED_OAUTH.value)
                if mailbox.id in self.seen:
                    continue
                base = self.finding(mailbox, Reason.ABANDONED_OAUTH)
                self.handle(mailbox, base, self.expire, needs_mailivery=False)

    def expire(self, mailbox: Mailbox) -> _Done:
        moved = self.flow._apply(mailbox, "expire", source=Source.RECONCILER,
                                 detail={"reason": Reason.ABANDONED_OAUTH.value})
        return _Done(Action.EXPIRED, moved)


def _drift(mailbox: Mailbox, campaign: Campaign | None) -> tuple[Reason, str] | None:
    """How a linked mailbox and its campaign at Mailivery disagree: (reason, what to do), or None.

    Pending mailboxes are left to ``stuck_pending`` (which starts or resumes them as the webhook would),
    unless their campaign is gone.
    """
    state = mailbox.state
    if campaign is None:
        if state in (*_LIVE, State.REJECTED):
            return Reason.REMOTE_MISSING, _FIX[Reason.REMOTE_MISSING]
        return None
    if state in _LIVE and campaign.email is not None and campaign.email != mailbox.email:
        return Reason.EMAIL_MISMATCH, _INVESTIGATE
    lifecycle = campaign.lifecycle
    if state is State.WARMING and lifecycle == "pending":
        return Reason.REMOTE_PENDING_LOCAL_WARMING, _FIX[Reason.REMOTE_PENDING_LOCAL_WARMING]
    if (state is State.WARMING and lifecycle == "paused") or (
        state is State.PAUSED and lifecycle == "active"
    ):
        return Reason.STATUS_MISMATCH, _FIX[Reason.STATUS_MISMATCH]
    if (state is State.PAUSED and lifecycle == "pending") or state in (State.DELETED, State.EXPIRED):
        return Reason.STATUS_MISMATCH, _INVESTIGATE
    return None


def _drift_text(mailbox: Mailbox, campaign: Campaign | None) -> str:
    if campaign is None:
        return f"{mailbox.state.value} here, not found at Mailivery"
    if campaign.email is not None and campaign.email != mailbox.email:
        return f"campaign email at Mailivery is {campaign.email!r}"
    return f"{mailbox.state.value} here, {campaign.status} at Mailivery"


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _short(text: str | None) -> str | None:
    return text[:500] if text else None
