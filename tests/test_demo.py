"""`mailbox-flow demo` (`run_demo`): the story runs for real, reads well, fails loudly, leaks nothing."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from rich.console import Console

from mailbox_flow import MailboxFlow, ReconcileReport
from mailbox_flow.demo import mask_url, run_demo
from mailbox_flow.models import utcnow
from mailbox_flow.simulator import Faults

ROOT = Path(__file__).resolve().parent.parent


def _run(width: int = 120, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_demo(Console(file=out, width=width, color_system=None), **kwargs)
    return code, out.getvalue()


def _row(output: str, email: str) -> str:
    """The line of the mailboxes table for this address."""
    rows = [line for line in output.splitlines() if re.match(rf"\s*{re.escape(email)}\s", line)]
    assert rows, f"no table row for {email} in:\n{output}"
    return rows[0]


def _assert_no_secrets(output: str) -> None:
    assert not re.search(r"/oauth/consent/(?!•••)", output), output
    assert not re.search(r"\?state=(?!•••)", output), output
    assert not re.search(r"/webhooks/mailivery/(?!•••)", output), output
    assert not re.search(r"sim-[A-Za-z0-9_-]{16,}", output), output  # the demo's API key


def test_demo_tells_the_whole_story_and_exits_0() -> None:
    """With no configuration the demo ends Ada warming, the orphan rejected, Grace warming: exit 0."""
    code, output = _run()
    assert code == 0, output
    ada, eve, grace = (_row(output, e) for e in ("ada@contoso.com", "eve@fabrikam.com",
                                                   "grace@contoso.com"))
    assert re.search(r"\bwarming\s+101\s+active\s+user-ada\s+1$", ada), ada
    assert re.search(r"\brejected\s+102\s+pending\s+nobody\s+0$", eve), eve
    assert re.search(r"\bwarming\s+103\s+active\s+user-grace\s+2 \(1 failed\)$", grace), grace
    for step in ("request_connection(ada@contoso.com) → oauth_sent",
                 "Ada clicks Accept on the consent page → campaign 101 pending",
                 "webhook → receiver 200 → pending → warming",
                 "webhook → receiver 200 → rejected, no warmup call",
                 "webhook → receiver 200 → pending, start-warmup refused",
                 "CONNECTION_CHECK_FAILED",
                 "reconcile(stuck_after=0, fix=True) → started → warming"):
        assert step in output
    assert "✗" not in output
    assert "Audit trail of grace@contoso.com" in output
    assert re.search(r"start\s+pending → warming\s+reconciler\s+[0-9a-f]{8}…", output)
    assert re.search(r"reject\s+pending → rejected\s+webhook\s+—", output)
    assert "✓ All as expected: Ada warming, orphan rejected, Grace warming" in output
    _assert_no_secrets(output)


def test_demo_fits_80_columns() -> None:
    """On an 80-column console every timeline and table line fits (nothing wraps or spills)."""
    code, output = _run(width=80)
    assert code == 0, output
    assert max(len(line) for line in output.splitlines()) <= 80
    assert "webhook → receiver 200 → pending → warming" in output


def test_demo_on_each_database(database_url: str) -> None:
    """The demo runs on a given empty database (SQLite, PostgreSQL) and refuses a used one."""
    code, output = _run(database_url=database_url)
    assert code == 0, output
    assert re.search(r"\bwarming\s+103\s+active", _row(output, "grace@contoso.com")), output
    assert "✓ All as expected" in output
    with MailboxFlow(database_url) as flow:
        assert {m.email: m.state.value for m in flow.list()} == {
            "ada@contoso.com": "warming", "eve@fabrikam.com": "rejected", "grace@contoso.com": "warming"}
    again, output = _run(database_url=database_url)
    assert again == 1, output
    assert "setup, database step: the database is not empty (6 rows)" in output
    assert "Mailboxes" not in output


def test_demo_reports_a_step_that_went_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """When Grace's start does not fail as planned, the step is ✗ and the demo exits 1."""
    monkeypatch.setattr(Faults, "start_fails", lambda *_a, **_k: None)
    code, output = _run()
    assert code == 1, output
    assert "✗ webhook" in output and "expected pending, got warming" in output
    assert "1 thing did not end as expected" in output
    assert "Grace, webhook step: expected pending, got warming" in output
    _assert_no_secrets(output)


def test_demo_reports_a_mailbox_that_ended_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconciler that heals nothing leaves Grace pending: the verdict names her, exit 1."""

    def idle(self: MailboxFlow, *_a: Any, **_k: Any) -> ReconcileReport:
        return ReconcileReport(utcnow(), timedelta(0), timedelta(0), False, True)

    monkeypatch.setattr(MailboxFlow, "reconcile", idle)
    code, output = _run()
    assert code == 1, output
    assert "Grace (grace@contoso.com): ended pending, expected warming" in output
    assert "Grace: Mailivery says pending, expected active" in output
    assert re.search(r"\bwarming\s+101", _row(output, "ada@contoso.com"))


def test_demo_keeps_logs_quiet_and_restores_structlog(capfd: pytest.CaptureFixture[str]) -> None:
    """Nothing reaches stdout/stderr besides the console, and structlog's configuration is restored."""
    before = structlog.get_config()
    code, output = _run()
    after = structlog.get_config()
    assert code == 0, output
    assert after == before
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert re.search(r"\d+ structured log events were emitted", output)


def test_mask_url_hides_tokens() -> None:
    """mask_url keeps scheme, host and short path segments, and masks tokens and query values."""
    url = "http://127.0.0.1:8025/oauth/consent/Zx8yq3LmT0kens0fGreatLength?state=abc123"
    assert mask_url(url) == "http://127.0.0.1:8025/oauth/consent/•••?state=•••"
    assert mask_url("http://h:1/webhooks/mailivery/s3cret-s3cret-s3cret") == (
        "http://h:1/webhooks/mailivery/•••"
    )


def test_demo_as_a_real_process() -> None:
    """`python -c "...run_demo()"` exits 0 in well under 10 s and prints its wall time."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from mailbox_flow.demo import run_demo; raise SystemExit(run_demo())"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 10, elapsed
    match = re.search(r"wall time (\d+\.\d\d) s", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) < 5
    assert "✓ All as expected" in proc.stdout
    assert proc.stderr == ""
    _assert_no_secrets(proc.stdout)
