"""MailboxFlow through its public API, on SQLite and PostgreSQL, against the simulator over HTTP."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest

from mailbox_flow import (
    DuplicateMailbox,
    InvalidInput,
    InvalidTransition,
    MailboxFlow,
    MailboxNotFound,
    MailiveryClient,
    Outcome,
    Source,
    State,
    WebhookAuthError,
    WebhookPayloadError,
)
from mailbox_flow.errors import MailiveryServerError
from mailbox_flow.states import TRANSITIONS, rule_for

from .helpers import API_KEY, SECRET, consent, counts, webhook_body


def connect(flow: MailboxFlow, email: str = "Ada@Contoso.com", owner: str = "user-42") -> Any:
    return flow.request_connection(owner_id=owner, email=email, first_name="Ada",
                                   last_name="Lovelace", emails_per_day=40, response_rate=30)


# -- the happy path ------------------------------------------------------------------------------


def test_request_connection_sends_oauth(flow: MailboxFlow, sim: Any) -> None:
    """request_connection records the mailbox, calls connect once and returns it in oauth_sent."""
    mb = connect(flow)
    assert mb.state is State.OAUTH_SENT
    assert mb.email == "ada@contoso.com"
    assert mb.oauth_url and "/oauth/consent/" in mb.oauth_url
    assert sim.count("POST", "/campaigns/microsoft") == 1
    assert [(e.trigger, e.from_state, e.to_state) for e in flow.history(mb.id)] == [
        ("send_oauth", State.REQUESTED, State.OAUTH_SENT)
    ]


def test_happy_path_ends_warming(flow: MailboxFlow, sim: Any) -> None:
    """request → oauth_sent → webhook → pending → warming, with one start-warmup call."""
    mb = connect(flow)
    body = consent(sim, mb)
    result = flow.handle_webhook(body, secret=SECRET)
    assert result.outcome is Outcome.STARTED
    assert result.mailbox is not None and result.mailbox.state is State.WARMING
    campaign_id = result.mailbox.campaign_id
    assert campaign_id is not None
    assert sim.campaign(campaign_id)["status_code"] == "active"
    assert sim.count("PATCH", f"/campaigns/{campaign_id}/start-warmup") == 1
    trail = flow.history(mb.id)
    assert [(e.trigger, e.to_state, e.source) for e in trail] == [
        ("send_oauth", State.OAUTH_SENT, Source.API),
        ("mark_pending", State.PENDING, Source.WEBHOOK),
        ("start", State.WARMING, Source.WEBHOOK),
    ]
    assert flow.get(mb.id).warmed_at is not None
    assert [d.status for d in flow.deliveries()] == ["processed"]


def test_audit_request_ids_are_the_ones_sent(flow: MailboxFlow, sim: Any) -> None:
    """Audit rows of calling transitions carry the X-Request-ID Mailivery received."""
    mb = connect(flow)
    flow.handle_webhook(consent(sim, mb), secret=SECRET)
    trail = {e.trigger: e.request_id for e in flow.history(mb.id)}
    sent = {path: rid for (_method, path, rid, _status) in sim.calls}
    campaign_id = flow.get(mb.id).campaign_id
    assert trail["send_oauth"] == sent["/api/v1/campaigns/microsoft"]
    assert trail["start"] == sent[f"/api/v1/campaigns/{campaign_id}/start-warmup"]
    assert trail["mark_pending"] is None
    uuid.UUID(trail["start"])


def test_duplicate_delivery_makes_one_warmup_call(flow: MailboxFlow, sim: Any) -> None:
    """The same delivery twice: the second is a duplicate and makes no call."""
    mb = connect(flow)
    body = consent(sim, mb)
    first = flow.handle_webhook(body, secret=SECRET)
    second = flow.handle_webhook(body, secret=SECRET)
    assert (first.outcome, second.outcome) == (Outcome.STARTED, Outcome.DUPLICATE)
    assert second.mailbox is not None and second.mailbox.id == mb.id
    assert sim.count("PATCH", "/start-warmup") == 1
    statuses = sorted(d.status for d in flow.deliveries())
    assert statuses == ["duplicate", "processed"]


def test_email_match_ignores_case(flow: MailboxFlow, sim: Any) -> None:
    """A webhook spelling the address in another case still matches."""
    mb = connect(flow, email="Grace.Hopper@Navy.MIL")
    body = json.loads(consent(sim, mb))
    body["account"]["email"] = "GRACE.HOPPER@navy.mil"
    result = flow.handle_webhook(json.dumps(body).encode(), secret=SECRET)
    assert result.outcome is Outcome.STARTED
    assert flow.find_by_email("grace.hopper@NAVY.mil").state is State.WARMING


def test_unexpected_mailbox_is_rejected_without_call(flow: MailboxFlow, sim: Any) -> None:
    """A campaign nobody asked for is recorded as rejected, with no warmup call."""
    campaign = sim.create_campaign(email="stranger@example.com", first_name="Eve",
                                   send_webhook=False)
    body = webhook_body(campaign["id"], "stranger@example.com")
    result = flow.handle_webhook(body, secret=SECRET)
    assert result.outcome is Outcome.REJECTED
    assert result.mailbox is not None and result.mailbox.state is State.REJECTED
    assert result.mailbox.campaign_id == campaign["id"]
    assert sim.count("PATCH", "/start-warmup") == 0
    assert [(e.trigger, e.from_state, e.to_state) for e in flow.history(result.mailbox.id)] == [
        ("reject", State.PENDING, State.REJECTED)
    ]
    assert sim.campaign(campaign["id"])["status_code"] == "pending"


def test_orphan_policy_delete_removes_the_campaign(database_url: str, client: MailiveryClient,
                                                   sim: Any) -> None:
    """With orphan_policy='delete', an unexpected campaign is deleted at Mailivery too."""
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET, orphan_policy="delete")
    flow.create_schema()
    campaign = sim.create_campaign(email="stranger@example.com", first_name="Eve",
                                   send_webhook=False)
    result = flow.handle_webhook(webhook_body(campaign["id"], "stranger@example.com"),
                                 secret=SECRET)
    assert result.outcome is Outcome.REJECTED
    assert result.mailbox is not None and result.mailbox.state is State.DELETED
    assert sim.count("DELETE", f"/campaigns/{campaign['id']}") == 1
    flow.close()


def test_wrong_correlation_token_is_rejected(flow: MailboxFlow, sim: Any) -> None:
    """A campaign for an expected address but with another correlation token is rejected."""
    mb = connect(flow)
    campaign = sim.create_campaign(email="ada@contoso.com", first_name="Ada",
                                   meta={"mailbox_flow_token": "not-the-token"},
                                   send_webhook=False)
    body = webhook_body(campaign["id"], "ada@contoso.com", meta="mailbox_flow_token=not-the-token")
    result = flow.handle_webhook(body, secret=SECRET)
    assert result.outcome is Outcome.REJECTED
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert sim.count("PATCH", "/start-warmup") == 0


def test_forged_campaign_id_makes_no_call(flow: MailboxFlow, sim: Any) -> None:
    """A payload naming a campaign Mailivery does not have starts nothing."""
    mb = connect(flow)
    body = json.loads(consent(sim, mb))
    body["account"]["campaign_id"] = 987654
    result = flow.handle_webhook(json.dumps(body).encode(), secret=SECRET)
    assert result.outcome is Outcome.REJECTED
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert sim.count("PATCH", "/start-warmup") == 0


def test_forged_orphan_cannot_claim_a_real_campaign(flow: MailboxFlow, sim: Any) -> None:
    """A forged delivery naming Ada's campaign with another email records nothing; the real one starts."""
    mb = connect(flow)
    genuine = consent(sim, mb)
    campaign_id = json.loads(genuine)["account"]["campaign_id"]
    forged = flow.handle_webhook(webhook_body(campaign_id, "mallory@example.com"), secret=SECRET)
    assert forged.outcome is Outcome.REJECTED and forged.mailbox is None
    assert flow.find_by_email("mallory@example.com") is None
    real = flow.handle_webhook(genuine, secret=SECRET)
    assert real.outcome is Outcome.STARTED
    assert sim.count("PATCH", "/start-warmup") == 1


def test_campaign_of_another_address_makes_no_call(flow: MailboxFlow, sim: Any) -> None:
    """A payload pointing at a real campaign of another address starts nothing."""
    mb = connect(flow)
    other = sim.create_campaign(email="other@example.com", first_name="O", send_webhook=False)
    body = json.loads(consent(sim, mb))
    body["account"]["campaign_id"] = other["id"]
    result = flow.handle_webhook(json.dumps(body).encode(), secret=SECRET)
    assert result.outcome is Outcome.REJECTED
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert sim.count("PATCH", "/start-warmup") == 0


def test_partner_check_can_refuse(database_url: str, client: MailiveryClient, sim: Any) -> None:
    """The partner's own expect() check refusing a match rejects the campaign."""
    seen: list[str] = []

    def expect(mailbox: Any, event: Any) -> bool:
        seen.append(mailbox.email)
        return False

    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET, expect=expect)
    flow.create_schema()
    mb = connect(flow)
    result = flow.handle_webhook(consent(sim, mb), secret=SECRET)
    assert result.outcome is Outcome.REJECTED
    assert seen == ["ada@contoso.com"]
    assert flow.get(mb.id).state is State.OAUTH_SENT
    flow.close()


# -- hostile or bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", SECRET.upper()])
def test_bad_secret_changes_nothing(flow: MailboxFlow, sim: Any, secret: str | None) -> None:
    """A missing or wrong secret raises WebhookAuthError and stores nothing."""
    mb = connect(flow)
    body = consent(sim, mb)
    before = counts(flow)
    with pytest.raises(WebhookAuthError):
        flow.handle_webhook(body, secret=secret)
    assert counts(flow) == before
    assert flow.get(mb.id).state is State.OAUTH_SENT


def test_no_configured_secret_refuses_everything(database_url: str, client: MailiveryClient
                                                 ) -> None:
    """A flow without a webhook secret refuses every delivery."""
    flow = MailboxFlow(database_url, client=client, webhook_secret="")
    flow.create_schema()
    with pytest.raises(WebhookAuthError):
        flow.handle_webhook(b"{}", secret="")
    assert flow.deliveries() == []
    flow.close()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"campaign.pending"',
        b'{"type": "campaign.pending"}',
        b'{"type": "campaign.pending", "account": {"campaign_id": "abc"}}',
        b'{"type": "campaign.pending", "account": {"campaign_id": -3}}',
        b'{"account": {"campaign_id": 5}}',
        b'{"type": 12, "account": {"campaign_id": 5}}',
    ],
)
def test_malformed_payload_is_stored_as_invalid(flow: MailboxFlow, sim: Any, body: bytes) -> None:
    """A malformed body raises WebhookPayloadError, is stored as invalid and changes no mailbox."""
    mb = connect(flow)
    with pytest.raises(WebhookPayloadError) as info:
        flow.handle_webhook(body, secret=SECRET)
    stored = flow.deliveries("invalid")
    assert [d.id for d in stored] == [info.value.delivery_id]
    assert stored[0].body == body
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert len(flow.history(mb.id)) == 1


BAD_INPUTS = [
    ("email", {"email": "not-an-email"}),
    ("email", {"email": ""}),
    ("email", {"email": "a" * 250 + "@x.com"}),
    ("first_name", {"first_name": ""}),
    ("first_name", {"first_name": "x" * 256}),
    ("last_name", {"last_name": "y" * 256}),
    ("email_per_day", {"emails_per_day": -1}),
    ("email_per_day", {"emails_per_day": 2001}),
    ("response_rate", {"response_rate": 101}),
    ("response_rate", {"response_rate": -5}),
    ("owner_id", {"owner_id": ""}),
    ("owner_id", {"owner_id": "o" * 256}),
]


@pytest.mark.parametrize(("field", "change"), BAD_INPUTS, ids=[f for f, _ in BAD_INPUTS])
def test_invalid_input_sends_and_stores_nothing(flow: MailboxFlow, sim: Any, field: str,
                                                change: dict[str, Any]) -> None:
    """Bad input raises InvalidInput naming the field, with no network call and no row."""
    kwargs: dict[str, Any] = {"owner_id": "u", "email": "ok@example.com", "first_name": "Ok",
                              "last_name": "Fine", "emails_per_day": 40, "response_rate": 30}
    kwargs.update(change)
    with pytest.raises(InvalidInput) as info:
        flow.request_connection(**kwargs)
    assert info.value.field == field
    assert sim.calls == []
    assert counts(flow) == (0, 0, 0)


def test_duplicate_mailbox_is_refused(flow: MailboxFlow, sim: Any) -> None:
    """A second request for a live address (any case) raises DuplicateMailbox."""
    first = connect(flow)
    with pytest.raises(DuplicateMailbox) as info:
        connect(flow, email="ADA@contoso.com", owner="someone-else")
    assert info.value.existing_id == first.id
    assert sim.count("POST", "/campaigns/microsoft") == 1


def test_address_is_free_again_after_expiry(flow: MailboxFlow, sim: Any) -> None:
    """Once a mailbox is terminal, the same address may be requested again."""
    first = connect(flow)
    flow.expire(first.id)
    second = connect(flow)
    assert second.id != first.id and second.state is State.OAUTH_SENT
    assert flow.find_by_email("ada@contoso.com").id == second.id


def test_unknown_mailbox_and_bad_id(flow: MailboxFlow) -> None:
    """get() of an unknown id raises MailboxNotFound; a malformed id raises InvalidInput."""
    with pytest.raises(MailboxNotFound):
        flow.get(uuid.uuid4())
    with pytest.raises(InvalidInput):
        flow.get("nope")
    assert flow.find_by_email("nobody@example.com") is None


def test_list_filters_and_limit(flow: MailboxFlow) -> None:
    """list() filters by state and owner, oldest first, at most ``limit``; bad filters are InvalidInput."""
    made = [flow.request_connection(owner_id=owner, email=f"{name}@contoso.com", first_name=name)
            for owner, name in (("u-1", "ada"), ("u-2", "bob"), ("u-1", "cy"))]
    flow.expire(made[1].id)
    assert [mb.email for mb in flow.list()] == ["ada@contoso.com", "bob@contoso.com", "cy@contoso.com"]
    assert [mb.id for mb in flow.list(owner_id="u-1", limit=1)] == [made[0].id]
    assert [mb.id for mb in flow.list("oauth_sent", "u-1")] == [made[0].id, made[2].id]
    assert [mb.id for mb in flow.list(State.EXPIRED, limit=5)] == [made[1].id]
    for bad in ({"state": "sleeping"}, {"limit": 0}, {"limit": True}, {"limit": "3"}):
        with pytest.raises(InvalidInput):
            flow.list(**bad)


def test_deliveries_by_status_and_limit(flow: MailboxFlow) -> None:
    """deliveries() lists the inbox oldest first, by status, at most ``limit``."""
    ids = [flow.accept_webhook(webhook_body(900 + i, f"n{i}@contoso.com"), SECRET).delivery_id
           for i in range(3)]
    with pytest.raises(WebhookPayloadError):
        flow.handle_webhook(b"not json", SECRET)
    assert [d.id for d in flow.deliveries("received")] == ids
    assert [d.id for d in flow.deliveries("received", limit=2)] == ids[:2]
    assert [d.status for d in flow.deliveries(limit=10)] == ["received"] * 3 + ["invalid"]
    with pytest.raises(InvalidInput, match="limit"):
        flow.deliveries(limit=0)


# -- failures of Mailivery -----------------------------------------------------------------------


def test_failing_connect_stays_requested_and_retries(flow: MailboxFlow, sim: Any) -> None:
    """A connect that keeps failing leaves the mailbox requested with the error; a retry works."""
    sim.faults.fail_next(10, status=500)
    with pytest.raises(MailiveryServerError):
        connect(flow)
    mb = flow.find_by_email("ada@contoso.com")
    assert mb is not None and mb.state is State.REQUESTED
    assert mb.attempts == 1 and mb.last_error and "MailiveryServerError" in mb.last_error
    assert flow.history(mb.id) == []
    sim.faults.clear()
    again = connect(flow)
    assert again.id == mb.id and again.state is State.OAUTH_SENT
    assert again.last_error is None and again.attempts == 0


def test_failing_warmup_stays_pending_then_reconcile_starts_it(flow: MailboxFlow, sim: Any
                                                               ) -> None:
    """A start that fails leaves the mailbox pending; a fixing reconcile starts it later."""
    mb = connect(flow)
    sim.faults.start_fails("ada@contoso.com", times=1)
    result = flow.handle_webhook(consent(sim, mb), secret=SECRET)
    assert result.outcome is Outcome.PENDING
    pending = flow.get(mb.id)
    assert pending.state is State.PENDING and pending.last_error and pending.attempts == 1
    assert flow.deliveries()[0].status == "processed"

    report = flow.reconcile(stuck_after=timedelta(0), fix=True)
    assert [(f.reason, f.action) for f in report.findings] == [("stuck_pending", "started")]
    assert flow.get(mb.id).state is State.WARMING
    assert flow.history(mb.id)[-1].source is Source.RECONCILER


def test_rate_limited_call_is_retried(flow: MailboxFlow, sim: Any) -> None:
    """A 429 with Retry-After is retried and the operation succeeds."""
    sim.faults.fail_next(1, status=429, retry_after=1)
    mb = connect(flow)
    assert mb.state is State.OAUTH_SENT
    statuses = [status for (_m, path, _r, status) in sim.calls if path.endswith("/microsoft")]
    assert statuses == [429, 200]


def test_unreachable_mailivery_defers_the_delivery(flow: MailboxFlow, sim: Any) -> None:
    """When Mailivery cannot be asked, nothing is decided; a redelivery finishes the job."""
    mb = connect(flow)
    body = consent(sim, mb)
    sim.faults.fail_next(10, status=503)
    first = flow.handle_webhook(body, secret=SECRET)
    assert first.outcome is Outcome.DEFERRED
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert flow.deliveries()[0].status == "failed"
    sim.faults.clear()
    again = flow.handle_webhook(body, secret=SECRET)
    assert again.outcome is Outcome.STARTED
    assert sim.count("PATCH", "/start-warmup") == 1


# -- pause, resume, delete, reject ---------------------------------------------------------------


def warming(flow: MailboxFlow, sim: Any) -> Any:
    mb = connect(flow)
    result = flow.handle_webhook(consent(sim, mb), secret=SECRET)
    assert result.outcome is Outcome.STARTED
    return result.mailbox


def test_pause_and_resume(flow: MailboxFlow, sim: Any) -> None:
    """pause_warmup and resume_warmup call Mailivery and move warming ↔ paused."""
    mb = warming(flow, sim)
    paused = flow.pause_warmup(mb.id)
    assert paused.state is State.PAUSED
    assert sim.campaign(mb.campaign_id)["status_code"] == "paused"
    resumed = flow.resume_warmup(mb.id)
    assert resumed.state is State.WARMING
    assert sim.campaign(mb.campaign_id)["status_code"] == "active"
    assert [e.trigger for e in flow.history(mb.id)][-2:] == ["pause", "resume"]
    assert resumed.version > paused.version > mb.version


def test_connection_problem_pauses_and_reconnect_resumes(flow: MailboxFlow, sim: Any) -> None:
    """Mailivery pausing a mailbox is followed without a call; a reconnect resumes it."""
    mb = warming(flow, sim)
    sim.connection_problem(mb.campaign_id)
    sim.wait_for_webhooks()
    problem = flow.handle_webhook(sim_last_body(sim), secret=SECRET)
    assert problem.outcome is Outcome.PAUSED
    assert sim.count("PATCH", "/pause-warmup") == 0
    assert flow.history(mb.id)[-1].detail.get("reported_by_mailivery") is True
    sim.reconnect(mb.campaign_id)
    sim.wait_for_webhooks()
    back = flow.handle_webhook(sim_last_body(sim), secret=SECRET)
    assert back.outcome is Outcome.RESUMED
    assert flow.get(mb.id).state is State.WARMING
    assert sim.campaign(mb.campaign_id)["status_code"] == "active"


def sim_last_body(sim: Any) -> bytes:
    from .helpers import last_webhook

    return last_webhook(sim)


def test_delete_calls_mailivery(flow: MailboxFlow, sim: Any) -> None:
    """delete() removes the campaign at Mailivery and ends in deleted."""
    mb = warming(flow, sim)
    gone = flow.delete(mb.id)
    assert gone.state is State.DELETED
    assert sim.count("DELETE", f"/campaigns/{mb.campaign_id}") == 1


def test_deleted_webhook_is_verified(flow: MailboxFlow, sim: Any) -> None:
    """campaign.deleted marks the mailbox deleted only when Mailivery no longer has it."""
    mb = warming(flow, sim)
    forged = webhook_body(mb.campaign_id, mb.email, type_="campaign.deleted")
    assert flow.handle_webhook(forged, secret=SECRET).outcome is Outcome.REJECTED
    assert flow.get(mb.id).state is State.WARMING
    sim.delete_campaign(mb.campaign_id)
    sim.wait_for_webhooks()
    real = flow.handle_webhook(sim_last_body(sim), secret=SECRET)
    assert real.outcome is Outcome.DELETED
    assert flow.get(mb.id).state is State.DELETED


def test_reject_with_remote_delete(flow: MailboxFlow, sim: Any) -> None:
    """reject(delete_remote=True) rejects then deletes the campaign."""
    mb = connect(flow)
    sim.faults.start_fails("ada@contoso.com", times=5)
    flow.handle_webhook(consent(sim, mb), secret=SECRET)
    assert flow.get(mb.id).state is State.PENDING
    done = flow.reject(mb.id, delete_remote=True)
    assert done.state is State.DELETED
    assert [e.trigger for e in flow.history(mb.id)][-2:] == ["reject", "delete"]


def test_invalid_transition_via_public_api_writes_nothing(flow: MailboxFlow, sim: Any) -> None:
    """start_warmup on an oauth_sent mailbox raises InvalidTransition and writes nothing."""
    mb = connect(flow)
    with pytest.raises(InvalidTransition):
        flow.start_warmup(mb.id)
    assert flow.get(mb.id).version == mb.version
    assert len(flow.history(mb.id)) == 1
    assert sim.count("PATCH", "/start-warmup") == 0


# -- the whole table through the database --------------------------------------------------------

TRIGGERS = sorted({r.trigger for r in TRANSITIONS})
PAIRS = [(t, s) for t in TRIGGERS for s in State]


@pytest.mark.parametrize(("trigger", "state"), PAIRS, ids=[f"{t}-{s.value}" for t, s in PAIRS])
def test_every_trigger_from_every_state(flow: MailboxFlow, sim: Any, trigger: str,
                                        state: State) -> None:
    """Allowed: the state moves and one audit row is written. Otherwise: InvalidTransition, nothing."""
    remote = {State.WARMING: "active", State.PAUSED: "paused"}.get(state, "pending")
    campaign = sim.create_campaign(email="t@example.com", first_name="T", status=remote,
                                   send_webhook=False)
    mb = flow.store.insert_mailbox({
        "owner_id": "u", "email": "t@example.com", "first_name": "T", "state": state.value,
        "campaign_id": campaign["id"], "correlation_token": "tok", "emails_per_day": 40,
        "response_rate": 30, "warmed_at": None,
    })
    kwargs: dict[str, Any] = {}
    if trigger == "send_oauth":  # request_connection's connect call needs its token: a stand-in
        kwargs = {"call": lambda rid: type("R", (), {"url": "https://x.test/o"})(),
                  "values_from_result": lambda r: {"oauth_url": r.url}}
    rule = rule_for(trigger, state)
    if rule is not None and rule.condition is None:
        after = flow._apply(mb, trigger, source=Source.CLI, **kwargs)
        assert after.state is rule.dest
        assert after.version > mb.version
        trail = flow.history(mb.id)
        assert [(e.trigger, e.from_state, e.to_state, e.source) for e in trail] == [
            (trigger, state, rule.dest, Source.CLI)
        ]
    else:
        with pytest.raises(InvalidTransition):
            flow._apply(mb, trigger, source=Source.CLI, **kwargs)
        assert flow.history(mb.id) == []
        assert flow.get(mb.id).version == mb.version


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_duplicate_deliveries_start_once(postgres_url: str, api_url: str,
                                                    sim: Any) -> None:
    """8 flows receiving the same delivery at once: one warmup call, one audit row into warming."""
    flows = [
        MailboxFlow(postgres_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                    webhook_secret=SECRET)
        for _ in range(8)
    ]
    flows[0].create_schema()
    mb = connect(flows[0])
    body = consent(sim, mb)
    barrier = threading.Barrier(len(flows))
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def deliver(flow: MailboxFlow) -> None:
        barrier.wait()
        try:
            outcomes.append(flow.handle_webhook(body, secret=SECRET).outcome)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(f,)) for f in flows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(outcomes) == sorted([Outcome.STARTED] + [Outcome.DUPLICATE] * 7)
    assert sim.count("PATCH", "/start-warmup") == 1
    into_warming = [e for e in flows[0].history(mb.id) if e.to_state is State.WARMING]
    assert len(into_warming) == 1
    assert len(flows[0].deliveries()) == 8
    for f in flows:
        f.close()


def test_concurrent_starts_call_once(flow: MailboxFlow, database_url: str, api_url: str,
                                     sim: Any) -> None:
    """Two workers starting the same pending mailbox: one call, the other gets ConcurrentUpdate."""
    from mailbox_flow import ConcurrentUpdate

    refused = (ConcurrentUpdate, InvalidTransition)
    mb = connect(flow)
    sim.faults.start_fails("ada@contoso.com", times=1)
    flow.handle_webhook(consent(sim, mb), secret=SECRET)
    sim.faults.latency(0.3)
    other = MailboxFlow(database_url, client=MailiveryClient(API_KEY, api_url, rate_per_second=0),
                        webhook_secret=SECRET)
    results: list[Any] = []

    def start(f: MailboxFlow) -> None:
        try:
            results.append(f.start_warmup(mb.id).state)
        except refused as exc:
            results.append(exc)

    threads = [threading.Thread(target=start, args=(f,)) for f in (flow, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sim.faults.latency(0)
    assert sum(1 for r in results if r is State.WARMING) == 1
    assert sum(1 for r in results if isinstance(r, refused)) == 1
    assert sim.count("PATCH", "/start-warmup") == 2  # the failed first try, then exactly one more
    other.close()


def test_missing_schema_says_what_to_run(database_url: str, client: MailiveryClient) -> None:
    """Using a database without our tables raises StorageError naming `mailbox-flow db upgrade`."""
    from mailbox_flow import StorageError

    with (MailboxFlow(database_url, client=client, webhook_secret=SECRET) as fresh,
          pytest.raises(StorageError, match="db upgrade")):
        fresh.find_by_email("ada@contoso.com")


def test_pure_transitions_by_id(flow: MailboxFlow, sim: Any) -> None:
    """expire/reject by id: unknown id, wrong state and a held mailbox each raise their typed error."""
    from datetime import UTC, datetime

    from mailbox_flow import ConcurrentUpdate

    with pytest.raises(MailboxNotFound):
        flow.expire(uuid.uuid4())
    with pytest.raises(InvalidInput):
        flow.reject("not-an-id")
    mb = connect(flow)
    with pytest.raises(InvalidTransition):
        flow.reject(mb.id)
    assert flow.get(mb.id).version == mb.version and len(flow.history(mb.id)) == 1
    held = flow.store.claim(mb, owner="other-worker", until=datetime.now(UTC) + timedelta(minutes=1),
                            trigger="send_oauth", request_id="r-1")
    assert held is not None
    with pytest.raises(ConcurrentUpdate):
        flow.expire(mb.id)
    assert flow.get(mb.id).state is State.OAUTH_SENT and len(flow.history(mb.id)) == 1


def test_webhook_round_trips_to_the_database(flow: MailboxFlow, sim: Any) -> None:
    """A new delivery: store it, find its mailbox (by campaign or address, one read), mark it pending while
    taking the lease for the warmup call, commit warming and finish the delivery together. A
    duplicate: read the original with its mailbox, store it as such. (Counted through a cursor
    listener, so on SQLite a write transaction shows its BEGIN IMMEDIATE and the audit INSERT as
    statements of their own.)
    """
    import sqlalchemy as sa

    mb = connect(flow)
    body = consent(sim, mb)
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()[:3]))

    sa.event.listen(flow.store.engine, "before_cursor_execute", listener)
    try:
        assert flow.handle_webhook(body, secret=SECRET).outcome is Outcome.STARTED
        new, seen[:] = list(seen), []
        again = flow.handle_webhook(body, secret=SECRET)
        duplicate = list(seen)
    finally:
        sa.event.remove(flow.store.engine, "before_cursor_execute", listener)
    assert again.outcome is Outcome.DUPLICATE and again.mailbox == flow.get(mb.id)
    assert again.mailbox is not None and again.mailbox.state is State.WARMING
    sqlite = flow.store.dialect == "sqlite"
    transition = (["BEGIN IMMEDIATE", "UPDATE mailbox SET", "INSERT INTO mailbox_transition"]
                  if sqlite else ["WITH moved AS"])
    # the warmup's transition finishes the delivery in the same write (one statement on PostgreSQL)
    finishing = [*transition, "UPDATE webhook_delivery SET"] if sqlite else transition
    assert new == [
        "INSERT INTO webhook_delivery", "SELECT mailbox.id, mailbox.owner_id,", *transition, *finishing,
    ]
    assert duplicate == [
        "INSERT INTO webhook_delivery", "SELECT webhook_delivery.id, webhook_delivery.received_at,",
        "INSERT INTO webhook_delivery",
    ]
