"""The reconciler: every finding, with and without fix, idempotence, concurrency and streaming.

Storage tests run on SQLite and PostgreSQL (the ``flow`` fixture); Mailivery is the simulator, and its
call log (``sim.calls``) says exactly which calls a run made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mailbox_flow import ConfigurationError, MailboxFlow, MailiveryClient, Source, State
from mailbox_flow.models import MailboxRow, utcnow
from mailbox_flow.reconcile import OPEN_ACTIONS, Action, Finding, Reason, ReconcileReport, reconcile
from mailbox_flow.types import Mailbox

from .helpers import API_KEY, SECRET, consent

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)


def make(flow: MailboxFlow, sim: Any, state: State, email: str, *, remote: str | None = "pending",
         age: timedelta = 2 * HOUR, warmed: bool = False, campaign_id: int | None = None,
         remote_email: str | None = None) -> Mailbox:
    """A mailbox stored directly in ``state`` (changed ``age`` ago), with its campaign at the simulator."""
    if remote is not None:
        campaign = sim.create_campaign(email=remote_email or email, first_name="T", status=remote,
                                       send_webhook=False)
        campaign_id = campaign["id"]
    at = utcnow() - age
    return flow.store.insert_mailbox({
        "owner_id": "owner-1", "email": email, "first_name": "T", "last_name": "L",
        "emails_per_day": 40, "response_rate": 30, "state": state.value,
        "campaign_id": campaign_id, "correlation_token": "tok", "state_changed_at": at,
        "warmed_at": at if warmed else None,
    })


def calls(sim: Any, since: int = 0) -> list[tuple[str, str]]:
    """The API calls the simulator answered (method, path without /api/v1), from index ``since``."""
    return [(c.method, c.path.removeprefix("/api/v1")) for c in sim.calls[since:]]


def pairs(report: ReconcileReport) -> list[tuple[str, str]]:
    return [(f.reason.value, f.action.value) for f in report.findings]


def die_mid_call(flow: MailboxFlow, mailbox: Mailbox, trigger: str) -> str:
    """Leave ``mailbox`` as a worker that died during ``trigger``'s call two hours ago would: intent
    set (older than the default ``stuck_after``), lease expired."""
    request_id = str(uuid.uuid4())
    claimed = flow.store.claim(mailbox, owner="dead-worker", until=utcnow() - timedelta(seconds=1),
                               trigger=trigger, request_id=request_id)
    assert claimed is not None
    table = MailboxRow.__table__
    with flow.store.engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.id == mailbox.id)
                     .values(intent_at=utcnow() - 2 * HOUR))
    return request_id


# -- stuck_pending -----------------------------------------------------------------------------------


def test_stuck_pending_is_flagged_without_fix(flow: MailboxFlow, sim: Any) -> None:
    """Without fix a stuck mailbox is reported and flagged; nothing moves and nothing is called."""
    mb = make(flow, sim, State.PENDING, "stuck@example.com")
    report = flow.reconcile(stuck_after=HOUR)
    assert pairs(report) == [("stuck_pending", "flagged")]
    finding = report.findings[0]
    assert (finding.mailbox_id, finding.email, finding.state) == (mb.id, mb.email, State.PENDING)
    assert finding.age >= 2 * HOUR - timedelta(minutes=1)
    assert finding.recommended == "verify_and_start" and finding.open
    assert calls(sim) == []
    after = flow.get(mb.id)
    assert after.state is State.PENDING and after.flag_reason == "stuck_pending"
    assert after.version == mb.version
    assert report.exit_code == 1


def test_young_pending_is_not_stuck(flow: MailboxFlow, sim: Any) -> None:
    """A mailbox pending for less than stuck_after is not reported."""
    make(flow, sim, State.PENDING, "young@example.com", age=timedelta(minutes=10))
    report = flow.reconcile(stuck_after=HOUR, fix=True)
    assert report.findings == [] and report.clean and report.exit_code == 0
    assert calls(sim) == []


def test_stuck_pending_fix_reverifies_then_starts(flow: MailboxFlow, sim: Any) -> None:
    """A fixing run re-reads the campaign, then calls start-warmup once → warming, audited."""
    mb = make(flow, sim, State.PENDING, "stuck@example.com")
    report = flow.reconcile(stuck_after=HOUR, fix=True)
    assert pairs(report) == [("stuck_pending", "started")]
    assert report.findings[0].state_after is State.WARMING
    assert report.findings[0].recommended is None and report.clean
    cid = mb.campaign_id
    assert calls(sim) == [("GET", f"/campaigns/{cid}"), ("PATCH", f"/campaigns/{cid}/start-warmup")]
    trail = flow.history(mb.id)
    assert [(e.trigger, e.from_state, e.to_state, e.source) for e in trail] == [
        ("start", State.PENDING, State.WARMING, Source.RECONCILER)]
    assert trail[0].request_id == sim.calls[-1].request_id


@pytest.mark.parametrize(
    ("remote", "warmed", "action", "call"),
    [
        ("active", False, "completed", None),
        ("paused", True, "resumed", "resume-warmup"),
        ("pending", True, "resumed", "resume-warmup"),
    ],
)
def test_stuck_pending_follows_the_campaign_status(flow: MailboxFlow, sim: Any, remote: str,
                                                   warmed: bool, action: str, call: str | None) -> None:
    """Already active at Mailivery: recorded without a call; paused or warmed before: resumed."""
    mb = make(flow, sim, State.PENDING, "s@example.com", remote=remote, warmed=warmed)
    report = flow.reconcile(stuck_after=HOUR, fix=True)
    assert pairs(report) == [("stuck_pending", action)]
    expected = [("GET", f"/campaigns/{mb.campaign_id}")]
    if call:
        expected.append(("PATCH", f"/campaigns/{mb.campaign_id}/{call}"))
    assert calls(sim) == expected
    assert flow.get(mb.id).state is State.WARMING


def test_stuck_pending_without_campaign_at_mailivery_is_deleted(flow: MailboxFlow, sim: Any) -> None:
    """A 404 is an answer: the mailbox is marked deleted, without a DELETE call."""
    mb = make(flow, sim, State.PENDING, "gone@example.com", remote=None, campaign_id=4242)
    report = flow.reconcile(stuck_after=HOUR, fix=True)
    assert pairs(report) == [("stuck_pending", "deleted")]
    assert calls(sim) == [("GET", "/campaigns/4242")]
    assert flow.get(mb.id).state is State.DELETED
    assert flow.history(mb.id)[-1].detail["reported_by_mailivery"] is True


def test_refused_start_stays_open(flow: MailboxFlow, sim: Any) -> None:
    """A start Mailivery refuses leaves the mailbox pending and the finding open (failed)."""
    mb = make(flow, sim, State.PENDING, "refused@example.com")
    sim.faults.start_fails("refused@example.com", times=1)
    report = flow.reconcile(stuck_after=HOUR, fix=True)
    assert pairs(report) == [("stuck_pending", "failed")]
    assert report.findings[0].recommended == "verify_and_start"
    assert "CONNECTION_CHECK_FAILED" in (report.findings[0].detail or "")
    assert report.exit_code == 1 and not report.errors
    after = flow.get(mb.id)
    assert after.state is State.PENDING and after.flag_reason == "stuck_pending"
    again = flow.reconcile(stuck_after=HOUR, fix=True)
    assert pairs(again) == [("stuck_pending", "started")]


# -- abandoned_oauth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fix", [False, True])
def test_abandoned_oauth(flow: MailboxFlow, sim: Any, fix: bool) -> None:
    """requested/oauth_sent older than expire_after: flagged, or expired by a fix (no call)."""
    old = [make(flow, sim, s, f"{s.value}@example.com", remote=None, age=8 * timedelta(days=1))
           for s in (State.REQUESTED, State.OAUTH_SENT)]
    make(flow, sim, State.OAUTH_SENT, "recent@example.com", remote=None, age=timedelta(days=1))
    report = flow.reconcile(expire_after=WEEK, fix=fix)
    action = "expired" if fix else "flagged"
    assert pairs(report) == [("abandoned_oauth", action)] * 2
    assert [f.mailbox_id for f in report.findings] == [m.id for m in old]
    assert calls(sim) == []
    expected = State.EXPIRED if fix else None
    for mb, finding in zip(old, report.findings, strict=True):
        assert finding.state_after is expected
        assert flow.get(mb.id).state is (State.EXPIRED if fix else mb.state)


# -- unprocessed_delivery ----------------------------------------------------------------------------


@pytest.mark.parametrize("fix", [False, True])
def test_unprocessed_delivery(flow: MailboxFlow, sim: Any, fix: bool) -> None:
    """A delivery deferred while Mailivery was down: reported, or processed again by a fix."""
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    body = consent(sim, mb)
    sim.faults.fail_next(10, status=503)
    assert flow.handle_webhook(body, secret=SECRET).outcome.value == "deferred"
    sim.faults.clear()
    delivery = flow.deliveries("failed")[0]
    start = len(sim.calls)
    report = flow.reconcile(fix=fix)
    assert pairs(report) == [("unprocessed_delivery", "reprocessed" if fix else "flagged")]
    assert report.findings[0].delivery_id == delivery.id
    if fix:
        assert report.findings[0].mailbox_id == mb.id
        assert flow.get(mb.id).state is State.WARMING
        assert [d.status for d in flow.deliveries()] == ["processed"]
        assert sum(1 for m, p in calls(sim, start) if p.endswith("/start-warmup")) == 1
    else:
        assert calls(sim, start) == []
        assert flow.get(mb.id).state is State.OAUTH_SENT


def test_delivery_a_worker_is_processing_is_left_alone(flow: MailboxFlow, sim: Any) -> None:
    """A delivery received moments ago (within the lease) is not the reconciler's business."""
    flow.store.insert_delivery({"body": b"{}", "dedupe_key": "k1", "status": "received",
                                "event_type": "campaign.pending", "campaign_id": 5})
    assert flow.reconcile(fix=True).findings == []


# -- stale_intent ------------------------------------------------------------------------------------

STALE = [
    # state, trigger, Mailivery status (None: deleted), action, the one call made, state after
    (State.PENDING, "start", "active", "completed", None, State.WARMING),
    (State.PENDING, "start", "pending", "started", ("PATCH", "start-warmup"), State.WARMING),
    (State.WARMING, "pause", "paused", "completed", None, State.PAUSED),
    (State.WARMING, "pause", "active", "retried", ("PATCH", "pause-warmup"), State.PAUSED),
    (State.PAUSED, "resume", "active", "completed", None, State.WARMING),
    (State.PAUSED, "resume", "paused", "resumed", ("PATCH", "resume-warmup"), State.WARMING),
    (State.WARMING, "delete", None, "completed", None, State.DELETED),
    (State.WARMING, "delete", "active", "retried", ("DELETE", ""), State.DELETED),
]


@pytest.mark.parametrize(("state", "trigger", "remote", "action", "call", "after"), STALE,
                         ids=[f"{s[1]}-{s[2]}" for s in STALE])
def test_stale_intent_is_finished_or_retried(flow: MailboxFlow, sim: Any, state: State, trigger: str,
                                             remote: str | None, action: str,
                                             call: tuple[str, str] | None, after: State) -> None:
    """An interrupted call: finished without a call when it took effect, made again once otherwise."""
    mb = make(flow, sim, state, "i@example.com", remote=remote or "active",
              warmed=state is not State.PENDING)
    assert mb.campaign_id is not None
    if remote is None:
        sim.delete_campaign(mb.campaign_id, send_webhook=False)
    request_id = die_mid_call(flow, flow.get(mb.id), trigger)
    report = flow.reconcile(fix=True)
    assert pairs(report) == [("stale_intent", action)]
    made = calls(sim)
    assert made[0] == ("GET", f"/campaigns/{mb.campaign_id}")  # re-read before anything
    changes = [c for c in made if c[0] != "GET"]
    if call:
        assert changes == [(call[0], f"/campaigns/{mb.campaign_id}" + (f"/{call[1]}" if call[1] else ""))]
    else:
        assert changes == []
    now = flow.get(mb.id)
    assert now.state is after and now.intent_trigger is None
    last = flow.history(mb.id)[-1]
    assert (last.trigger, last.source) == (trigger, Source.RECONCILER)
    if action == "completed":  # the interrupted call is the one that took effect
        assert last.detail.get("intent_request_id") == request_id


def test_stale_intent_reported_without_fix(flow: MailboxFlow, sim: Any) -> None:
    """Without fix an interrupted call is reported once (not also as stuck) and nothing is called."""
    mb = make(flow, sim, State.PENDING, "i@example.com")
    die_mid_call(flow, mb, "start")
    report = flow.reconcile(stuck_after=HOUR)
    assert pairs(report) == [("stale_intent", "flagged")]
    assert "start was interrupted" in (report.findings[0].detail or "")
    assert calls(sim) == []


def test_stale_connect_is_cleared_without_call(flow: MailboxFlow, sim: Any) -> None:
    """An interrupted connect is not repeated (the partner's next request does it): intent cleared."""
    mb = make(flow, sim, State.REQUESTED, "c@example.com", remote=None, age=timedelta(0))
    die_mid_call(flow, mb, "send_oauth")
    report = flow.reconcile(fix=True)
    assert pairs(report) == [("stale_intent", "cleared")] and report.clean
    assert calls(sim) == []
    now = flow.get(mb.id)
    assert now.state is State.REQUESTED and now.intent_trigger is None


def test_held_lease_is_skipped(flow: MailboxFlow, sim: Any) -> None:
    """A mailbox another worker holds right now is reported skipped and left alone."""
    mb = make(flow, sim, State.PENDING, "held@example.com")
    flow.store.claim(mb, owner="busy-worker", until=utcnow() + HOUR, trigger="start",
                     request_id=str(uuid.uuid4()))
    for fix in (False, True):
        report = flow.reconcile(stuck_after=HOUR, fix=fix)
        assert pairs(report) == [("stuck_pending", "skipped")]
        assert report.exit_code == 1
    assert calls(sim) == []
    assert flow.get(mb.id).state is State.PENDING


# -- remote comparisons ------------------------------------------------------------------------------


def test_remote_pending_local_warming(flow: MailboxFlow, sim: Any) -> None:
    """Warming here, pending there: reported from the list alone; a fix re-reads and starts it again."""
    mb = make(flow, sim, State.WARMING, "w@example.com", remote="pending", warmed=True)
    report = flow.reconcile(remote=True)
    assert pairs(report) == [("remote_pending_local_warming", "flagged")]
    assert report.findings[0].remote_status == "pending"
    assert calls(sim) == [("GET", "/campaigns")]
    fixed = flow.reconcile(remote=True, fix=True)
    assert pairs(fixed) == [("remote_pending_local_warming", "restarted")]
    cid = mb.campaign_id
    assert calls(sim, 1) == [("GET", "/campaigns"), ("GET", f"/campaigns/{cid}"),
                             ("PATCH", f"/campaigns/{cid}/start-warmup")]
    assert sim.campaign(cid)["status_code"] == "active"
    last = flow.history(mb.id)[-1]
    assert (last.trigger, last.from_state, last.to_state) == ("start", State.WARMING, State.WARMING)
    assert last.request_id == sim.calls[-1].request_id
    assert flow.get(mb.id).lease_until is None


@pytest.mark.parametrize(("local", "remote", "after"), [(State.WARMING, "paused", State.PAUSED),
                                                        (State.PAUSED, "active", State.WARMING)])
def test_status_mismatch_follows_mailivery_without_call(flow: MailboxFlow, sim: Any, local: State,
                                                        remote: str, after: State) -> None:
    """Paused there → paused here; active there → warming here; only reads are made."""
    mb = make(flow, sim, local, "m@example.com", remote=remote, warmed=True)
    assert pairs(flow.reconcile(remote=True)) == [("status_mismatch", "flagged")]
    report = flow.reconcile(remote=True, fix=True)
    assert pairs(report) == [("status_mismatch", "followed")]
    assert report.findings[0].state_after is after
    assert [m for m, _ in calls(sim)] == ["GET", "GET", "GET"]
    assert flow.get(mb.id).state is after
    assert flow.history(mb.id)[-1].detail["reported_by_mailivery"] is True


def test_status_mismatch_without_safe_fix_is_only_reported(flow: MailboxFlow, sim: Any) -> None:
    """Paused here but pending there is for a person: reported, never acted on."""
    mb = make(flow, sim, State.PAUSED, "p@example.com", remote="pending", warmed=True)
    report = flow.reconcile(remote=True, fix=True)
    assert pairs(report) == [("status_mismatch", "flagged")]
    assert report.findings[0].recommended == "investigate"
    assert calls(sim) == [("GET", "/campaigns")]
    assert flow.get(mb.id).state is State.PAUSED


@pytest.mark.parametrize("state", [State.WARMING, State.PENDING, State.REJECTED])
def test_remote_missing_is_marked_deleted_without_call(flow: MailboxFlow, sim: Any,
                                                       state: State) -> None:
    """Linked here, gone there: a fix confirms the 404 and marks it deleted; no DELETE."""
    mb = make(flow, sim, state, "gone@example.com", remote=None, campaign_id=777,
              age=timedelta(minutes=1))
    assert pairs(flow.reconcile(remote=True)) == [("remote_missing", "flagged")]
    report = flow.reconcile(remote=True, fix=True)
    assert pairs(report) == [("remote_missing", "deleted")]
    assert calls(sim) == [("GET", "/campaigns"), ("GET", "/campaigns"), ("GET", "/campaigns/777")]
    assert flow.get(mb.id).state is State.DELETED


def test_orphan_is_deleted_only_with_delete_orphans(flow: MailboxFlow, sim: Any) -> None:
    """A campaign nobody asked for: reported by --fix alone; recorded and deleted with delete_orphans."""
    orphan = sim.create_campaign(email="eve@example.com", first_name="Eve", send_webhook=False)
    for fix in (False, True):
        report = flow.reconcile(remote=True, fix=fix)
        assert pairs(report) == [("orphan_campaign", "flagged")]
        assert report.findings[0].recommended == "delete_orphan"
    assert sim.count("DELETE") == 0 and flow.list() == []
    report = flow.reconcile(remote=True, fix=True, delete_orphans=True)
    assert pairs(report) == [("orphan_campaign", "deleted")]
    assert sim.count("DELETE", f"/campaigns/{orphan['id']}") == 1
    assert sim.count("GET", f"/campaigns/{orphan['id']}") == 1
    [recorded] = flow.list()
    assert (recorded.email, recorded.state, recorded.campaign_id) == (
        "eve@example.com", State.DELETED, orphan["id"])
    assert [(e.trigger, e.to_state) for e in flow.history(recorded.id)] == [
        ("reject", State.REJECTED), ("delete", State.DELETED)]


def test_warming_orphan_is_never_deleted(flow: MailboxFlow, sim: Any) -> None:
    """An orphan already active at Mailivery is someone's: reported for a person, not deleted."""
    sim.create_campaign(email="eve@example.com", first_name="Eve", status="active", send_webhook=False)
    report = flow.reconcile(remote=True, fix=True, delete_orphans=True)
    assert pairs(report) == [("orphan_campaign", "flagged")]
    assert report.findings[0].recommended == "investigate"
    assert sim.count("DELETE") == 0


def test_lost_webhook_is_linked_and_started(flow: MailboxFlow, sim: Any) -> None:
    """The user consented but the webhook never came: a fix links the campaign and starts it."""
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    campaign = sim.accept(mb.oauth_url)  # the webhook goes to a receiver that drops it
    report = flow.reconcile(remote=True)
    assert pairs(report) == [("lost_webhook", "flagged")]
    assert report.findings[0].campaign_id == campaign["id"]
    fixed = flow.reconcile(remote=True, fix=True, delete_orphans=True)
    assert pairs(fixed) == [("lost_webhook", "started")]
    now = flow.get(mb.id)
    assert (now.state, now.campaign_id) == (State.WARMING, campaign["id"])
    assert [e.trigger for e in flow.history(mb.id)] == ["send_oauth", "mark_pending", "start"]
    assert sim.count("DELETE") == 0


def test_email_mismatch_is_only_reported(flow: MailboxFlow, sim: Any) -> None:
    """A campaign whose email is not the mailbox's is reported for a person, never acted on."""
    mb = make(flow, sim, State.WARMING, "mine@example.com", remote="active",
              remote_email="other@example.com")
    report = flow.reconcile(remote=True, fix=True)
    assert pairs(report) == [("email_mismatch", "flagged")]
    assert calls(sim) == [("GET", "/campaigns")]
    assert flow.get(mb.id).state is State.WARMING


# -- idempotence, failures, streaming ----------------------------------------------------------------


def every_fixable_finding(flow: MailboxFlow, sim: Any) -> None:
    make(flow, sim, State.PENDING, "stuck@example.com")
    make(flow, sim, State.OAUTH_SENT, "old@example.com", remote=None, age=8 * timedelta(days=1))
    die_mid_call(flow, make(flow, sim, State.WARMING, "intent@example.com", remote="paused"), "pause")
    make(flow, sim, State.WARMING, "never@example.com", remote="pending", warmed=True)
    make(flow, sim, State.WARMING, "drift@example.com", remote="paused", warmed=True)
    make(flow, sim, State.PAUSED, "gone@example.com", remote=None, campaign_id=999)
    sim.create_campaign(email="eve@example.com", first_name="Eve", send_webhook=False)
    lost = flow.request_connection(owner_id="u", email="lost@example.com", first_name="L")
    sim.accept(lost.oauth_url)
    deferred = flow.request_connection(owner_id="u", email="ada@example.com", first_name="A")
    body = consent(sim, deferred)
    sim.faults.fail_next(10, status=503)
    flow.handle_webhook(body, secret=SECRET)
    sim.faults.clear()


def test_second_run_finds_nothing_and_calls_nothing(flow: MailboxFlow, sim: Any) -> None:
    """After a fixing run, a second run (remote, fix) finds nothing and only lists the campaigns."""
    every_fixable_finding(flow, sim)
    first = flow.reconcile(stuck_after=HOUR, expire_after=WEEK, remote=True, fix=True,
                           delete_orphans=True)
    assert sorted(f.reason.value for f in first.findings) == sorted(r.value for r in Reason
                                                                   if r is not Reason.EMAIL_MISMATCH)
    assert not first.open_findings, [f for f in first.open_findings]
    audit = flow.store.count("mailbox_transition")
    start = len(sim.calls)
    second = flow.reconcile(stuck_after=HOUR, expire_after=WEEK, remote=True, fix=True,
                            delete_orphans=True)
    assert second.findings == [] and second.exit_code == 0
    assert calls(sim, start) == [("GET", "/campaigns")]
    third = flow.reconcile(stuck_after=HOUR, expire_after=WEEK, fix=True)
    assert third.findings == [] and calls(sim, start + 1) == []
    assert flow.store.count("mailbox_transition") == audit


def test_mailivery_down_defers_and_stops_calling(flow: MailboxFlow, sim: Any) -> None:
    """Mailivery unreachable: the first mailbox is deferred, the rest are not even tried; exit 2."""
    boxes = [make(flow, sim, State.PENDING, f"s{i}@example.com") for i in range(3)]
    sim.faults.fail_next(1000, status=503)
    report = flow.reconcile(stuck_after=HOUR, fix=True)
    assert pairs(report) == [("stuck_pending", "deferred")] * 3
    assert report.errors and "MailiveryServerError" in report.errors[0]
    assert report.exit_code == 2 and not report.clean
    assert {p for _m, p in calls(sim)} == {f"/campaigns/{boxes[0].campaign_id}"}
    assert all(flow.get(b.id).state is State.PENDING for b in boxes)
    sim.faults.clear()
    assert pairs(flow.reconcile(stuck_after=HOUR, fix=True)) == [("stuck_pending", "started")] * 3


def test_remote_list_unavailable_is_an_error(flow: MailboxFlow, sim: Any) -> None:
    """When the campaign list cannot be read, the local phases still run and the report says so."""
    make(flow, sim, State.OAUTH_SENT, "old@example.com", remote=None, age=8 * timedelta(days=1))
    sim.faults.fail_next(1000, status=500)
    report = flow.reconcile(remote=True)
    assert pairs(report) == [("abandoned_oauth", "flagged")]
    assert report.exit_code == 2 and "could not be used" in report.errors[0]


def test_scan_streams_in_batches(flow: MailboxFlow, sim: Any) -> None:
    """With batches of 2, every stuck mailbox is found once, oldest first, and all get fixed."""
    boxes = [make(flow, sim, State.PENDING, f"b{i}@example.com", age=HOUR * (10 - i))
             for i in range(7)]
    make(flow, sim, State.PENDING, "young@example.com", age=timedelta(minutes=5))
    progress: list[tuple[str, int]] = []
    report = reconcile(flow, stuck_after=HOUR, expire_after=WEEK, batch_size=2,
                       progress=lambda phase, n: progress.append((phase, n)))
    assert [f.mailbox_id for f in report.findings] == [b.id for b in boxes]
    assert report.scanned == {"stuck_pending": 7}
    assert progress[-1] == ("stuck_pending", 7)
    fixed = reconcile(flow, stuck_after=HOUR, expire_after=WEEK, fix=True, batch_size=2)
    assert pairs(fixed) == [("stuck_pending", "started")] * 7
    assert sim.count("PATCH", "/start-warmup") == 7


def test_scan_keeps_rows_with_equal_timestamps(flow: MailboxFlow, sim: Any) -> None:
    """Rows changed at the very same instant straddling a batch boundary are each returned once."""
    at = utcnow() - 2 * HOUR
    ids = {flow.store.insert_mailbox({"owner_id": "o", "email": f"t{i}@example.com", "state": "pending",
                                      "state_changed_at": at}).id for i in range(5)}
    found = [m.id for m in flow.store.scan_state(State.PENDING, changed_before=utcnow(), batch_size=2)]
    assert len(found) == 5 and set(found) == ids


def test_stuck_scan_uses_the_state_index(tmp_path: Path, client: MailiveryClient) -> None:
    """The stuck-pending scan runs on the (state, state_changed_at, id) index, unsorted (SQLite's plan)."""
    flow = MailboxFlow(f"sqlite:///{tmp_path / 'plan.db'}", client=client)
    flow.create_schema()
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "FROM mailbox" in statement and "ORDER BY mailbox.state_changed_at" in statement:
            seen.append((statement, params))

    sa.event.listen(flow.store.engine, "before_cursor_execute", capture)
    list(flow.store.scan_state(State.PENDING, changed_before=utcnow()))
    sa.event.remove(flow.store.engine, "before_cursor_execute", capture)
    assert seen
    with flow.store.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + seen[0][0], seen[0][1]).fetchall()
    text = " ".join(str(row[-1]) for row in plan)
    assert "USING INDEX ix_mailbox_state_scan" in text, text
    assert "TEMP B-TREE" not in text, text
    flow.close()


def test_report_json_has_stable_keys(flow: MailboxFlow, sim: Any) -> None:
    """to_dict() is valid JSON with the same keys whatever was found, every reason counted."""
    empty = flow.reconcile().to_dict()
    make(flow, sim, State.PENDING, "stuck@example.com")
    full = json.loads(json.dumps(flow.reconcile(stuck_after=HOUR).to_dict()))
    assert list(full) == list(empty) == [
        "schema", "started_at", "finished_at", "duration_seconds", "stuck_after_seconds",
        "expire_after_seconds", "remote", "fix", "delete_orphans", "clean", "exit_code", "open",
        "counts", "actions", "scanned", "errors", "findings"]
    assert set(full["counts"]) == {r.value for r in Reason} and full["counts"]["stuck_pending"] == 1
    assert set(full["actions"]) == {a.value for a in Action}
    assert list(full["findings"][0]) == [
        "reason", "action", "open", "mailbox_id", "email", "state", "state_after", "age_seconds",
        "campaign_id", "delivery_id", "remote_status", "recommended", "detail"]
    assert (full["clean"], full["exit_code"], full["open"]) == (False, 1, 1)


def test_open_actions_decide_the_exit_code() -> None:
    """Only flagged, skipped, failed and deferred findings keep a run from being clean."""
    assert {a.value for a in OPEN_ACTIONS} == {"flagged", "skipped", "failed", "deferred"}
    report = ReconcileReport(utcnow(), HOUR, WEEK, False, True)
    report.findings.append(Finding(Reason.STUCK_PENDING, Action.STARTED))
    assert report.exit_code == 0
    report.findings.append(Finding(Reason.STUCK_PENDING, Action.SKIPPED))
    assert report.exit_code == 1
    report.errors.append("Mailivery could not be used")
    assert report.exit_code == 2


def test_fix_needs_a_mailivery_client(database_url: str) -> None:
    """A fixing or remote run without a client fails before doing anything."""
    flow = MailboxFlow(database_url)
    flow.create_schema()
    with pytest.raises(ConfigurationError):
        flow.reconcile(fix=True)
    assert flow.reconcile().clean
    flow.close()


# -- two reconcilers at once, in separate processes, on PostgreSQL -----------------------------------


@pytest.mark.postgres
def test_concurrent_reconcilers_act_once(postgres_url: str, client: MailiveryClient, api_url: str,
                                         sim: Any, tmp_path: Path) -> None:
    """Two reconciler processes racing over the same database make each healing call exactly once."""
    flow = MailboxFlow(postgres_url, client=client)
    flow.create_schema()
    stuck = [make(flow, sim, State.PENDING, f"stuck{i}@example.com") for i in range(6)]
    never = [make(flow, sim, State.WARMING, f"never{i}@example.com", remote="pending", warmed=True)
             for i in range(2)]
    orphans = [sim.create_campaign(email=f"eve{i}@example.com", first_name="E", send_webhook=False)
               for i in range(2)]
    old = [make(flow, sim, State.OAUTH_SENT, f"old{i}@example.com", remote=None,
                age=8 * timedelta(days=1)) for i in range(2)]
    sim.faults.latency(0.05)  # long enough for the two runs to overlap
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOX_FLOW_")}
    env.update(MAILBOX_FLOW_DATABASE_URL=postgres_url, MAILBOX_FLOW_MAILIVERY_API_KEY=API_KEY,
               MAILBOX_FLOW_MAILIVERY_BASE_URL=api_url, MAILBOX_FLOW_RATE_PER_SECOND="0",
               MAILBOX_FLOW_LOG_LEVEL="WARNING")
    outputs = [tmp_path / f"run{i}.json" for i in range(2)]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "mailbox_flow.cli", "reconcile", "--fix", "--remote",
             "--delete-orphans", "--json", str(out)],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for out in outputs
    ]
    results = [(run.wait(timeout=60), run.stderr.read() if run.stderr else "") for run in runs]
    sim.faults.latency(0)
    for code, err in results:
        assert code in (0, 1), err
    reports = [json.loads(out.read_text()) for out in outputs]

    assert sim.count("PATCH", "/start-warmup") == len(stuck) + len(never)
    assert sim.count("DELETE") == len(orphans)
    for campaign in orphans:
        assert sim.count("DELETE", f"/campaigns/{campaign['id']}") == 1
    for mb in stuck + never:
        assert len(flow.history(mb.id)) == 1
        assert flow.get(mb.id).state is State.WARMING
    for mb in old:
        assert [e.trigger for e in flow.history(mb.id)] == ["expire"]
    done: dict[str, int] = {}
    for report in reports:
        for f in report["findings"]:
            if not f["open"]:
                key = f["mailbox_id"] if f["reason"] != "orphan_campaign" else f"c{f['campaign_id']}"
                done[key] = done.get(key, 0) + 1
            else:
                assert f["action"] == "skipped", f
    assert sorted(done.values()) == [1] * (len(stuck) + len(never) + len(orphans) + len(old))
    assert flow.store.count("mailbox_transition") == len(stuck) + len(never) + 2 * len(orphans) + len(old)
    flow.close()
