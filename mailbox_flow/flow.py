"""`MailboxFlow`: the service a partner embeds. Load → trigger → call Mailivery → persist → audit.

A transition that calls Mailivery runs in three short steps, never holding a transaction open over HTTP:

1. *claim*: one guarded UPDATE takes a short lease on the row and records the intent (trigger and the
   request id about to be sent);
2. *effect*: the shared state machine fires the trigger; the Mailivery call is the transition's own
   ``before`` callback, so a failing call aborts the transition. The call runs under a deadline inside
   the lease (retries and waits included), so it is over before anyone else may take the mailbox;
3. *commit*: one transaction moves the state (only if the lease is still ours) and writes the audit row;
   on failure the lease is released with the error and the attempt count instead.

When Mailivery's answer is lost (5xx/429 after the retries, a timeout, a dead worker) nobody knows whether
the effect happened: the intent stays on the row. After a timeout the lease is even kept for one client
timeout, as the request may still land. Whoever touches the mailbox next (a new attempt, `recover`, the
reconciler) re-reads the campaign first and commits without a call when Mailivery already shows the
effect; only otherwise is the call made again.

Webhooks are unsigned: a delivery is authenticated by the secret in its URL, stored raw, de-duplicated,
matched to an expected mailbox (normalized email, correlation token, optional partner check) and the
campaign is re-read from Mailivery before any warmup call. A payload alone never starts a mailbox.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import hmac
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from ._bounds import MAX_ID, MAX_LIMIT, is_id
from ._hashing import email_hash
from ._security import warn_short_secret
from ._takeover import RELEASE_TRIGGER, campaign_token, may_take_over, same_token
from .audit import get_logger
from .errors import (
    ConcurrentUpdate,
    ConfigurationError,
    DuplicateMailbox,
    InvalidInput,
    InvalidTransition,
    MailboxFlowError,
    MailboxNotFound,
    MailiveryError,
    MailiveryNotFound,
    MailiveryTransportError,
    MailiveryUnavailable,
    MailiveryValidationError,
    WebhookAuthError,
    WebhookPayloadError,
)
from .mailivery import (
    CORRELATION_META_KEY,
    Campaign,
    MailiveryClient,
    WebhookEvent,
    normalize_email,
    parse_webhook,
    validate_connect,
    validate_owner_id,
)
from .mailivery.client import call_deadline
from .models import utcnow
from .settings import Settings
from .states import Effect, State, Subject, fire, rule_for
from .store import Finish, Move, Store, make_engine
from .types import AuditEntry, Delivery, Mailbox, Outcome, Source, WebhookResult

if TYPE_CHECKING:
    from .reconcile import ReconcileReport

__all__ = ["ExpectCheck", "MailboxFlow", "Recovery"]

log = get_logger("mailbox_flow.flow")

#: A partner's own check that a matched mailbox was really expected: ``(mailbox, event) -> bool``.
ExpectCheck = Callable[[Mailbox, WebhookEvent], bool]

_ONCE_PER_CAMPAIGN = frozenset({"campaign.pending", "campaign.created", "campaign.deleted"})
_CONNECTED = frozenset({"campaign.pending", "campaign.created"})
_REPEAT_WINDOW_SECONDS = 600
_MAX_BACKOFF = timedelta(hours=1)
#: Share of a claim's lease its Mailivery call may use (retries and waits included), so that no call
#: of a worker is still in flight when its lease expires and another worker may take the mailbox over.
_LEASE_USABLE = 0.8


class Recovery(NamedTuple):
    """What `MailboxFlow.recover` did with a mailbox's interrupted side effect.

    ``action``: ``"none"`` (no intent to recover), ``"completed"`` (Mailivery shows the effect: the
    transition was committed without a call), ``"retried"`` (it did not: the call was made again and
    worked), ``"cleared"`` (nothing to repeat: the intent was dropped), ``"failed"`` (the repeated call,
    or the campaign, says no: state unchanged, error recorded on the mailbox).
    """

    action: str
    mailbox: Mailbox
    detail: str | None = None


def _checked_limit(limit: int | None) -> int | None:
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT
    ):
        shown = repr(limit) if len(repr(limit)) <= 40 else f"{repr(limit)[:40]}..."
        raise InvalidInput("limit", f"must be an integer from 1 to {MAX_LIMIT}, not {shown}")
    return limit


def _checked_delivery_id(delivery_id: int) -> int:
    """A delivery id a row can have (`mailbox_flow._bounds`); else `InvalidInput` (none is stored)."""
    if not is_id(delivery_id):
        shown = repr(delivery_id) if len(repr(delivery_id)) <= 40 else f"{repr(delivery_id)[:40]}..."
        raise InvalidInput("delivery_id", f"no stored delivery {shown} (ids are 1 to {MAX_ID})")
    return delivery_id


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


class MailboxFlow:
    """Connect mailboxes to Mailivery warmup, correctly by construction.

    ``MailboxFlow(database_url=..., client=MailiveryClient(...), webhook_secret=...)``; anything not given
    is read from `Settings` (``MAILBOX_FLOW_*`` variables). ``expect`` is an optional partner check run on
    every webhook match; ``orphan_policy`` says what to do at Mailivery with campaigns nobody asked for
    (``"keep"`` them pending, which costs nothing, or ``"delete"`` them). ``hash_emails_in_logs``
    (default: ``Settings.log_hash_emails``) logs a keyed hash of each address (``email_hash``) instead of
    the address itself, keyed with ``Settings.log_email_salt`` or else the webhook secret.
    """

    def __init__(
        self,
        database_url: str | None = None,
        client: MailiveryClient | None = None,
        webhook_secret: str | None = None,
        *,
        settings: Settings | None = None,
        expect: ExpectCheck | None = None,
        orphan_policy: str | None = None,
        lease: timedelta | None = None,
        worker_id: str | None = None,
        hash_emails_in_logs: bool | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.database_url = database_url or self.settings.database_url
        self.store = Store(make_engine(self.database_url, pool_size=self.settings.db_pool_size,
                                       max_overflow=self.settings.db_max_overflow))
        if client is None and self.settings.mailivery_api_key is not None:
            client = MailiveryClient(
                self.settings.mailivery_api_key.get_secret_value(),
                self.settings.mailivery_base_url,
                timeout=self.settings.timeout,
                rate_per_second=self.settings.rate_per_second,
                request_id_header=self.settings.request_id_header,
                max_attempts=self.settings.max_attempts,
            )
        self._client = client
        if webhook_secret is None and self.settings.webhook_secret is not None:
            webhook_secret = self.settings.webhook_secret.get_secret_value()
        warn_short_secret(webhook_secret, stacklevel=2)
        self._webhook_secret = webhook_secret
        self.expect = expect
        policy = orphan_policy or self.settings.orphan_policy
        if policy not in ("keep", "delete"):
            raise ConfigurationError(f"orphan_policy must be 'keep' or 'delete', not {policy!r}")
        self.orphan_policy = policy
        self.lease = lease or timedelta(seconds=self.settings.lease_seconds)
        self.worker_id = worker_id or f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        hash_emails = (
            self.settings.log_hash_emails if hash_emails_in_logs is None else hash_emails_in_logs
        )
        self._email_key: bytes | None = None
        if hash_emails:
            salt = self.settings.log_email_salt
            key = salt.get_secret_value() if salt is not None else self._webhook_secret
            if not key:
                raise ConfigurationError(
                    "hashing emails in logs needs a key: set MAILBOX_FLOW_LOG_EMAIL_SALT "
                    "(or a webhook secret)"
                )
            self._email_key = key.encode("utf-8")

    def __repr__(self) -> str:
        return f"MailboxFlow(dialect={self.store.dialect!r}, worker_id={self.worker_id!r})"

    @property
    def client(self) -> MailiveryClient:
        """The Mailivery client; `ConfigurationError` when none was given or configured."""
        if self._client is None:
            raise ConfigurationError(
                "no Mailivery client: pass client=MailiveryClient(...) or set MAILBOX_FLOW_MAILIVERY_API_KEY"
            )
        return self._client

    def close(self) -> None:
        """Release the database pool and the HTTP client."""
        self.store.dispose()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> MailboxFlow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema and queries ----------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the three tables if they do not exist (use migrations for real deployments)."""
        self.store.create_schema()

    def get(self, mailbox_id: uuid.UUID | str) -> Mailbox:
        """The mailbox with this id, or `MailboxNotFound`."""
        key = _parse_id(mailbox_id)
        mailbox = self.store.get(key)
        if mailbox is None:
            raise MailboxNotFound(key)
        return mailbox

    def find_by_email(self, email: str) -> Mailbox | None:
        """The live mailbox for this address (any case), else its most recent one, else None."""
        normalized = normalize_email(email)
        return self.store.find_active_by_email(normalized) or self.store.find_latest_by_email(
            normalized
        )

    def list(
        self, state: State | str | None = None, owner_id: str | None = None, *, limit: int | None = None
    ) -> builtins.list[Mailbox]:
        """Mailboxes, optionally of one state and/or one owner, oldest first; at most ``limit`` of them."""
        states = None
        if state is not None:
            try:
                states = [State(state)]
            except ValueError:
                raise InvalidInput("state", f"unknown state {state!r}") from None
        if owner_id is not None:
            validate_owner_id(owner_id)
        return self.store.mailboxes(states=states, owner_id=owner_id, limit=_checked_limit(limit))

    def history(self, mailbox_id: uuid.UUID | str) -> builtins.list[AuditEntry]:
        """The mailbox's audit trail, oldest first."""
        return self.store.history(self.get(mailbox_id).id)

    def deliveries(self, status: str | None = None, *, limit: int | None = None) -> builtins.list[Delivery]:
        """Stored webhook deliveries (the inbox), optionally of one status, oldest first; at most
        ``limit`` of them."""
        return self.store.list_deliveries(statuses=[status] if status else None,
                                          limit=_checked_limit(limit))

    # -- commands --------------------------------------------------------------------------------

    def request_connection(
        self,
        owner_id: str,
        email: str,
        first_name: str,
        last_name: str | None = None,
        emails_per_day: int = 40,
        response_rate: int = 30,
        *,
        timezone: str | None = None,
        tags: builtins.list[str] | None = None,
        source: Source = Source.API,
    ) -> Mailbox:
        """Record a mailbox, ask Mailivery for its OAuth URL and return it in ``oauth_sent``.

        Raises `InvalidInput` (nothing sent or stored), `DuplicateMailbox` when the address already has
        a live mailbox, or a `MailiveryError` when the connect call fails: the mailbox then stays in
        ``requested`` with the error recorded, and calling again with the same owner retries it. When
        Mailivery refuses the input itself (`MailiveryValidationError`: 400/409/422) a retry cannot
        help: the mailbox is expired at once (audit row ``expire``, ``reason: connect_refused``), so
        the address is free again, and the error is raised.
        """
        validate_owner_id(owner_id)
        fields = validate_connect(
            first_name=first_name,
            last_name=last_name,
            email=email,
            email_per_day=emails_per_day,
            response_rate=response_rate,
            timezone=timezone,
            tags=tags,
        )
        normalized = fields["email"]
        client = self.client  # fail on a missing configuration before anything is stored
        try:
            mailbox = self.store.insert_mailbox(
                {
                    "owner_id": owner_id,
                    "email": normalized,
                    "first_name": first_name.strip(),
                    "last_name": last_name.strip() if last_name else None,
                    "emails_per_day": emails_per_day,
                    "response_rate": response_rate,
                    "state": State.REQUESTED.value,
                    "correlation_token": secrets.token_urlsafe(24),
                }
            )
        except DuplicateMailbox:
            existing = self.store.find_active_by_email(normalized)
            if existing is None or existing.state is not State.REQUESTED or existing.owner_id != owner_id:
                raise
            mailbox = existing  # an earlier connect failed: retry it
        token = mailbox.correlation_token or ""

        def connect(request_id: str) -> Any:
            return client.connect_microsoft(
                first_name=mailbox.first_name or first_name,
                last_name=mailbox.last_name,
                email=mailbox.email,
                email_per_day=mailbox.emails_per_day if mailbox.emails_per_day is not None else 40,
                response_rate=mailbox.response_rate if mailbox.response_rate is not None else 30,
                meta={CORRELATION_META_KEY: token},
                timezone=timezone,
                tags=tags,
                request_id=request_id,
            )

        try:
            return self._apply(
                mailbox,
                "send_oauth",
                source=source,
                call=connect,
                values_from_result=lambda result: {"oauth_url": result.url},
            )
        except MailiveryValidationError as exc:
            self._expire_refused(mailbox.id, exc, source)
            raise

    def _expire_refused(self, mailbox_id: uuid.UUID, exc: MailiveryValidationError,
                        source: Source) -> None:
        """Expire a mailbox whose connect call Mailivery refused, so its address is not blocked."""
        detail = {"reason": "connect_refused", "status": exc.status_code, "code": exc.code,
                  "refused_request_id": exc.request_id, "error": _error_text(exc)[:500]}
        try:
            self._apply(self.get(mailbox_id), "expire", source=source, detail=detail)
        except MailboxFlowError as failure:  # moved meanwhile, or the database failed: the
            # reconciler expires what is left; the caller still gets Mailivery's refusal
            log.warning("mailbox_flow.expire_refused_failed", mailbox_id=str(mailbox_id),
                        error=type(failure).__name__)

    def start_warmup(self, mailbox_id: uuid.UUID | str, *, source: Source = Source.API) -> Mailbox:
        """Start warmup of a ``pending`` mailbox (calls start-warmup) → ``warming``."""
        return self._apply(self.get(mailbox_id), "start", source=source)

    def resume_warmup(self, mailbox_id: uuid.UUID | str, *, source: Source = Source.API) -> Mailbox:
        """Resume a ``paused`` mailbox, or a ``pending`` one that warmed before → ``warming``."""
        return self._apply(self.get(mailbox_id), "resume", source=source)

    def pause_warmup(self, mailbox_id: uuid.UUID | str, *, source: Source = Source.API) -> Mailbox:
        """Pause a ``warming`` mailbox (calls pause-warmup) → ``paused``."""
        return self._apply(self.get(mailbox_id), "pause", source=source)

    def reject(
        self, mailbox_id: uuid.UUID | str, delete_remote: bool = False, *, source: Source = Source.API
    ) -> Mailbox:
        """Refuse a ``pending`` mailbox → ``rejected``; with ``delete_remote`` also delete the campaign."""
        mailbox = self._apply_by_id(mailbox_id, "reject", source=source)
        if delete_remote:
            mailbox = self._apply(mailbox, "delete", source=source)
        return mailbox

    def delete(self, mailbox_id: uuid.UUID | str, *, source: Source = Source.API) -> Mailbox:
        """Delete the campaign at Mailivery (already gone counts as done) → ``deleted``."""
        return self._apply(self.get(mailbox_id), "delete", source=source)

    def expire(self, mailbox_id: uuid.UUID | str, *, source: Source = Source.API) -> Mailbox:
        """Give up on an OAuth that was never completed → ``expired`` (no call)."""
        return self._apply_by_id(mailbox_id, "expire", source=source)

    def _apply_by_id(self, mailbox_id: uuid.UUID | str, trigger: str, *, source: Source) -> Mailbox:
        """A transition with no Mailivery call, read and written in one step (the hot path)."""
        key = _parse_id(mailbox_id)

        def decide(mailbox: Mailbox) -> Move:
            rule = rule_for(trigger, mailbox.state)
            if rule is None or rule.effect is not None:
                raise InvalidTransition(trigger, mailbox.state.value, mailbox.id)
            subject = Subject(mailbox.state, skip_effect=True, warmed_before=mailbox.warmed_at is not None)
            return Move(fire(trigger, subject, mailbox.id), trigger, source)

        result = self.store.transition_by_id(key, decide, _one_step_move(trigger, source))
        if result is None:
            raise MailboxNotFound(key)
        before, after = result
        if after is None:
            raise ConcurrentUpdate(key, trigger)
        self._log_transition(before, after, trigger, source, None)
        return after

    def reconcile(
        self,
        stuck_after: timedelta | float | None = None,
        expire_after: timedelta | float | None = None,
        remote: bool = False,
        fix: bool = False,
        delete_orphans: bool = False,
        *,
        progress: Callable[[str, int], None] | None = None,
    ) -> ReconcileReport:
        """Find mailboxes that are not where they should be; with ``fix`` heal what is safe to heal.

        ``stuck_after``/``expire_after``: a `timedelta` or a number of seconds (``stuck_after=0``);
        they default to the settings (1 hour, 7 days); a negative, non-finite or boolean value, or
        anything else, raises `InvalidInput` naming the argument. ``remote`` also
        compares with Mailivery's campaign list; ``delete_orphans`` (with ``fix`` and ``remote``) deletes
        campaigns nobody asked for that are still pending there. ``progress(phase, rows)`` is called as
        the scan advances. See `mailbox_flow.reconcile` for the reasons, the actions and the guarantees.
        """
        from .reconcile import reconcile

        return reconcile(
            self,
            stuck_after=stuck_after if stuck_after is not None else self.settings.stuck_after,
            expire_after=expire_after if expire_after is not None else self.settings.expire_after,
            remote=remote,
            fix=fix,
            delete_orphans=delete_orphans,
            progress=progress,
        )

    # -- the transition engine -------------------------------------------------------------------

    def _apply(
        self,
        mailbox: Mailbox,
        trigger: str,
        *,
        source: Source,
        call: Callable[[str], Any] | None = None,
        skip_effect: bool = False,
        warmed_before: bool | None = None,
        values: dict[str, Any] | None = None,
        values_from_result: Callable[[Any], dict[str, Any]] | None = None,
        detail: dict[str, Any] | None = None,
        remote_checked: bool = False,
        pre_claimed: str | None = None,
        finish: Finish | None = None,
    ) -> Mailbox:
        """Run ``trigger`` on ``mailbox``: validate, claim, call Mailivery, commit and audit.

        The call runs under a deadline inside the claim's lease (`call_deadline`), so it is over before
        another worker may take the mailbox. When the mailbox still carries the intent of an earlier
        attempt whose outcome is unknown (its worker died, or Mailivery's answer was lost), the campaign
        is re-read first and, if Mailivery already shows the effect, the transition is committed without
        calling again; ``remote_checked`` says the caller has just read the campaign itself.
        ``pre_claimed``: the request id of the lease for ``trigger`` that the transition which produced
        ``mailbox`` already took for this worker (see `_claim_values`); no separate claim is made.
        ``finish``: the webhook delivery to mark finished in the same write as the transition.
        """
        rule = rule_for(trigger, mailbox.state)
        if rule is None:
            raise InvalidTransition(trigger, mailbox.state.value, mailbox.id)
        warmed = mailbox.warmed_at is not None if warmed_before is None else warmed_before
        if rule.condition == "warmed_before" and not warmed:
            raise InvalidTransition(trigger, mailbox.state.value, mailbox.id)
        detail = dict(detail or {})

        if rule.effect is None or (skip_effect and rule.effect_optional):
            if rule.effect is not None:
                detail["reported_by_mailivery"] = True
            to_state = fire(trigger, Subject(mailbox.state, skip_effect=True, warmed_before=warmed),
                            mailbox.id)
            moved = self.store.transition(
                mailbox, to_state=to_state, trigger=trigger, source=source, request_id=None,
                detail=detail, values=values, finish=finish,
            )
            if moved is None:
                raise ConcurrentUpdate(mailbox.id, trigger)
            self._log_transition(mailbox, moved, trigger, source, None)
            return moved

        effect_call = call or self._effect_call(mailbox, rule.effect)
        if pre_claimed is not None:
            if (mailbox.intent_trigger != trigger or mailbox.intent_request_id != pre_claimed
                    or mailbox.lease_until is None):
                raise RuntimeError(f"{mailbox.id} was not claimed for {trigger!r} by this worker")
            claimed, request_id = mailbox, pre_claimed
            # the lease runs from when it was taken: the same deadline as a claim made just now
            lease_left = (mailbox.lease_until - utcnow()).total_seconds()
            started = time.monotonic() + lease_left - self.lease.total_seconds()
        else:
            request_id = str(uuid.uuid4())
            started = time.monotonic()
            taken = self.store.claim(
                mailbox,
                owner=self.worker_id,
                until=utcnow() + self.lease,
                trigger=trigger,
                request_id=request_id,
            )
            if taken is None:
                raise ConcurrentUpdate(mailbox.id, trigger)
            claimed = taken
        with call_deadline(started + self.lease.total_seconds() * _LEASE_USABLE):
            if (
                mailbox.intent_trigger is not None
                and not remote_checked
                and call is None
                and mailbox.campaign_id is not None
            ):
                try:
                    seen = _effect_seen(rule.effect, self._read_campaign(mailbox.campaign_id))
                except BaseException as exc:
                    self._record_failure(claimed, trigger, exc, request_id, source, keep_intent=True)
                    raise
                if seen:  # no call: the audit row names the earlier intent's request id instead
                    detail.update(effect_seen_at_mailivery=True,
                                  intent_trigger=mailbox.intent_trigger,
                                  intent_request_id=mailbox.intent_request_id)
                    to_state = fire(
                        trigger,
                        Subject(claimed.state, skip_effect=True, warmed_before=warmed),
                        claimed.id,
                    )
                    return self._commit(mailbox, claimed, to_state, trigger, source, None,
                                        detail, dict(values or {}), finish)
            subject = Subject(
                claimed.state,
                run_effect=lambda _effect: effect_call(request_id),
                warmed_before=warmed,
            )
            try:
                to_state = fire(trigger, subject, claimed.id)
            except MailiveryError as exc:
                self._record_failure(claimed, trigger, exc, request_id, source)
                raise
            except BaseException as exc:
                self._record_failure(claimed, trigger, exc, request_id, source, keep_intent=True)
                raise
        new_values = dict(values or {})
        if values_from_result is not None:
            new_values.update(values_from_result(subject.effect_result))
        if isinstance(subject.effect_result, dict) and subject.effect_result.get("already_gone"):
            detail["remote_missing"] = True
        return self._commit(mailbox, claimed, to_state, trigger, source, request_id, detail,
                            new_values, finish)

    def _commit(
        self,
        before: Mailbox,
        claimed: Mailbox,
        to_state: State,
        trigger: str,
        source: Source,
        request_id: str | None,
        detail: dict[str, Any],
        values: dict[str, Any],
        finish: Finish | None = None,
    ) -> Mailbox:
        """Move a claimed mailbox to ``to_state`` (only while the claim is still ours) and log it."""
        moved = self.store.transition(
            claimed, to_state=to_state, trigger=trigger, source=source, request_id=request_id,
            detail=detail, lease_owner=self.worker_id, values=values, finish=finish,
        )
        if moved is None:  # our lease ran out and someone else took the row meanwhile
            raise ConcurrentUpdate(before.id, trigger)
        self._log_transition(before, moved, trigger, source, request_id)
        return moved

    def recover(self, mailbox_id: uuid.UUID | str, *, source: Source = Source.RECONCILER) -> Recovery:
        """Finish a side effect that was interrupted: its worker died, or Mailivery's answer was lost.

        Such a mailbox still carries its *intent* (trigger and request id, recorded with the claim) once
        nobody holds its lease. The campaign is re-read at Mailivery first: when the effect is already
        there (start/resume: active; pause: paused; delete: gone) the transition is committed without a
        call; otherwise the call is made again, once (a ``pending`` mailbox is verified like a webhook
        match and started, or resumed when Mailivery shows it paused). An interrupted connect is not
        repeated (the partner's next `request_connection` does it, or the reconciler expires it): its
        intent is cleared. Returns a `Recovery`; raises `ConcurrentUpdate` while a worker holds the
        lease and `MailiveryUnavailable` when Mailivery cannot be asked (the intent is kept).
        """
        mailbox = self.get(mailbox_id)
        trigger = mailbox.intent_trigger
        if trigger is None:
            return Recovery("none", mailbox)
        if mailbox.lease_until is not None and mailbox.lease_until > utcnow():
            raise ConcurrentUpdate(mailbox.id, trigger)
        rule = rule_for(trigger, mailbox.state)
        if (
            rule is None
            or rule.effect is None
            or rule.effect is Effect.CONNECT
            or mailbox.campaign_id is None
        ):
            reason = (
                "interrupted connect: the next request_connection retries it"
                if rule is not None and rule.effect is Effect.CONNECT
                else f"nothing to repeat for {trigger!r} from {mailbox.state.value}"
            )
            return Recovery("cleared", self._clear_intent(mailbox, reason), reason)
        campaign = self._read_campaign(mailbox.campaign_id)
        effect = rule.effect
        if campaign is None and effect is not Effect.DELETE:
            self.store.flag(mailbox.id, "remote_missing")
            reason = "campaign not found at Mailivery"
            return Recovery("failed", self._clear_intent(mailbox, reason), reason)
        if campaign is not None and campaign.email != mailbox.email:
            self.store.flag(mailbox.id, "remote_email_mismatch")
            return Recovery("failed", self.get(mailbox.id), "campaign email does not match")
        warmed = mailbox.warmed_at is not None
        if mailbox.state is State.PENDING and effect in (Effect.START, Effect.RESUME):
            assert campaign is not None
            warmed = warmed or campaign.lifecycle == "paused"
            trigger = "resume" if warmed else "start"
            effect = Effect.RESUME if warmed else Effect.START
        detail: dict[str, Any] = {"recovered_intent": mailbox.intent_trigger}
        if _effect_seen(effect, campaign):
            detail["effect_seen_at_mailivery"] = True
            detail["intent_request_id"] = mailbox.intent_request_id
            after = self._apply(mailbox, trigger, source=source, skip_effect=True,
                                warmed_before=warmed, detail=detail)
            return Recovery("completed", after)
        try:
            after = self._apply(mailbox, trigger, source=source, warmed_before=warmed,
                                detail=detail, remote_checked=True)
        except MailiveryUnavailable:
            raise
        except MailiveryError as exc:
            return Recovery("failed", self.get(mailbox.id), _error_text(exc))
        return Recovery("retried", after)

    def _clear_intent(self, mailbox: Mailbox, reason: str) -> Mailbox:
        cleared = self.store.release(
            mailbox, lease_owner=None, error=reason, next_attempt_at=None, count_attempt=False
        )
        if cleared is None:
            raise ConcurrentUpdate(mailbox.id, mailbox.intent_trigger or "recover")
        return cleared

    def _effect_call(self, mailbox: Mailbox, effect: Effect) -> Callable[[str], Any]:
        campaign_id = mailbox.campaign_id
        if campaign_id is None:
            raise InvalidTransition(effect.value, mailbox.state.value, mailbox.id)
        client = self.client
        if effect is Effect.START:
            return lambda rid: client.start_warmup(campaign_id, request_id=rid)
        if effect is Effect.RESUME:
            return lambda rid: client.resume_warmup(campaign_id, request_id=rid)
        if effect is Effect.PAUSE:
            return lambda rid: client.pause_warmup(campaign_id, request_id=rid)
        if effect is Effect.DELETE:

            def delete(rid: str) -> Any:
                try:
                    return client.delete_campaign(campaign_id, request_id=rid)
                except MailiveryNotFound:
                    return {"already_gone": True}

            return delete
        raise InvalidTransition(effect.value, mailbox.state.value, mailbox.id)

    def _record_failure(
        self,
        claimed: Mailbox,
        trigger: str,
        exc: BaseException,
        request_id: str,
        source: Source,
        *,
        keep_intent: bool = False,
    ) -> None:
        """Release the claim after a failed call: state unchanged, error and attempt recorded."""
        # When Mailivery could not be asked we cannot know whether the call took effect: keep the
        # intent so that the reconciler re-reads the campaign before trying again.
        keep = keep_intent or isinstance(exc, MailiveryUnavailable)
        # After a timeout or a broken connection the request may still be running at Mailivery, and
        # a re-read now could not see its effect yet: keep the lease a little longer (one client
        # timeout) so that nobody re-reads and calls again while it may still land.
        hold_until = None
        rule = rule_for(trigger, claimed.state)
        repeatable = rule is not None and rule.effect is Effect.CONNECT  # it only mints a URL
        if isinstance(exc, MailiveryTransportError) and not repeatable:
            grace = timedelta(seconds=float(getattr(self._client, "timeout", 10.0)))
            hold_until = utcnow() + min(grace, self.lease)
        backoff = min(timedelta(minutes=2 ** min(claimed.attempts, 10)), _MAX_BACKOFF)
        self.store.release(
            claimed,
            lease_owner=self.worker_id,
            error=_error_text(exc),
            next_attempt_at=utcnow() + backoff,
            keep_intent=keep,
            hold_until=hold_until,
        )
        log.warning(
            "mailbox_flow.effect_failed",
            mailbox_id=str(claimed.id),
            trigger=trigger,
            state=claimed.state.value,
            source=source.value,
            request_id=request_id,
            error=type(exc).__name__,
            code=getattr(exc, "code", None),
            status=getattr(exc, "status_code", None),
            attempts=claimed.attempts + 1,
        )

    def _log_transition(
        self, before: Mailbox, after: Mailbox, trigger: str, source: Source, request_id: str | None
    ) -> None:
        log.info(
            "mailbox_flow.transition",
            mailbox_id=str(after.id),
            trigger=trigger,
            from_state=before.state.value,
            to_state=after.state.value,
            source=source.value,
            request_id=request_id,
            campaign_id=after.campaign_id,
            version=after.version,
            **self._email_fields(after.email),
        )

    def _email_fields(self, email: str) -> dict[str, str]:
        """``{"email": ...}``, or ``{"email_hash": ...}`` when addresses are hashed in logs."""
        if self._email_key is None:
            return {"email": email}
        return {"email_hash": email_hash(email, self._email_key)}

    # -- webhooks --------------------------------------------------------------------------------

    def verify_secret(self, secret: str | None) -> None:
        """Raise `WebhookAuthError` unless ``secret`` equals the configured one (constant time)."""
        expected = self._webhook_secret
        if not expected:
            raise WebhookAuthError("no webhook secret is configured: every delivery is refused")
        if not isinstance(secret, str) or not hmac.compare_digest(
            secret.encode("utf-8", "surrogatepass"), expected.encode("utf-8")
        ):
            raise WebhookAuthError("bad or missing webhook secret")

    def handle_webhook(
        self,
        body: bytes | str | Mapping[str, Any],
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> WebhookResult:
        """Authenticate, store, de-duplicate, match and act on one webhook delivery.

        ``body``: the raw bytes (or their text; a mapping of already parsed JSON is stored as its JSON).
        Raises `WebhookAuthError` (nothing stored) or `WebhookPayloadError` (stored as ``invalid``,
        also for a body that is not bytes, str or a mapping, such as None or a list);
        otherwise returns a `WebhookResult` whose ``outcome`` says what happened.
        """
        taken = self._take_in(body, secret, counted=True)
        if taken.answer is not None:
            return taken.answer
        assert taken.delivery is not None and taken.event is not None
        return self._process(taken.delivery, taken.event, counted=taken.counted)

    def accept_webhook(
        self,
        body: bytes | str | Mapping[str, Any],
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> WebhookResult:
        """Authenticate, store and de-duplicate one delivery, and leave acting on it for later.

        For a receiver that answers the sender at once and acts in the background (`mailbox_flow.web`
        with ``background_workers``, or a queue of your own): the outcome is ``accepted`` with the id of
        the stored delivery to hand to `process_delivery` (for a repeat of a delivery stored earlier and
        never finished, that earlier one's id), or ``duplicate``. Raises as `handle_webhook` does. A
        delivery accepted and never processed (its process died) stays in the inbox as ``received``:
        the receiver's sweep, a redelivery after the lease, ``webhook replay --all`` or
        ``reconcile --fix`` finishes it.
        """
        taken = self._take_in(body, secret, counted=False)
        if taken.answer is not None:
            return taken.answer
        assert taken.delivery is not None
        return WebhookResult(Outcome.ACCEPTED, None, taken.delivery.id)

    def process_delivery(self, delivery_id: int) -> WebhookResult:
        """Act on a delivery `accept_webhook` stored: match it, call Mailivery, move the mailbox.

        A delivery is acted on while it is ``received`` or ``failed`` (Mailivery could not be asked last
        time). It is taken with a compare-and-set on its attempt count, so of several workers handed
        the same delivery (a queue that delivers twice, a sweep, the reconciler) one acts on it; one
        already handled, or taken by another worker less than a lease ago, is not acted on again: the
        answer is ``duplicate``.
        Raises `InvalidInput` for an unknown id (also one no delivery can have: not an int in
        1..2**63-1).
        """
        delivery = self.store.get_delivery(_checked_delivery_id(delivery_id))
        if delivery is None:
            raise InvalidInput("delivery_id", f"no stored delivery {delivery_id}")
        event = parse_webhook(delivery.body)
        if delivery.status not in ("received", "failed"):  # failed: Mailivery could not be asked
            detail = f"already handled ({delivery.status})"
        elif delivery.attempts and not self._needs_processing(delivery):
            detail = "another worker is handling it"  # taken, within its lease
        elif not self.store.claim_delivery(delivery):
            detail = "another worker is handling it"
        else:
            return self._process(delivery, event, counted=True)
        return WebhookResult(Outcome.DUPLICATE, self.store.get_by_campaign(event.campaign_id),
                             delivery.id, detail)

    def _take_in(self, body: bytes | str | Mapping[str, Any], secret: str | None, *,
                 counted: bool) -> _Taken:
        """Authenticate, store and de-duplicate: a final answer, or the delivery to act on.

        ``counted``: store a new delivery with its first processing attempt already counted (the
        caller processes it right away).
        """
        self.verify_secret(secret)
        raw, unreadable = _raw_body(body)
        try:
            if unreadable is not None:
                raise WebhookPayloadError(unreadable)
            event = parse_webhook(raw)
        except WebhookPayloadError as exc:
            stored = self.store.insert_delivery(
                {"body": raw, "status": "invalid", "error": exc.message[:2000], "dedupe_key": None}
            )
            delivery_id = stored.id if stored else None
            log.warning("mailbox_flow.webhook", outcome="invalid", delivery_id=delivery_id,
                        error=exc.message[:200])
            raise WebhookPayloadError(exc.message, delivery_id=delivery_id) from None

        key = _dedupe_key(event, utcnow())
        fields = {
            "body": raw,
            "event_type": event.type[:64],
            "campaign_id": event.campaign_id,
            "email": event.email,
        }
        delivery = self.store.insert_delivery(
            {**fields, "dedupe_key": key, "status": "received", "attempts": 1 if counted else 0}
        )
        if delivery is not None:
            return _Taken(None, delivery, event, counted)
        original, mailbox = self.store.original_and_mailbox(key, event.campaign_id)
        duplicate = self.store.insert_delivery(
            {**fields, "status": "duplicate", "duplicate_of": original.id if original else None}
        )
        if original is not None and self._needs_processing(original):
            # stored before but never finished (deferred, or its worker died): do it now
            return _Taken(None, original, event, False)
        if original is None:  # its insert is not visible to us yet: read the mailbox itself
            mailbox = self.store.get_by_campaign(event.campaign_id)
        self._log_webhook(event, Outcome.DUPLICATE, duplicate.id if duplicate else None, mailbox)
        answer = WebhookResult(Outcome.DUPLICATE, mailbox, duplicate.id if duplicate else None)
        return _Taken(answer, None, None, False)

    def reprocess_delivery(self, delivery_id: int) -> WebhookResult:
        """Process a stored delivery again (one that failed or whose worker died); `InvalidInput` for
        an unknown id, as `process_delivery`."""
        delivery = self.store.get_delivery(_checked_delivery_id(delivery_id))
        if delivery is None:
            raise InvalidInput("delivery_id", f"no stored delivery {delivery_id}")
        event = parse_webhook(delivery.body)
        return self._process(delivery, event)

    def _needs_processing(self, delivery: Delivery) -> bool:
        if delivery.status == "failed":
            return True
        return delivery.status == "received" and delivery.received_at < utcnow() - self.lease

    def _process(self, delivery: Delivery, event: WebhookEvent, *, counted: bool = False) -> WebhookResult:
        if not counted:  # a new delivery is stored with its first attempt already counted
            self.store.touch_delivery(delivery.id)
        finishing = _Finishing(delivery.id)
        try:
            outcome, mailbox, detail = self._dispatch(event, finishing)
        except MailiveryUnavailable as exc:
            self.store.finish_delivery(
                delivery.id, status="failed", outcome=Outcome.DEFERRED.value, error=_error_text(exc)
            )
            mailbox = self.store.get_by_campaign(event.campaign_id)
            self._log_webhook(event, Outcome.DEFERRED, delivery.id, mailbox)
            return WebhookResult(Outcome.DEFERRED, mailbox, delivery.id, _error_text(exc))
        except ConcurrentUpdate:
            outcome, detail = Outcome.DUPLICATE, "another worker is handling this mailbox"
            mailbox = self.store.get_by_campaign(event.campaign_id)
        except Exception as exc:
            self.store.finish_delivery(
                delivery.id, status="failed", outcome=None, error=_error_text(exc)
            )
            raise
        status = {
            Outcome.REJECTED: "rejected",
            Outcome.IGNORED: "ignored",
            Outcome.DUPLICATE: "duplicate",
        }.get(outcome, "processed")
        if not finishing.done:  # (a warmup finishes its delivery in its own transition's write)
            self.store.finish_delivery(
                delivery.id,
                status=status,
                outcome=outcome.value,
                error=detail if status != "processed" else None,
                mailbox_id=mailbox.id if mailbox else None,
            )
        self._log_webhook(event, outcome, delivery.id, mailbox)
        return WebhookResult(outcome, mailbox, delivery.id, detail)

    def _log_webhook(
        self, event: WebhookEvent, outcome: Outcome, delivery_id: int | None, mailbox: Mailbox | None
    ) -> None:
        log.info(
            "mailbox_flow.webhook",
            event_type=event.type[:64],
            campaign_id=event.campaign_id,
            outcome=outcome.value,
            delivery_id=delivery_id,
            mailbox_id=str(mailbox.id) if mailbox else None,
        )

    def _dispatch(self, event: WebhookEvent, finishing: _Finishing | None = None
                  ) -> tuple[Outcome, Mailbox | None, str | None]:
        if event.type in _CONNECTED:
            return self._on_connected(event, finishing)
        if event.type == "campaign.deleted":
            return self._on_deleted(event)
        if event.type == "campaign.updated":
            return self._on_updated(event, finishing)
        return self._on_other(event)

    def _read_campaign(self, campaign_id: int) -> Campaign | None:
        """Mailivery's own view of the campaign; None when it does not exist (404)."""
        try:
            return self.client.get_campaign(campaign_id)
        except MailiveryNotFound:
            return None

    def _on_connected(self, event: WebhookEvent, finishing: _Finishing | None = None
                      ) -> tuple[Outcome, Mailbox | None, str | None]:
        linked, candidate = self.store.match(event.campaign_id, event.email)
        held = None  # a rejected record holding the campaign, which gives it up if this delivery matches
        if linked is not None:
            if linked.state is State.PENDING:
                return self._verify_and_warm(linked, Source.WEBHOOK, finishing)
            if not may_take_over(linked, candidate):
                return (Outcome.IGNORED, linked,
                        f"campaign already handled (mailbox {linked.state.value})")
            held = linked
        if event.email is None:
            return Outcome.REJECTED, None, "the delivery carries no usable email"
        if candidate is None or candidate.state not in (State.REQUESTED, State.OAUTH_SENT):
            reason = "unexpected" if candidate is None else f"address already {candidate.state.value}"
            return self._record_orphan(event, reason)
        # From here on a mailbox is waiting for this address: a refusal records the campaign (so that
        # it is not taken by email alone later) but never deletes it, and the record gives it up to
        # the waiting mailbox once a delivery carrying its token (or Mailivery's campaign) proves it.
        token = event.meta.get(CORRELATION_META_KEY)
        if token is not None and not same_token(token, candidate.correlation_token):
            return self._record_orphan(event, "correlation token mismatch", waiting=candidate)
        if self.expect is not None and not self.expect(candidate, event):
            return self._record_orphan(event, "refused by the partner check", waiting=candidate)
        campaign = self._read_campaign(event.campaign_id)
        if campaign is None:
            return Outcome.REJECTED, None, "campaign not found at Mailivery"
        if campaign.email != candidate.email:
            return Outcome.REJECTED, None, "campaign email at Mailivery does not match the delivery"
        remote_token = campaign_token(campaign)
        if remote_token is not None and not same_token(remote_token, candidate.correlation_token):
            return self._record_orphan(event, "correlation token at Mailivery does not match",
                                       waiting=candidate, campaign=campaign)
        values: dict[str, Any] = {"campaign_id": event.campaign_id}
        detail: dict[str, Any] = {"campaign_id": event.campaign_id, "event": event.type[:64]}
        if held is not None:
            if token is None and remote_token is None:
                return (Outcome.IGNORED, held,
                        f"campaign held by rejected mailbox {held.id}: a delivery without the "
                        "correlation token cannot prove it belongs to the waiting mailbox")
            proof = "correlation_token" if token is not None else "campaign_meta"
            self._release_campaign(held, candidate, Source.WEBHOOK, proof)
            detail["taken_from_mailbox_id"] = str(held.id)
        trigger, already = _warm_plan(candidate, campaign)
        claim_id = None
        if trigger is not None and not already:
            # Take the lease for the warmup call in the same write that marks the mailbox pending:
            # one statement (and one commit) less, and the intent is on record from that moment on.
            values.update(self._claim_values(trigger))
            claim_id = values["intent_request_id"]
        mailbox = self._apply(
            candidate,
            "mark_pending",
            source=Source.WEBHOOK,
            values=values,
            detail=detail,
        )
        return self._warm(mailbox, campaign, Source.WEBHOOK, pre_claimed=claim_id,
                          finishing=finishing)

    def _claim_values(self, trigger: str) -> dict[str, Any]:
        """The columns of this worker's lease for ``trigger``, to set with another transition."""
        now = utcnow()
        return {"lease_owner": self.worker_id, "lease_until": now + self.lease,
                "intent_trigger": trigger, "intent_request_id": str(uuid.uuid4()), "intent_at": now}

    def _verify_and_warm(
        self, mailbox: Mailbox, source: Source, finishing: _Finishing | None = None
    ) -> tuple[Outcome, Mailbox | None, str | None]:
        """Re-read the campaign of a ``pending`` mailbox, then start or resume it."""
        assert mailbox.campaign_id is not None
        campaign = self._read_campaign(mailbox.campaign_id)
        if campaign is None:
            self.store.flag(mailbox.id, "remote_missing")
            return Outcome.PENDING, self.store.get(mailbox.id), "campaign not found at Mailivery"
        if campaign.email != mailbox.email:
            self.store.flag(mailbox.id, "remote_email_mismatch")
            return Outcome.PENDING, self.store.get(mailbox.id), "campaign email does not match"
        return self._warm(mailbox, campaign, source, finishing=finishing)

    def _warm(
        self, mailbox: Mailbox, campaign: Campaign, source: Source, *, pre_claimed: str | None = None,
        finishing: _Finishing | None = None,
    ) -> tuple[Outcome, Mailbox | None, str | None]:
        """Start (new) or resume (warmed before / paused at Mailivery) a verified ``pending`` mailbox."""
        trigger, already = _warm_plan(mailbox, campaign)
        if trigger is None:
            self.store.flag(mailbox.id, "remote_status")
            return (Outcome.PENDING, self.store.get(mailbox.id),
                    f"campaign status at Mailivery is {campaign.status!r}")
        resume = trigger == "resume"
        detail: dict[str, Any] | None = None
        if already:
            detail = {"already_active_at_mailivery": True}
            if mailbox.intent_request_id is not None:  # most likely the call that did it
                detail["intent_request_id"] = mailbox.intent_request_id
        outcome = Outcome.RESUMED if resume else Outcome.STARTED
        finish = None
        if finishing is not None:  # the delivery is finished in the same write as the warmup
            finish = Finish(finishing.delivery_id, "processed", outcome.value)
        try:
            warmed = self._apply(mailbox, trigger, source=source, warmed_before=resume,
                                 skip_effect=already, remote_checked=True, detail=detail,
                                 pre_claimed=pre_claimed, finish=finish)
        except ConcurrentUpdate:
            raise
        except MailiveryError as exc:
            return Outcome.PENDING, self.store.get(mailbox.id), _error_text(exc)
        if finishing is not None:
            finishing.done = True
        return outcome, warmed, None

    def _record_orphan(
        self, event: WebhookEvent, reason: str, *, waiting: Mailbox | None = None,
        campaign: Campaign | None = None,
    ) -> tuple[Outcome, Mailbox | None, str | None]:
        """Record a campaign nobody asked for as a ``rejected`` mailbox (and delete it, by policy).

        The campaign is re-read first (unless the caller just did: ``campaign``): a payload naming a
        campaign Mailivery does not have, or one of another address, is refused without a record.

        ``waiting``: the mailbox waiting for this address, whose match the delivery failed (its token
        or the partner check). The delivery may then be a forged copy of the genuine one, so the
        campaign is never deleted; nothing is recorded at all when Mailivery's campaign shows the
        waiting mailbox's token; and the record gives the campaign up to the waiting mailbox once a
        delivery proves the match (see `mailbox_flow._takeover`), so it can never pre-empt it.
        """
        existing = self.store.get_by_campaign(event.campaign_id)
        if existing is not None:
            return Outcome.IGNORED, existing, "orphan campaign already recorded"
        if campaign is None:
            campaign = self._read_campaign(event.campaign_id)
        if campaign is None:
            return Outcome.REJECTED, None, f"{reason}; campaign not found at Mailivery"
        if campaign.email != event.email:
            return Outcome.REJECTED, None, f"{reason}; campaign email at Mailivery does not match"
        if waiting is not None:
            given = event.meta.get(CORRELATION_META_KEY)
            ours = waiting.correlation_token
            if (given is not None and not same_token(given, ours)
                    and same_token(campaign_token(campaign), ours)):
                return (Outcome.REJECTED, None,
                        f"{reason}; the campaign at Mailivery carries the token of the mailbox "
                        "waiting for this address: a forged delivery, nothing recorded")
        try:
            orphan = self._insert_orphan(
                event.campaign_id, event.email or f"unknown+{event.campaign_id}@invalid",
                event.first_name, event.last_name, Source.WEBHOOK, reason,
                waiting=waiting.id if waiting is not None else None,
            )
        except DuplicateMailbox:
            existing = self.store.get_by_campaign(event.campaign_id)
            return Outcome.IGNORED, existing, "orphan campaign already recorded"
        if waiting is not None:  # (never delete on the word of a delivery that may be forged)
            return (Outcome.REJECTED, orphan,
                    f"{reason}; kept at Mailivery: mailbox {waiting.id} is waiting for this address")
        # (never delete a campaign someone already started)
        if self.orphan_policy == "delete" and campaign.lifecycle == "pending":
            try:
                orphan = self._apply(orphan, "delete", source=Source.WEBHOOK, remote_checked=True,
                                     detail={"reason": "orphan_policy=delete"})
            except MailiveryError as exc:
                return Outcome.REJECTED, self.store.get(orphan.id), f"{reason}; {_error_text(exc)}"
        return Outcome.REJECTED, orphan, reason

    def _insert_orphan(
        self,
        campaign_id: int,
        email: str,
        first_name: str | None,
        last_name: str | None,
        source: Source,
        reason: str,
        *,
        waiting: uuid.UUID | None = None,
    ) -> Mailbox:
        """Record a campaign nobody asked for as a ``rejected`` mailbox with its audit row and log event.

        ``waiting``: the id of the mailbox waiting for this address (named in the audit row).
        Raises `DuplicateMailbox` when the campaign is already recorded.
        """
        detail: dict[str, Any] = {"reason": reason, "campaign_id": campaign_id}
        if waiting is not None:
            detail["waiting_mailbox_id"] = str(waiting)
        orphan = self.store.insert_mailbox(
            {
                "owner_id": None,
                "email": email,
                "first_name": (first_name or "")[:255] or None,
                "last_name": (last_name or "")[:255] or None,
                "state": State.REJECTED.value,
                "campaign_id": campaign_id,
            },
            audit={
                "trigger": "reject",
                "from_state": State.PENDING.value,
                "to_state": State.REJECTED.value,
                "source": source.value,
                "request_id": None,
                "detail": detail,
            },
        )
        log.info(
            "mailbox_flow.transition",
            mailbox_id=str(orphan.id),
            trigger="reject",
            from_state=State.PENDING.value,
            to_state=State.REJECTED.value,
            source=source.value,
            request_id=None,
            campaign_id=campaign_id,
            reason=reason,
            **self._email_fields(orphan.email),
        )
        return orphan

    def _release_campaign(self, record: Mailbox, waiting: Mailbox, source: Source,
                          proof: str) -> Mailbox:
        """Have a rejected record (`mailbox_flow._takeover.may_take_over`) give its campaign up to the
        mailbox waiting for it, whose match ``proof`` says how it was proven: the record stays
        ``rejected`` without a campaign, audited ``release_campaign`` (rejected → rejected, with the
        campaign id and the mailbox it goes to). `ConcurrentUpdate` when the record moved meanwhile.
        """
        detail = {"campaign_id": record.campaign_id, "to_mailbox_id": str(waiting.id), "proof": proof}
        released = self.store.transition(
            record, to_state=State.REJECTED, trigger=RELEASE_TRIGGER, source=source, request_id=None,
            detail=detail, values={"campaign_id": None},
        )
        if released is None:
            raise ConcurrentUpdate(record.id, RELEASE_TRIGGER)
        self._log_transition(record, released, RELEASE_TRIGGER, source, None)
        return released

    def _on_deleted(self, event: WebhookEvent) -> tuple[Outcome, Mailbox | None, str | None]:
        mailbox = self.store.get_by_campaign(event.campaign_id)
        if mailbox is None:
            return Outcome.IGNORED, None, "unknown campaign"
        if rule_for("delete", mailbox.state) is None:
            return Outcome.IGNORED, mailbox, f"mailbox already {mailbox.state.value}"
        campaign = self._read_campaign(event.campaign_id)
        if campaign is not None and campaign.lifecycle != "deleted":
            return Outcome.REJECTED, mailbox, "campaign still exists at Mailivery"
        deleted = self._apply(mailbox, "delete", source=Source.WEBHOOK, skip_effect=True,
                              detail={"event": event.type})
        return Outcome.DELETED, deleted, None

    def _on_updated(self, event: WebhookEvent, finishing: _Finishing | None = None
                    ) -> tuple[Outcome, Mailbox | None, str | None]:
        mailbox = self.store.get_by_campaign(event.campaign_id)
        if mailbox is None:
            return Outcome.IGNORED, None, "unknown campaign"
        if mailbox.state is State.PENDING:
            return self._verify_and_warm(mailbox, Source.WEBHOOK, finishing)
        if mailbox.state is State.PAUSED:
            return self._follow_remote(mailbox, event)
        return Outcome.IGNORED, mailbox, f"nothing to do for a {mailbox.state.value} mailbox"

    def _on_other(self, event: WebhookEvent) -> tuple[Outcome, Mailbox | None, str | None]:
        """Any other event (e.g. the undocumented connection problem): Mailivery's status decides."""
        mailbox = self.store.get_by_campaign(event.campaign_id)
        if mailbox is None:
            return Outcome.IGNORED, None, "unknown campaign"
        return self._follow_remote(mailbox, event)

    def _follow_remote(
        self, mailbox: Mailbox, event: WebhookEvent
    ) -> tuple[Outcome, Mailbox | None, str | None]:
        """Bring a linked mailbox in line with the campaign's status at Mailivery."""
        assert mailbox.campaign_id is not None
        campaign = self._read_campaign(mailbox.campaign_id)
        detail = {"event": event.type[:64]}
        if campaign is None or campaign.lifecycle == "deleted":
            if rule_for("delete", mailbox.state) is None:
                return Outcome.IGNORED, mailbox, "campaign gone at Mailivery"
            gone = self._apply(mailbox, "delete", source=Source.WEBHOOK, skip_effect=True,
                               detail=detail)
            return Outcome.DELETED, gone, None
        if campaign.email != mailbox.email:
            return Outcome.REJECTED, mailbox, "campaign email does not match"
        if campaign.lifecycle == "paused" and mailbox.state is State.WARMING:
            paused = self._apply(mailbox, "pause", source=Source.WEBHOOK, skip_effect=True,
                                 detail=detail)
            return Outcome.PAUSED, paused, None
        if mailbox.state is State.PAUSED and campaign.lifecycle in ("active", "paused", "pending"):
            reported = campaign.lifecycle == "active"
            try:
                resumed = self._apply(mailbox, "resume", source=Source.WEBHOOK, skip_effect=reported,
                                      remote_checked=True, detail=detail)
            except MailiveryError as exc:
                if isinstance(exc, MailiveryUnavailable):
                    raise
                return Outcome.PAUSED, self.store.get(mailbox.id), _error_text(exc)
            return Outcome.RESUMED, resumed, None
        return Outcome.IGNORED, mailbox, f"campaign is {campaign.status!r}, mailbox {mailbox.state.value}"


def _effect_seen(effect: Effect | None, campaign: Campaign | None) -> bool:
    """True when Mailivery's view of the campaign shows that ``effect`` has already taken place."""
    if effect in (Effect.START, Effect.RESUME):
        return campaign is not None and campaign.lifecycle == "active"
    if effect is Effect.PAUSE:
        return campaign is not None and campaign.lifecycle == "paused"
    if effect is Effect.DELETE:
        return campaign is None or campaign.lifecycle == "deleted"
    return False  # a connect only mints a URL: nothing to see, repeating it is safe


class _Taken(NamedTuple):
    """What taking a delivery in gave: a final answer, or the delivery to act on."""

    answer: WebhookResult | None
    delivery: Delivery | None
    event: WebhookEvent | None
    counted: bool  # its processing attempt is already counted


@dataclass
class _Finishing:
    """The webhook delivery being processed; ``done`` once a transition's write has finished it."""

    delivery_id: int
    done: bool = False


def _warm_plan(mailbox: Mailbox, campaign: Campaign) -> tuple[str | None, bool]:
    """How to warm a verified mailbox: ``start`` or ``resume`` (None: the campaign's status does not
    allow it), and whether Mailivery already shows it active (then no call is made: an earlier call
    took effect but its answer was lost, or someone started it elsewhere).
    """
    lifecycle = campaign.lifecycle
    if lifecycle not in ("pending", "paused", "active"):
        return None, False
    resume = mailbox.warmed_at is not None or lifecycle == "paused"
    return ("resume" if resume else "start"), lifecycle == "active"


@functools.lru_cache(maxsize=64)
def _one_step_move(trigger: str, source: Source) -> tuple[frozenset[State], Move] | None:
    """The states ``trigger`` moves from and the move, when that move is the same from all of them.

    Then PostgreSQL can read, move and audit a mailbox in one statement (`Store.transition_by_id`).
    """
    rules = {state: rule for state in State if (rule := rule_for(trigger, state)) is not None}
    dests = {rule.dest for rule in rules.values()}
    if len(dests) != 1 or any(r.effect is not None or r.condition for r in rules.values()):
        return None
    return frozenset(rules), Move(dests.pop(), trigger, source)


def _raw_body(body: Any) -> tuple[bytes, str | None]:
    """The bytes of a delivery to store, and why it cannot be read at all (None: parse it).

    Bytes are the contract, a ``str`` is encoded as UTF-8 (lone surrogates kept as the bytes they
    stand for, so that the parser refuses them), a mapping (a framework's parsed JSON) is stored as
    its JSON text; anything else (None, a list, a number) is unreadable and stored as an empty body.
    """
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    if isinstance(body, str):
        try:
            return body.encode("utf-8", "surrogateescape"), None
        except UnicodeEncodeError:
            return body.encode("utf-8", "surrogatepass"), None
    if isinstance(body, Mapping):
        try:
            text = json.dumps(dict(body), ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8"), None
        except (TypeError, ValueError, RecursionError):  # sets, NaN, lone surrogates, cycles
            return b"", "webhook body is a mapping that is not JSON"
    return b"", f"webhook body must be bytes, str or a mapping, not {type(body).__name__}"


def _parse_id(mailbox_id: uuid.UUID | str) -> uuid.UUID:
    """A `uuid.UUID`, or its text; anything else (an int, bytes, None, junk) → `InvalidInput`."""
    if isinstance(mailbox_id, uuid.UUID):
        return mailbox_id
    if isinstance(mailbox_id, str) and len(mailbox_id) <= 100:
        try:
            return uuid.UUID(mailbox_id)
        except ValueError:
            pass
    raise InvalidInput("mailbox_id", "not a mailbox id (a UUID)")


def _dedupe_key(event: WebhookEvent, now: datetime) -> str:
    """Same event type, same campaign, same content → same key (Mailivery sends no event id).

    Events that happen once per campaign are keyed by content alone; repeatable ones (updates,
    connection problems) also by a 10-minute window, so a later genuine repeat is processed again.
    """
    canonical = json.dumps(event.raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:40]
    key = f"{event.type[:40]}:{event.campaign_id}:{digest}"
    if event.type not in _ONCE_PER_CAMPAIGN:
        key += f":{int(now.timestamp()) // _REPEAT_WINDOW_SECONDS}"
    return key
