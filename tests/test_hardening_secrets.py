"""Hardening: no secret in any repr or error, library logs through the standard library, no SQL rows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import structlog
from pydantic import ValidationError

from mailbox_flow import (
    AuditEntry,
    Campaign,
    ConfigurationError,
    Delivery,
    Finding,
    Mailbox,
    MailboxFlow,
    MailiveryClient,
    ReconcileReport,
    Settings,
    State,
    WebhookAuthError,
    WebhookResult,
)
from mailbox_flow.audit import configure_logging, get_logger
from mailbox_flow.errors import MailiveryAuthError, MailiveryResponseError, MailiveryServerError
from mailbox_flow.mailivery import ConnectResult, parse_webhook
from mailbox_flow.reconcile import Action, Reason
from mailbox_flow.simulator import Call, SentWebhook, Simulator, SimulatorServer
from mailbox_flow.store import make_engine
from mailbox_flow.types import Outcome, Source

from .helpers import API_KEY, SECRET, consent, webhook_body

DB_PASSWORD = "db-pass-5e1b77"
TOKEN = "corr-token-0a9f3c"
OAUTH_CODE = "oauth-code-91d2aa"
OAUTH_URL = f"https://login.microsoftonline.com/common/oauth2/authorize?code={OAUTH_CODE}&state=s1"
RECONNECT_URL = f"https://app.mailivery.io/reconnect?token={OAUTH_CODE}"
SALT = "email-salt-22c4"
BODY = json.dumps({
    "type": "campaign.pending", "action": "pending",
    "account": {"campaign_id": 7, "email": "ada@contoso.com", "first_name": "Ada",
                "meta": f"mailbox_flow_token={TOKEN}"},
}).encode()
SECRETS = (API_KEY, SECRET, DB_PASSWORD, TOKEN, OAUTH_CODE, SALT)
NOW = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def unconfigured_structlog() -> Iterator[None]:
    """Each test starts with structlog unconfigured (as a host that never touched it) and ends so."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _mailbox() -> Mailbox:
    return Mailbox(
        id=uuid.uuid4(), owner_id="u", email="ada@contoso.com", first_name="Ada", last_name=None,
        emails_per_day=40, response_rate=30, state=State.OAUTH_SENT, version=2, campaign_id=7,
        oauth_url=OAUTH_URL, created_at=NOW, updated_at=NOW, state_changed_at=NOW, warmed_at=None,
        attempts=0, last_error=None, next_attempt_at=None, flag_reason=None, flagged_at=None,
        intent_trigger=None, intent_request_id=None, lease_until=None, correlation_token=TOKEN,
    )


def _settings() -> Settings:
    return Settings(
        database_url=f"postgresql://mf:{DB_PASSWORD}@db.example.com:5432/mf",
        mailivery_api_key=API_KEY,  # type: ignore[arg-type]
        webhook_secret=SECRET,  # type: ignore[arg-type]
        log_email_salt=SALT,  # type: ignore[arg-type]
    )


def _settings_password_in_query() -> Settings:
    return Settings(database_url=f"postgresql://db.example.com/mf?user=mf&password={DB_PASSWORD}")


def _flow() -> MailboxFlow:
    return MailboxFlow(settings=_settings())


def _client() -> MailiveryClient:
    return MailiveryClient(API_KEY, "https://app.mailivery.io/api/v1")


def _delivery() -> Delivery:
    return Delivery(
        id=1, received_at=NOW, dedupe_key="campaign.pending:7:abc", event_type="campaign.pending",
        campaign_id=7, email="ada@contoso.com", body=BODY, status="received", outcome=None,
        mailbox_id=None, duplicate_of=None, attempts=0, error=None, processed_at=None,
    )


def _campaign() -> Campaign:
    return Campaign.from_api({"id": 7, "email": "ada@contoso.com", "status": "pending",
                              "meta": {"mailbox_flow_token": TOKEN}, "reconnectUrl": RECONNECT_URL})


def _audit_entry() -> AuditEntry:
    return AuditEntry(id=1, mailbox_id=uuid.uuid4(), trigger="send_oauth", from_state=State.REQUESTED,
                      to_state=State.OAUTH_SENT, at=NOW, source=Source.API, request_id="r-1",
                      detail={"campaign_id": 7})


def _report() -> ReconcileReport:
    report = ReconcileReport(NOW, timedelta(hours=1), timedelta(days=7), remote=True, fix=False)
    report.findings.append(Finding(Reason.STUCK_PENDING, Action.FLAGGED, uuid.uuid4(), "ada@contoso.com",
                                   State.PENDING, campaign_id=7))
    return report


def _simulator() -> Simulator:
    return Simulator(api_key=API_KEY, webhook_url=f"http://127.0.0.1:9/webhooks/mailivery/{SECRET}")


PUBLIC_OBJECTS: dict[str, Callable[[], object]] = {
    "Settings": _settings,
    "Settings (password in the query)": _settings_password_in_query,
    "MailboxFlow": _flow,
    "MailiveryClient": _client,
    "MailiveryClient (credentials in the URL)": lambda: MailiveryClient(
        API_KEY, f"https://mf:{DB_PASSWORD}@app.mailivery.io/api/v1"),
    "Mailbox": _mailbox,
    "Delivery": _delivery,
    "WebhookEvent": lambda: parse_webhook(BODY),
    "Campaign": _campaign,
    "ConnectResult": lambda: ConnectResult.from_api({"data": {"url": OAUTH_URL}}),
    "WebhookResult": lambda: WebhookResult(Outcome.PENDING, _mailbox(), 1, "matched"),
    "AuditEntry": _audit_entry,
    "Finding": lambda: _report().findings[0],
    "ReconcileReport": _report,
    "Simulator": _simulator,
    "SimulatorServer": lambda: SimulatorServer(_simulator()),
    "SentWebhook": lambda: SentWebhook(BODY, 200),
    "Call": lambda: Call("POST", "/api/v1/campaigns/microsoft", "r-1", 200),
}


@pytest.mark.parametrize("build", PUBLIC_OBJECTS.values(), ids=PUBLIC_OBJECTS.keys())
def test_no_secret_in_repr_or_str(build: Callable[[], object]) -> None:
    """repr() and str() of every public object leave out keys, passwords, tokens and raw bodies."""
    obj = build()
    try:
        for text in (repr(obj), str(obj)):
            for secret in SECRETS:
                assert secret not in text, text
    finally:
        if isinstance(obj, MailboxFlow):
            obj.close()


def test_secrets_stay_readable_as_attributes() -> None:
    """Redacted reprs do not hide the values from code that reads them."""
    settings = _settings()
    assert DB_PASSWORD in settings.database_url
    assert parse_webhook(BODY).correlation_token == TOKEN
    assert _delivery().body == BODY
    assert SentWebhook(BODY, 200).body == BODY
    assert DB_PASSWORD not in repr(settings) and "***" in repr(settings)


def _errors_from_the_library() -> list[BaseException]:
    errors: list[BaseException] = []
    try:
        MailboxFlow(f"postgresql+nosuchdriver://mf:{DB_PASSWORD}@db.example.com/mf")
    except ConfigurationError as exc:
        errors.append(exc)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/microsoft"):  # a URL that is not https: refused, not quoted
            return httpx.Response(200, json={"data": {"url": OAUTH_URL.replace("https", "ftp")}})
        return httpx.Response(401, json={"code": "UNAUTHORIZED",
                                         "message": f"key Bearer {API_KEY} refused"})

    with MailiveryClient(API_KEY, "https://app.mailivery.io/api/v1", rate_per_second=0,
                         transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(MailiveryResponseError) as refused:
            client.connect_microsoft(email="ada@contoso.com", first_name="Ada", last_name="L",
                                     meta={"mailbox_flow_token": TOKEN})
        errors.append(refused.value)
        with pytest.raises(MailiveryAuthError) as denied:
            client.get_campaign(7)
        errors.append(denied.value)
    return errors


def test_library_errors_carry_no_secret() -> None:
    """Errors the library raises do not quote the database password, the API key or OAuth URLs."""
    errors = _errors_from_the_library()
    assert len(errors) == 3
    for exc in errors:
        for text in (str(exc), repr(exc), *map(str, exc.args)):
            for secret in SECRETS:
                assert secret not in text, text


# -- logging: the standard library unless the host configured structlog -------------------------------


def _records_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in records)


def test_unconfigured_library_logs_through_stdlib(flow: MailboxFlow, sim: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """With structlog unconfigured, events are stdlib records of ``mailbox_flow.*`` loggers."""
    caplog.set_level(logging.INFO, logger="mailbox_flow")
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    flow.handle_webhook(consent(sim, mb), secret=SECRET)
    ours = [r for r in caplog.records if r.name.startswith("mailbox_flow.")]
    transitions = [r for r in ours if getattr(r, "event", None) == "mailbox_flow.transition"]
    assert {r.name for r in transitions} == {"mailbox_flow.flow"}
    assert [(r.__dict__["trigger"], r.__dict__["to_state"]) for r in transitions] == [
        ("send_oauth", "oauth_sent"), ("mark_pending", "pending"), ("start", "warming")]
    assert all(r.__dict__["mailbox_id"] == str(mb.id) for r in transitions)
    assert transitions[0].levelno == logging.INFO
    assert "mailbox_flow.transition" in transitions[0].getMessage()
    assert "trigger=send_oauth" in transitions[0].getMessage()
    calls = [r for r in ours if getattr(r, "event", None) == "mailbox_flow.api_call"]
    assert calls and {r.name for r in calls} == {"mailbox_flow.mailivery.client"}


def test_unconfigured_library_prints_nothing(flow: MailboxFlow, sim: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With neither structlog nor logging configured by the host, INFO events print nothing."""
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    flow.handle_webhook(consent(sim, mb), secret=SECRET)
    flow.reconcile()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_unconfigured_process_prints_nothing(tmp_path: Any) -> None:
    """A fresh process without any logging set-up: transitions and API calls print nothing."""
    script = textwrap.dedent(f"""
        import httpx
        from mailbox_flow import MailboxFlow, MailiveryClient

        def answer(request):
            return httpx.Response(200, json={{"data": {{"url": "https://login.example.com/a?code=x"}}}})

        client = MailiveryClient("k", "https://app.mailivery.io/api/v1", rate_per_second=0,
                                 transport=httpx.MockTransport(answer))
        flow = MailboxFlow("sqlite:///{tmp_path}/db.sqlite", client=client, webhook_secret="s" * 40)
        flow.create_schema()
        mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
        flow.expire(mb.id)
        flow.reconcile()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOX_FLOW_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_host_logging_config_decides_levels(flow: MailboxFlow, sim: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """``logging.getLogger("mailbox_flow").setLevel(WARNING)`` silences the INFO events."""
    caplog.set_level(logging.WARNING, logger="mailbox_flow")
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    flow.expire(mb.id)
    assert not [r for r in caplog.records if r.name.startswith("mailbox_flow")]


def test_stdlib_records_mask_emails_and_secrets(database_url: str, api_url: str, sim: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A full run logged through the standard library: no address in clear, no secret, anywhere."""
    caplog.set_level(logging.DEBUG)
    client = MailiveryClient(API_KEY, api_url, rate_per_second=0)
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    mb = flow.request_connection(owner_id="u", email="ada.lovelace@contoso.com", first_name="Ada")
    body = consent(sim, mb)
    with pytest.raises(WebhookAuthError):
        flow.handle_webhook(body, secret="wrong-" + SECRET)
    sim.faults.fail_next(1, status=429, retry_after=1)
    flow.handle_webhook(body, secret=SECRET)
    flow.pause_warmup(mb.id)
    other = sim.create_campaign(email="eve@example.com", first_name="Eve", send_webhook=False)
    flow.handle_webhook(webhook_body(other["id"], "eve@example.com"), secret=SECRET)
    sim.faults.fail_next(10, status=500)
    with pytest.raises(MailiveryServerError):
        flow.request_connection(owner_id="u", email="bob@contoso.com", first_name="Bob")
    sim.faults.clear()
    flow.reconcile(stuck_after=timedelta(0), expire_after=timedelta(0), fix=True, remote=True)
    token = flow.get(mb.id).correlation_token
    flow.close()

    ours = [r for r in caplog.records if r.name.startswith("mailbox_flow")]
    assert {"mailbox_flow.transition", "mailbox_flow.api_call", "mailbox_flow.effect_failed",
            "mailbox_flow.reconcile"} <= {getattr(r, "event", None) for r in ours}
    text = _records_text(caplog.records)
    assert "a***@contoso.com" in text
    oauth = urlsplit(mb.oauth_url or "")
    url_tokens = [v for _k, v in parse_qsl(oauth.query) if len(v) >= 8]
    for secret in ("ada.lovelace@contoso.com", "eve@example.com", "bob@contoso.com", API_KEY, SECRET,
                   mb.oauth_url, token, *url_tokens):
        assert secret and secret not in text


def test_get_logger_redacts_urls_in_stdlib_records(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a library event carries, URL query strings, bearer values and addresses are masked."""
    caplog.set_level(logging.INFO, logger="mailbox_flow")
    get_logger("mailbox_flow.test").info("mailbox_flow.test", url=OAUTH_URL,
                                         auth=f"Bearer {API_KEY}", note="mail ada@contoso.com now")
    (record,) = caplog.records
    assert record.name == "mailbox_flow.test"
    assert record.__dict__["url"] == OAUTH_URL.split("?")[0] + "?<redacted>"
    assert record.__dict__["note"] == "mail a***@contoso.com now"
    assert API_KEY not in _records_text([record]) and OAUTH_CODE not in _records_text([record])


def test_host_structlog_configuration_is_used_and_kept(flow: MailboxFlow) -> None:
    """A host that configured structlog gets the library's events through its processors, and
    `configure_logging` (without ``force``) leaves that configuration alone."""
    seen: list[MutableMapping[str, Any]] = []

    def keep(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        seen.append(dict(event_dict))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    before = structlog.get_config()
    assert configure_logging("json", "DEBUG") is False
    assert structlog.get_config() == before
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    flow.expire(mb.id)
    assert [e["trigger"] for e in seen if e["event"] == "mailbox_flow.transition"] == [
        "send_oauth", "expire"]
    assert configure_logging("json", "DEBUG", force=True) is True
    assert structlog.get_config()["processors"] != [keep]


def test_host_structlog_over_stdlib_gets_module_logger_names(
        flow: MailboxFlow, caplog: pytest.LogCaptureFixture) -> None:
    """With ``structlog.stdlib.LoggerFactory`` the events land in ``mailbox_flow.<module>`` loggers."""
    structlog.configure(processors=[structlog.processors.KeyValueRenderer()],
                        logger_factory=structlog.stdlib.LoggerFactory(),
                        wrapper_class=structlog.stdlib.BoundLogger)
    caplog.set_level(logging.INFO, logger="mailbox_flow")
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    flow.expire(mb.id)
    names = {r.name for r in caplog.records if "mailbox_flow.transition" in r.getMessage()}
    assert names == {"mailbox_flow.flow"}


def test_configure_logging_configures_an_unconfigured_process() -> None:
    """Unconfigured, `configure_logging` sets structlog up (the CLI and examples rely on it)."""
    assert configure_logging("console", "warning") is True
    assert structlog.is_configured()


@pytest.mark.parametrize("level", ["LOUD", "verbose", ""])
def test_unknown_log_level_is_refused(level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MAILBOX_FLOW_LOG_LEVEL=LOUD`` and ``configure_logging(level="LOUD")`` fail, naming the levels."""
    with pytest.raises(ValidationError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        Settings(log_level=level)
    monkeypatch.setenv("MAILBOX_FLOW_LOG_LEVEL", level)
    with pytest.raises(ValidationError, match="log_level"):
        Settings()
    with pytest.raises(ConfigurationError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        configure_logging("console", level)
    assert not structlog.is_configured()


def test_log_level_names_are_case_insensitive() -> None:
    """``warning`` is read as ``WARNING``."""
    assert Settings(log_level="warning").log_level == "WARNING"


# -- SQLAlchemy: SQL may be logged, result rows are not -----------------------------------------------


@pytest.fixture
def sql_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``sqlalchemy.engine`` at DEBUG, as a host debugging its own queries would set it."""
    engine_logger = logging.getLogger("sqlalchemy.engine.Engine")
    handlers = list(engine_logger.handlers)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    yield caplog
    engine_logger.handlers[:] = handlers  # echo adds a stdout handler of its own


def test_sql_debug_logging_shows_no_result_rows(database_url: str, client: MailiveryClient, sim: Any,
                                                sql_debug: pytest.LogCaptureFixture) -> None:
    """With ``sqlalchemy.engine`` at DEBUG the library's engines log statements, never row values."""
    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    mb = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    assert flow.get(mb.id).oauth_url == mb.oauth_url
    flow.list()
    token = flow.get(mb.id).correlation_token
    flow.close()
    text = sql_debug.text
    assert "SELECT" in text and "mailbox" in text  # statements are logged ...
    code = dict(parse_qsl(urlsplit(mb.oauth_url or "").query))
    for value in (mb.oauth_url, token, *code.values()):  # ... rows are not
        assert value and value not in text


def test_echo_debug_is_the_opt_in_for_result_rows(tmp_path: Any,
                                                  sql_debug: pytest.LogCaptureFixture) -> None:
    """``make_engine(url, echo="debug")`` logs result rows, as SQLAlchemy does when asked."""
    import sqlalchemy as sa

    engine = make_engine(f"sqlite:///{tmp_path}/rows.db", echo="debug")
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 'row-value-4242'")).all()
    engine.dispose()
    assert "Row ('row-value-4242',)" in sql_debug.text
