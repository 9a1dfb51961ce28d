"""A hypothesis state machine over the public API and the Mailivery simulator.

Rules: partners request connections (sometimes while Mailivery fails), users consent, Mailivery's webhooks
arrive (again and again: duplicates), forged payloads arrive (other campaign, other address, other token,
other event type), campaigns nobody asked for appear, Mailivery pauses/reconnects/deletes campaigns on its
own, the partner starts/resumes/pauses/deletes/rejects/expires mailboxes while calls fail (500, 429, lost
answers, refused connection checks), workers die in the middle of a call, and the reconciler runs.

Invariants, after every step:

- nothing is warming that was not expected and verified: a warming mailbox was requested by us, and its
  campaign exists (or existed) at Mailivery with the same address, was made with our correlation token
  (or none), and was read (GET) by us before any successful warmup call;
- no new start/resume call goes to a campaign Mailivery already shows active (an effect is repeated only
  when it did not happen);
- every mailbox's audit trail chains from → to, and ends in its current state;
- versions only grow;
- at most one non-terminal mailbox per address;
- no campaign got two successful start-warmup calls (distinct request ids).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from mailbox_flow import (
    ConcurrentUpdate,
    DuplicateMailbox,
    InvalidTransition,
    MailboxFlow,
    MailiveryClient,
    State,
    WebhookPayloadError,
)
from mailbox_flow.errors import MailiveryError
from mailbox_flow.models import utcnow
from mailbox_flow.simulator import ConsentNotFound, Faults
from mailbox_flow.states import ACTIVE_STATES
from mailbox_flow.testing import postgres_schema

from .conftest import PG_URL, TEST_PG_SETTINGS, _pg_reachable
from .helpers import API_KEY, SECRET

EMAILS = ("ada@contoso.com", "grace@navy.mil", "alan@bletchley.uk")
FAULTS = (None, None, "500", "429", "after_effect", "start_fails")
_LIVE = (State.PENDING, State.WARMING, State.PAUSED)
_WHERE: dict[str, tuple[State, ...]] = {
    "start": (State.PENDING,),
    "resume": (State.PENDING, State.PAUSED),
    "pause": (State.WARMING,),
    "delete": (*_LIVE, State.REJECTED),
    "reject": (State.PENDING,),
    "expire": (State.REQUESTED, State.OAUTH_SENT),
    "recover": tuple(State),
    "crash": _LIVE,
}


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


_CAMPAIGN_PATH = re.compile(r"/campaigns/(\d+)")


class _StatusBeforeEachCall(Faults):
    """Faults that also note each API call's campaign status *before* the call did anything.

    The simulator asks its faults for a latency first thing in every API request, and the model makes
    one request at a time, so ``before[i]`` belongs to ``sim.calls[i]``.
    """

    def __init__(self, sim: Any) -> None:
        super().__init__(sim.flush_webhooks)
        self._sim = sim
        self.before: list[tuple[str, str, str | None]] = []

    def latency_for(self, method: str, path: str) -> float:
        match = _CAMPAIGN_PATH.search(path)
        status = None
        if match is not None:
            try:
                status = self._sim.campaign(int(match.group(1)))["status_code"]
            except LookupError:
                status = None
        self.before.append((method, path, status))
        return super().latency_for(method, path)


class MailboxModel(RuleBasedStateMachine):
    """One example = one fresh database and a reset simulator."""

    sim: Any = None
    api_url: str = ""
    database: Callable[[], Any] = staticmethod(lambda: None)  # type: ignore[assignment]

    deliveries = Bundle("deliveries")

    def __init__(self) -> None:
        super().__init__()
        self.sim.reset()
        self.sim.api_key = API_KEY
        self.sim.webhook_url = None
        self._original_faults = self.sim.faults
        self.sim.faults = self.faults = _StatusBeforeEachCall(self.sim)
        self.dead_calls: set[str] = set()  # request ids of calls made by workers that then died
        self._db = self.database()
        url = self._db.__enter__()
        client = MailiveryClient(API_KEY, self.api_url, rate_per_second=0, timeout=5.0)
        self.flow = MailboxFlow(url, client=client, webhook_secret=SECRET)
        self.flow.create_schema()
        self.requested: set[uuid.UUID] = set()
        self.versions: dict[uuid.UUID, int] = {}
        self.campaign_emails: dict[int, str] = {}
        self.campaign_tokens: dict[int, str | None] = {}

    def teardown(self) -> None:
        self.flow.close()
        self.sim.faults.clear()
        self.sim.faults = self._original_faults
        self._db.__exit__(None, None, None)

    # -- helpers ---------------------------------------------------------------------------------

    def _fault(self, fault: str | None, path: str, email: str | None = None) -> None:
        faults = self.sim.faults
        if fault == "500":
            faults.fail_next(4, status=500, path_contains=path)
        elif fault == "429":
            faults.fail_next(1, status=429, retry_after=0, path_contains=path)
        elif fault == "after_effect":
            faults.fail_next(4, status=500, path_contains=path, after_effect=True)
        elif fault == "start_fails" and email is not None:
            faults.start_fails(email, times=1)

    def _pick(self, pick: int, states: tuple[State, ...], *, linked: bool = False) -> Any:
        """The ``pick``-th mailbox (cyclically) among those in ``states``; None when there is none."""
        found = [mb for mb in self.flow.list() if mb.state in states
                 and (mb.campaign_id is not None or not linked)]
        return found[pick % len(found)] if found else None

    def _last_event_body(self, start: int) -> bytes | None:
        events = self.sim.events[start:]
        return _body(events[-1]) if events else None

    # -- rules -----------------------------------------------------------------------------------

    @rule(target=deliveries, email=st.sampled_from(EMAILS), fault=st.sampled_from(FAULTS),
          then=st.sampled_from(("nothing", "consent", "deliver", "deliver")),
          deliver_fault=st.sampled_from(FAULTS))
    def request(self, email: str, fault: str | None, then: str, deliver_fault: str | None) -> Any:
        """A partner requests a connection; often the user consents and the webhook arrives at once."""
        self._fault(fault, "/campaigns/microsoft")
        try:
            mb = self.flow.request_connection(owner_id=f"owner-{email}", email=email,
                                              first_name="Test")
        except DuplicateMailbox:
            return multiple()
        except (MailiveryError, ConcurrentUpdate):
            mb = self.flow.find_by_email(email)
            if mb is None or mb.state is not State.REQUESTED:
                return multiple()
            self.requested.add(mb.id)
            return multiple()
        finally:
            self.sim.faults.clear()
        self.requested.add(mb.id)
        if then == "nothing" or not mb.oauth_url:
            return multiple()
        start = len(self.sim.events)
        self.sim.accept(mb.oauth_url)
        body = self._last_event_body(start)
        if body is None:
            return multiple()
        if then == "deliver":
            self.deliver(body, deliver_fault)
        return body

    @rule(target=deliveries, pick=st.integers(0, 5), deliver_now=st.booleans(),
          fault=st.sampled_from(FAULTS))
    def consent(self, pick: int, deliver_now: bool, fault: str | None) -> Any:
        """The user consents; Mailivery posts the webhook (delivered now, or later by `deliver`)."""
        mb = self._pick(pick, (State.OAUTH_SENT,))
        if mb is None or not mb.oauth_url:
            return multiple()
        start = len(self.sim.events)
        try:
            self.sim.accept(mb.oauth_url)
        except ConsentNotFound:
            return multiple()
        body = self._last_event_body(start)
        if body is None:
            return multiple()
        if deliver_now:
            self.deliver(body, fault)
        return body

    @rule(body=deliveries, fault=st.sampled_from(FAULTS))
    def deliver(self, body: bytes, fault: str | None) -> None:
        """A delivery (again: duplicates), while Mailivery's reads or warmup calls may fail."""
        email = json.loads(body)["account"].get("email")
        self._fault(fault, "start-warmup" if fault in ("after_effect", "429") else "/campaigns/",
                    email)
        try:
            self.flow.handle_webhook(body, secret=SECRET)
        finally:
            self.sim.faults.clear()

    @rule(pick=st.integers(0, 5), campaign_pick=st.integers(0, 5), forgery=st.sampled_from(
        ["replay_other_campaign", "replay_other_campaign", "guess_email", "wrong_token",
         "missing_campaign", "other_type", "garbage", "stranger", "stranger_token",
         "stranger_token", "stranger_quiet"]),
        email=st.sampled_from((*EMAILS, "mallory@evil.test")),
        event=st.sampled_from(["created", "pending", "updated", "deleted", "connection_problem"]))
    def attacker(self, pick: int, campaign_pick: int, forgery: str, email: str, event: str) -> None:
        """Forged payloads aimed at a mailbox we expect (its real payload replayed with another
        campaign id, its address guessed without the token, a wrong token, a campaign that does not
        exist, another event type, garbage), or a campaign nobody asked for (made in Mailivery's UI or
        by an attacker's form; its webhook delivered, or not)."""
        if forgery.startswith("stranger"):
            start = len(self.sim.events)
            meta = {"mailbox_flow_token": "guessed-token"} if forgery == "stranger_token" else None
            self.sim.create_campaign(email=email, first_name="Stranger", meta=meta,
                                     send_webhook=forgery != "stranger_quiet")
            body = self._last_event_body(start)
            if body is not None:
                self.flow.handle_webhook(body, secret=SECRET)
            return
        target = self._pick(pick, (State.OAUTH_SENT, State.REQUESTED)) or self._pick(pick, tuple(State))
        target_email = target.email if target is not None else email
        campaigns = self.sim.campaigns()
        unlinked = [c for c in campaigns if c["email"].lower() != target_email
                    and self.flow.store.get_by_campaign(c["id"]) is None]
        if not unlinked and forgery in ("replay_other_campaign", "guess_email", "wrong_token"):
            # the attacker makes a campaign of their own at Mailivery (a stray form) to point at
            unlinked = [self.sim.create_campaign(email="mallory@evil.test", first_name="Mallory",
                                                 send_webhook=False)]
            campaigns.extend(unlinked)
        pool = unlinked or campaigns
        campaign = pool[campaign_pick % len(pool)] if pool else None
        if forgery == "other_type" and campaign is not None:
            payload = self.sim.payload(f"campaign.{event}", campaign)
        else:
            token = target.correlation_token if target is not None else None
            payload = {"type": "campaign.pending", "action": "pending", "account": {
                "campaign_id": campaign["id"] if campaign is not None else 4242,
                "first_name": "Forged", "last_name": None, "email": target_email,
                "provider_type": "office", "tags": [],
                "meta": {"replay_other_campaign": f"mailbox_flow_token={token}",
                         "wrong_token": "mailbox_flow_token=forged-token-123"}.get(forgery, ""),
            }}
            if forgery == "missing_campaign":
                payload["account"]["campaign_id"] = 987654
            elif forgery == "garbage":
                payload["account"]["campaign_id"] = "abc"
        try:
            self.flow.handle_webhook(_body(payload), secret=SECRET)
        except WebhookPayloadError:
            assert forgery == "garbage"

    @rule(target=deliveries, pick=st.integers(0, 5),
          event=st.sampled_from(["connection_problem", "reconnect", "delete", "pause"]))
    def mailivery_acts(self, pick: int, event: str) -> Any:
        """Mailivery changes a campaign on its own (and posts a webhook, except for a bare pause)."""
        mb = self._pick(pick, (State.PENDING, State.WARMING, State.PAUSED), linked=True)
        if mb is None:
            return multiple()
        start = len(self.sim.events)
        try:
            if event == "connection_problem":
                self.sim.connection_problem(mb.campaign_id)
            elif event == "reconnect":
                self.sim.reconnect(mb.campaign_id)
            elif event == "delete":
                self.sim.delete_campaign(mb.campaign_id)
            else:
                self.sim.set_status(mb.campaign_id, "paused")
        except LookupError:
            return multiple()
        body = self._last_event_body(start)
        return body if body is not None else multiple()

    # The partner (or a worker) acts on a mailbox in a state where that makes sense; one rule per
    # kind of action, so that each comes up often.

    @rule(pick=st.integers(0, 5), fault=st.sampled_from(FAULTS),
          operation=st.sampled_from(("start", "resume")))
    def partner_starts(self, pick: int, fault: str | None, operation: str) -> None:
        self._act(operation, pick, fault)

    @rule(pick=st.integers(0, 5), fault=st.sampled_from(FAULTS))
    def partner_pauses(self, pick: int, fault: str | None) -> None:
        self._act("pause", pick, fault)

    @rule(pick=st.integers(0, 5), fault=st.sampled_from(FAULTS))
    def partner_resumes(self, pick: int, fault: str | None) -> None:
        self._act("resume", pick, fault)

    @rule(pick=st.integers(0, 5), fault=st.sampled_from(FAULTS),
          operation=st.sampled_from(("delete", "reject", "expire")))
    def partner_ends(self, pick: int, fault: str | None, operation: str) -> None:
        self._act(operation, pick, fault)

    @rule(pick=st.integers(0, 5), fault=st.sampled_from(FAULTS),
          operation=st.sampled_from(("crash", "crash", "recover")))
    def worker_dies_or_recovers(self, pick: int, fault: str | None, operation: str) -> None:
        self._act(operation, pick, fault)

    def _act(self, operation: str, pick: int, fault: str | None) -> None:
        mb = self._pick(pick, _WHERE[operation])
        if mb is None:
            return
        if operation == "recover" and mb.intent_trigger is None:
            mb = next((m for m in self.flow.list() if m.intent_trigger is not None), mb)
        path = {"start": "start-warmup", "resume": "resume-warmup",
                "pause": "pause-warmup"}.get(operation, "/campaigns/")
        self._fault(fault, path, mb.email)
        try:
            if operation == "crash":
                self._crash(mb)
            elif operation == "recover":
                self.flow.recover(mb.id)
            elif operation == "reject":
                self.flow.reject(mb.id, delete_remote=fault is None)
            else:
                getattr(self.flow, {"start": "start_warmup", "resume": "resume_warmup",
                                    "pause": "pause_warmup"}.get(operation, operation))(mb.id)
        except (InvalidTransition, ConcurrentUpdate, MailiveryError):
            pass
        finally:
            self.sim.faults.clear()

    def _crash(self, mb: Any) -> None:
        """A worker claims the mailbox for its next call, maybe makes it, and dies (claim expired)."""
        trigger = {State.PENDING: "start", State.PAUSED: "resume", State.WARMING: "pause"}.get(mb.state)
        if trigger is None or mb.campaign_id is None:
            return
        request_id = str(uuid.uuid4())
        claimed = self.flow.store.claim(mb, owner="dead", until=utcnow() - timedelta(seconds=1),
                                        trigger=trigger, request_id=request_id)
        if claimed is not None and mb.campaign_id % 2 and mb.intent_trigger is None:
            # on odd campaigns the call got through (a worker with an earlier intent to finish would
            # have re-read the campaign first: the flow's own path, tested by the other rules)
            self.dead_calls.add(request_id)
            call = getattr(self.flow.client, f"{trigger}_warmup")
            with suppress(MailiveryError):
                call(mb.campaign_id, request_id=request_id)

    @rule(remote=st.booleans(), fault=st.booleans())
    def reconcile(self, remote: bool, fault: bool) -> None:
        if fault:
            self.sim.faults.fail_next(4, status=500)
        try:
            self.flow.reconcile(stuck_after=timedelta(0), expire_after=timedelta(days=1),
                                remote=remote, fix=True)
        finally:
            self.sim.faults.clear()

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def nothing_warms_unless_expected_and_verified(self) -> None:
        for campaign in self.sim.campaigns():
            if campaign["id"] not in self.campaign_emails:
                self.campaign_emails[campaign["id"]] = campaign["email"].lower()
                meta = self.sim.payload("campaign.pending", campaign)["account"]["meta"] or ""
                self.campaign_tokens[campaign["id"]] = dict(parse_qsl(meta)).get(
                    "mailbox_flow_token")
        calls = list(self.sim.calls)
        for mb in self.flow.list(state=State.WARMING):
            assert mb.id in self.requested, f"{mb.email} warms but was never requested"
            assert mb.campaign_id is not None
            assert self.campaign_emails.get(mb.campaign_id) == mb.email, "campaign of another address"
            token = self.campaign_tokens.get(mb.campaign_id)
            assert token in (None, mb.correlation_token), "a campaign made with another token"
            read = next((i for i, c in enumerate(calls) if c.method == "GET" and c.status == 200
                         and c.path.endswith(f"/campaigns/{mb.campaign_id}")), None)
            assert read is not None, f"{mb.email} warms but its campaign was never read"
            warmups = (f"/campaigns/{mb.campaign_id}/start-warmup",
                       f"/campaigns/{mb.campaign_id}/resume-warmup")
            first_ok = next((i for i, c in enumerate(calls) if c.method == "PATCH"
                             and 200 <= c.status < 300 and c.path.endswith(warmups)), None)
            assert first_ok is None or read < first_ok, "warmup call before the campaign was read"

    @invariant()
    def audit_rows_chain(self) -> None:
        for mb in self.flow.list():
            trail = self.flow.history(mb.id)
            for previous, row in itertools.pairwise(trail):
                assert row.from_state is previous.to_state, (previous, row)
            if trail:
                assert trail[-1].to_state is mb.state

    @invariant()
    def versions_only_grow(self) -> None:
        for mb in self.flow.list():
            assert mb.version >= self.versions.get(mb.id, 0)
            self.versions[mb.id] = mb.version

    @invariant()
    def one_live_mailbox_per_address(self) -> None:
        live = [mb.email for mb in self.flow.list() if mb.state in ACTIVE_STATES]
        assert len(live) == len(set(live)), live

    @invariant()
    def no_warmup_call_once_mailivery_shows_it(self) -> None:
        """A new start/resume call (not a retry of the same request) never goes to a campaign that
        Mailivery already shows active: an effect is only repeated when it did not happen."""
        calls = list(self.sim.calls)
        assert len(self.faults.before) == len(calls)
        last_id: dict[str, str | None] = {}
        for (method, path, status), call in zip(self.faults.before, calls, strict=True):
            assert (method, path) == (call.method, call.path)
            if method != "PATCH" or not path.endswith(("start-warmup", "resume-warmup")):
                continue
            campaign = path.rsplit("/", 1)[0]
            retry = last_id.get(campaign) == call.request_id
            last_id[campaign] = call.request_id
            if status == "active" and not retry and call.request_id not in self.dead_calls:
                raise AssertionError(f"{method} {path} sent while Mailivery showed it active")

    @invariant()
    def one_successful_start_per_campaign(self) -> None:
        ok: dict[str, set[str | None]] = {}
        for call in self.sim.calls:
            if call.method == "PATCH" and call.path.endswith("start-warmup") and call.status < 300:
                ok.setdefault(call.path, set()).add(call.request_id)
        assert all(len(ids) == 1 for ids in ok.values()), ok


@contextmanager
def _sqlite() -> Iterator[str]:
    yield "sqlite://"


@contextmanager
def _postgres() -> Iterator[str]:
    with postgres_schema(PG_URL, prefix="mf_model", settings=TEST_PG_SETTINGS) as url:
        yield url


def _run(server: Any, database: Callable[[], Any], examples: int, steps: int,
         derandomize: bool = True) -> None:
    MailboxModel.sim = server.sim
    MailboxModel.api_url = server.api_url
    MailboxModel.database = staticmethod(database)  # type: ignore[assignment]
    run_state_machine_as_test(
        MailboxModel,
        settings=settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                          suppress_health_check=list(HealthCheck), derandomize=derandomize,
                          print_blob=True),
    )


# A failing run shrinks its example, which takes minutes: more than the suite's default timeout.
@pytest.mark.timeout(900)
def test_model_on_sqlite(_sim_server: Any) -> None:
    """The state machine on an in-memory SQLite database."""
    examples = int(os.environ.get("MAILBOX_FLOW_MODEL_EXAMPLES", "80"))
    _run(_sim_server, _sqlite, examples=examples, steps=30, derandomize=examples <= 80)


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_model_on_postgres(_sim_server: Any, postgres_url: str) -> None:
    """The same on PostgreSQL (fewer examples)."""
    assert _pg_reachable() is None
    _run(_sim_server, _postgres, examples=15, steps=30)
