"""The receiver under a hostile network and a failing database: raw sockets against uvicorn, a
read-only store, short secrets."""

from __future__ import annotations

import logging
import secrets
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.engine import make_url

from mailbox_flow import ConfigurationError, MailboxFlow, MailiveryClient, Settings, web
from mailbox_flow.errors import InsecureConfigurationWarning
from mailbox_flow.simulator import serve_in_thread
from mailbox_flow.web import create_app

from .helpers import SECRET, counts, webhook_body


def fake_mailivery(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no such campaign"})


def make_flow(database_url: str) -> MailboxFlow:
    client = MailiveryClient("k", "https://mailivery.test/api/v1", rate_per_second=0,
                             transport=httpx.MockTransport(fake_mailivery))
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    return flow


@pytest.fixture
def sqlite_flow(tmp_path: Any) -> Iterator[MailboxFlow]:
    flow = make_flow(f"sqlite:///{tmp_path}/hardening.db")
    yield flow
    flow.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _headers(length: int, secret: str = SECRET) -> bytes:
    return (f"POST /webhooks/mailivery/{secret} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def _uvicorn_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name.startswith("uvicorn") and (r.levelno >= logging.ERROR or r.exc_info)]


# -- item 1: clients that vanish or stall mid-body ----------------------------------------------------


def test_client_closing_mid_body_logs_no_traceback(sqlite_flow: MailboxFlow,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A client that declares 1000 bytes, sends 10 and closes: no "Exception in ASGI application",
    no traceback, nothing stored; the receiver goes on answering."""
    caplog.set_level(logging.INFO)
    url, stop = serve_in_thread(create_app(sqlite_flow), "127.0.0.1", 0)
    try:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", _port(url))) as sock:
                sock.sendall(_headers(1000) + b'{"type": "')
                sock.shutdown(socket.SHUT_WR)
                _read_response(sock)  # the server's side ends once it has seen the close
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stop()  # waits for the server's tasks: every log line is in by now
    assert _uvicorn_errors(caplog) == []
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text
    assert counts(sqlite_flow) == (0, 0, 0)


def test_stalled_body_is_answered_408_within_the_timeout(sqlite_flow: MailboxFlow,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends 10 of 1000 bytes and stalls gets 408 (connection closed) once
    ``body_timeout`` has passed; nothing is stored and nothing is logged as an error."""
    caplog.set_level(logging.INFO)
    url, stop = serve_in_thread(create_app(sqlite_flow, body_timeout=0.5), "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", _port(url))) as sock:
            sock.sendall(_headers(1000) + b'{"type": "')
            answer = _read_response(sock)
    finally:
        stop()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert b'"error":"request_timeout"' in answer.replace(b" ", b"")
    assert counts(sqlite_flow) == (0, 0, 0)
    assert _uvicorn_errors(caplog) == []


def test_body_timeout_leaves_normal_deliveries_alone(sqlite_flow: MailboxFlow) -> None:
    """A body that arrives in time is read and acted on as before, with a short timeout too."""
    url, stop = serve_in_thread(create_app(sqlite_flow, body_timeout=0.5), "127.0.0.1", 0)
    try:
        response = httpx.post(f"{url}/webhooks/mailivery/{SECRET}", content=webhook_body(5, "a@b.co"),
                              timeout=10)
    finally:
        stop()
    assert response.status_code == 200 and response.json()["outcome"] == "rejected"


@pytest.mark.parametrize("value", [0, -1.0])
def test_body_timeout_must_be_positive(sqlite_flow: MailboxFlow, value: float) -> None:
    """A body timeout of zero or less is refused when the app is built."""
    with pytest.raises(ValueError, match="body_timeout"):
        create_app(sqlite_flow, body_timeout=value)


# -- item 2: /healthz tells the truth when deliveries cannot be stored ---------------------------------


def read_only_url(database_url: str) -> str:
    """The same database, opened so that every write is refused: a read-only SQLite file, a
    PostgreSQL session whose transactions are read-only (as on a standby)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///file:{url.database}?mode=ro&uri=true"
    options = url.query.get("options", "")
    options = " ".join(options) if isinstance(options, tuple) else options
    return url.update_query_dict(
        {"options": f"{options} -cdefault_transaction_read_only=on"}
    ).render_as_string(hide_password=False)


def test_healthz_is_503_degraded_when_the_database_refuses_writes(database_url: str) -> None:
    """A database that answers reads but refuses writes: /healthz 503 ``degraded`` with a reason
    (and a delivery 503, stored nowhere); the same database writable: 200 ``ok``."""
    writable = make_flow(database_url)
    read_only = make_flow_without_schema(read_only_url(database_url))
    url, stop = serve_in_thread(create_app(read_only), "127.0.0.1", 0)
    ok_url, stop_ok = serve_in_thread(create_app(writable), "127.0.0.1", 0)
    try:
        health = httpx.get(f"{url}/healthz", timeout=10)
        hook = httpx.post(f"{url}/webhooks/mailivery/{SECRET}", content=webhook_body(5, "a@b.co"),
                          timeout=10)
        fine = httpx.get(f"{ok_url}/healthz", timeout=10)
    finally:
        stop()
        stop_ok()
    assert health.status_code == 503, health.text
    assert health.json()["status"] == "degraded"
    assert "refuses writes" in health.json()["reason"]
    assert hook.status_code == 503
    assert (fine.status_code, fine.json()) == (200, {"status": "ok"})
    assert counts(writable) == (0, 0, 0)
    read_only.close()
    writable.close()


def make_flow_without_schema(database_url: str) -> MailboxFlow:
    client = MailiveryClient("k", "https://mailivery.test/api/v1", rate_per_second=0,
                             transport=httpx.MockTransport(fake_mailivery))
    return MailboxFlow(database_url, client=client, webhook_secret=SECRET)


@pytest.fixture
def full_flow(sqlite_flow: MailboxFlow) -> Iterator[tuple[MailboxFlow, list[int | None]]]:
    """A SQLite flow whose database may not grow (``PRAGMA max_page_count``: SQLITE_FULL, as on a
    full disk) while the limit is set; set ``limit[0] = None`` and dispose the engine to lift it."""
    limit: list[int | None] = [0]
    engine = sqlite_flow.store.engine
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        if limit[0] is not None:
            cursor = dbapi_conn.cursor()
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count={pages}")
            cursor.close()

    yield sqlite_flow, limit


def test_healthz_is_503_degraded_after_deliveries_fail_to_be_stored(
        full_flow: tuple[MailboxFlow, list[int | None]]) -> None:
    """A full database takes the no-op write probe but no delivery: after three deliveries in a row
    failed to be stored /healthz is 503 ``degraded``; the first one stored afterwards makes it 200."""
    flow, limit = full_flow
    big = webhook_body(5, "a@b.co", first_name="A" * 20_000)  # overflow pages: the file must grow
    url, stop = serve_in_thread(create_app(flow), "127.0.0.1", 0)
    try:
        hook = f"{url}/webhooks/mailivery/{SECRET}"
        first = httpx.post(hook, content=big, timeout=10)
        after_one = httpx.get(f"{url}/healthz", timeout=10)
        for _ in range(2):
            httpx.post(hook, content=big, timeout=10)
        degraded = httpx.get(f"{url}/healthz", timeout=10)
        limit[0] = None
        flow.store.engine.dispose()
        stored = httpx.post(hook, content=big, timeout=10)
        healed = httpx.get(f"{url}/healthz", timeout=10)
    finally:
        stop()
    assert first.status_code == 503
    assert after_one.status_code == 200  # one failure may be a passing lock
    assert degraded.status_code == 503, degraded.text
    assert degraded.json() == {"status": "degraded",
                               "reason": "the last 3 deliveries could not be stored "
                                         "(OperationalError); none stored since"}
    assert stored.status_code == 200
    assert (healed.status_code, healed.json()) == (200, {"status": "ok"})


def test_failed_stores_are_forgotten_after_the_window(
        full_flow: tuple[MailboxFlow, list[int | None]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures older than the window no longer count: a receiver taken out of rotation (so no
    delivery can succeed) is offered again rather than left degraded for ever."""
    flow, _limit = full_flow
    monkeypatch.setattr(web, "STORE_FAILURE_WINDOW", 0.0)
    big = webhook_body(5, "a@b.co", first_name="A" * 20_000)
    url, stop = serve_in_thread(create_app(flow), "127.0.0.1", 0)
    try:
        for _ in range(3):
            assert httpx.post(f"{url}/webhooks/mailivery/{SECRET}", content=big,
                              timeout=10).status_code == 503
        health = httpx.get(f"{url}/healthz", timeout=10)
    finally:
        stop()
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


# -- item 4: insecure configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://mailivery.test/api/v1", "http://app.mailivery.io/api/v1",
                                 "http://10.0.0.7:8025/api/v1", "HTTP://Mailivery.test/api/v1"])
def test_http_base_url_off_loopback_is_refused(url: str) -> None:
    """The API key would cross the network in clear: ConfigurationError, naming https."""
    with pytest.raises(ConfigurationError, match="https"):
        MailiveryClient("k", url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8025/api/v1", "http://localhost:8025/api/v1",
                                 "http://[::1]:8025/api/v1", "http://sim.localhost/api/v1",
                                 "http://127.8.9.10/api/v1", "https://mailivery.test/api/v1"])
def test_http_base_url_on_loopback_is_accepted(url: str) -> None:
    """A local simulator over http (or anything over https) is fine."""
    MailiveryClient("k", url).close()


def test_settings_refuse_an_http_base_url_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILBOX_FLOW_MAILIVERY_BASE_URL=http://... on another host is refused when read."""
    monkeypatch.setenv("MAILBOX_FLOW_MAILIVERY_BASE_URL", "http://mailivery.test/api/v1")
    with pytest.raises(ValidationError, match="https"):
        Settings()
    monkeypatch.setenv("MAILBOX_FLOW_MAILIVERY_BASE_URL", "http://127.0.0.1:8025/api/v1")
    assert Settings().mailivery_base_url == "http://127.0.0.1:8025/api/v1"


@pytest.mark.parametrize("how", ["argument", "settings"])
def test_short_webhook_secret_warns(tmp_path: Any, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """A webhook secret under 32 bytes still works, with an InsecureConfigurationWarning (pointing
    at the caller) and a log event that does not show the secret."""
    short = "only-23-bytes-of-secret"
    caplog.set_level(logging.WARNING)
    kwargs: dict[str, Any] = ({"webhook_secret": short} if how == "argument"
                              else {"settings": Settings(webhook_secret=short)})
    with pytest.warns(InsecureConfigurationWarning, match="32 bytes") as caught:
        flow = MailboxFlow(f"sqlite:///{tmp_path}/w.db", **kwargs)
    flow.close()
    assert caught[0].filename == __file__
    assert "mailbox_flow.insecure_configuration" in caplog.text
    assert short not in caplog.text and short not in str(caught[0].message)


def test_long_webhook_secret_does_not_warn(tmp_path: Any) -> None:
    """A secret of 32 bytes or more (the suite's own) raises no warning; neither does no secret."""
    assert len(SECRET.encode()) >= 32
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureConfigurationWarning)
        MailboxFlow(f"sqlite:///{tmp_path}/w.db", webhook_secret=SECRET).close()
        MailboxFlow(f"sqlite:///{tmp_path}/w.db").close()
        MailboxFlow(f"sqlite:///{tmp_path}/w.db", webhook_secret=secrets.token_urlsafe(32)).close()
