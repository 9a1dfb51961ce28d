"""`MailiveryClient` over `httpx.MockTransport`: headers, bodies, errors, retries, limits, logs.

Every test that makes its client with `make_client` runs twice: on `MailiveryClient` and on
`AsyncMailiveryClient` (driven from the test through `Blocking`, which runs each awaited call on an
event loop of its own), since both must keep the same contract.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import inspect
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import stamina
import tenacity
from structlog.testing import capture_logs

from mailbox_flow.errors import (
    ConfigurationError,
    InvalidInput,
    MailiveryAuthError,
    MailiveryError,
    MailiveryNotFound,
    MailiveryRateLimited,
    MailiveryResponseError,
    MailiveryServerError,
    MailiveryTransportError,
    MailiveryValidationError,
)
from mailbox_flow.mailivery import (
    CORRELATION_META_KEY,
    PATHS,
    AsyncMailiveryClient,
    Campaign,
    MailiveryClient,
    RateLimiter,
    parse_retry_after,
)

API_KEY = "mk_live_9f8e7d6c5b4a-SECRET"
BASE = "https://mailivery.test/api/v1"
OAUTH_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?state=OAUTHSECRET"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        # a fresh copy each time: one scripted response may serve both faces' clients
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())


def _fail_if_called(request: httpx.Request) -> httpx.Response:
    pytest.fail(f"no request expected, got {request.method} {request.url.path}")


class Blocking:
    """An `AsyncMailiveryClient` called like a `MailiveryClient`: each coroutine method runs to its end
    on this adapter's own event loop; ``close`` awaits ``aclose``."""

    def __init__(self, client: AsyncMailiveryClient) -> None:
        self._client = client
        self._runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if inspect.iscoroutinefunction(value):
            return lambda *args, **kwargs: self._runner.run(value(*args, **kwargs))
        return value

    def __repr__(self) -> str:
        return repr(self._client)

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.aclose())

    def finish(self) -> None:
        """Close the client (if the test did not) and the event loop."""
        if not self._client.closed:
            self.close()
        self._runner.close()


_FACE: dict[str, str] = {"face": "sync"}
_OPENED: list[Blocking] = []


@pytest.fixture(autouse=True, params=["sync", "async"])
def face(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which client `make_client` makes: `MailiveryClient` or `AsyncMailiveryClient`."""
    _FACE["face"] = request.param
    yield request.param
    while _OPENED:
        _OPENED.pop().finish()
    _FACE["face"] = "sync"


def make_client(handler: Handler, **kwargs: Any) -> MailiveryClient:
    kwargs.setdefault("rate_per_second", 0)
    transport = httpx.MockTransport(handler)
    if _FACE["face"] == "async":
        blocking = Blocking(AsyncMailiveryClient(API_KEY, BASE, transport=transport, **kwargs))
        _OPENED.append(blocking)
        return blocking  # type: ignore[return-value]  # the same methods, run to their end
    return MailiveryClient(API_KEY, BASE, transport=transport, **kwargs)


def ok(payload: Any = None, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=payload if payload is not None else {"success": True})


def error(
    status: int, code: str | None = None, message: str | None = None, **headers: str
) -> httpx.Response:
    body: dict[str, str] = {}
    if code is not None:
        body["code"] = code
    if message is not None:
        body["message"] = message
    return httpx.Response(status, json=body, headers=headers)


def form_fields(request: httpx.Request) -> dict[str, str]:
    """Parse a multipart/form-data request body into {name: value}."""
    raw = (
        b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
    )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert message.is_multipart()
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert part.get_filename() is None
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        fields[name] = payload.decode()
    return fields


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Real stamina backoff (testing mode off) with tenacity's sleep recorded instead of slept."""
    recorded: list[float] = []
    real_sleep, test_thread = asyncio.sleep, threading.get_ident()

    async def record(delay: float, result: Any = None) -> Any:  # what the async face's waits await
        if threading.get_ident() != test_thread:  # another thread's event loop (a test server's)
            return await real_sleep(delay, result)
        recorded.append(delay)
        return result

    monkeypatch.setattr(tenacity.nap, "time", types.SimpleNamespace(sleep=recorded.append))
    monkeypatch.setattr(asyncio, "sleep", record)
    was_active = stamina.is_active()
    stamina.set_active(True)
    with stamina.set_testing(False):
        yield recorded
    stamina.set_active(was_active)


CONNECT_KW: dict[str, Any] = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "Ada@Contoso.com",
}


# -- construction --------------------------------------------------------------------------------


class TestConstruction:
    @pytest.mark.parametrize("key", ["", "   ", None])
    def test_empty_api_key_is_a_configuration_error(self, key: Any) -> None:
        """An empty API key raises ConfigurationError."""
        with pytest.raises(ConfigurationError):
            MailiveryClient(key)

    @pytest.mark.parametrize(
        "url", ["ftp://x.test/api", "mailivery.test/api", "https://", "", "https://x.test/?a=1"]
    )
    def test_base_url_must_be_http(self, url: str) -> None:
        """A base URL that is not absolute http(s) raises ConfigurationError."""
        with pytest.raises(ConfigurationError):
            MailiveryClient(API_KEY, url)

    def test_repr_hides_the_key(self) -> None:
        """repr() shows the base URL but not the key."""
        with MailiveryClient(API_KEY, BASE) as client:
            assert API_KEY not in repr(client) and BASE in repr(client)

    def test_context_manager_closes(self) -> None:
        """Leaving the with-block closes the HTTP client."""
        with make_client(_fail_if_called) as client:
            pass
        assert client.closed

    def test_base_url_path_is_kept(self) -> None:
        """Paths are appended to the base URL's /api/v1 prefix."""
        rec = Recorder(ok({"id": 5}))
        make_client(rec).get_campaign(5)
        assert str(rec.requests[0].url) == "https://mailivery.test/api/v1/campaigns/5"


    def test_clients_share_one_tls_context(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The certificate bundle is loaded once per process, not once per client."""
        import ssl

        from mailbox_flow.mailivery import _base as client_base
        from mailbox_flow.mailivery import client as client_module

        loads: list[Any] = []
        real_load = ssl.SSLContext.load_verify_locations

        def counting_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
            loads.append(args or kwargs)
            real_load(self, *args, **kwargs)

        monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting_load)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        client_base._tls_context.cache_clear()
        for _ in range(3):
            MailiveryClient(API_KEY, BASE).close()
        assert len(loads) == 1
        context = client_module.shared_tls_context()
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname

    def test_tls_context_follows_ssl_cert_file(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """SSL_CERT_FILE (a private CA's bundle) is honoured, as httpx would on its own."""
        import certifi

        from mailbox_flow.mailivery.client import shared_tls_context

        default = shared_tls_context()
        monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
        custom = shared_tls_context()
        assert custom is not default and custom is shared_tls_context()
        monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
        with pytest.raises(ConfigurationError, match=r"SSL_CERT_FILE=/nonexistent/ca\.pem"):
            MailiveryClient(API_KEY, BASE)

# -- headers -------------------------------------------------------------------------------------


class TestHeaders:
    def test_bearer_and_accept(self) -> None:
        """Every request carries the bearer key and Accept: application/json."""
        rec = Recorder(ok([]))
        make_client(rec).list_campaigns()
        headers = rec.requests[0].headers
        assert (f"Bearer {API_KEY}", "application/json") == (
            headers["authorization"],
            headers["accept"],
        )

    def test_request_id_is_a_fresh_uuid4(self) -> None:
        """Without a caller id, each call gets its own uuid4 X-Request-ID."""
        rec = Recorder(ok([]))
        client = make_client(rec)
        client.list_campaigns()
        client.list_campaigns()
        ids = [r.headers["x-request-id"] for r in rec.requests]
        assert [uuid.UUID(i).version for i in ids] == [4, 4] and ids[0] != ids[1]

    def test_request_id_header_name_is_configurable(self) -> None:
        """request_id_header renames the header."""
        rec = Recorder(ok([]))
        make_client(rec, request_id_header="X-Correlation-Id").list_campaigns(request_id="abc-1")
        assert (
            rec.requests[0].headers.get("x-correlation-id"),
            rec.requests[0].headers.get("x-request-id"),
        ) == ("abc-1", None)

    def test_callers_request_id_is_reused_across_retries(self, sleeps: list[float]) -> None:
        """All attempts of one call carry the caller's request id."""
        rec = Recorder(error(500), error(502), ok({"id": 1}))
        make_client(rec).get_campaign(1, request_id="rid-42")
        assert [r.headers["x-request-id"] for r in rec.requests] == ["rid-42"] * 3

    def test_generated_request_id_is_reused_across_retries(self, sleeps: list[float]) -> None:
        """A generated request id stays the same on every retry of one call."""
        rec = Recorder(error(503), ok({}))
        make_client(rec).start_warmup(1)
        assert len({r.headers["x-request-id"] for r in rec.requests}) == 1

    def test_user_agent(self) -> None:
        """user_agent sets the User-Agent header."""
        rec = Recorder(ok([]))
        make_client(rec, user_agent="partner/1.0").list_campaigns()
        assert rec.requests[0].headers["user-agent"] == "partner/1.0"


# -- connect_microsoft -----------------------------------------------------------------------------


class TestConnect:
    def test_sends_multipart_snake_case_fields(self) -> None:
        """POST /campaigns/microsoft as multipart/form-data with snake_case fields."""
        rec = Recorder(ok({"success": True, "data": {"url": OAUTH_URL}}))
        make_client(rec).connect_microsoft(
            **CONNECT_KW,
            email_per_day=45,
            response_rate=35,
            owner_email="Boss@Contoso.com",
            timezone="Europe/Paris",
            tags=["gold", "agency"],
        )
        request = rec.requests[0]
        assert (request.method, request.url.path) == ("POST", "/api/v1/campaigns/microsoft")
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert form_fields(request) == {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@contoso.com",
            "email_per_day": "45",
            "response_rate": "35",
            "owner_email": "boss@contoso.com",
            "timezone": "Europe/Paris",
            "tags": "gold,agency",
        }

    def test_sends_meta_as_bracketed_fields(self) -> None:
        """Each meta item becomes a `meta[<key>]` form field."""
        rec = Recorder(ok({"data": {"url": OAUTH_URL}}))
        make_client(rec).connect_microsoft(
            first_name="Ada", email="ada@contoso.com", meta={CORRELATION_META_KEY: "tok-1"}
        )
        fields = form_fields(rec.requests[0])
        assert fields[f"meta[{CORRELATION_META_KEY}]"] == "tok-1"

    def test_minimal_call_is_still_multipart(self) -> None:
        """With only the required fields the body is multipart with the defaults."""
        rec = Recorder(ok({"data": {"url": OAUTH_URL}}))
        make_client(rec).connect_microsoft(first_name="Ada", email="ada@contoso.com")
        assert form_fields(rec.requests[0]) == {
            "first_name": "Ada",
            "email": "ada@contoso.com",
            "email_per_day": "40",
            "response_rate": "30",
        }

    def test_url_from_data(self) -> None:
        """The OAuth URL is read from data.url."""
        rec = Recorder(ok({"success": True, "data": {"url": OAUTH_URL}}))
        assert make_client(rec).connect_microsoft(**CONNECT_KW).url == OAUTH_URL

    def test_url_from_bare_body(self) -> None:
        """The OAuth URL falls back to a top-level url."""
        rec = Recorder(ok({"url": OAUTH_URL}))
        assert make_client(rec).connect_microsoft(**CONNECT_KW).url == OAUTH_URL

    def test_loopback_base_url_accepts_loopback_http_url(self) -> None:
        """A client on a loopback http base (the simulator) accepts its http consent URL."""
        url = "http://127.0.0.1:8123/oauth/consent/tok?state=s"
        client = MailiveryClient(
            API_KEY,
            "http://127.0.0.1:8123/api/v1",
            transport=httpx.MockTransport(Recorder(ok({"data": {"url": url}}))),
            rate_per_second=0,
        )
        assert client.connect_microsoft(**CONNECT_KW).url == url

    @pytest.mark.parametrize(
        "response",
        [
            ok({"data": {"url": OAUTH_URL.replace("https", "http")}}),
            ok({"data": {"url": "/oauth?state=OAUTHSECRET"}}),
            ok({"success": True, "data": {}}),
            ok({"success": True}),
            httpx.Response(200, text="<html>OAUTHSECRET</html>"),
            httpx.Response(200),
        ],
    )
    def test_unusable_url_is_a_response_error(self, response: httpx.Response) -> None:
        """No absolute https URL → MailiveryResponseError with context, URL not echoed."""
        with pytest.raises(MailiveryResponseError) as info:
            make_client(Recorder(response)).connect_microsoft(**CONNECT_KW, request_id="rid-9")
        exc = info.value
        assert (
            exc.request_id,
            exc.method,
            exc.path,
            exc.status_code,
        ) == ("rid-9", "POST", "/campaigns/microsoft", 200)
        assert "OAUTHSECRET" not in str(exc)


# -- reading campaigns -----------------------------------------------------------------------------


class TestReading:
    def test_get_campaign_unwraps_data(self) -> None:
        """GET /campaigns/{id} unwraps a data envelope."""
        rec = Recorder(
            ok({"success": True, "data": {"id": 198, "email": "A@B.co", "status_code": "pending"}})
        )
        campaign = make_client(rec).get_campaign(198)
        assert (
            rec.requests[0].method,
            rec.requests[0].url.path,
        ) == ("GET", "/api/v1/campaigns/198")
        assert (campaign.id, campaign.email, campaign.status) == (198, "a@b.co", "pending")

    def test_get_campaign_bare_keeps_unknown_fields(self) -> None:
        """A bare campaign object is read and unknown fields are kept in raw."""
        rec = Recorder(ok({"id": "7", "grade": "A", "connection_problem": False}))
        campaign = make_client(rec).get_campaign(7)
        assert (
            campaign.id,
            campaign.raw["grade"],
            campaign.raw["connection_problem"],
        ) == (7, "A", False)

    def test_get_campaign_without_id_is_a_response_error(self) -> None:
        """A 200 without a usable campaign id raises MailiveryResponseError."""
        with pytest.raises(MailiveryResponseError) as info:
            make_client(Recorder(ok({"data": {"email": "a@b.co"}}))).get_campaign(7, request_id="r")
        assert (info.value.request_id, info.value.path) == ("r", "/campaigns/7")

    @pytest.mark.parametrize(
        "payload",
        [
            [{"id": 1}, {"id": 2}],
            {"data": [{"id": 1}, {"id": 2}]},
            {"success": True, "data": {"data": [{"id": 1}, {"id": 2}], "total": 2}},
            {"campaigns": [{"id": 1}, {"id": 2}]},
        ],
    )
    def test_list_campaigns_shapes(self, payload: Any) -> None:
        """GET /campaigns accepts a bare array and the envelopes seen in the wild."""
        rec = Recorder(ok(payload))
        assert [c.id for c in make_client(rec).list_campaigns()] == [1, 2]
        assert rec.requests[0].url.path == "/api/v1/campaigns"

    def test_list_campaigns_skips_entries_without_id(self) -> None:
        """Entries without a usable id are skipped; the rest are kept whole."""
        payload = {"data": [{"id": 1, "extra": {"x": 1}}, {"email": "a@b.co"}, "junk", {"id": "2"}]}
        campaigns = make_client(Recorder(ok(payload))).list_campaigns()
        assert [
            Campaign.from_api({"id": 1, "extra": {"x": 1}}),
            Campaign.from_api({"id": "2"}),
        ] == campaigns

    def test_list_campaigns_empty(self) -> None:
        """An empty list is a valid answer."""
        assert make_client(Recorder(ok({"data": []}))).list_campaigns() == []

    def test_list_campaigns_without_a_list_is_a_response_error(self) -> None:
        """A 200 with no list anywhere raises MailiveryResponseError."""
        with pytest.raises(MailiveryResponseError):
            make_client(Recorder(ok({"data": {"id": 1}}))).list_campaigns()


# -- warm-up and delete -----------------------------------------------------------------------


class TestActions:
    @pytest.mark.parametrize(
        ("method_name", "http_method", "path"),
        [
            ("start_warmup", "PATCH", "/api/v1/campaigns/12/start-warmup"),
            ("resume_warmup", "PATCH", "/api/v1/campaigns/12/resume-warmup"),
            ("pause_warmup", "PATCH", "/api/v1/campaigns/12/pause-warmup"),
            ("delete_campaign", "DELETE", "/api/v1/campaigns/12"),
        ],
    )
    def test_method_path_and_no_body(self, method_name: str, http_method: str, path: str) -> None:
        """Each action uses its method and path and sends no body."""
        rec = Recorder(ok({"success": True, "data": {"id": 12, "status_code": "active"}}))
        result = getattr(make_client(rec), method_name)(12)
        request = rec.requests[0]
        assert (http_method, path, b"") == (request.method, request.url.path, request.content)
        assert result == {"id": 12, "status_code": "active"}

    @pytest.mark.parametrize(
        "response", [httpx.Response(200), httpx.Response(204), httpx.Response(200, text="OK")]
    )
    def test_empty_or_non_json_body_gives_empty_dict(self, response: httpx.Response) -> None:
        """An empty or non-JSON success body returns {}."""
        assert make_client(Recorder(response)).pause_warmup(3) == {}

    def test_bare_object_is_returned(self) -> None:
        """A success body without a data envelope is returned as is."""
        assert make_client(Recorder(ok({"success": True, "message": "started"}))).start_warmup(
            3
        ) == {"success": True, "message": "started"}

    def test_paths_are_in_one_table(self) -> None:
        """Every call's path lives in the PATHS table."""
        assert {
            "connect_microsoft",
            "list_campaigns",
            "get_campaign",
            "delete_campaign",
            "start_warmup",
            "resume_warmup",
            "pause_warmup",
        } == set(PATHS)


# -- input validation: nothing is sent -------------------------------------------------------------

ID_METHODS = ["get_campaign", "start_warmup", "resume_warmup", "pause_warmup", "delete_campaign"]


class TestInvalidInput:
    @pytest.mark.parametrize("method_name", ID_METHODS)
    @pytest.mark.parametrize("campaign_id", [0, -1, True, "5", 1.0, None])
    def test_bad_campaign_id(self, method_name: str, campaign_id: Any) -> None:
        """A campaign id that is not a positive int raises InvalidInput before any request."""
        with pytest.raises(InvalidInput) as info:
            getattr(make_client(_fail_if_called), method_name)(campaign_id)
        assert info.value.field == "campaign_id"

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"first_name": ""}, "first_name"),
            ({"first_name": "x" * 256}, "first_name"),
            ({"last_name": "x" * 256}, "last_name"),
            ({"email": "ada@contoso"}, "email"),
            ({"email": "a" * 250 + "@x.com"}, "email"),
            ({"email_per_day": 2001}, "email_per_day"),
            ({"email_per_day": -1}, "email_per_day"),
            ({"response_rate": 101}, "response_rate"),
            ({"response_rate": True}, "response_rate"),
            ({"owner_email": "nobody"}, "owner_email"),
            ({"timezone": "Nowhere/City"}, "timezone"),
            ({"tags": ["ok", ""]}, "tags"),
            ({"meta": {"bad key": "x"}}, "meta"),
            ({"meta": {CORRELATION_META_KEY: "x" * 256}}, "meta"),
            ({"request_id": ""}, "request_id"),
            ({"request_id": "a\r\nX-Evil: 1"}, "request_id"),
        ],
    )
    def test_bad_connect_input(self, overrides: dict[str, Any], field: str) -> None:
        """Invalid connect input raises InvalidInput naming the field before any request."""
        kwargs = {**CONNECT_KW, **overrides}
        with pytest.raises(InvalidInput) as info:
            make_client(_fail_if_called).connect_microsoft(**kwargs)
        assert field == info.value.field

    def test_bad_request_id_on_list(self) -> None:
        """A non-string request id raises InvalidInput before any request."""
        with pytest.raises(InvalidInput):
            make_client(_fail_if_called).list_campaigns(request_id=123)  # type: ignore[arg-type]


# -- error mapping --------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (400, MailiveryValidationError),
            (401, MailiveryAuthError),
            (403, MailiveryAuthError),
            (404, MailiveryNotFound),
            (409, MailiveryValidationError),
            (422, MailiveryValidationError),
            (418, MailiveryError),
            (429, MailiveryRateLimited),
            (500, MailiveryServerError),
            (502, MailiveryServerError),
            (503, MailiveryServerError),
        ],
    )
    def test_status_maps_to_error_class(self, status: int, cls: type[MailiveryError]) -> None:
        """Each status raises its error class carrying code, message and context."""
        client = make_client(Recorder(error(status, "SOME_CODE", "it went wrong")), max_attempts=1)
        with stamina.set_testing(True, attempts=1), pytest.raises(MailiveryError) as info:
            client.start_warmup(9, request_id="rid-1")
        exc = info.value
        assert cls is type(exc)
        assert (
            "SOME_CODE",
            "it went wrong",
            status,
            "rid-1",
            "PATCH",
            "/campaigns/9/start-warmup",
        ) == (
            exc.code,
            exc.message,
            exc.status_code,
            exc.request_id,
            exc.method,
            exc.path,
        )

    def test_documented_forbidden_code(self) -> None:
        """403 MS_GRAPH_FEATURE_DISABLED keeps Mailivery's code."""
        rec = Recorder(error(403, "MS_GRAPH_FEATURE_DISABLED", "not allowed"))
        with pytest.raises(MailiveryAuthError) as info:
            make_client(rec).list_campaigns()
        assert info.value.code == "MS_GRAPH_FEATURE_DISABLED"

    @pytest.mark.parametrize(
        "response",
        [
            httpx.Response(404),
            httpx.Response(404, text="<h1>Not Found</h1>"),
            httpx.Response(404, json=["x"]),
        ],
    )
    def test_error_without_envelope(self, response: httpx.Response) -> None:
        """A missing or non-JSON error body still gives a typed error with a default message."""
        with pytest.raises(MailiveryNotFound) as info:
            make_client(Recorder(response)).get_campaign(4)
        assert (info.value.code, info.value.status_code) == (None, 404)
        assert "404" in info.value.message

    def test_validation_field_errors_are_summarized(self) -> None:
        """Laravel-style `errors` are appended to the message."""
        body = {
            "message": "The given data was invalid.",
            "errors": {"email": ["The email is taken."]},
        }
        with pytest.raises(MailiveryValidationError) as info:
            make_client(Recorder(httpx.Response(422, json=body))).connect_microsoft(**CONNECT_KW)
        assert "email: The email is taken." in info.value.message

    def test_error_message_never_contains_the_key(self) -> None:
        """A server message echoing the API key is scrubbed."""
        rec = Recorder(error(401, "UNAUTHORIZED", f"bad token Bearer {API_KEY}"))
        with pytest.raises(MailiveryAuthError) as info:
            make_client(rec).list_campaigns()
        assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)

    def test_redirect_is_not_followed(self) -> None:
        """A 3xx is an error, never followed."""
        rec = Recorder(httpx.Response(302, headers={"Location": "https://evil.test/"}))
        with pytest.raises(MailiveryError):
            make_client(rec).list_campaigns()
        assert len(rec.requests) == 1

    def test_closed_client_refuses_calls(self) -> None:
        """A closed client raises RuntimeError without sending."""
        client = make_client(_fail_if_called)
        client.close()
        with pytest.raises(RuntimeError):
            client.list_campaigns()


# -- retries --------------------------------------------------------------------------------------


class TestRetries:
    def test_429_then_200_honours_retry_after(self, sleeps: list[float]) -> None:
        """A 429 with Retry-After: 2 waits exactly 2 s, then succeeds."""
        rec = Recorder(
            error(429, "RATE_LIMIT_EXCEEDED", "slow down", **{"Retry-After": "2"}), ok([])
        )
        assert make_client(rec).list_campaigns() == []
        assert (sleeps, len(rec.requests)) == ([2.0], 2)

    def test_503_retry_after_http_date(self, sleeps: list[float]) -> None:
        """A 503 Retry-After given as an HTTP date is honoured (about 3 s from now)."""
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
        rec = Recorder(error(503, **{"Retry-After": when}), ok({"id": 1}))
        make_client(rec).get_campaign(1)
        assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 4.0

    def test_retry_after_is_capped_at_backoff_max(self, sleeps: list[float]) -> None:
        """A huge Retry-After waits backoff_max at most."""
        rec = Recorder(error(429, **{"Retry-After": "3600"}), ok([]))
        make_client(rec, backoff_max=5.0).list_campaigns()
        assert sleeps == [5.0]

    def test_429_without_retry_after_backs_off_exponentially(self, sleeps: list[float]) -> None:
        """Without Retry-After the waits grow exponentially with jitter."""
        rec = Recorder(error(429), error(429), error(429), ok([]))
        make_client(rec, backoff_initial=0.5, backoff_max=30.0).list_campaigns()
        assert len(sleeps) == 3
        for n, wait in enumerate(sleeps):
            assert 0.5 * 2**n <= wait <= 0.5 * 2**n + 0.5

    def test_429_after_all_attempts_raises_rate_limited(self, sleeps: list[float]) -> None:
        """Persistent 429 raises MailiveryRateLimited carrying retry_after after max_attempts."""
        rec = Recorder(error(429, "RATE_LIMIT_EXCEEDED", "slow down", **{"Retry-After": "1"}))
        with pytest.raises(MailiveryRateLimited) as info:
            make_client(rec, max_attempts=3).list_campaigns()
        assert (
            info.value.retry_after,
            info.value.code,
            len(rec.requests),
            sleeps,
        ) == (1.0, "RATE_LIMIT_EXCEEDED", 3, [1.0, 1.0])

    def test_5xx_retried_then_success(self, sleeps: list[float]) -> None:
        """500 and 502 are retried and the third attempt's answer is returned."""
        rec = Recorder(error(500), error(502), ok({"data": {"id": 3, "status_code": "active"}}))
        assert make_client(rec).get_campaign(3).status == "active"
        assert len(rec.requests) == 3

    def test_5xx_after_all_attempts_raises_server_error(self, sleeps: list[float]) -> None:
        """Persistent 5xx raises MailiveryServerError after max_attempts attempts."""
        rec = Recorder(error(500, "BOOM", "down"))
        with pytest.raises(MailiveryServerError) as info:
            make_client(rec, max_attempts=4).pause_warmup(3)
        assert (len(rec.requests), info.value.code) == (4, "BOOM")

    def test_transport_error_retried_then_transport_error(self, sleeps: list[float]) -> None:
        """Connection failures are retried, then MailiveryTransportError from the httpx error."""
        cause = httpx.ConnectError("connection refused")
        rec = Recorder(cause)
        with pytest.raises(MailiveryTransportError) as info:
            make_client(rec, max_attempts=3).delete_campaign(8, request_id="rid-t")
        exc = info.value
        assert (3, cause, "rid-t", "DELETE", "/campaigns/8") == (
            len(rec.requests),
            exc.__cause__,
            exc.request_id,
            exc.method,
            exc.path,
        )

    def test_timeout_retried_then_success(self, sleeps: list[float]) -> None:
        """A read timeout is retried like any transport error."""
        rec = Recorder(httpx.ReadTimeout("slow"), ok({"data": {"url": OAUTH_URL}}))
        assert make_client(rec).connect_microsoft(**CONNECT_KW).url == OAUTH_URL
        assert len(rec.requests) == 2

    @pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
    def test_client_errors_are_not_retried(self, sleeps: list[float], status: int) -> None:
        """4xx other than 429 is raised after exactly one request."""
        rec = Recorder(error(status))
        with pytest.raises(MailiveryError):
            make_client(rec).start_warmup(1)
        assert (len(rec.requests), sleeps) == (1, [])

    def test_max_attempts_one_disables_retries(self, sleeps: list[float]) -> None:
        """max_attempts=1 makes one request only."""
        rec = Recorder(error(500))
        with pytest.raises(MailiveryServerError):
            make_client(rec, max_attempts=1).list_campaigns()
        assert len(rec.requests) == 1


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2", 2.0),
            (" 0 ", 0.0),
            ("1.5", 1.5),
            (None, None),
            ("", None),
            ("-1", None),
            ("soon", None),
            ("nan", None),
        ],
    )
    def test_values(self, value: str | None, expected: float | None) -> None:
        """Delta-seconds are read; junk and negatives give None."""
        assert expected == parse_retry_after(value)

    def test_http_date(self) -> None:
        """An HTTP date gives the seconds from now (never negative)."""
        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
        assert (
            parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now),
            parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now),
        ) == (30.0, 0.0)


# -- rate limiting --------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class TestRateLimiter:
    def test_spacing(self) -> None:
        """Back-to-back acquisitions are spaced 1/rate apart."""
        clock = FakeClock()
        limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
        waits = [limiter.acquire() for _ in range(4)]
        assert [0.0, 0.25, 0.5, 0.75] == waits == [0.0, *clock.sleeps]

    def test_no_wait_when_idle(self) -> None:
        """After a pause longer than the interval no wait is needed."""
        clock = FakeClock()
        limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
        limiter.acquire()
        clock.now += 1.0
        assert limiter.acquire() == 0.0

    def test_at_most_rate_per_second_over_a_second(self) -> None:
        """Over any simulated second at most rate_per_second slots are granted."""
        clock = FakeClock()
        limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
        slots = [clock.now + limiter.acquire() for _ in range(50)]
        for start in slots:  # (1e-9: float rounding of the accumulated slot times)
            assert sum(1 for s in slots if start <= s < start + 1.0 - 1e-9) <= 10

    def test_threads_get_distinct_slots(self) -> None:
        """Concurrent threads each reserve their own slot."""
        clock = FakeClock()
        limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
        threads = [threading.Thread(target=limiter.acquire) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [0.25 * n for n in range(1, 8)] == sorted(clock.sleeps)

    @pytest.mark.parametrize("rate", [-1.0, float("nan"), float("inf")])
    def test_bad_rate(self, rate: float) -> None:
        """A negative or non-finite rate raises ConfigurationError."""
        with pytest.raises(ConfigurationError):
            RateLimiter(rate)

    def test_client_acquires_once_per_attempt(self, sleeps: list[float]) -> None:
        """Each HTTP attempt (retries included) takes a limiter slot."""
        clock = FakeClock()
        limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep, asleep=clock.asleep)
        rec = Recorder(error(500), ok([]))
        make_client(rec, rate_limiter=limiter).list_campaigns()
        make_client(rec, rate_limiter=limiter).list_campaigns()
        assert clock.sleeps == [0.25, 0.5]

    def test_default_client_is_throttled(self) -> None:
        """A client built with rate_per_second has a limiter at that rate."""
        client = MailiveryClient(API_KEY, BASE, rate_per_second=2.0)
        assert client.rate_limiter is not None and client.rate_limiter.rate_per_second == 2.0

    @pytest.mark.parametrize("rate", [0, None])
    def test_zero_or_none_disables_throttling(self, rate: float | None) -> None:
        """rate_per_second=0 or None disables the limiter."""
        assert make_client(_fail_if_called, rate_per_second=rate).rate_limiter is None


# -- logging --------------------------------------------------------------------------------------


class TestLogging:
    def test_one_event_per_attempt(self, sleeps: list[float]) -> None:
        """Each HTTP attempt logs one mailbox_flow.api_call with its context."""
        rec = Recorder(error(503), ok({"id": 5}))
        with capture_logs() as logs:
            make_client(rec).get_campaign(5, request_id="rid-log")
        calls = [e for e in logs if e["event"] == "mailbox_flow.api_call"]
        assert [(e["attempt"], e["status"]) for e in calls] == [(1, 503), (2, 200)]
        for entry in calls:
            assert (
                entry["method"],
                entry["path"],
                entry["request_id"],
            ) == ("GET", "/campaigns/5", "rid-log")
            assert isinstance(entry["duration_ms"], float)

    def test_transport_failure_is_logged_without_status(self, sleeps: list[float]) -> None:
        """A transport failure logs status None and the error class."""
        with capture_logs() as logs, pytest.raises(MailiveryTransportError):
            make_client(Recorder(httpx.ConnectError("nope")), max_attempts=1).list_campaigns()
        assert [
            (e["status"], e["error"]) for e in logs if e["event"] == "mailbox_flow.api_call"
        ] == [(None, "ConnectError")]

    def test_no_log_line_contains_the_key_or_oauth_url(self, sleeps: list[float]) -> None:
        """Across success, retries and errors no log entry contains the API key or the OAuth URL."""
        rec = Recorder(
            error(429, message=f"key {API_KEY}", **{"Retry-After": "0"}),
            httpx.ConnectError(f"failed with {API_KEY}"),
            ok({"data": {"url": OAUTH_URL}}),
            error(401, message=f"bad key {API_KEY}"),
        )
        client = make_client(rec)
        with capture_logs() as logs:
            client.connect_microsoft(**CONNECT_KW)
            with pytest.raises(MailiveryAuthError):
                client.list_campaigns()
        assert len([e for e in logs if e["event"] == "mailbox_flow.api_call"]) == 4
        text = repr(logs)
        assert API_KEY not in text and "OAUTHSECRET" not in text
