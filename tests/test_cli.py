"""The ``mailbox-flow`` command line, through Typer's CliRunner and once as a real process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner, Result

from mailbox_flow import MailboxFlow, State, cli
from mailbox_flow.models import utcnow
from mailbox_flow.states import TRANSITIONS

from .helpers import SECRET, cli_env, consent

runner = CliRunner()

REPORT_KEYS = ["schema", "started_at", "finished_at", "duration_seconds", "stuck_after_seconds",
               "expire_after_seconds", "remote", "fix", "delete_orphans", "clean", "exit_code", "open",
               "counts", "actions", "scanned", "errors", "findings"]


@pytest.fixture(autouse=True)
def _cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_url: str) -> Iterator[None]:
    """Each test in its own directory, with settings from the environment only, wide consoles."""
    yield from cli_env(tmp_path, monkeypatch, api_url, width=200)


def run(*args: str) -> Result:
    return runner.invoke(cli.app, list(args))


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def db(database_url: str, sim: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[MailboxFlow]:
    """A flow on a fresh database (SQLite and PostgreSQL) that the CLI also uses, via the environment."""
    monkeypatch.setenv("MAILBOX_FLOW_DATABASE_URL", database_url)
    flow = MailboxFlow(database_url)
    flow.create_schema()
    yield flow
    flow.close()


def stuck(flow: MailboxFlow, sim: Any, email: str = "stuck@example.com") -> Any:
    campaign = sim.create_campaign(email=email, first_name="S", send_webhook=False)
    return flow.store.insert_mailbox({
        "owner_id": "o", "email": email, "first_name": "S", "state": State.PENDING.value,
        "campaign_id": campaign["id"], "state_changed_at": utcnow() - timedelta(hours=3),
    })


# -- reconcile ---------------------------------------------------------------------------------------


def test_reconcile_clean_exits_0(db: MailboxFlow) -> None:
    """Nothing to report: exit 0 and a one-line verdict."""
    result = run("reconcile")
    assert result.exit_code == 0, result.output
    assert "clean: nothing to report" in result.stdout


def test_reconcile_findings_exit_1_then_fix_exits_0(db: MailboxFlow, sim: Any) -> None:
    """Findings left: exit 1 with a table; --fix heals them (exit 0) and the next run is clean."""
    mb = stuck(db, sim)
    found = run("reconcile", "--stuck-after", "90m")
    assert found.exit_code == 1, found.output
    assert "stuck_pending" in found.stdout and "flagged" in found.stdout and mb.email in found.stdout
    assert "dry run" in found.stdout
    fixed = run("reconcile", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "started" in fixed.stdout and "pending → warming" in fixed.stdout
    assert db.get(mb.id).state is State.WARMING
    again = run("reconcile", "--fix", "--remote")
    assert again.exit_code == 0 and "clean" in again.stdout


def test_reconcile_json_to_stdout_is_valid_with_stable_keys(db: MailboxFlow, sim: Any) -> None:
    """--json - prints only the JSON report on stdout, with the documented keys."""
    clean = json.loads(run("reconcile", "--json", "-").stdout)
    stuck(db, sim)
    result = run("reconcile", "--json", "-")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert list(report) == list(clean) == REPORT_KEYS
    assert report["exit_code"] == 1 and report["counts"]["stuck_pending"] == 1
    assert report["findings"][0]["reason"] == "stuck_pending"
    assert "1 findings" in result.stderr


def test_reconcile_json_file_is_written(db: MailboxFlow, sim: Any, tmp_path: Path) -> None:
    """--json PATH writes the report and still shows the table."""
    stuck(db, sim)
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    result = run("reconcile", "--json", str(target))
    assert result.exit_code == 1
    assert json.loads(target.read_text())["open"] == 1
    assert "stuck_pending" in result.stdout
    assert not list(target.parent.glob(".*.tmp"))


@pytest.mark.parametrize("args", [
    ["--stuck-after", "soon"],
    ["--stuck-after", "5x"],
    ["--expire-after", "-1d"],
    ["--expire-after", ""],
    ["--delete-orphans"],
    ["--fix", "--delete-orphans"],
])
def test_reconcile_bad_input_exits_2(db: MailboxFlow, args: list[str]) -> None:
    """Bad durations or option combinations: exit 2 with one clear error line."""
    result = run("reconcile", *args)
    assert result.exit_code == 2
    no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Usage" not in result.output


def test_database_down_exits_2(tmp_path: Path) -> None:
    """An unreachable database: exit 2, one line naming it (no password), an error JSON kept."""
    target = tmp_path / "report.json"
    result = run("reconcile", "--database-url", "postgresql://postgres:hunter2@127.0.0.1:1/nodb",
                 "--json", str(target))
    assert result.exit_code == 2
    no_traceback(result)
    assert result.stderr.startswith("error: ") and "127.0.0.1:1/nodb" in result.stderr
    assert "hunter2" not in result.output
    document = json.loads(target.read_text())
    assert document["exit_code"] == 2 and document["errors"]


def test_not_a_database_url_exits_2() -> None:
    """A database URL SQLAlchemy cannot parse: exit 2, without echoing it."""
    result = run("list", "--database-url", "not a url:secret")
    assert result.exit_code == 2
    assert "is not a database URL" in result.stderr and "secret" not in result.stderr


def test_missing_api_key_exits_2(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """--remote without MAILBOX_FLOW_MAILIVERY_API_KEY is a configuration error."""
    monkeypatch.delenv("MAILBOX_FLOW_MAILIVERY_API_KEY")
    result = run("reconcile", "--remote")
    assert result.exit_code == 2
    assert "MAILBOX_FLOW_MAILIVERY_API_KEY" in result.stderr


def test_bad_setting_exits_2(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid MAILBOX_FLOW_* value is named in one line."""
    monkeypatch.setenv("MAILBOX_FLOW_LEASE_SECONDS", "soon")
    result = run("reconcile")
    assert result.exit_code == 2
    no_traceback(result)
    assert "bad configuration: MAILBOX_FLOW_LEASE_SECONDS" in result.stderr


def test_mailivery_down_exits_2_with_the_report(db: MailboxFlow, sim: Any) -> None:
    """Mailivery unreachable: exit 2, the JSON report still written with the error in it."""
    stuck(db, sim)
    sim.faults.fail_next(1000, status=503)
    result = run("reconcile", "--fix", "--remote", "--json", "-")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["exit_code"] == 2 and "Mailivery could not be used" in report["errors"][0]
    assert [f["action"] for f in report["findings"]] == ["deferred"]
    assert "error: Mailivery could not be used" in result.stderr


def test_progress_only_on_a_terminal(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress display is wired only when stdout is a terminal."""
    seen: list[Any] = []
    original = MailboxFlow.reconcile

    def spy(self: MailboxFlow, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("progress"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MailboxFlow, "reconcile", spy)
    assert run("reconcile").exit_code == 0
    monkeypatch.setattr(cli, "console", Console(force_terminal=True, width=200))
    assert run("reconcile").exit_code == 0
    assert run("reconcile", "--json", "-").exit_code == 0
    assert seen[0] is None and callable(seen[1]) and seen[2] is None


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", timedelta(minutes=90)), ("1h", timedelta(hours=1)), ("7d", timedelta(days=7)),
    ("30s", timedelta(seconds=30)), ("2w", timedelta(weeks=2)), ("1h30m", timedelta(minutes=90)),
    (" 1.5H ", timedelta(minutes=90)), ("0s", timedelta(0)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    """Durations: a number and a unit (s, m, h, d, w), possibly several."""
    assert cli.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1y", "-1h", "1h-", "one hour", "1e3s",
                                  "99999999999999999999d"])
def test_parse_duration_refuses(text: str) -> None:
    """Anything else is refused with a message naming the value."""
    with pytest.raises(typer.BadParameter):
        cli.parse_duration(text)


# -- mailboxes ---------------------------------------------------------------------------------------


def test_connect_list_show(db: MailboxFlow, sim: Any) -> None:
    """connect prints the OAuth URL; list and show find the mailbox; show draws its timeline."""
    result = run("connect", "--owner", "user-9", "--email", "Grace@Navy.mil", "--first-name", "Grace",
                 "--last-name", "Hopper", "--emails-per-day", "20", "--response-rate", "25")
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith("http") and "/oauth/consent/" in url
    assert "oauth_sent" in result.stderr
    mb = db.find_by_email("grace@navy.mil")
    assert mb is not None and mb.oauth_url == url and mb.emails_per_day == 20
    assert db.history(mb.id)[0].source.value == "cli"

    listed = run("list", "--state", "oauth_sent", "--owner", "user-9")
    assert listed.exit_code == 0 and "grace@navy.mil" in listed.stdout
    assert json.loads(run("list", "--json").stdout)["mailboxes"][0]["id"] == str(mb.id)
    assert "grace" not in run("list", "--state", "warming").stdout
    db.request_connection(owner_id="user-10", email="ada@navy.mil", first_name="Ada")
    limited = json.loads(run("list", "--json", "--limit", "1").stdout)["mailboxes"]
    assert [m["email"] for m in limited] == ["grace@navy.mil"]  # the oldest
    assert run("list", "--limit", "0").exit_code == 2

    db.handle_webhook(consent(sim, mb), secret=SECRET)
    for key in (str(mb.id), "GRACE@navy.mil"):
        shown = run("show", key)
        assert shown.exit_code == 0, shown.output
        assert "requested → oauth_sent" in shown.stdout and "pending → warming" in shown.stdout
        assert "oauth_url" not in shown.stdout and url not in shown.stdout
    as_json = json.loads(run("show", "--json", str(mb.id)).stdout)
    assert [h["trigger"] for h in as_json["history"]] == ["send_oauth", "mark_pending", "start"]


@pytest.mark.parametrize(("args", "message"), [
    (["connect", "--owner", "u", "--email", "nope", "--first-name", "A"], "email"),
    (["connect", "--owner", "u", "--email", "a@b.co", "--first-name", "A", "--response-rate", "101"],
     "response_rate"),
    (["show", "nobody@example.com"], "no mailbox"),
    (["show", "not-an-id"], "mailbox_id"),
    (["list", "--state", "sleeping"], "unknown state"),
])
def test_bad_input_exits_2(db: MailboxFlow, args: list[str], message: str) -> None:
    """Bad input to any command: exit 2 and one line naming the problem."""
    result = run(*args)
    assert result.exit_code == 2
    no_traceback(result)
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_mailivery_down_on_connect_exits_2(db: MailboxFlow, sim: Any) -> None:
    """connect while Mailivery answers 500: exit 2, one line."""
    sim.faults.fail_next(1000, status=500)
    result = run("connect", "--owner", "u", "--email", "a@b.co", "--first-name", "A")
    assert result.exit_code == 2
    no_traceback(result)
    assert "status=500" in result.stderr


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    """db upgrade creates the tables in an empty database (and is harmless when run again)."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    for _ in range(2):
        result = run("db", "upgrade", "--database-url", url)
        assert result.exit_code == 0, result.output
    flow = MailboxFlow(url)
    assert flow.list() == []
    flow.close()
    assert "Alembic" in run("db", "upgrade", "--help").stdout


def test_diagram_is_mermaid_from_the_table(tmp_path: Path) -> None:
    """diagram prints a Mermaid stateDiagram-v2 with every allowed transition; --output writes it."""
    result = run("diagram")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith("stateDiagram-v2")
    for rule in TRANSITIONS:
        for source in rule.sources:
            assert f"{source.value} --> {rule.dest.value}: {rule.trigger}" in text
    target = tmp_path / "states.mmd"
    assert run("diagram", "--format", "mermaid", "--output", str(target)).exit_code == 0
    assert target.read_text() == text
    bad = run("diagram", "--format", "png")
    assert bad.exit_code == 2 and "mermaid" in bad.stderr


def test_states_prints_the_table() -> None:
    """states lists each trigger with its Mailivery call."""
    result = run("states")
    assert result.exit_code == 0 and "start_warmup" in result.stdout and "expire" in result.stdout


# -- webhooks ----------------------------------------------------------------------------------------


def test_webhook_replay(db: MailboxFlow, sim: Any) -> None:
    """replay --all processes deferred deliveries again; --id alone works too; nothing left after."""
    mb = db.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    body = consent(sim, mb)
    sim.faults.fail_next(10, status=503)
    db.handle_webhook(body, secret=SECRET)
    sim.faults.clear()
    [failed] = db.deliveries("failed")
    result = run("webhook", "replay", "--all")
    assert result.exit_code == 0, result.output
    assert "started" in result.stdout and "warming" in result.stdout
    assert db.get(mb.id).state is State.WARMING
    again = run("webhook", "replay", "--id", str(failed.id))
    assert again.exit_code == 0 and "skipped (processed)" in again.stdout
    assert "nothing to replay" in run("webhook", "replay", "--all").stdout


def test_webhook_replay_still_deferred_exits_1(db: MailboxFlow, sim: Any) -> None:
    """A replay Mailivery still cannot answer: the outcome is shown and the exit status is 1."""
    mb = db.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    body = consent(sim, mb)
    sim.faults.fail_next(1000, status=503)
    db.handle_webhook(body, secret=SECRET)
    result = run("webhook", "replay", "--all")
    assert result.exit_code == 1 and "deferred" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    ([], "--id N"),
    (["--id", "12345"], "no stored delivery 12345"),
])
def test_webhook_replay_bad_input_exits_2(db: MailboxFlow, args: list[str], message: str) -> None:
    """replay needs --id or --all, and known ids."""
    result = run("webhook", "replay", *args)
    assert result.exit_code == 2 and message in result.stderr


def test_webhook_serve_calls_the_receiver(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """webhook serve hands the flow, host, port and body limit to mailbox_flow.web.serve."""
    import mailbox_flow.web as web

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(web, "serve", lambda flow, host, port, **kw: calls.append((flow, host, port, kw)))
    result = run("webhook", "serve", "--host", "0.0.0.0", "--port", "9123", "--max-body-bytes", "1000")
    assert result.exit_code == 0, result.output
    [(flow, host, port, kw)] = calls
    assert isinstance(flow, MailboxFlow) and (host, port) == ("0.0.0.0", 9123)
    assert kw == {"max_body_bytes": 1000, "background_workers": 0, "body_timeout": 10.0}
    assert SECRET not in result.output


def test_webhook_serve_background_workers(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """--background-workers wins over MAILBOX_FLOW_WEBHOOK_BACKGROUND_WORKERS, which sets the default;
    a negative count is refused before anything starts."""
    import mailbox_flow.web as web

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(web, "serve", lambda flow, host, port, **kw: calls.append(kw))
    monkeypatch.setenv("MAILBOX_FLOW_WEBHOOK_BACKGROUND_WORKERS", "3")
    assert run("webhook", "serve").exit_code == 0
    assert run("webhook", "serve", "--background-workers", "5").exit_code == 0
    assert [kw["background_workers"] for kw in calls] == [3, 5]
    refused = run("webhook", "serve", "--background-workers", "-1")
    assert refused.exit_code == 2 and len(calls) == 2


def test_webhook_serve_needs_a_secret(db: MailboxFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MAILBOX_FLOW_WEBHOOK_SECRET the receiver does not start."""
    monkeypatch.delenv("MAILBOX_FLOW_WEBHOOK_SECRET")
    result = run("webhook", "serve")
    assert result.exit_code == 2 and "MAILBOX_FLOW_WEBHOOK_SECRET" in result.stderr


# -- the command set ---------------------------------------------------------------------------------


def test_every_command_and_option_has_help() -> None:
    """Each command (and group) has a help text, and so has each of its options and arguments."""
    root = typer.main.get_command(cli.app)
    seen = []

    def walk(command: Any, path: str) -> None:
        assert command.help, f"{path} has no help"
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{path} {param.name} has no help"
        if hasattr(command, "commands"):  # a group
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
        else:
            seen.append(path.split(" ", 1)[1])

    walk(root, "mailbox-flow")
    assert set(seen) >= {"reconcile", "connect", "list", "show", "db upgrade", "diagram",
                         "webhook serve", "webhook replay", "simulate", "states", "demo"}
    for path in seen:
        assert run(*path.split(), "--help").exit_code == 0


def test_demo_is_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    """demo runs mailbox_flow.demo.run_demo with the CLI's console and exits with its status."""
    if importlib.util.find_spec("mailbox_flow.demo") is None:
        pytest.skip("mailbox_flow/demo.py is not in this tree yet (written under another issue)")
    import mailbox_flow.demo as demo

    got: list[Any] = []
    monkeypatch.setattr(demo, "run_demo", lambda console: got.append(console) or 3)
    result = run("demo")
    assert result.exit_code == 3 and got == [cli.console]


# -- as a real process -------------------------------------------------------------------------------


def test_cli_as_a_real_process(tmp_path: Path, sim: Any) -> None:
    """python -m mailbox_flow.cli: JSON on stdout with exit 1 for findings, exit 2 and one line for errors."""
    url = f"sqlite:///{tmp_path / 'proc.db'}"
    flow = MailboxFlow(url)
    flow.create_schema()
    stuck(flow, sim)
    flow.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOX_FLOW_")}
    env["MAILBOX_FLOW_DATABASE_URL"] = url
    command = [sys.executable, "-m", "mailbox_flow.cli", "reconcile", "--json", "-"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["counts"]["stuck_pending"] == 1
    bad = subprocess.run([*command, "--stuck-after", "later"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and json.loads(bad.stdout)["exit_code"] == 2
    assert bad.stderr.strip().splitlines() == ["error: --stuck-after: 'later' is not a duration such as "
                                               "90m, 1h or 7d"]


# -- the nightly examples ----------------------------------------------------------------------------

NIGHTLY = Path(__file__).resolve().parent.parent / "examples" / "nightly"


@pytest.mark.parametrize("name", ["crontab", "mailbox-flow-reconcile.service", "cronjob.yaml",
                                  "README.md"])
def test_nightly_examples_use_real_options(name: str) -> None:
    """Each nightly example runs `reconcile --fix --json ...` with options the command has."""
    root = typer.main.get_command(cli.app)
    known = {opt for param in root.commands["reconcile"].params for opt in param.opts}  # type: ignore[attr-defined]
    text = (NIGHTLY / name).read_text()
    invocations = [line.split("mailbox-flow reconcile", 1)[1] for line in text.splitlines()
                   if "mailbox-flow reconcile " in line]
    assert invocations, f"{name} runs no reconcile"
    for args in invocations:
        options = {word.split("=", 1)[0] for word in args.split() if word.startswith("--")}
        assert {"--fix", "--json"} <= options and options <= known, options


def test_nightly_cronjob_is_valid_yaml() -> None:
    """The Kubernetes CronJob parses, runs once a night and never retries a run at once."""
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((NIGHTLY / "cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["schedule"] == "15 3 * * *"
    assert job["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    [container] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "--json /reports/" in container["args"][0]
