"""The Mailivery simulator, exercised over real loopback HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailbox_flow.simulator import (
    CampaignNotFound,
    ConsentNotFound,
    Simulator,
    SimulatorServer,
    meta_query_string,
    serve_in_thread,
)

CAMPAIGN_KEYS = {
    "id",
    "first_name",
    "last_name",
    "name",
    "email",
    "status_code",
    "timezone",
    "email_per_day",
    "response_rate",
    "dashboard_url",
    "created_at",
    "updated_at",
    "connection_problem",
    "tags",
}


class Receiver:
    """A tiny webhook endpoint that records every body it gets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.status = 200
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self.url = ""

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.bodies.append(body)
        return Response(status_code=self.status)

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(b) for b in self.bodies]

    def clear(self) -> None:
        with self._lock:
            self.bodies.clear()
        self.status = 200


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    url, stop = serve_in_thread(rec.app)
    rec.url = url + "/hook"
    yield rec
    stop()


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer(Simulator(api_key="test-key")) as srv:
        yield srv


@pytest.fixture
def sim(server: SimulatorServer, receiver: Receiver) -> Simulator:
    server.sim.wait_for_webhooks(2.0)
    server.sim.reset()
    receiver.clear()
    server.sim.webhook_url = receiver.url
    return server.sim


@pytest.fixture
def api(server: SimulatorServer, sim: Simulator) -> Iterator[httpx.Client]:
    with server.client(timeout=10.0) as client:
        yield client


def form(**fields: str) -> dict[str, tuple[None, str]]:
    """Multipart fields for httpx (`files=`), so the body is multipart/form-data."""
    return {k: (None, v) for k, v in fields.items()}


def connect(api: httpx.Client, **overrides: str) -> str:
    fields = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@contoso.com",
        "email_per_day": "40",
        "response_rate": "30",
        "meta[mailbox_flow_token]": "tok-123",
    }
    fields.update(overrides)
    response = api.post("/campaigns/microsoft", files=form(**fields))
    assert response.status_code == 200, response.text
    url: str = response.json()["data"]["url"]
    return url


def accepted_campaign(api: httpx.Client, sim: Simulator, **overrides: str) -> dict[str, Any]:
    return sim.accept(connect(api, **overrides))


def delivered(sim: Simulator, receiver: Receiver) -> list[dict[str, Any]]:
    assert sim.wait_for_webhooks(5.0)
    return receiver.payloads()


# --- auth, envelopes, routing ---------------------------------------------------------------


def test_list_campaigns_data_envelope(api: httpx.Client) -> None:
    """GET /campaigns answers {"data": []} on a fresh account."""
    response = api.get("/campaigns")
    assert response.status_code == 200
    assert response.json() == {"data": []}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic test-key"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
def test_auth_required(server: SimulatorServer, sim: Simulator, headers: dict[str, str]) -> None:
    """Without the right Bearer key every API call is 401 UNAUTHENTICATED."""
    response = httpx.get(server.api_url + "/campaigns", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHENTICATED"
    assert response.json()["message"]
    assert sim.count("GET", "/campaigns", status=401) == 1


def test_unknown_paths_are_404_envelopes(server: SimulatorServer, api: httpx.Client) -> None:
    """Unknown API and non-API paths answer a 404 JSON envelope; wrong method is 405."""
    for response in (api.get("/nope"), httpx.get(server.url + "/nowhere")):
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"
    wrong = api.put("/campaigns/101/start-warmup")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "METHOD_NOT_ALLOWED"


# --- connect -------------------------------------------------------------------------------------


def test_connect_returns_consent_url_and_no_campaign(
    server: SimulatorServer, api: httpx.Client, sim: Simulator
) -> None:
    """POST /campaigns/microsoft answers success + data.url with a secret token; no campaign yet."""
    response = api.post(
        "/campaigns/microsoft", files=form(first_name="Ada", email="ada@contoso.com")
    )
    body = response.json()
    assert response.status_code == 200
    assert body["success"] is True
    url = urllib.parse.urlsplit(body["data"]["url"])
    assert f"{url.scheme}://{url.netloc}" == server.url
    assert url.path.startswith("/oauth/consent/")
    assert len(url.path.rsplit("/", 1)[1]) >= 32
    assert urllib.parse.parse_qs(url.query)["state"][0]
    assert sim.campaigns() == []
    assert len(sim.consents()) == 1


def test_connect_rejects_json_body(api: httpx.Client) -> None:
    """A JSON body is refused with 422 VALIDATION_ERROR (multipart only)."""
    response = api.post(
        "/campaigns/microsoft", json={"first_name": "Ada", "email": "ada@contoso.com"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"
    urlencoded = api.post(
        "/campaigns/microsoft", data={"first_name": "Ada", "email": "ada@contoso.com"}
    )
    assert urlencoded.status_code == 422


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"first_name": ""}, "first_name"),
        ({"first_name": "A" * 256}, "first_name"),
        ({"last_name": "L" * 256}, "last_name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"email": "x" * 250 + "@contoso.com"}, "email"),
        ({"email_per_day": "2001"}, "email_per_day"),
        ({"email_per_day": "-1"}, "email_per_day"),
        ({"email_per_day": "ten"}, "email_per_day"),
        ({"response_rate": "101"}, "response_rate"),
        ({"response_rate": "1.5"}, "response_rate"),
        ({"owner_email": "nope"}, "owner_email"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"meta": "x=1"}, "meta"),
    ],
)
def test_connect_validation_errors(
    api: httpx.Client, sim: Simulator, overrides: dict[str, str], field: str
) -> None:
    """Invalid connect input is a 422 VALIDATION_ERROR envelope naming the field."""
    fields = {"first_name": "Ada", "email": "ada@contoso.com", "meta[k]": "v", **overrides}
    response = api.post("/campaigns/microsoft", files=form(**fields))
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["message"]
    assert field in body["errors"]
    assert sim.consents() == []


def test_connect_accepts_limits(api: httpx.Client, sim: Simulator) -> None:
    """Boundary values (255 chars, 0/2000 per day, 100 % rate) are accepted and kept."""
    campaign = accepted_campaign(
        api,
        sim,
        first_name="F" * 255,
        email_per_day="2000",
        response_rate="100",
        timezone="Europe/Paris",
        tags="gold, agency-7,",
    )
    assert campaign["first_name"] == "F" * 255
    assert campaign["email_per_day"] == 2000
    assert campaign["response_rate"] == 100
    assert campaign["timezone"] == "Europe/Paris"
    assert campaign["tags"] == ["gold", "agency-7"]
    zero = accepted_campaign(api, sim, email="b@contoso.com", email_per_day="0")
    assert zero["email_per_day"] == 0


# --- consent pages and webhooks ------------------------------------------------------------------


def test_consent_page_shows_email_and_buttons(api: httpx.Client) -> None:
    """The consent page is HTML with the mailbox address, Accept and Decline forms."""
    url = connect(api, email="grace@contoso.com")
    token = urllib.parse.urlsplit(url).path.rsplit("/", 1)[1]
    page = httpx.get(url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>" in page.text
    assert "grace@contoso.com" in page.text
    assert f'action="/oauth/consent/{token}/accept"' in page.text
    assert f'action="/oauth/consent/{token}/decline"' in page.text
    assert ">Accept</button>" in page.text
    assert ">Decline</button>" in page.text


def test_accept_over_http_creates_pending_and_posts_webhook(
    api: httpx.Client, sim: Simulator, receiver: Receiver
) -> None:
    """Accepting the consent form creates campaign 101 (pending) and posts campaign.pending."""
    url = connect(api, tags="gold,agency 7")
    token = urllib.parse.urlsplit(url).path.rsplit("/", 1)[1]
    assert url.split("?")[0].endswith(f"/oauth/consent/{token}")
    page = httpx.post(url.split("?")[0] + "/accept")
    assert page.status_code == 200
    assert "ada@contoso.com" in page.text
    campaign = api.get("/campaigns/101").json()["data"]
    assert campaign["status_code"] == "pending"
    assert campaign["email"] == "ada@contoso.com"
    assert delivered(sim, receiver) == [
        {
            "type": "campaign.pending",
            "action": "pending",
            "account": {
                "campaign_id": 101,
                "first_name": "Ada",
                "last_name": "Lovelace",
                "email": "ada@contoso.com",
                "provider_type": "office",
                "tags": ["gold", "agency 7"],
                "meta": "mailbox_flow_token=tok-123",
            },
        }
    ]
    assert sim.webhooks_sent[0].result == 200
    again = httpx.post(url.split("?")[0] + "/accept")
    assert again.status_code == 404
    assert "text/html" in again.headers["content-type"]


def test_meta_single_field_forms(api: httpx.Client, sim: Simulator, receiver: Receiver) -> None:
    """A JSON-object meta field is re-encoded as a query string; other text and none are echoed."""
    fields = {"first_name": "Ada", "email": "ada@contoso.com"}
    for meta in ('{"mailbox_flow_token": "abc", "n": 2}', "ref=7&x=y z", None):
        extra = {} if meta is None else {"meta": meta}
        url = api.post("/campaigns/microsoft", files=form(**fields, **extra)).json()["data"]["url"]
        sim.accept(url)
    metas = [p["account"]["meta"] for p in delivered(sim, receiver)]
    assert metas == ["mailbox_flow_token=abc&n=2", "ref=7&x=y z", ""]


def test_decline_and_unknown_tokens(
    server: SimulatorServer, api: httpx.Client, sim: Simulator
) -> None:
    """Decline leaves no campaign; unknown or used tokens answer 404 HTML."""
    url = connect(api)
    base = url.split("?")[0]
    declined = httpx.post(base + "/decline")
    assert declined.status_code == 200
    assert "text/html" in declined.headers["content-type"]
    assert sim.campaigns() == []
    for response in (
        httpx.get(url),
        httpx.post(base + "/accept"),
        httpx.get(server.url + "/oauth/consent/bogus"),
    ):
        assert response.status_code == 404
        assert "text/html" in response.headers["content-type"]
    with pytest.raises(ConsentNotFound):
        sim.accept(url)
    assert sim.wait_for_webhooks() and sim.webhooks_sent == []


# --- campaigns and warm-up -----------------------------------------------------------------------


def test_campaign_object_shape_and_not_found(api: httpx.Client, sim: Simulator) -> None:
    """GET /campaigns/{id} returns the documented fields; unknown ids are 404 CAMPAIGN_NOT_FOUND."""
    accepted_campaign(api, sim)
    data = api.get("/campaigns/101").json()["data"]
    assert set(data) == CAMPAIGN_KEYS
    assert data["name"] == "Ada Lovelace"
    assert data["created_at"].endswith("Z")
    assert api.get("/campaigns").json()["data"] == [data]
    for bad in ("999", "abc", "-1", "1" * 40):
        response = api.get(f"/campaigns/{bad}")
        assert response.status_code == 404
        assert response.json()["code"] == "CAMPAIGN_NOT_FOUND"
    with pytest.raises(CampaignNotFound):
        sim.campaign(999)


def test_start_pause_resume_delete(api: httpx.Client, sim: Simulator, receiver: Receiver) -> None:
    """start: pending->active, pause: active->paused, resume: paused->active, delete: gone."""
    accepted_campaign(api, sim)
    for action, status in (("start", "active"), ("pause", "paused"), ("resume", "active")):
        response = api.patch(f"/campaigns/101/{action}-warmup")
        assert response.status_code == 200
        assert response.json()["success"] is True
        assert response.json()["data"]["status_code"] == status
        assert sim.campaign(101)["status_code"] == status
    deleted = api.delete("/campaigns/101")
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "data": {"id": 101}}
    assert api.get("/campaigns/101").status_code == 404
    assert api.delete("/campaigns/101").json()["code"] == "CAMPAIGN_NOT_FOUND"
    payloads = delivered(sim, receiver)
    assert [p["type"] for p in payloads] == ["campaign.pending", "campaign.deleted"]
    assert payloads[1] == {
        "type": "campaign.deleted",
        "action": "deleted",
        "account": {
            "campaign_id": 101,
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@contoso.com",
            "type": "office",
            "meta": None,
        },
    }


def test_wrong_status_calls(api: httpx.Client, sim: Simulator) -> None:
    """pause on pending and start on paused are 422; start on active is an idempotent 200."""
    accepted_campaign(api, sim)
    pause = api.patch("/campaigns/101/pause-warmup")
    assert pause.status_code == 422
    assert pause.json()["code"] == "INVALID_CAMPAIGN_STATUS"
    assert api.patch("/campaigns/101/start-warmup").status_code == 200
    again = api.patch("/campaigns/101/start-warmup")
    assert again.status_code == 200
    assert again.json()["data"]["status_code"] == "active"
    api.patch("/campaigns/101/pause-warmup")
    start_paused = api.patch("/campaigns/101/start-warmup")
    assert start_paused.status_code == 422
    assert sim.campaign(101)["status_code"] == "paused"
    other = accepted_campaign(api, sim, email="b@contoso.com")
    resumed = api.patch(f"/campaigns/{other['id']}/resume-warmup")
    assert resumed.json()["data"]["status_code"] == "active"
    assert api.patch("/campaigns/999/start-warmup").json()["code"] == "CAMPAIGN_NOT_FOUND"


def test_connection_problem_and_reconnect(
    api: httpx.Client, sim: Simulator, receiver: Receiver
) -> None:
    """A connection problem pauses and notifies; resume fails until reconnect (campaign.updated)."""
    accepted_campaign(api, sim)
    api.patch("/campaigns/101/start-warmup")
    problem = sim.connection_problem(101)
    assert problem["status_code"] == "paused" and problem["connection_problem"] is True
    failed = api.patch("/campaigns/101/resume-warmup")
    assert failed.status_code == 422
    assert failed.json()["code"] == "CONNECTION_CHECK_FAILED"
    sim.reconnect(101)
    assert api.patch("/campaigns/101/resume-warmup").json()["data"]["status_code"] == "active"
    payloads = delivered(sim, receiver)
    assert [p["type"] for p in payloads] == [
        "campaign.pending",
        "campaign.connection_problem",
        "campaign.updated",
    ]
    assert payloads[1]["action"] == "connection_problem"
    assert payloads[2]["account"] == {
        "campaign_id": 101,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@contoso.com",
        "meta": "",
    }


def test_patch_empty_body_gives_reconnect_url(api: httpx.Client, sim: Simulator) -> None:
    """PATCH /campaigns/{id} without a body answers a reconnectUrl that clears the problem."""
    accepted_campaign(api, sim)
    sim.connection_problem(101)
    response = api.patch("/campaigns/101")
    assert response.status_code == 200
    url = response.json()["data"]["reconnectUrl"]
    assert httpx.post(url.split("?")[0] + "/accept").status_code == 200
    assert sim.campaign(101)["connection_problem"] is False
    updated = api.patch("/campaigns/101", data={"email_per_day": "35"})
    assert updated.json()["data"]["email_per_day"] == 35
    assert api.patch("/campaigns/101", data={"response_rate": "500"}).status_code == 422


def test_unsolicited_campaign_and_set_status(sim: Simulator, receiver: Receiver) -> None:
    """create_campaign makes a campaign nobody asked for and posts campaign.pending with meta ""."""
    campaign = sim.create_campaign(email="eve@evil.example", first_name="Eve")
    assert campaign["id"] == 101 and campaign["status_code"] == "pending"
    silent = sim.create_campaign(email="x@contoso.com", send_webhook=False, status="active")
    assert silent["id"] == 102
    assert sim.set_status(102, "paused")["status_code"] == "paused"
    with pytest.raises(ValueError):
        sim.set_status(102, "warming")
    payloads = delivered(sim, receiver)
    assert len(payloads) == 1
    assert payloads[0]["account"]["email"] == "eve@evil.example"
    assert payloads[0]["account"]["meta"] == ""


# --- faults ---------------------------------------------------------------------------------------


def test_fail_next_429_with_retry_after(api: httpx.Client, sim: Simulator) -> None:
    """fail_next(2, 429, retry_after) answers RATE_LIMIT_EXCEEDED + Retry-After, then recovers."""
    sim.faults.fail_next(2, status=429, retry_after=3)
    for _ in range(2):
        response = api.get("/campaigns")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.json()["code"] == "RATE_LIMIT_EXCEEDED"
    assert api.get("/campaigns").status_code == 200
    sim.faults.fail_next(1, status=429, retry_after=0.25)
    assert api.get("/campaigns").headers["Retry-After"] == "0.25"


def test_fail_next_500_path_filter_and_after_effect(api: httpx.Client, sim: Simulator) -> None:
    """A path filter limits failures; after_effect applies the change but still answers an error."""
    accepted_campaign(api, sim)
    sim.faults.fail_next(1, status=500, path_contains="start-warmup")
    assert api.get("/campaigns/101").status_code == 200
    failed = api.patch("/campaigns/101/start-warmup")
    assert failed.status_code == 500
    assert failed.json()["code"] == "INTERNAL_SERVER_ERROR"
    assert sim.campaign(101)["status_code"] == "pending"
    sim.faults.fail_next(1, status=503, path_contains="start-warmup", after_effect=True)
    lost = api.patch("/campaigns/101/start-warmup")
    assert lost.status_code == 503
    assert sim.campaign(101)["status_code"] == "active"


def test_error_rate_is_seeded(api: httpx.Client, sim: Simulator) -> None:
    """error_rate with a seed fails the same calls each run; p=1 fails every call."""

    def run() -> list[int]:
        sim.faults.error_rate(0.5, statuses=(429, 500), seed=7)
        return [api.get("/campaigns").status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert 200 in first and set(first) - {200}
    assert set(first) <= {200, 429, 500}
    sim.faults.error_rate(1.0, statuses=(503,))
    assert api.get("/campaigns").status_code == 503
    sim.faults.error_rate(0.0)
    assert api.get("/campaigns").status_code == 200


def test_latency(api: httpx.Client, sim: Simulator) -> None:
    """latency(s) delays API answers by at least s seconds."""
    sim.faults.latency(0.3)
    started = time.monotonic()
    assert api.get("/campaigns").status_code == 200
    assert time.monotonic() - started >= 0.3
    sim.faults.latency(0)
    started = time.monotonic()
    api.get("/campaigns")
    assert time.monotonic() - started < 0.3


def test_start_fails(api: httpx.Client, sim: Simulator) -> None:
    """start_fails makes the connection check fail n times (by email or id), status unchanged."""
    accepted_campaign(api, sim)
    sim.faults.start_fails("ADA@contoso.com", times=1)
    sim.faults.start_fails(101, times=1)
    for _ in range(2):
        response = api.patch("/campaigns/101/start-warmup")
        assert response.status_code == 422
        assert response.json()["code"] == "CONNECTION_CHECK_FAILED"
        assert sim.campaign(101)["status_code"] == "pending"
    assert api.patch("/campaigns/101/start-warmup").status_code == 200
    assert sim.count("PATCH", "/campaigns/101/start-warmup") == 3
    assert sim.count("PATCH", "/campaigns/101/start-warmup", status=422) == 2


def test_drop_webhooks(api: httpx.Client, sim: Simulator, receiver: Receiver) -> None:
    """drop_next_webhooks(1) loses exactly the next webhook."""
    sim.faults.drop_next_webhooks(1)
    accepted_campaign(api, sim)
    accepted_campaign(api, sim, email="b@contoso.com")
    payloads = delivered(sim, receiver)
    assert [p["account"]["campaign_id"] for p in payloads] == [102]
    assert len(sim.webhooks_dropped) == 1
    assert json.loads(sim.webhooks_dropped[0])["account"]["campaign_id"] == 101


def test_duplicate_webhooks(api: httpx.Client, sim: Simulator, receiver: Receiver) -> None:
    """duplicate_webhooks(3) delivers each webhook three times, byte for byte."""
    sim.faults.duplicate_webhooks(3)
    accepted_campaign(api, sim)
    assert sim.wait_for_webhooks()
    assert len(receiver.bodies) == 3
    assert len(set(receiver.bodies)) == 1


def test_reorder_webhooks(api: httpx.Client, sim: Simulator, receiver: Receiver) -> None:
    """reorder_webhooks holds webhooks and flush_webhooks sends them newest first."""
    sim.faults.reorder_webhooks(True)
    accepted_campaign(api, sim)
    api.delete("/campaigns/101")
    assert sim.wait_for_webhooks()
    assert receiver.bodies == []
    assert sim.flush_webhooks() == 2
    assert [p["type"] for p in delivered(sim, receiver)] == ["campaign.deleted", "campaign.pending"]


def test_delay_webhooks(api: httpx.Client, sim: Simulator, receiver: Receiver) -> None:
    """delay_webhooks(s) delivers each webhook about s seconds late."""
    sim.faults.delay_webhooks(0.4)
    started = time.monotonic()
    accepted_campaign(api, sim)
    time.sleep(0.1)
    assert receiver.bodies == []
    assert len(delivered(sim, receiver)) == 1
    assert time.monotonic() - started >= 0.4


def test_webhook_delivery_failures_are_recorded(
    api: httpx.Client, sim: Simulator, receiver: Receiver
) -> None:
    """A refused connection or a 500 from the receiver is recorded; the simulator keeps working."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    sim.webhook_url = f"http://127.0.0.1:{dead_port}/hook"
    accepted_campaign(api, sim)
    assert sim.wait_for_webhooks()
    assert isinstance(sim.webhooks_sent[0].result, str)
    assert not sim.webhooks_sent[0].ok
    sim.webhook_url = receiver.url
    receiver.status = 500
    accepted_campaign(api, sim, email="b@contoso.com")
    assert sim.wait_for_webhooks()
    assert sim.webhooks_sent[1].result == 500
    assert api.get("/campaigns").status_code == 200


def test_http_control_endpoints(server: SimulatorServer, api: httpx.Client, sim: Simulator) -> None:
    """/_sim/faults sets and clears faults, /_sim/state shows state, /_sim/reset wipes it."""
    control = httpx.Client(base_url=server.url)
    set_fault = control.post(
        "/_sim/faults", json={"fail_next": {"n": 1, "status": 429, "retry_after": 2}}
    )
    assert set_fault.status_code == 200
    assert set_fault.json()["data"]["fail_next"][0]["status"] == 429
    limited = api.get("/campaigns")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
    control.post("/_sim/faults", json={"latency": 5, "start_fails": ["ada@contoso.com", 2]})
    assert control.get("/_sim/faults").json()["data"]["start_fails"] == {"ada@contoso.com": 2}
    assert control.delete("/_sim/faults").json()["data"]["latency"]["seconds"] == 0
    bad = control.post("/_sim/faults", json={"explode": 1})
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_FAULT"
    assert control.post("/_sim/faults", json={"fail_next": {"n": "x"}}).status_code == 400
    assert control.post("/_sim/faults", content=b"{not json").status_code == 400
    accepted_campaign(api, sim)
    state = control.get("/_sim/state").json()
    assert [c["id"] for c in state["campaigns"]] == [101]
    assert state["calls"][0]["status"] == 429
    assert control.post("/_sim/reset").status_code == 200
    assert sim.campaigns() == [] and sim.calls == []
    created = control.post("/_sim/campaigns", json={"email": "z@contoso.com", "status": "active"})
    assert created.json()["data"]["id"] == 101
    problem = control.post("/_sim/campaigns/101/connection-problem")
    assert problem.json()["data"]["status_code"] == "paused"
    control.close()


def test_call_log_and_request_ids(api: httpx.Client, sim: Simulator) -> None:
    """Every API call is logged with method, path, X-Request-ID and status; count() filters them."""
    accepted_campaign(api, sim)
    api.patch("/campaigns/101/start-warmup", headers={"X-Request-ID": "req-1"})
    api.patch("/campaigns/101/start-warmup")
    api.get("/campaigns/101")
    assert sim.count("PATCH", "/campaigns/101/start-warmup") == 2
    assert sim.count("POST", "/campaigns/microsoft") == 1
    assert sim.count("GET") == 1
    assert sim.count() == 4
    start = next(c for c in sim.calls if c.path.endswith("start-warmup"))
    assert start == ("PATCH", "/api/v1/campaigns/101/start-warmup", "req-1", 200)


def test_reset_restarts_ids(api: httpx.Client, sim: Simulator) -> None:
    """reset() forgets campaigns, consents and faults; ids start again at 101."""
    accepted_campaign(api, sim)
    connect(api)
    sim.faults.latency(2)
    sim.reset()
    assert sim.campaigns() == [] and sim.consents() == []
    assert sim.faults.latency_for("GET", "/api/v1/campaigns") == 0
    assert accepted_campaign(api, sim)["id"] == 101


def test_concurrent_accepts_get_unique_ids(api: httpx.Client, sim: Simulator) -> None:
    """Accepting many consents from several threads yields unique consecutive ids."""
    urls = [connect(api, email=f"user{i}@contoso.com") for i in range(12)]
    statuses: list[int] = []

    def accept(url: str) -> None:
        statuses.append(httpx.post(url.split("?")[0] + "/accept").status_code)

    threads = [threading.Thread(target=accept, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 12
    assert sorted(c["id"] for c in sim.campaigns()) == list(range(101, 113))
    assert sim.wait_for_webhooks()
    assert len(sim.webhooks_sent) == 12


def test_no_500_for_junk(server: SimulatorServer, api: httpx.Client, sim: Simulator) -> None:
    """A barrage of malformed requests never gets a 500."""
    boundary_body = b"--xyz\r\nContent-Disposition: form-data\r\n\r\nbroken"
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/campaigns/microsoft", {"content": b"\x00\xff garbage"}),
        (
            "POST",
            "/campaigns/microsoft",
            {"content": boundary_body, "headers": {"Content-Type": "multipart/form-data"}},
        ),
        (
            "POST",
            "/campaigns/microsoft",
            {
                "content": boundary_body,
                "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
            },
        ),
        (
            "POST",
            "/campaigns/microsoft",
            {
                "files": {
                    "first_name": ("a.txt", b"file", "text/plain"),
                    "email": (None, "a@contoso.com"),
                }
            },
        ),
        (
            "POST",
            "/campaigns/microsoft",
            {"files": form(**{"meta[]": "x", "first_name": "A", "email": "a@contoso.com"})},
        ),
        (
            "POST",
            "/campaigns/microsoft",
            {"files": form(first_name="\x00", email="\u00e9@\u00e9.fr", email_per_day="9" * 50)},
        ),
        ("PATCH", "/campaigns/%00/start-warmup", {}),
        ("PATCH", "/campaigns/101", {"json": [1, 2]}),
        (
            "PATCH",
            "/campaigns/101",
            {"content": b"{", "headers": {"Content-Type": "application/json"}},
        ),
        ("GET", "/campaigns/" + "9" * 5000, {}),
        ("DELETE", "/campaigns/1e9", {}),
        ("OPTIONS", "/campaigns", {}),
        ("POST", "/campaigns/microsoft", {"content": b"x" * (2 * 1024 * 1024)}),
    ]
    sim.create_campaign(email="a@contoso.com", send_webhook=False)
    for method, path, kwargs in requests:
        response = api.request(method, path, **kwargs)
        assert response.status_code < 500, (method, path, response.text)
        assert "code" in response.json()
    control: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/_sim/faults", {"content": b"[]"}),
        ("POST", "/_sim/faults", {"json": {"latency": "slow"}}),
        ("POST", "/_sim/faults", {"json": {"error_rate": {"p": 2}}}),
        ("POST", "/_sim/campaigns", {"json": {"email": 5}}),
        ("POST", "/_sim/campaigns", {"json": {"email": "a@b.co", "meta": 5}}),
        ("POST", "/_sim/campaigns/abc/status", {"json": {"status": "weird"}}),
        ("POST", "/_sim/campaigns/101/status", {"json": {"status": "weird"}}),
        ("POST", "/_sim/config", {"json": {"webhook_url": 5}}),
        ("GET", "/_sim/reset", {}),
        ("GET", "/oauth/consent/%2F..%2F", {}),
    ]
    for method, path, kwargs in control:
        response = httpx.request(method, server.url + path, **kwargs)
        assert response.status_code < 500, (method, path, response.text)
    assert sim.count(status=500) == 0


def test_serve_in_thread_stops(receiver: Receiver) -> None:
    """serve_in_thread serves on a free port and stop() closes it."""
    app = Starlette(routes=[Route("/ping", lambda r: Response("pong"), methods=["GET"])])
    url, stop = serve_in_thread(app)
    assert httpx.get(url + "/ping").text == "pong"
    stop()
    stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping", timeout=1.0)


def test_pytest_plugin_fixture(mailivery_simulator: SimulatorServer) -> None:
    """The partner fixture serves a fresh simulator whose consent URLs point at it."""
    with mailivery_simulator.client() as client:
        response = client.post(
            "/campaigns/microsoft", files=form(first_name="A", email="a@contoso.com")
        )
    assert response.json()["data"]["url"].startswith(mailivery_simulator.url + "/oauth/consent/")
    assert mailivery_simulator.sim.accept(response.json()["data"]["url"])["id"] == 101


def test_meta_query_string_helper() -> None:
    """meta_query_string urlencodes mappings, echoes strings, and can append tags like the doc."""
    assert meta_query_string({"mailbox_flow_token": "abc 1"}) == "mailbox_flow_token=abc+1"
    assert meta_query_string(None) == ""
    assert meta_query_string("raw") == "raw"
    assert (
        meta_query_string({"meta": "4dd4"}, ["97694201", "worthcoding"], include_tags=True)
        == "meta=4dd4&tags=97694201,%20worthcoding"
    )
