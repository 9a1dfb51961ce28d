"""Hardening (issue 14): forged consent copies, the reconciler's actions and thresholds, durations.

Storage tests run on SQLite and PostgreSQL (the ``flow`` / ``database_url`` fixtures) against the
simulator over HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from mailbox_flow import InvalidInput, MailboxFlow, MailiveryClient, Outcome, Source, State
from mailbox_flow.errors import MailiveryError
from mailbox_flow.mailivery import Campaign
from mailbox_flow.reconcile import Action, Reason, ReconcileReport, reconcile

from .helpers import API_KEY, SECRET, consent

HOUR = timedelta(hours=1)


def connect(flow: MailboxFlow, email: str = "ada@contoso.com") -> Any:
    return flow.request_connection(owner_id="user-42", email=email, first_name="Ada",
                                   last_name="Lovelace")


def forged_copy(body: bytes, *, meta: Any = "mailbox_flow_token=forged-token-123",
                **account: Any) -> bytes:
    """The genuine delivery with another ``meta`` (and any other account fields changed)."""
    document = json.loads(body)
    document["account"]["meta"] = meta
    document["account"].update(account)
    return json.dumps(document).encode()


def campaign_of(body: bytes) -> int:
    return int(json.loads(body)["account"]["campaign_id"])


def pairs(report: ReconcileReport) -> list[tuple[str, str]]:
    return [(f.reason.value, f.action.value) for f in report.findings]


def make_flow(database_url: str, client: MailiveryClient, **kwargs: Any) -> MailboxFlow:
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET, **kwargs)
    flow.create_schema()
    return flow


class MetaShowingClient(MailiveryClient):
    """A Mailivery whose ``GET /campaigns/{id}`` also shows the campaign's ``meta`` (the query string
    its webhooks carry): the real API does not document it, so the flow must work with and without."""

    def __init__(self, sim: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim

    def get_campaign(self, campaign_id: int, **kwargs: Any) -> Campaign:
        campaign = super().get_campaign(campaign_id, **kwargs)
        meta = self.sim.payload("campaign.pending", self.sim.campaign(campaign_id))["account"]["meta"]
        return dataclasses.replace(campaign, raw={**campaign.raw, "meta": meta})


@pytest.fixture
def meta_client(api_url: str, sim: Any) -> Iterator[MailiveryClient]:
    with MetaShowingClient(sim, API_KEY, api_url, rate_per_second=0, timeout=5.0) as c:
        yield c


# -- 1. a forged copy of a consent webhook neither blocks nor steals ------------------------------


@pytest.mark.parametrize("policy", ["keep", "delete"])
def test_forged_copy_before_the_genuine_delivery_does_not_block_it(
        database_url: str, client: MailiveryClient, sim: Any, policy: str) -> None:
    """A wrong-token copy delivered first is rejected (no remote DELETE, whatever the orphan policy);
    the genuine delivery then starts the mailbox, and the audit rows say the record gave way."""
    flow = make_flow(database_url, client, orphan_policy=policy)
    mb = connect(flow)
    genuine = consent(sim, mb)
    cid = campaign_of(genuine)
    forged = flow.handle_webhook(forged_copy(genuine), secret=SECRET)
    assert forged.outcome is Outcome.REJECTED
    assert sim.count("DELETE") == 0 and sim.campaign(cid)["status_code"] == "pending"
    assert flow.get(mb.id).state is State.OAUTH_SENT

    real = flow.handle_webhook(genuine, secret=SECRET)
    assert real.outcome is Outcome.STARTED, real.detail
    assert real.mailbox is not None and real.mailbox.id == mb.id
    assert real.mailbox.state is State.WARMING and real.mailbox.campaign_id == cid
    assert sim.count("PATCH", f"/campaigns/{cid}/start-warmup") == 1
    assert sim.count("DELETE") == 0
    assert flow.store.get_by_campaign(cid).id == mb.id  # type: ignore[union-attr]
    # the rejected record of the forgery gave the campaign up, audited on both sides
    records = [m for m in flow.list(state=State.REJECTED) if m.email == mb.email]
    assert len(records) == 1 and records[0].campaign_id is None
    release = flow.history(records[0].id)[-1]
    assert (release.trigger, release.from_state, release.to_state, release.source) == (
        "release_campaign", State.REJECTED, State.REJECTED, Source.WEBHOOK)
    assert release.detail["campaign_id"] == cid
    assert release.detail["to_mailbox_id"] == str(mb.id)
    marked = next(e for e in flow.history(mb.id) if e.trigger == "mark_pending")
    assert marked.detail["taken_from_mailbox_id"] == str(records[0].id)
    assert [d.status for d in flow.deliveries()] == ["rejected", "processed"]
    # nothing left for the reconciler
    assert flow.reconcile(stuck_after=timedelta(0), remote=True, fix=True).clean
    flow.close()


@pytest.mark.parametrize("policy", ["keep", "delete"])
def test_forged_copy_after_the_start_changes_nothing(
        database_url: str, client: MailiveryClient, sim: Any, policy: str) -> None:
    """The reverse order: the mailbox started; a wrong-token copy afterwards records, moves and
    deletes nothing."""
    flow = make_flow(database_url, client, orphan_policy=policy)
    mb = connect(flow)
    genuine = consent(sim, mb)
    assert flow.handle_webhook(genuine, secret=SECRET).outcome is Outcome.STARTED
    trail = flow.history(mb.id)
    mailboxes = flow.store.count("mailbox")
    late = flow.handle_webhook(forged_copy(genuine), secret=SECRET)
    assert late.outcome is Outcome.IGNORED
    assert flow.get(mb.id).state is State.WARMING and flow.history(mb.id) == trail
    assert flow.store.count("mailbox") == mailboxes
    assert sim.count("DELETE") == 0 and sim.count("PATCH", "/start-warmup") == 1
    flow.close()


def test_copy_without_a_token_cannot_take_the_campaign_from_the_record(flow: MailboxFlow,
                                                                        sim: Any) -> None:
    """Once a refused delivery's record holds the campaign, only a delivery carrying the waiting
    mailbox's own token (or Mailivery's own word) proves the match: a copy without one is ignored."""
    mb = connect(flow)
    genuine = consent(sim, mb)
    flow.handle_webhook(forged_copy(genuine), secret=SECRET)
    bare = flow.handle_webhook(forged_copy(genuine, meta=""), secret=SECRET)
    assert bare.outcome is Outcome.IGNORED
    assert flow.get(mb.id).state is State.OAUTH_SENT and sim.count("PATCH") == 0
    assert flow.handle_webhook(genuine, secret=SECRET).outcome is Outcome.STARTED


def test_forgery_refused_by_the_partner_check_does_not_block(
        database_url: str, client: MailiveryClient, sim: Any) -> None:
    """A copy the partner's check refuses (here: another first name) neither blocks the genuine
    delivery nor deletes the campaign (orphan_policy='delete')."""
    def expect(mailbox: Any, event: Any) -> bool:
        return bool(event.first_name == "Ada")

    flow = make_flow(database_url, client, orphan_policy="delete", expect=expect)
    mb = connect(flow)
    genuine = consent(sim, mb)
    token = flow.get(mb.id).correlation_token
    copy = forged_copy(genuine, meta=f"mailbox_flow_token={token}", first_name="Mallory")
    assert flow.handle_webhook(copy, secret=SECRET).outcome is Outcome.REJECTED
    assert sim.count("DELETE") == 0
    assert flow.handle_webhook(genuine, secret=SECRET).outcome is Outcome.STARTED
    assert flow.get(mb.id).state is State.WARMING
    flow.close()


def test_genuine_delivery_never_comes_remote_reconcile_reports_the_waiting_mailbox(
        flow: MailboxFlow, sim: Any) -> None:
    """Only the forgery arrived: the remote reconcile reports the mailbox that waits for the campaign
    (Mailivery does not show the campaign's token here, so a person decides); nothing is called."""
    mb = connect(flow)
    genuine = consent(sim, mb)
    cid = campaign_of(genuine)
    flow.handle_webhook(forged_copy(genuine), secret=SECRET)
    for fix in (False, True):
        report = flow.reconcile(stuck_after=timedelta(0), remote=True, fix=fix)
        assert pairs(report) == [("lost_webhook", "flagged")], report.to_dict()
        finding = report.findings[0]
        assert (finding.mailbox_id, finding.campaign_id) == (mb.id, cid)
        assert not report.clean and report.exit_code == 1
        assert "rejected" in (finding.detail or "")
        assert finding.recommended == ("investigate" if fix else "link_and_start")
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert sim.count("PATCH") == 0 and sim.count("DELETE") == 0


def consent_body(sim: Any, campaign_id: int) -> bytes:
    """The body of the webhook the simulator sent for this campaign."""
    sim.wait_for_webhooks()
    for body, *_rest in reversed(sim.webhooks_sent):
        if campaign_of(bytes(body)) == campaign_id:
            return bytes(body)
    raise AssertionError(f"no webhook for campaign {campaign_id}")


def test_remote_reconcile_heals_from_the_token_mailivery_shows(
        database_url: str, client: MailiveryClient, meta_client: MailiveryClient, sim: Any) -> None:
    """The forgery's record holds the campaign and the genuine delivery never came: a Mailivery that
    shows the campaign's meta proves whose it is, so the fixing run hands it over and starts it."""
    flow = make_flow(database_url, client)
    mb = connect(flow)
    genuine = consent(sim, mb)
    cid = campaign_of(genuine)
    flow.handle_webhook(forged_copy(genuine), secret=SECRET)
    healer = make_flow(database_url, meta_client)
    report = healer.reconcile(stuck_after=timedelta(0), remote=True, fix=True)
    assert pairs(report) == [("lost_webhook", "started")], report.to_dict()
    assert report.clean
    now = healer.get(mb.id)
    assert now.state is State.WARMING and now.campaign_id == cid
    assert sim.count("PATCH", f"/campaigns/{cid}/start-warmup") == 1 and sim.count("DELETE") == 0
    record = next(m for m in healer.list(state=State.REJECTED) if m.email == mb.email)
    release = healer.history(record.id)[-1]
    assert (release.trigger, release.source) == ("release_campaign", Source.RECONCILER)
    assert release.detail["proof"] == "campaign_meta"
    # the genuine delivery arriving late changes nothing more
    assert healer.handle_webhook(genuine, secret=SECRET).outcome is Outcome.IGNORED
    assert sim.count("PATCH", "/start-warmup") == 1
    assert healer.reconcile(stuck_after=timedelta(0), remote=True, fix=True).findings == []
    flow.close()
    healer.close()


def test_forgery_is_not_recorded_when_mailivery_shows_our_token(
        database_url: str, meta_client: MailiveryClient, sim: Any) -> None:
    """With Mailivery's word that the campaign carries the waiting mailbox's token, the wrong-token
    copy is refused without any record; the genuine delivery starts the mailbox."""
    flow = make_flow(database_url, meta_client, orphan_policy="delete")
    mb = connect(flow)
    genuine = consent(sim, mb)
    mailboxes = flow.store.count("mailbox")
    forged = flow.handle_webhook(forged_copy(genuine), secret=SECRET)
    assert forged.outcome is Outcome.REJECTED and forged.mailbox is None
    assert "forged" in (forged.detail or "")
    assert flow.store.count("mailbox") == mailboxes and sim.count("DELETE") == 0
    assert flow.handle_webhook(genuine, secret=SECRET).outcome is Outcome.STARTED
    flow.close()


def test_campaign_made_with_another_token_is_never_linked(
        database_url: str, meta_client: MailiveryClient, sim: Any) -> None:
    """A campaign for the address we wait on, made with another token (Mailivery shows it): its
    webhook is rejected, and the remote reconcile neither links nor deletes it (the report-only run
    names it; the fixing run re-reads it, sees the record is right, and leaves it)."""
    flow = make_flow(database_url, meta_client, orphan_policy="delete")
    mb = connect(flow)
    other = sim.create_campaign(email=mb.email, first_name="Ada",
                                meta={"mailbox_flow_token": "someone-elses-token"})
    delivered = flow.handle_webhook(consent_body(sim, other["id"]), secret=SECRET)
    assert delivered.outcome is Outcome.REJECTED and delivered.mailbox is not None
    assert delivered.mailbox.campaign_id == other["id"]
    report = flow.reconcile(stuck_after=timedelta(0), remote=True)
    assert pairs(report) == [("lost_webhook", "flagged")], report.to_dict()
    assert flow.reconcile(stuck_after=timedelta(0), remote=True, fix=True).findings == []
    assert flow.get(mb.id).state is State.OAUTH_SENT and flow.get(mb.id).campaign_id is None
    assert flow.store.get_by_campaign(other["id"]).id == delivered.mailbox.id  # type: ignore[union-attr]
    assert sim.count("PATCH") == 0 and sim.count("DELETE") == 0
    flow.close()


def test_lost_webhook_of_a_campaign_with_another_token_is_not_linked(
        database_url: str, meta_client: MailiveryClient, sim: Any) -> None:
    """No delivery at all, and Mailivery shows another token on the address's campaign: the lost
    webhook heal does not take it for the waiting mailbox."""
    flow = make_flow(database_url, meta_client)
    mb = connect(flow)
    sim.create_campaign(email=mb.email, first_name="Ada",
                        meta={"mailbox_flow_token": "someone-elses-token"}, send_webhook=False)
    report = flow.reconcile(stuck_after=timedelta(0), remote=True, fix=True)
    assert pairs(report) == [("lost_webhook", "flagged")], report.to_dict()
    assert report.findings[0].recommended == "investigate"
    assert "another correlation token" in (report.findings[0].detail or "")
    assert flow.get(mb.id).state is State.OAUTH_SENT and sim.count("PATCH") == 0
    flow.close()


# -- 2. the reconciler's action for what it starts; when an intent is stale -----------------------


def pending_after_failed_start(flow: MailboxFlow, sim: Any, email: str = "ada@contoso.com") -> Any:
    """A mailbox whose webhook matched and whose start-warmup failed (503 after the retries)."""
    mb = connect(flow, email)
    body = consent(sim, mb)
    sim.faults.fail_next(10, status=503, path_contains="start-warmup")
    result = flow.handle_webhook(body, secret=SECRET)
    sim.faults.clear()
    assert result.outcome is Outcome.PENDING
    now = flow.get(mb.id)
    assert now.state is State.PENDING and now.intent_trigger == "start"
    return now


def test_failed_start_seconds_ago_is_not_a_stale_intent(flow: MailboxFlow, sim: Any) -> None:
    """A start that failed seconds ago is neither stale nor stuck for reconcile(stuck_after=1h)."""
    pending_after_failed_start(flow, sim)
    before = len(sim.calls)
    for fix in (False, True):
        report = flow.reconcile(stuck_after=HOUR, fix=fix)
        assert report.findings == [] and report.clean, report.to_dict()
    assert len(sim.calls) == before


def test_reconciler_reports_started_for_a_stuck_mailbox_it_starts(flow: MailboxFlow,
                                                                  sim: Any) -> None:
    """Past the threshold, the fixing run re-reads and starts it: action ``started`` (also in the
    JSON report), not ``retried``."""
    mb = pending_after_failed_start(flow, sim)
    before = sim.count("PATCH", f"/campaigns/{mb.campaign_id}/start-warmup")
    report = flow.reconcile(stuck_after=timedelta(0), fix=True)
    assert pairs(report) == [("stale_intent", "started")]
    assert report.findings[0].state_after is State.WARMING and report.clean
    document = report.to_dict()
    assert document["findings"][0]["action"] == "started"
    assert document["actions"]["started"] == 1 and document["actions"]["retried"] == 0
    assert flow.get(mb.id).state is State.WARMING
    assert sim.count("PATCH", f"/campaigns/{mb.campaign_id}/start-warmup") == before + 1


def test_reconciler_reports_resumed_for_an_interrupted_resume(flow: MailboxFlow, sim: Any) -> None:
    """An interrupted resume made again by the reconciler is reported ``resumed``."""
    mb = connect(flow)
    flow.handle_webhook(consent(sim, mb), secret=SECRET)
    flow.pause_warmup(mb.id)
    sim.faults.fail_next(10, status=503, path_contains="resume-warmup")
    with pytest.raises(MailiveryError):
        flow.resume_warmup(mb.id)
    sim.faults.clear()
    assert flow.reconcile(stuck_after=HOUR, fix=True).findings == []
    report = flow.reconcile(stuck_after=timedelta(0), fix=True)
    assert pairs(report) == [("stale_intent", "resumed")]
    assert flow.get(mb.id).state is State.WARMING


def test_action_values_are_documented() -> None:
    """Every `Action` value is in the reconcile operations page."""
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "operations" / "reconcile.md").read_text()
    for action in Action:
        assert f"`{action.value}`" in page, action
    for reason in Reason:
        assert f"`{reason.value}`" in page, reason


# -- 3. reconcile's durations: seconds or timedelta, anything else InvalidInput --------------------


def test_reconcile_accepts_seconds(flow: MailboxFlow, sim: Any) -> None:
    """``stuck_after=0`` (an int, as the demo prints) and float seconds work like timedeltas."""
    pending_after_failed_start(flow, sim)
    report = flow.reconcile(stuck_after=0, expire_after=7 * 86400.0)
    assert report.stuck_after == timedelta(0) and report.expire_after == timedelta(days=7)
    assert pairs(report) == [("stale_intent", "flagged")]
    assert report.to_dict()["stuck_after_seconds"] == 0
    module = reconcile(flow, stuck_after=3600, expire_after=timedelta(days=1))
    assert module.stuck_after == HOUR and module.findings == []
    assert flow.reconcile(stuck_after=1.5).stuck_after == timedelta(seconds=1.5)


BAD_DURATIONS = {
    "negative_int": -1, "negative_float": -0.5, "huge_negative": -(10**30), "true": True,
    "false": False, "text": "1h", "digits": "3600", "nan": math.nan, "inf": math.inf,
    "minus_inf": -math.inf, "negative_timedelta": timedelta(seconds=-1), "huge_int": 10**30,
    "huge_float": 1e300, "timedelta_max": timedelta.max, "timedelta_min": timedelta.min,
    "list": [], "object": object(),
}


@pytest.fixture
def offline_flow(tmp_path: Any, client: MailiveryClient) -> Iterator[MailboxFlow]:
    """A flow whose arguments are checked before the database is ever used (SQLite is enough)."""
    flow = make_flow(f"sqlite:///{tmp_path / 'f.db'}", client)
    yield flow
    flow.close()


@pytest.mark.parametrize("name", ["stuck_after", "expire_after"])
@pytest.mark.parametrize("value", list(BAD_DURATIONS.values()), ids=list(BAD_DURATIONS))
def test_reconcile_refuses_bad_durations(offline_flow: MailboxFlow, sim: Any, name: str,
                                         value: Any) -> None:
    """Negative, non-finite, boolean, textual or absurdly large durations: `InvalidInput` naming the
    argument, from both entry points, before anything is read or called."""
    with pytest.raises(InvalidInput) as raised:
        offline_flow.reconcile(**{name: value}, remote=True, fix=True)
    assert raised.value.field == name
    arguments = {"stuck_after": HOUR, "expire_after": HOUR, name: value}
    with pytest.raises(InvalidInput) as raised:
        reconcile(offline_flow, **arguments, remote=True, fix=True)
    assert raised.value.field == name
    assert sim.calls == []


def test_module_reconcile_needs_its_durations(offline_flow: MailboxFlow) -> None:
    """The module function has no defaults to fall back to: None is refused, naming the argument."""
    with pytest.raises(InvalidInput) as raised:
        reconcile(offline_flow, stuck_after=None, expire_after=HOUR)  # type: ignore[arg-type]
    assert raised.value.field == "stuck_after"
