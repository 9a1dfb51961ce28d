"""``mailbox-flow demo``: the whole flow, for real, over loopback HTTP, in about a second.

With no configuration `run_demo` starts the Mailivery simulator and the webhook receiver
(`mailbox_flow.web.create_app`) on free loopback ports, opens a temporary SQLite database (removed
afterwards; pass ``database_url`` to use another, empty one, e.g. PostgreSQL) and runs three short stories:

1. **Ada** connects her mailbox: ``request_connection`` → ``oauth_sent``; her "browser" opens the
   consent page and submits its Accept form; Mailivery creates the campaign in *pending* and posts
   ``campaign.pending`` to the receiver, which matches it, re-reads the campaign and starts warmup
   → ``warming`` (exactly one start-warmup call).
2. **A campaign nobody asked for** appears at Mailivery and its webhook arrives → recorded as
   ``rejected``, no warmup call.
3. **Grace**'s start-warmup fails its connection check (an injected fault), so she stays ``pending``
   after the webhook; ``reconcile(stuck_after=0, fix=True)`` heals her → ``warming``.

It prints a live timeline (one line per step as it happens, ✓/✗ and milliseconds), then a table of
the mailboxes and each one's audit trail, and a one-line verdict. The exit code is 0 when every
mailbox ended as expected, 1 otherwise (what differed is printed). The library's structlog events
are captured quietly while it runs; the API key, the webhook secret and OAuth tokens are never shown.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import structlog
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .audit import redact_secrets
from .mailivery.client import shared_tls_context
from .models import utcnow
from .states import State
from .types import AuditEntry, Mailbox

if TYPE_CHECKING:
    from .flow import MailboxFlow
    from .simulator import Simulator

__all__ = ["mask_url", "run_demo"]

T = TypeVar("T")

#: How long any single wait (a webhook, a state) may take before the step counts as failed.
STEP_TIMEOUT = 4.0

_STATE_STYLE = {
    State.WARMING: "bold green",
    State.REJECTED: "bold magenta",
    State.PENDING: "bold yellow",
    State.OAUTH_SENT: "cyan",
    State.REQUESTED: "cyan",
    State.PAUSED: "yellow",
    State.DELETED: "dim",
    State.EXPIRED: "dim",
}
_FORM = re.compile(r'<form method="post" action="([^"]*/accept)">(.*?)</form>', re.DOTALL)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_CAMPAIGN = re.compile(r"campaign (\d+), status (\w+)")


# -- small helpers ---------------------------------------------------------------------------------


class _StepFailed(Exception):
    """A step did not do what the story needs; the rest of that story is skipped."""


class _Mismatch(Exception):
    """A step ran but its result is not the expected one."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _Mismatch(message)


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = STEP_TIMEOUT) -> T:
    """Poll `probe` until it returns something other than None (every few ms); `_Mismatch` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise _Mismatch(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def mask_url(url: str) -> str:
    """A URL fit for a screen: long path segments (tokens, secrets) and query values masked."""
    parts = urllib.parse.urlsplit(url)
    path = "/".join("•••" if len(seg) >= 16 else seg for seg in parts.path.split("/"))
    query = "&".join(
        f"{name}=•••" for name, _value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


@dataclass
class _Symbols:
    ok: str
    fail: str
    arrow: str

    @classmethod
    def for_console(cls, console: Console) -> _Symbols:
        if (console.encoding or "").lower().replace("-", "").startswith("utf"):
            return cls("✓", "✗", "→")
        return cls("OK", "X", "->")


@dataclass
class _Step:
    text: str
    ok: bool = True
    note: str | None = None
    details: list[str] = field(default_factory=list)


class _Timeline:
    """Prints one line per step as it finishes: mark, text, milliseconds."""

    def __init__(self, console: Console, symbols: _Symbols, redact: Callable[[str], str]) -> None:
        self.console = console
        self.symbols = symbols
        self.redact = redact
        self.failed: list[str] = []
        self.label = ""

    def section(self, title: str, label: str) -> None:
        self.label = label
        self.console.print()
        self.console.print(Text(title, style="bold"))

    def note(self, text: str) -> None:
        self.console.print(Text("      " + self.redact(text), style="dim"))

    @contextmanager
    def step(self, text: str) -> Iterator[_Step]:
        step = _Step(text)
        started = time.perf_counter()
        try:
            yield step
        except _Mismatch as exc:
            step.ok, step.note = False, str(exc)
        except Exception as exc:
            step.ok, step.note = False, f"{type(exc).__name__}: {exc}"
        millis = (time.perf_counter() - started) * 1000
        width = max(self.console.width, 60)
        line = Text("  ")
        if step.ok:
            line.append(f"{self.symbols.ok} ", style="bold green")
        else:
            line.append(f"{self.symbols.fail} ", style="bold red")
        body = self.redact(step.text)
        ms = f"{millis:6.0f} ms"
        room = width - len(line) - len(ms) - 2
        if len(body) > room:
            body = body[: max(room - 1, 10)] + "…"
        line.append(body.ljust(room))
        line.append("  " + ms, style="dim")
        self.console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
        for detail in step.details:
            self.note(detail)
        if not step.ok:
            reason = self.redact(step.note or "failed")
            self.console.print(Text(f"      {reason}", style="red"))
            self.failed.append(f"{self.label}, {self.redact(step.text)} step: {reason}")
            raise _StepFailed(step.text)


@contextmanager
def _quiet_structlog() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture the library's structlog events in a list instead of printing them; restore after."""
    saved = structlog.get_config()
    was_configured = structlog.is_configured()
    events: list[MutableMapping[str, Any]] = []

    def keep(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        event_dict["level"] = method
        events.append(event_dict)
        raise structlog.DropEvent

    structlog.configure(
        processors=[redact_secrets, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    try:
        yield events
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


# -- the demo --------------------------------------------------------------------------------------


@dataclass
class _Expected:
    """One mailbox of the story and what must be true of it at the end."""

    label: str
    email: str
    state: State
    remote_status: str
    start_calls: int | None = None
    mailbox_id: uuid.UUID | None = None
    campaign_id: int | None = None


class _Demo:
    def __init__(self, console: Console, database_url: str | None, stack: ExitStack) -> None:
        self.console = console
        self.symbols = _Symbols.for_console(console)
        self.t0 = time.perf_counter()
        self.t0_wall = utcnow()
        self.api_key = f"sim-{secrets.token_urlsafe(18)}"
        self.secret = secrets.token_urlsafe(24)
        self._secrets: list[str] = [self.api_key, self.secret]
        self.timeline = _Timeline(console, self.symbols, self.redact)
        self.stack = stack
        self.database_url = database_url
        self.sim: Simulator | None = None
        self.flow: MailboxFlow | None = None
        self.http = stack.enter_context(httpx.Client(timeout=5.0, follow_redirects=False,
                                                           verify=shared_tls_context()))
        self.arrow = self.symbols.arrow
        self.ada = _Expected("Ada", "ada@contoso.com", State.WARMING, "active", 1)
        self.orphan = _Expected("orphan", "eve@fabrikam.com", State.REJECTED, "pending", 0)
        self.grace = _Expected("Grace", "grace@contoso.com", State.WARMING, "active")
        self.stories = [self.ada, self.orphan, self.grace]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "•••")
        return text

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        from .flow import MailboxFlow
        from .mailivery import MailiveryClient
        from .simulator import Simulator, SimulatorServer, serve_in_thread
        from .web import create_app

        tl = self.timeline
        tl.section("Setup", "setup")
        with tl.step("Mailivery simulator") as step:
            sim = Simulator(api_key=self.api_key)
            server = self.stack.enter_context(SimulatorServer(sim))
            self.sim = sim
            step.text = f"Mailivery simulator on {server.api_url}"
        with tl.step("database") as step:
            if self.database_url is None:
                tmp = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="mailbox-flow-demo-"))
                url = f"sqlite:///{Path(tmp) / 'demo.db'}"
                where = "temporary"
            else:
                url = self.database_url
                where = "given"
            client = MailiveryClient(self.api_key, server.api_url, rate_per_second=0, timeout=5.0,
                                     backoff_initial=0.05, backoff_max=0.2)
            flow = MailboxFlow(url, client=client, webhook_secret=self.secret, orphan_policy="keep")
            self.stack.callback(flow.close)
            flow.create_schema()
            self.flow = flow
            used = len(flow.list()) + len(flow.deliveries())
            _check(used == 0, f"the database is not empty ({used} rows): the demo needs an empty one")
            dialect = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(flow.store.dialect,
                                                                           flow.store.dialect)
            step.text = f"{where} {dialect} database, schema created"
        with tl.step("webhook receiver") as step:
            base, stop = serve_in_thread(create_app(flow), "127.0.0.1", 0)
            self.stack.callback(stop)
            hook = f"{base}/webhooks/mailivery/{self.secret}"
            sim.webhook_url = hook
            _check(self.http.get(f"{base}/healthz").status_code == 200, "the receiver is not healthy")
            step.text = f"webhook receiver on {mask_url(hook)}"

    # -- helpers for the stories ---------------------------------------------------------------

    @property
    def f(self) -> MailboxFlow:
        assert self.flow is not None
        return self.flow

    @property
    def s(self) -> Simulator:
        assert self.sim is not None
        return self.sim

    def connect(self, who: _Expected, first: str, last: str, owner: str) -> Mailbox:
        a = self.arrow
        with self.timeline.step(f"request_connection({who.email})") as step:
            mb = self.f.request_connection(owner_id=owner, email=who.email, first_name=first,
                                           last_name=last, emails_per_day=40, response_rate=30)
            who.mailbox_id = mb.id
            _check(mb.state is State.OAUTH_SENT, f"expected oauth_sent, got {mb.state.value}")
            _check(mb.oauth_url is not None, "no OAuth URL was stored")
            assert mb.oauth_url is not None
            self._secrets.append(mb.oauth_url)
            step.text = f"request_connection({who.email}) {a} oauth_sent"
            step.details.append(f"OAuth URL {mask_url(mb.oauth_url)}")
        return mb

    def accept_in_browser(self, who: _Expected, name: str, oauth_url: str) -> int:
        """GET the consent page, submit its Accept form (as a browser would); returns the campaign id."""
        a = self.arrow
        with self.timeline.step(f"{name} accepts the consent") as step:
            page = self.http.get(oauth_url)
            _check(page.status_code == 200, f"the consent page answered {page.status_code}")
            form = _FORM.search(page.text)
            _check(form is not None, "no Accept form on the consent page")
            assert form is not None
            action = urllib.parse.urljoin(oauth_url, html.unescape(form.group(1)))
            fields = {k: html.unescape(v) for k, v in _HIDDEN.findall(form.group(2))}
            done = self.http.post(action, data=fields)
            _check(done.status_code == 200, f"accepting answered {done.status_code}")
            found = _CAMPAIGN.search(done.text)
            _check(found is not None, "the confirmation page names no campaign")
            assert found is not None
            who.campaign_id = int(found.group(1))
            step.text = (f"{name} clicks Accept on the consent page {a} "
                         f"campaign {who.campaign_id} {found.group(2)}")
        assert who.campaign_id is not None
        return who.campaign_id

    def webhook_outcome(self, campaign_id: int) -> tuple[int | str, str]:
        """Wait until the webhooks about this campaign were answered; (HTTP status, flow outcome)."""
        sim = self.s
        _check(sim.wait_for_webhooks(STEP_TIMEOUT), "the simulator could not deliver its webhook")
        sent = [w for w in list(sim.webhooks_sent) if _campaign_of(w.body) == campaign_id]
        _check(bool(sent), f"no webhook was sent for campaign {campaign_id}")
        status = sent[-1].result
        _check(status == 200, f"the receiver answered {status}")
        delivery = _wait_for(
            f"the delivery of campaign {campaign_id} to be processed",
            lambda: next((d for d in reversed(self.f.deliveries())
                          if d.campaign_id == campaign_id and d.processed_at is not None), None),
        )
        return status, delivery.outcome or delivery.status

    # -- the stories ---------------------------------------------------------------------------

    def story_ada(self) -> None:
        a = self.arrow
        self.timeline.section("Ada connects her mailbox", "Ada")
        mb = self.connect(self.ada, "Ada", "Lovelace", "user-ada")
        assert mb.oauth_url is not None
        campaign_id = self.accept_in_browser(self.ada, "Ada", mb.oauth_url)
        with self.timeline.step("webhook") as step:
            status, outcome = self.webhook_outcome(campaign_id)
            now = self.f.get(mb.id)
            _check(now.state is State.WARMING, f"expected warming, got {now.state.value}")
            starts = self.s.count("PATCH", f"/campaigns/{campaign_id}/start-warmup")
            _check(starts == 1, f"{starts} start-warmup calls, expected exactly 1")
            step.text = f"webhook {a} receiver {status} {a} pending {a} warming"
            step.details.append(f"outcome {outcome}: campaign re-read, one start-warmup call")

    def story_orphan(self) -> None:
        a = self.arrow
        self.timeline.section("A campaign nobody asked for", "orphan")
        with self.timeline.step("unsolicited campaign") as step:
            campaign = self.s.create_campaign(self.orphan.email, "Eve", "Unknown")
            self.orphan.campaign_id = int(campaign["id"])
            step.text = f"{self.orphan.email} connected by someone else {a} campaign {campaign['id']}"
        with self.timeline.step("webhook") as step:
            campaign_id = self.orphan.campaign_id
            status, outcome = self.webhook_outcome(campaign_id)
            orphan = _wait_for("the orphan to be recorded",
                               lambda: self.f.find_by_email(self.orphan.email))
            self.orphan.mailbox_id = orphan.id
            _check(orphan.state is State.REJECTED, f"expected rejected, got {orphan.state.value}")
            calls = _warmup_calls(self.s, campaign_id)
            _check(calls == 0, f"{calls} warmup call(s) were made for it")
            step.text = f"webhook {a} receiver {status} {a} {orphan.state.value}, no warmup call"
            reason = next((e.detail.get("reason") for e in self.f.history(orphan.id)), None)
            step.details.append(f"outcome {outcome} ({reason or 'not expected'}); "
                                "kept pending at Mailivery by policy")

    def story_grace(self) -> None:
        a = self.arrow
        self.timeline.section("Grace's start fails; the reconciler heals it", "Grace")
        mb = self.connect(self.grace, "Grace", "Hopper", "user-grace")
        with self.timeline.step("fault") as step:
            self.s.faults.start_fails(self.grace.email, times=1)
            step.text = "fault injected: Grace's next connection check fails"
        assert mb.oauth_url is not None
        campaign_id = self.accept_in_browser(self.grace, "Grace", mb.oauth_url)
        with self.timeline.step("webhook") as step:
            status, outcome = self.webhook_outcome(campaign_id)
            now = self.f.get(mb.id)
            _check(now.state is State.PENDING, f"expected pending, got {now.state.value}")
            step.text = f"webhook {a} receiver {status} {a} pending, start-warmup refused"
            step.details.append(f"outcome {outcome}: {_error_code(now.last_error)} recorded, "
                                "left for the reconciler")
        with self.timeline.step("reconcile") as step:
            report = self.f.reconcile(stuck_after=timedelta(0), fix=True)
            mine = [x for x in report.findings if x.mailbox_id == mb.id]
            _check(bool(mine), "the reconciler did not find Grace")
            now = self.f.get(mb.id)
            _check(now.state is State.WARMING, f"expected warming, got {now.state.value}")
            step.text = f"reconcile(stuck_after=0, fix=True) {a} {mine[0].action} {a} warming"
            step.details.append(f"finding {mine[0].reason}: campaign re-read, start-warmup retried")

    # -- the report ----------------------------------------------------------------------------

    def mailboxes(self) -> list[tuple[_Expected, Mailbox | None]]:
        rows: list[tuple[_Expected, Mailbox | None]] = []
        for who in self.stories:
            mailbox = None
            if self.flow is not None and who.mailbox_id is not None:
                try:
                    mailbox = self.f.get(who.mailbox_id)
                except Exception:
                    mailbox = None
            rows.append((who, mailbox))
        return rows

    def remote_status(self, mailbox: Mailbox | None) -> str | None:
        if mailbox is None or mailbox.campaign_id is None or self.sim is None:
            return None
        try:
            return str(self.s.campaign(mailbox.campaign_id)["status_code"])
        except Exception:
            return "missing"

    def differences(self, rows: list[tuple[_Expected, Mailbox | None]]) -> list[str]:
        diffs: list[str] = []
        for who, mailbox in rows:
            if mailbox is None:
                diffs.append(f"{who.label} ({who.email}): no mailbox recorded, expected {who.state.value}")
                continue
            if mailbox.state is not who.state:
                diffs.append(f"{who.label} ({who.email}): ended {mailbox.state.value}, "
                             f"expected {who.state.value}")
            remote = self.remote_status(mailbox)
            if remote != who.remote_status:
                diffs.append(f"{who.label}: Mailivery says {remote}, expected {who.remote_status}")
            if who.start_calls is not None and mailbox.campaign_id is not None and self.sim is not None:
                calls = _warmup_calls(self.s, mailbox.campaign_id)
                if calls != who.start_calls:
                    diffs.append(f"{who.label}: {calls} warmup call(s), expected {who.start_calls}")
        if self.flow is not None:
            left = [d.id for d in self.f.deliveries() if d.status in ("received", "failed")]
            if left:
                diffs.append(f"webhook deliveries left unprocessed: {left}")
        diffs.extend(self.timeline.failed)
        return list(dict.fromkeys(diffs))

    def print_tables(self, rows: list[tuple[_Expected, Mailbox | None]]) -> None:
        console = self.console
        a = self.arrow
        console.print()
        table = _table("Mailboxes")
        table.add_column("mailbox", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("campaign", justify="right")
        table.add_column("Mailivery")
        table.add_column("owner", no_wrap=True)
        table.add_column("start calls", justify="right", no_wrap=True)
        for who, mb in rows:
            if mb is None:
                table.add_row(who.email, Text("missing", style="red"), "", "", "", "")
                continue
            starts = ""
            if mb.campaign_id is not None and self.sim is not None:
                path = f"/campaigns/{mb.campaign_id}/start-warmup"
                total = self.s.count("PATCH", path)
                failed = total - self.s.count("PATCH", path, 200)
                starts = f"{total}" + (f" ({failed} failed)" if failed else "")
            table.add_row(
                mb.email,
                Text(mb.state.value, style=_STATE_STYLE.get(mb.state, "")),
                str(mb.campaign_id or "—"),
                self.remote_status(mb) or "—",
                mb.owner_id or Text("nobody", style="dim"),
                starts,
            )
        console.print(table)
        wide = console.width >= 100
        for _who, mb in rows:
            if mb is None:
                continue
            console.print()
            trail = _table(f"Audit trail of {mb.email}")
            trail.add_column("at", justify="right", style="dim", no_wrap=True)
            trail.add_column("trigger", no_wrap=True)
            trail.add_column(f"from {a} to", no_wrap=True)
            trail.add_column("source", no_wrap=True)
            trail.add_column("request id", style="dim", no_wrap=True)
            if wide:
                trail.add_column("detail", style="dim")
            for entry in self.f.history(mb.id):
                cells: list[str | Text] = [
                    self._at(entry),
                    entry.trigger,
                    Text.assemble(entry.from_state.value, f" {a} ",
                                  (entry.to_state.value, _STATE_STYLE.get(entry.to_state, ""))),
                    entry.source.value,
                    f"{entry.request_id[:8]}…" if entry.request_id else "—",
                ]
                if wide:
                    cells.append(Text(self.redact(_detail(entry))))
                trail.add_row(*cells)
            console.print(trail)

    def _at(self, entry: AuditEntry) -> str:
        return f"+{(entry.at - self.t0_wall).total_seconds() * 1000:.0f} ms"

    def run(self) -> int:
        console = self.console
        console.print(Text.assemble(
            ("mailbox_flow demo", "bold"),
            (" · simulated Mailivery, webhook receiver, real loopback HTTP", "dim"),
        ))
        try:
            self.setup()
        except _StepFailed:
            return self.finish(setup_failed=True)
        for story in (self.story_ada, self.story_orphan, self.story_grace):
            try:
                story()
            except _StepFailed:
                continue
        return self.finish()

    def finish(self, setup_failed: bool = False) -> int:
        rows = self.mailboxes()
        if setup_failed:
            diffs = list(self.timeline.failed)
        else:
            self.print_tables(rows)
            diffs = self.differences(rows)
        seconds = time.perf_counter() - self.t0
        self.console.print()
        if not diffs:
            states = ", ".join(f"{who.label} {mb.state.value}" for who, mb in rows if mb is not None)
            self.console.print(Text.assemble(
                (f"{self.symbols.ok} All as expected: ", "bold green"),
                f"{states} in {seconds:.2f} s",
            ))
            return 0
        self.console.print(Text.assemble(
            (f"{self.symbols.fail} ", "bold red"),
            (f"{len(diffs)} {'thing' if len(diffs) == 1 else 'things'} did not end as expected ",
             "bold red"),
            f"in {seconds:.2f} s:",
        ))
        for diff in diffs:
            self.console.print(Text(f"  - {self.redact(diff)}", style="red"))
        return 1


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                 show_edge=False, pad_edge=False)


def _campaign_of(body: bytes) -> int | None:
    import json

    try:
        account = json.loads(body).get("account") or {}
        value = account.get("campaign_id")
        return int(value) if value is not None else None
    except (ValueError, AttributeError, TypeError):
        return None


def _warmup_calls(sim: Simulator, campaign_id: int) -> int:
    return sum(sim.count("PATCH", f"/campaigns/{campaign_id}/{what}-warmup")
               for what in ("start", "resume"))


def _error_code(error: str | None) -> str:
    if not error:
        return "no error recorded"
    match = re.search(r"\bcode=([A-Za-z0-9_.-]+)", error)
    return match.group(1) if match else error.split(":", 1)[0]


def _detail(entry: AuditEntry) -> str:
    detail = entry.detail or {}
    parts = []
    for key in ("reason", "event"):
        if key in detail:
            parts.append(f"{key}={detail[key]}")
    return ", ".join(parts)


def run_demo(console: Console | None = None, *, database_url: str | None = None) -> int:
    """Run the demo story (see the module docstring); returns the process exit code (0 = as expected).

    ``console`` defaults to a new Rich console on stdout; ``database_url`` to a temporary SQLite
    database that is removed afterwards (a given database must be empty; the demo's mailboxes stay
    in it).
    """
    console = console or Console()
    started = time.perf_counter()
    with _quiet_structlog() as events:
        with ExitStack() as stack:
            demo = _Demo(console, database_url, stack)
            try:
                code = demo.run()
            except Exception as exc:  # a demo never ends in a traceback: say what broke
                console.print(Text(f"{demo.symbols.fail} the demo broke: "
                                   f"{demo.redact(f'{type(exc).__name__}: {exc}')}", style="bold red"))
                code = 2
        console.print(Text(
            f"{len(events)} structured log events were emitted (kept quiet here); "
            f"wall time {time.perf_counter() - started:.2f} s", style="dim"))
    return code


if __name__ == "__main__":  # python -m mailbox_flow.demo
    raise SystemExit(run_demo())
