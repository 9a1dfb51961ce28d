"""Hostile input (issue 14): it is refused as bad input before anything is sent or stored.

Out-of-range ids and limits, lone surrogates and NUL bytes, non-ASCII addresses and bodies that are
not bytes all end in `InvalidInput` / `WebhookPayloadError`, never in an `OverflowError`, a
`UnicodeEncodeError` or a `StorageError` from the database; a connect call Mailivery refuses (422)
does not leave the address blocked.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mailbox_flow import (
    DuplicateMailbox,
    InvalidInput,
    MailboxFlow,
    MailiveryClient,
    Outcome,
    State,
    WebhookAuthError,
    WebhookPayloadError,
    cli,
)
from mailbox_flow.errors import MailiveryResponseError, MailiveryValidationError
from mailbox_flow.web import create_app

from .helpers import API_KEY, SECRET, counts, webhook_body

with warnings.catch_warnings():  # starlette's notice about httpx2: not ours to act on here
    warnings.simplefilter("ignore", UserWarning)  # StarletteDeprecationWarning is a UserWarning
    from starlette.testclient import TestClient

BASE = "https://app.mailivery.io/api/v1"
OAUTH = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?state=abc"
MAX_ID = 2**63 - 1


class Mailivery:
    """A scripted Mailivery behind httpx.MockTransport; records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.connect_status = 200
        self.campaign: dict[str, Any] | None = None  # GET /campaigns/{id}: 404 when None
        self.campaigns: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1")
        if request.method == "POST" and path == "/campaigns/microsoft":
            if self.connect_status != 200:
                return httpx.Response(self.connect_status, json={
                    "code": "VALIDATION_ERROR", "message": "The email must be a valid email address."})
            return httpx.Response(200, json={"data": {"url": OAUTH}})
        if request.method == "GET" and path == "/campaigns":
            return httpx.Response(200, json={"data": self.campaigns})
        if request.method == "GET" and path.startswith("/campaigns/"):
            if self.campaign is None:
                return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no such campaign"})
            return httpx.Response(200, json={"data": self.campaign})
        return httpx.Response(404, json={"code": "NOT_FOUND", "message": "unknown path"})


@pytest.fixture
def mailivery() -> Mailivery:
    return Mailivery()


@pytest.fixture
def mclient(mailivery: Mailivery) -> Iterator[MailiveryClient]:
    with MailiveryClient(API_KEY, BASE, transport=httpx.MockTransport(mailivery),
                         rate_per_second=0) as client:
        yield client


@pytest.fixture
def mflow(database_url: str, mclient: MailiveryClient) -> Iterator[MailboxFlow]:
    """A flow on a fresh database (SQLite, then PostgreSQL), talking to the scripted Mailivery."""
    flow = MailboxFlow(database_url, client=mclient, webhook_secret=SECRET)
    flow.create_schema()
    yield flow
    flow.store.dispose()


def raw_body(campaign_id_json: str) -> bytes:
    """A pending webhook whose campaign_id is the given JSON text, verbatim."""
    return (b'{"type": "campaign.pending", "action": "pending", "account": {"campaign_id": '
            + campaign_id_json.encode() + b', "email": "ada@contoso.com", "meta": ""}}')


def ok_kwargs(**change: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"owner_id": "u-1", "email": "ada@contoso.com", "first_name": "Ada",
                              "last_name": "Lovelace", "emails_per_day": 40, "response_rate": 30}
    kwargs.update(change)
    return kwargs


# -- 1. ids and limits ---------------------------------------------------------------------------

BAD_CAMPAIGN_IDS = {
    "2**63": str(2**63),
    "2**64": str(2**64),
    "-2**63-1": str(-(2**63) - 1),
    "-2**63": str(-(2**63)),
    "1000-digits": "9" * 1000,
    "4000-digits": "9" * 4000,
    "1e400": "1e400",
    "1e300": "1e300",
    "float-2**63": "9.223372036854775808e18",
    "float-above-2**53": "9007199254740993.0",
    "fraction": "12.5",
    "true": "true",
    "string-2**63": f'"{2**63}"',
    "string-19-nines": '"' + "9" * 19 + '"',
    "string-3000-digits": '"' + "9" * 3000 + '"',
    "string-float": '"12.0"',
}


@pytest.mark.parametrize("campaign_id", BAD_CAMPAIGN_IDS.values(), ids=BAD_CAMPAIGN_IDS.keys())
def test_out_of_range_campaign_id_is_a_payload_error(
    mflow: MailboxFlow, mailivery: Mailivery, campaign_id: str
) -> None:
    """A campaign id outside 1..2**63-1 (or not an integer) is invalid: stored as such, nothing sent."""
    with pytest.raises(WebhookPayloadError) as info:
        mflow.handle_webhook(raw_body(campaign_id), SECRET)
    assert "campaign id" in info.value.message
    assert counts(mflow) == (0, 0, 1)
    [stored] = mflow.deliveries()
    assert (stored.id, stored.status, stored.campaign_id) == (info.value.delivery_id, "invalid", None)
    assert mailivery.requests == []


def test_out_of_range_campaign_id_through_accept_webhook(mflow: MailboxFlow,
                                                         mailivery: Mailivery) -> None:
    """accept_webhook refuses it the same way."""
    with pytest.raises(WebhookPayloadError):
        mflow.accept_webhook(webhook_body(2**63, "ada@contoso.com"), SECRET)
    assert [d.status for d in mflow.deliveries()] == ["invalid"]
    assert counts(mflow) == (0, 0, 1) and mailivery.requests == []


@pytest.mark.parametrize("campaign_id", [MAX_ID, "9223372036854775807", 12.0, " 42 "])
def test_campaign_ids_in_range_are_read(mflow: MailboxFlow, mailivery: Mailivery,
                                        campaign_id: Any) -> None:
    """The largest id, a numeric string and an integral float are read (lenient) and stored."""
    body = json.dumps({"type": "campaign.pending",
                       "account": {"campaign_id": campaign_id, "email": "ada@contoso.com"}}).encode()
    result = mflow.handle_webhook(body, SECRET)
    assert result.outcome is Outcome.REJECTED  # nobody asked for it; Mailivery answers 404
    [stored] = mflow.deliveries()
    assert stored.campaign_id == int(str(campaign_id).strip().removesuffix(".0"))


def test_web_receiver_answers_400_to_a_huge_campaign_id(mflow: MailboxFlow,
                                                        mailivery: Mailivery) -> None:
    """Over HTTP the huge id is a 400 (do not retry), stored as invalid; the health check says ok."""
    with TestClient(create_app(mflow)) as http:
        answer = http.post(f"/webhooks/mailivery/{SECRET}", content=webhook_body(2**63, "a@b.co"))
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_payload"
        assert http.get("/healthz").status_code == 200
    assert [d.status for d in mflow.deliveries()] == ["invalid"]
    assert counts(mflow) == (0, 0, 1) and mailivery.requests == []


@pytest.mark.parametrize("limit", [10**30, 2**63, 1_000_001, 0, -1, True, 1.5, "10"])
def test_limits_out_of_range_are_invalid_input(mflow: MailboxFlow, limit: Any) -> None:
    """list() and deliveries() refuse limits that are not 1..1,000,000."""
    with pytest.raises(InvalidInput) as info:
        mflow.list(limit=limit)
    assert info.value.field == "limit"
    with pytest.raises(InvalidInput) as info:
        mflow.deliveries(limit=limit)
    assert info.value.field == "limit"


def test_largest_limit_is_accepted(mflow: MailboxFlow) -> None:
    assert mflow.list(limit=1_000_000) == [] and mflow.deliveries(limit=1_000_000) == []


@pytest.mark.parametrize("delivery_id", [2**63, 10**30, -(2**63) - 1, 0, -1, True, "1", 1.0, None])
def test_delivery_ids_out_of_range_are_invalid_input(mflow: MailboxFlow, mailivery: Mailivery,
                                                     delivery_id: Any) -> None:
    """process_delivery / reprocess_delivery: an id that cannot exist is InvalidInput, nothing done."""
    with pytest.raises(WebhookPayloadError):  # one stored (invalid) delivery with id 1
        mflow.handle_webhook(b"{}", SECRET)
    before = counts(mflow)
    for method in (mflow.process_delivery, mflow.reprocess_delivery):
        with pytest.raises(InvalidInput) as info:
            method(delivery_id)
        assert info.value.field == "delivery_id"
    assert counts(mflow) == before and mailivery.requests == []


@pytest.mark.parametrize("key", [10**30, 10**31, 2**63, 1.5, None, b"junk", "junk",
                                 "1" * 10_000, "a\x00b"])
def test_get_with_a_non_uuid_is_invalid_input(mflow: MailboxFlow, key: Any) -> None:
    """get() / history() / start_warmup() with anything but a UUID (or its text) → InvalidInput."""
    for method in (mflow.get, mflow.history, mflow.start_warmup):
        with pytest.raises(InvalidInput) as info:
            method(key)
        assert info.value.field == "mailbox_id"
    assert counts(mflow) == (0, 0, 0)


def _cli(database_url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setenv("MAILBOX_FLOW_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILBOX_FLOW_MAILIVERY_API_KEY", API_KEY)
    monkeypatch.setenv("MAILBOX_FLOW_MAILIVERY_BASE_URL", "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv("MAILBOX_FLOW_LOG_LEVEL", "WARNING")
    return CliRunner().invoke(cli.app, list(args))


def test_cli_list_with_a_huge_limit_exits_2(mflow: MailboxFlow, database_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`mailbox-flow list --limit 10**30` is a usage error (exit 2) naming the limit, no traceback."""
    result = _cli(database_url, monkeypatch, "list", "--limit", str(10**30))
    assert result.exit_code == 2, result.output
    assert "limit" in result.output and "1000000" in result.output.replace(",", "")
    assert "Traceback" not in result.output and "Overflow" not in result.output


def test_cli_webhook_replay_with_a_huge_id_exits_2(mflow: MailboxFlow, database_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`mailbox-flow webhook replay --id 2**63`: no such delivery (exit 2), no database error."""
    result = _cli(database_url, monkeypatch, "webhook", "replay", "--id", str(2**63))
    assert result.exit_code == 2, result.output
    assert "no stored delivery" in result.output and "database" not in result.output


@pytest.mark.parametrize("campaign_id", [2**63, 10**30, 0, -1, True, 1.5, "7"])
def test_client_refuses_campaign_ids_out_of_range(mclient: MailiveryClient, mailivery: Mailivery,
                                                  campaign_id: Any) -> None:
    """The client's campaign calls refuse an id Mailivery cannot have, before sending."""
    for call in (mclient.get_campaign, mclient.start_warmup, mclient.delete_campaign):
        with pytest.raises(InvalidInput) as info:
            call(campaign_id)
        assert info.value.field == "campaign_id"
    assert mailivery.requests == []


@pytest.mark.parametrize("bad_id", [2**63, 10**30, "9" * 19, 1e300])
def test_a_huge_campaign_id_from_mailivery_is_a_response_error(
    mclient: MailiveryClient, mailivery: Mailivery, bad_id: Any
) -> None:
    """A campaign Mailivery returns with an out-of-range id is a response error (list: skipped)."""
    mailivery.campaign = {"id": bad_id, "email": "ada@contoso.com", "status": "pending"}
    with pytest.raises(MailiveryResponseError):
        mclient.get_campaign(5)
    mailivery.campaigns = [mailivery.campaign, {"id": MAX_ID, "email": "b@contoso.com"}]
    assert [c.id for c in mclient.list_campaigns()] == [MAX_ID]


# -- 2. request_connection input ---------------------------------------------------------------

BAD_CONNECT = {
    "owner_id-surrogate": ("owner_id", {"owner_id": "\ud800"}),
    "owner_id-nul": ("owner_id", {"owner_id": "user\x00-1"}),
    "owner_id-newline": ("owner_id", {"owner_id": "user\n1"}),
    "owner_id-int": ("owner_id", {"owner_id": 42}),
    "email-surrogate": ("email", {"email": "ada\ud800@contoso.com"}),
    "email-nul": ("email", {"email": "ada\x00@contoso.com"}),
    "first_name-surrogate": ("first_name", {"first_name": "A\udfffda"}),
    "first_name-nul": ("first_name", {"first_name": "A\x00da"}),
    "last_name-surrogate": ("last_name", {"last_name": "\ud800"}),
    "last_name-nul": ("last_name", {"last_name": "Love\x00lace"}),
    "last_name-int": ("last_name", {"last_name": 5}),
    "timezone-surrogate": ("timezone", {"timezone": "\ud800"}),
    "timezone-nul": ("timezone", {"timezone": "Europe/Paris\x00"}),
    "tags-surrogate": ("tags", {"tags": ["ok", "\ud800"]}),
    "tags-nul": ("tags", {"tags": ["a\x00b"]}),
    "tags-str": ("tags", {"tags": "a,b"}),
    "emails_per_day-huge": ("email_per_day", {"emails_per_day": 10**30}),
    "emails_per_day-float": ("email_per_day", {"emails_per_day": 30.0}),
    "emails_per_day-bool": ("email_per_day", {"emails_per_day": True}),
    "emails_per_day-str": ("email_per_day", {"emails_per_day": "40"}),
    "response_rate-float": ("response_rate", {"response_rate": 30.0}),
    "response_rate-nan": ("response_rate", {"response_rate": float("nan")}),
    "response_rate-huge": ("response_rate", {"response_rate": -(10**30)}),
    "response_rate-bool": ("response_rate", {"response_rate": False}),
}


@pytest.mark.parametrize(("field", "change"), BAD_CONNECT.values(), ids=BAD_CONNECT.keys())
def test_bad_connect_input_is_invalid_input(mflow: MailboxFlow, mailivery: Mailivery, field: str,
                                            change: dict[str, Any]) -> None:
    """Every text and number parameter: InvalidInput naming it, no call, no row."""
    kwargs = ok_kwargs(**change)
    timezone, tags = kwargs.pop("timezone", None), kwargs.pop("tags", None)
    with pytest.raises(InvalidInput) as info:
        mflow.request_connection(**kwargs, timezone=timezone, tags=tags)
    assert info.value.field == field
    assert counts(mflow) == (0, 0, 0) and mailivery.requests == []


any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates, NUL, ...
nasty = st.sampled_from(["\ud800", "a\x00b", "\udcff", " ", "", "x" * 256])


def mostly(valid: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually the valid value (so one bad field at a time is common), else anything."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), any_text, nasty, *others)


numbers = st.integers() | st.sampled_from([10**30, -(2**63), 30.0, True, None, "40"])
fresh_emails = st.integers(0, 10**9).map(lambda n: f"user{n}@contoso.com")
emails = st.one_of(fresh_emails, fresh_emails, fresh_emails, any_text, nasty,
                   st.builds(lambda local, domain: f"{local}@{domain}", any_text, any_text),
                   st.sampled_from(["\u0430da@contoso.com", "ada@c\u00f6ntoso.com",
                                    "\u212ada@contoso.com", "a\x00@b.co"]))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(owner_id=mostly("user-1"), email=emails, first_name=mostly("Ada"),
       last_name=mostly(None), emails_per_day=mostly(40, numbers), response_rate=mostly(30, numbers),
       timezone=mostly(None, st.just("Europe/Paris")), tags=mostly(None, st.lists(any_text, max_size=3)))
def test_request_connection_returns_a_mailbox_or_raises_invalid_input(
    mflow: MailboxFlow, mailivery: Mailivery, owner_id: Any, email: Any, first_name: Any,
    last_name: Any, emails_per_day: Any, response_rate: Any, timezone: Any, tags: Any,
) -> None:
    """Arbitrary input: a mailbox in oauth_sent, or InvalidInput with no call and no row, never else."""
    before, calls = counts(mflow), len(mailivery.requests)
    try:
        mailbox = mflow.request_connection(
            owner_id, email, first_name, last_name, emails_per_day, response_rate,
            timezone=timezone, tags=tags,
        )
    except InvalidInput as exc:
        assert exc.field
        assert counts(mflow) == before and len(mailivery.requests) == calls
    except DuplicateMailbox as exc:  # an address an earlier example connected already
        assert mflow.find_by_email(exc.email) is not None
        assert counts(mflow) == before and len(mailivery.requests) == calls
    else:
        assert mailbox.state is State.OAUTH_SENT and mailbox.email.isascii()
        assert len(mailivery.requests) == calls + 1


# -- 3. webhook bodies that are not bytes ---------------------------------------------------------


@pytest.mark.parametrize("body", [None, [1, 2], [], 5, 0, 1.5, True, object(), {1, 2}],
                         ids=["None", "list", "empty-list", "int", "zero", "float", "bool", "object",
                              "set"])
@pytest.mark.parametrize("intake", ["handle_webhook", "accept_webhook"])
def test_a_body_that_is_not_bytes_is_a_payload_error(mflow: MailboxFlow, mailivery: Mailivery,
                                                     body: Any, intake: str) -> None:
    """None, lists, numbers, other objects: WebhookPayloadError, stored as invalid (empty body)."""
    with pytest.raises(WebhookPayloadError) as info:
        getattr(mflow, intake)(body, SECRET)
    assert "bytes" in info.value.message
    [stored] = mflow.deliveries()
    assert (stored.id, stored.status, stored.body) == (info.value.delivery_id, "invalid", b"")
    assert counts(mflow) == (0, 0, 1) and mailivery.requests == []


def test_a_body_that_is_not_bytes_with_a_bad_secret_stores_nothing(mflow: MailboxFlow) -> None:
    with pytest.raises(WebhookAuthError):
        mflow.handle_webhook(None, "wrong")  # type: ignore[arg-type]
    assert counts(mflow) == (0, 0, 0)


def test_a_mapping_body_is_read_like_its_json(mflow: MailboxFlow, mailivery: Mailivery) -> None:
    """A mapping (a framework's parsed JSON) is accepted: stored as its JSON text, then processed."""
    payload = json.loads(webhook_body(77, "ada@contoso.com"))
    result = mflow.handle_webhook(payload, SECRET)
    assert result.outcome is Outcome.REJECTED
    [stored] = mflow.deliveries()
    assert json.loads(stored.body) == payload and stored.campaign_id == 77
    # the same delivery as bytes is a duplicate of it
    assert mflow.handle_webhook(webhook_body(77, "ada@contoso.com"), SECRET).outcome is Outcome.DUPLICATE


@pytest.mark.parametrize("payload", [{"type": "campaign.pending", "account": {"campaign_id": float("nan")}},
                                     {"type": "campaign.pending", "x": {1, 2}},
                                     {"type": "campaign.pending",
                                      "account": {"campaign_id": 1, "email": "\ud800@b.co"}}])
def test_a_mapping_that_is_not_json_is_a_payload_error(mflow: MailboxFlow, mailivery: Mailivery,
                                                       payload: Any) -> None:
    with pytest.raises(WebhookPayloadError):
        mflow.handle_webhook(payload, SECRET)
    assert [d.status for d in mflow.deliveries()] == ["invalid"]
    assert counts(mflow) == (0, 0, 1) and mailivery.requests == []


@pytest.mark.parametrize("body", ['{"type": "campaign.pending", "x": "\ud800"}', "\udcff{}"])
def test_a_str_body_with_lone_surrogates_is_a_payload_error(mflow: MailboxFlow,
                                                            mailivery: Mailivery, body: str) -> None:
    with pytest.raises(WebhookPayloadError):
        mflow.handle_webhook(body, SECRET)
    assert [d.status for d in mflow.deliveries()] == ["invalid"]
    assert counts(mflow) == (0, 0, 1) and mailivery.requests == []


# -- 4. non-ASCII addresses and a refused connect call ------------------------------------------------

NON_ASCII = {
    "cyrillic-a": "\u0430da@contoso.com",
    "idn-domain": "ada@c\u00f6ntoso.com",
    "kelvin-sign": "\u212ada@contoso.com",  # lowercases to plain ASCII "k": still refused
    "fullwidth": "\uff41da@contoso.com",
    "accented-local": "ad\u00e9@contoso.com",
    "dotless-i": "\u0131da@contoso.com",
}


@pytest.mark.parametrize("email", NON_ASCII.values(), ids=NON_ASCII.keys())
def test_non_ascii_addresses_are_refused_before_anything_is_sent(
    mflow: MailboxFlow, mailivery: Mailivery, email: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        mflow.request_connection(**ok_kwargs(email=email))
    assert info.value.field == "email" and "ASCII" in info.value.message
    assert counts(mflow) == (0, 0, 0) and mailivery.requests == []


def test_a_punycode_domain_is_accepted(mflow: MailboxFlow, mailivery: Mailivery) -> None:
    """The ASCII (punycode) form of an IDN domain is an ordinary address."""
    mailbox = mflow.request_connection(**ok_kwargs(email="Ada@XN--cntoso-jua.com"))
    assert mailbox.email == "ada@xn--cntoso-jua.com" and mailbox.state is State.OAUTH_SENT


@pytest.mark.parametrize("status", [400, 409, 422])
def test_a_connect_refused_by_mailivery_frees_the_address(mflow: MailboxFlow, mailivery: Mailivery,
                                                          status: int) -> None:
    """Mailivery refusing the input: the mailbox is expired (audited), the address is free again."""
    mailivery.connect_status = status
    with pytest.raises(MailiveryValidationError) as info:
        mflow.request_connection(**ok_kwargs())
    refused = mflow.find_by_email("ada@contoso.com")
    assert refused is not None and refused.state is State.EXPIRED
    [audit] = mflow.history(refused.id)
    assert (audit.trigger, audit.from_state, audit.to_state) == ("expire", State.REQUESTED,
                                                                 State.EXPIRED)
    assert audit.detail["reason"] == "connect_refused"
    assert audit.detail["refused_request_id"] == info.value.request_id
    assert audit.detail["status"] == status and audit.detail["code"] == "VALIDATION_ERROR"
    assert "MailiveryValidationError" in audit.detail["error"]
    assert len(mailivery.requests) == 1

    mailivery.connect_status = 200  # another owner (or the same one, fixed input) may ask again
    again = mflow.request_connection(**ok_kwargs(owner_id="someone-else"))
    assert again.id != refused.id and again.state is State.OAUTH_SENT
    assert len(mailivery.requests) == 2


def test_a_connect_that_could_not_be_asked_still_waits_in_requested(mflow: MailboxFlow,
                                                                    mailivery: Mailivery) -> None:
    """Unchanged: 5xx after the retries keeps `requested` for the owner's retry (not expired)."""
    mailivery.connect_status = 503
    with pytest.raises(Exception):  # noqa: B017 - MailiveryServerError
        mflow.request_connection(**ok_kwargs())
    waiting = mflow.find_by_email("ada@contoso.com")
    assert waiting is not None and waiting.state is State.REQUESTED
    assert mflow.history(waiting.id) == []
