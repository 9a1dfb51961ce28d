"""The command line, hardened: database errors with their cause, narrow terminals, one duration
syntax, case-insensitive states, --version, and warnings about insecure configuration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mailbox_flow import MailboxFlow, Settings, State, __version__, cli
from mailbox_flow.models import utcnow

from .helpers import SECRET, cli_env

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_url: str) -> Iterator[None]:
    """Each test in its own directory, settings from the environment only, an 80-column terminal."""
    yield from cli_env(tmp_path, monkeypatch, api_url, width=80)


def run(*args: str) -> Result:
    return runner.invoke(cli.app, list(args))


@pytest.fixture
def db(database_url: str, sim: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[MailboxFlow]:
    monkeypatch.setenv("MAILBOX_FLOW_DATABASE_URL", database_url)
    flow = MailboxFlow(database_url)
    flow.create_schema()
    yield flow
    flow.close()


# -- database errors say what went wrong ---------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["list"],
    ["show", "ada@contoso.com"],
    ["connect", "--owner", "o", "--email", "ada@contoso.com", "--first-name", "Ada"],
    ["reconcile"],
])
def test_database_errors_show_their_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args: list[str]) -> None:
    """A file that is not a database: one error line with the driver's own words, not only the
    error's class name."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file, just some text " * 20)
    monkeypatch.setenv("MAILBOX_FLOW_DATABASE_URL", f"sqlite:///{junk}")
    result = run(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database error"), result.stderr
    assert "file is not a database" in lines[0], lines[0]


def test_database_error_cause_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cause of an unreachable PostgreSQL is shown, the password in its URL never."""
    monkeypatch.setenv("MAILBOX_FLOW_DATABASE_URL", "postgresql://postgres:hunter2@127.0.0.1:1/nodb")
    result = run("list")
    assert result.exit_code == 2
    assert "OperationalError: " in result.stderr and "127.0.0.1" in result.stderr, result.stderr
    assert "hunter2" not in result.output


# -- narrow terminals -------------------------------------------------------------------------------------


def test_list_gives_ids_whole_on_80_columns(db: MailboxFlow) -> None:
    """On an 80-column terminal every id in `list` is printed whole (it is what `show` takes)."""
    mailboxes = [db.request_connection(owner_id=f"owner-with-a-long-id-{i}",
                                       email=f"someone.with.a.long.address{i}@contoso-example.com",
                                       first_name="Ada") for i in range(2)]
    result = run("list")
    assert result.exit_code == 0, result.output
    for mb in mailboxes:
        assert str(mb.id) in result.stdout, result.stdout


def test_show_wraps_long_details_on_80_columns(db: MailboxFlow) -> None:
    """A long audit detail is wrapped, not cut: every word of it is shown, and the request id whole."""
    words = [f"word{i:03d}" for i in range(40)]
    mb = db.store.insert_mailbox(
        {"owner_id": "o", "email": "ada@contoso.com", "first_name": "Ada", "state": State.REJECTED.value,
         "campaign_id": 4242},
        audit={"trigger": "reject", "from_state": State.PENDING.value,
               "to_state": State.REJECTED.value, "source": "cli",
               "request_id": "0f6b1c9e-3d4a-4f1e-9a57-7c1d2e3f4a5b",
               "detail": {"reason": " ".join(words)}},
    )
    result = run("show", str(mb.id))
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout, result.stdout
    for word in words:
        assert word in result.stdout, (word, result.stdout)
    assert "0f6b1c9e-3d4a-4f1e-9a57-7c1d2e3f4a5b" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


# -- one duration syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1h", timedelta(hours=1)), ("30m", timedelta(minutes=30)), ("7d", timedelta(days=7)),
    ("90s", timedelta(seconds=90)), ("1h30m", timedelta(minutes=90)), ("3600", timedelta(hours=1)),
    ("PT2H", timedelta(hours=2)), ("01:30:00", timedelta(minutes=90)),
])
@pytest.mark.parametrize("name", ["STUCK_AFTER", "EXPIRE_AFTER"])
def test_duration_settings_take_the_cli_syntax(monkeypatch: pytest.MonkeyPatch, name: str, text: str,
                                               expected: timedelta) -> None:
    """MAILBOX_FLOW_STUCK_AFTER=1h works as --stuck-after 1h does (plain seconds and ISO 8601 too)."""
    monkeypatch.setenv(f"MAILBOX_FLOW_{name}", text)
    assert getattr(Settings(), name.lower()) == expected


@pytest.mark.parametrize("text", ["90m", "1h", "7d", "30s", "2w", "1h30m", " 1.5H ", "PT1H", "P7D",
                                  "01:30:00"])
def test_one_duration_syntax(text: str) -> None:
    """What --stuck-after takes, MAILBOX_FLOW_STUCK_AFTER takes, with the same meaning."""
    assert Settings(stuck_after=text).stuck_after == cli.parse_duration(text)


@pytest.mark.parametrize(("text", "expected"), [("90s", 90.0), ("2m", 120.0), ("45", 45.0),
                                                ("2.5", 2.5), ("PT1M", 60.0)])
@pytest.mark.parametrize("name", ["LEASE_SECONDS", "TIMEOUT"])
def test_seconds_settings_take_the_cli_syntax(monkeypatch: pytest.MonkeyPatch, name: str, text: str,
                                              expected: float) -> None:
    """The settings counted in seconds take the same durations ("90s", "2m") besides numbers."""
    monkeypatch.setenv(f"MAILBOX_FLOW_{name}", text)
    assert getattr(Settings(), name.lower()) == expected


@pytest.mark.parametrize(("name", "value"), [("STUCK_AFTER", "soon"), ("EXPIRE_AFTER", "-1d"),
                                             ("LEASE_SECONDS", "0s"), ("TIMEOUT", "1y")])
def test_bad_duration_settings_are_named(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch,
                                         name: str, value: str) -> None:
    """A duration setting that is not one: exit 2, one line naming the variable."""
    monkeypatch.setenv(f"MAILBOX_FLOW_{name}", value)
    result = run("reconcile")
    assert result.exit_code == 2
    assert f"bad configuration: MAILBOX_FLOW_{name}" in result.stderr, result.stderr


def test_reconcile_reads_stuck_after_from_the_environment(db: MailboxFlow, sim: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILBOX_FLOW_STUCK_AFTER=4h: a mailbox pending for 3 hours is not stuck yet; with 2h it is."""
    campaign = sim.create_campaign(email="late@example.com", first_name="L", send_webhook=False)
    db.store.insert_mailbox({"owner_id": "o", "email": "late@example.com", "first_name": "L",
                             "state": State.PENDING.value, "campaign_id": campaign["id"],
                             "state_changed_at": utcnow() - timedelta(hours=3)})
    monkeypatch.setenv("MAILBOX_FLOW_STUCK_AFTER", "4h")
    assert run("reconcile").exit_code == 0
    monkeypatch.setenv("MAILBOX_FLOW_STUCK_AFTER", "2h")
    assert run("reconcile").exit_code == 1


# -- states, --version ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["WARMING", "Warming", "warming", " oauth_SENT "])
def test_state_is_case_insensitive(db: MailboxFlow, value: str) -> None:
    """--state takes a state in any case."""
    result = run("list", "--state", value)
    assert result.exit_code == 0, result.output


def test_unknown_state_lists_the_states(db: MailboxFlow) -> None:
    """An unknown --state is refused with every valid state named."""
    result = run("list", "--state", "sleeping")
    assert result.exit_code == 2
    assert "unknown state 'sleeping'" in result.stderr
    for state in State:
        assert state.value in result.stderr, result.stderr


def test_version() -> None:
    """--version prints the program and the package version, and exits 0."""
    result = run("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"mailbox-flow {__version__}\n"
    assert __version__ == "0.1.0"


# -- webhook serve ----------------------------------------------------------------------------------------


def test_webhook_serve_passes_the_body_timeout(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """--body-timeout reaches the receiver (default 10 s); zero or less is refused."""
    import mailbox_flow.web as web

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(web, "serve", lambda flow, host, port, **kw: calls.append(kw))
    assert run("webhook", "serve").exit_code == 0
    assert run("webhook", "serve", "--body-timeout", "0.5").exit_code == 0
    assert [kw["body_timeout"] for kw in calls] == [10.0, 0.5]
    refused = run("webhook", "serve", "--body-timeout", "0")
    assert refused.exit_code == 2 and len(calls) == 2


def test_webhook_serve_warns_about_a_short_secret(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook secret under 32 bytes: the receiver still starts, after a ``warning:`` line that
    does not show the secret; a long one prints no warning."""
    import mailbox_flow.web as web

    monkeypatch.setattr(web, "serve", lambda flow, host, port, **kw: None)
    monkeypatch.setenv("MAILBOX_FLOW_WEBHOOK_SECRET", "short-secret")
    result = run("webhook", "serve")
    assert result.exit_code == 0, result.output
    assert "warning: the webhook secret is 12 bytes long; use at least 32 bytes" in result.stderr
    assert "short-secret" not in result.output
    monkeypatch.setenv("MAILBOX_FLOW_WEBHOOK_SECRET", SECRET)
    assert "warning" not in run("webhook", "serve").stderr


def test_settings_refuse_an_http_base_url_named(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILBOX_FLOW_MAILIVERY_BASE_URL=http://... off loopback: exit 2 naming the variable and https."""
    monkeypatch.setenv("MAILBOX_FLOW_MAILIVERY_BASE_URL", "http://app.mailivery.io/api/v1")
    result = run("list")
    assert result.exit_code == 2
    assert "bad configuration: MAILBOX_FLOW_MAILIVERY_BASE_URL" in result.stderr
    assert "must use https" in result.stderr
