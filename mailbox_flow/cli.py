"""The ``mailbox-flow`` command line: thin commands over the library (Typer + Rich).

Configuration comes from `Settings` (``MAILBOX_FLOW_*`` environment variables, or a ``.env`` file) and
``--database-url``. Every command exits 2 with a one-line ``error: ...`` on stderr when it cannot do
its job (bad input or configuration, database or Mailivery unavailable), never with a traceback.
``reconcile`` exits 0 when everything is in order and 1 when findings remain.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from ._bounds import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from ._durations import parse_duration as _parse_duration
from ._redact import hide_password
from .errors import InsecureConfigurationWarning, MailboxFlowError, MailboxNotFound, StorageError
from .settings import Settings
from .states import State
from .types import Mailbox, Outcome, Source

# The flow, the receiver and SQLAlchemy are imported by the commands that use them, so that --help and
# the commands that need none of them start quickly.
if TYPE_CHECKING:
    from .flow import MailboxFlow
    from .reconcile import ReconcileReport

__all__ = ["app", "main", "parse_duration"]

class _PlainHelp:
    """``--help`` without a ``<bool>`` label (flags take no value): mixed into commands and groups."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_PlainHelp, typer.core.TyperCommand):
    pass


class _Group(_PlainHelp, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    name="mailbox-flow",
    help="Connect Microsoft/Outlook mailboxes to Mailivery warmup, correctly by construction.\n\n"
    "Settings come from MAILBOX_FLOW_* environment variables (or a .env file) and --database-url.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
    rich_markup_mode="markdown",
)
db_app = typer.Typer(cls=_Group, help="Manage the database schema.", no_args_is_help=True)
webhook_app = typer.Typer(cls=_Group, help="Receive Mailivery's webhooks, or process stored ones again.",
                          no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(webhook_app, name="webhook")

console = Console()
err_console = Console(stderr=True)

def parse_duration(text: str) -> timedelta:
    """``90m``, ``1h``, ``7d``, ``30s``, ``2w``, ``1h30m`` or ISO 8601 (``PT1H``) → timedelta
    (`typer.BadParameter` otherwise): the syntax the duration settings take too."""
    try:
        return _parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailbox-flow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    _version_flag: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        metavar="", help="Print the version (mailbox-flow X.Y.Z) and exit.")] = False,
) -> None:
    """Connect Microsoft/Outlook mailboxes to Mailivery warmup, correctly by construction."""


# -- plumbing ----------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    """Print one ``error:`` line on stderr and exit 2."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _settings_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error.get("loc", ())).upper()
        problems.append(f"MAILBOX_FLOW_{name}: {error.get('msg', 'invalid')}")
    return "bad configuration: " + "; ".join(problems)


@contextmanager
def _guard(on_error: Callable[[str], None] | None = None) -> Iterator[None]:
    """Turn the errors a command can meet into one clear line and exit status 2."""
    message: str
    try:
        yield
        return
    except typer.BadParameter as exc:
        message = exc.message
    except MailboxFlowError as exc:
        message = str(exc) or type(exc).__name__
    except ValidationError as exc:
        message = _settings_error(exc)
    except OSError as exc:
        message = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        # SQLAlchemy is imported only by the commands that open a database: when it is not loaded,
        # the error cannot be one of its own
        sa_exc = sys.modules.get("sqlalchemy.exc")
        if sa_exc is None or not isinstance(exc, sa_exc.SQLAlchemyError):
            raise
        message = f"database error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if on_error is not None:
        on_error(message)
    _fail(message)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


@contextmanager
def _open_flow(database_url: str | None, *, warn: bool = False) -> Iterator[MailboxFlow]:
    """A flow from the settings (and ``--database-url``), logging to stderr, closed afterwards.

    ``warn``: print each `InsecureConfigurationWarning` as a ``warning:`` line on stderr (else only
    the library's log event tells of it).
    """
    from .audit import configure_logging
    from .flow import MailboxFlow

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InsecureConfigurationWarning)
        flow = MailboxFlow(database_url, settings=settings)
    for warning in caught:
        if not issubclass(warning.category, InsecureConfigurationWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif warn:
            err_console.print(f"[yellow]warning:[/yellow] {escape(str(warning.message))}",
                              highlight=False, soft_wrap=True)
    try:
        yield flow
    except StorageError as exc:
        raise StorageError(f"{exc}{_cause(exc)} (database {_safe_url(flow.database_url)})") from exc
    finally:
        flow.close()


def _cause(exc: StorageError) -> str:
    """``: <the driver's first line>`` behind a generic `StorageError` (passwords masked), else ``""``."""
    if not str(exc).startswith("database error in "):
        return ""  # a message of its own (e.g. "no tables yet: run db upgrade")
    cause = exc.__cause__
    cause = getattr(cause, "orig", None) or cause
    lines = str(cause or "").strip().splitlines()
    return f": {hide_password(lines[0])[:300]}" if lines else ""


def _state(value: str | None) -> State | None:
    """``--state`` in any case, or `typer.BadParameter` naming the states."""
    if value is None:
        return None
    try:
        return State(value.strip().lower())
    except ValueError:
        raise typer.BadParameter(f"--state: unknown state {value!r}; choose one of "
                                 f"{', '.join(s.value for s in State)}") from None


def _duration(option: str, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except typer.BadParameter as exc:
        raise typer.BadParameter(f"{option}: {exc.message}") from None


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def _write_json(target: str, document: dict[str, Any]) -> None:
    """Write ``document`` to stdout (``-``) or atomically to a file (readers never see half of it)."""
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


DatabaseOption = Annotated[
    str | None,
    typer.Option("--database-url", envvar="MAILBOX_FLOW_DATABASE_URL", show_envvar=True, metavar="URL",
                 help="SQLAlchemy URL of the database (default: sqlite:///mailbox_flow.db)."),
]


# -- reconcile ---------------------------------------------------------------------------------------


@app.command(cls=_Command)
def reconcile(
    stuck_after: Annotated[str | None, typer.Option(
        metavar="DURATION", help="A mailbox pending for longer than this is stuck (90m, 1h, 7d, 1h30m). "
        "Default: MAILBOX_FLOW_STUCK_AFTER, else 1h.")] = None,
    expire_after: Annotated[str | None, typer.Option(
        metavar="DURATION", help="An OAuth not completed after this is abandoned. "
        "Default: MAILBOX_FLOW_EXPIRE_AFTER, else 7d.")] = None,
    remote: Annotated[bool, typer.Option(
        metavar="", help="Also compare with Mailivery's campaign list (lost webhooks, never-started warmups, "
        "status drift, missing and orphan campaigns).")] = False,
    fix: Annotated[bool, typer.Option(
        metavar="", help="Heal what is safe to heal (re-reading each campaign at Mailivery first); "
        "without it nothing is changed but the mailboxes' flags.")] = False,
    delete_orphans: Annotated[bool, typer.Option(
        metavar="", help="With --fix --remote: delete campaigns nobody asked for that are still pending "
        "at Mailivery (recorded as rejected mailboxes first).")] = False,
    json_path: Annotated[str | None, typer.Option(
        "--json", metavar="PATH|-",
        help="Also write the report as JSON to PATH ('-': to stdout instead of the table).")] = None,
    max_rows: Annotated[int, typer.Option(
        min=0, metavar="N", help="Findings shown in the table (the JSON report has them all).")] = 50,
    database_url: DatabaseOption = None,
) -> None:
    """Find mailboxes that are not where they should be, and with --fix heal them.

    Looks for interrupted calls (stale intents), webhook deliveries never processed, mailboxes stuck
    in pending, abandoned OAuth, and with --remote the drift between our records and Mailivery.

    Exit status: 0 clean, 1 findings remain, 2 error (bad input or configuration, database or
    Mailivery unavailable).
    """

    def error_document(message: str) -> None:
        if json_path:
            with suppress(OSError):
                _write_json(json_path, {"schema": 1, "clean": False, "exit_code": 2,
                                        "errors": [message], "findings": []})

    with _guard(error_document):
        stuck = _duration("--stuck-after", stuck_after)
        expire = _duration("--expire-after", expire_after)
        if delete_orphans and not (fix and remote):
            raise typer.BadParameter("--delete-orphans needs --fix and --remote")
        with _open_flow(database_url) as flow:
            show_progress = console.is_terminal and json_path != "-"
            with _progress(show_progress) as progress:
                report = flow.reconcile(stuck_after=stuck, expire_after=expire, remote=remote,
                                        fix=fix, delete_orphans=delete_orphans, progress=progress)
        if json_path:
            _write_json(json_path, report.to_dict())
    _print_report(report, to_stdout=json_path != "-", max_rows=max_rows)
    if json_path and json_path != "-":
        err_console.print(f"report written to {escape(json_path)}", highlight=False)
    raise typer.Exit(report.exit_code)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], None] | None]:
    """A spinner with the phase and the rows examined, on a terminal only."""
    if not enabled:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("scanning", total=None)
        shown = [""]

        def update(phase: str, rows: int) -> None:
            if rows % 250 == 0 or phase != shown[0]:  # a screen refresh is slower than a row
                shown[0] = phase
                bar.update(task, description=f"{phase}: {rows:,} examined")

        yield update


def _print_report(report: ReconcileReport, *, to_stdout: bool, max_rows: int) -> None:
    out = console if to_stdout else err_console
    for error in report.errors:
        err_console.print(f"[red]error:[/red] {escape(error)}", highlight=False, soft_wrap=True)
    if not report.findings:
        out.print("[green]clean: nothing to report[/green]" if not report.errors
                  else "nothing found (the run was incomplete: see the errors)")
        return
    summary = Table("reason", "action", "count", title="Reconcile summary", title_justify="left")
    pairs: dict[tuple[str, str], int] = {}
    for f in report.findings:
        key = (f.reason.value, f.action.value)
        pairs[key] = pairs.get(key, 0) + 1
    for (reason, action), count in sorted(pairs.items()):
        summary.add_row(reason, action, str(count))
    if to_stdout and max_rows:
        table = Table("reason", "action", "email", "state", "age", "campaign", "detail")
        for f in report.findings[:max_rows]:
            state = f.state.value if f.state else ""
            if f.state_after:
                state += f" → {f.state_after.value}"
            table.add_row(f.reason.value, f.action.value, f.email or "", state, _age(f.age),
                          str(f.campaign_id or ""), escape((f.detail or "")[:80]))
        out.print(table)
        if len(report.findings) > max_rows:
            out.print(f"… and {len(report.findings) - max_rows} more (see --json)")
    out.print(summary)
    verdict = "[green]clean[/green]" if report.clean else f"[yellow]{len(report.open_findings)} open[/yellow]"
    out.print(f"{len(report.findings)} findings, {verdict}; scanned {sum(report.scanned.values())} rows"
              f"{'' if report.fix else ' (dry run: add --fix to heal)'}")


# -- mailboxes ---------------------------------------------------------------------------------------


@app.command(cls=_Command)
def connect(
    owner: Annotated[str, typer.Option(
        metavar="ID", help="Your id for the mailbox's owner (user, account...).")],
    email: Annotated[str, typer.Option(metavar="EMAIL", help="The Microsoft/Outlook address to connect.")],
    first_name: Annotated[str, typer.Option(metavar="NAME", help="The mailbox owner's first name.")],
    last_name: Annotated[str | None, typer.Option(
        metavar="NAME", help="The mailbox owner's last name.")] = None,
    emails_per_day: Annotated[int, typer.Option(metavar="N", help="Warmup emails per day (0-2000).")] = 40,
    response_rate: Annotated[int, typer.Option(
        metavar="PERCENT", help="Warmup response rate in percent (0-100).")] = 30,
    database_url: DatabaseOption = None,
) -> None:
    """Request a connection: record the mailbox, ask Mailivery for its OAuth URL and print it.

    Send the mailbox owner to the printed URL; after consent Mailivery posts the webhook that
    starts the warmup.
    """
    with _guard(), _open_flow(database_url) as flow:
        mailbox = flow.request_connection(
            owner_id=owner, email=email, first_name=first_name, last_name=last_name,
            emails_per_day=emails_per_day, response_rate=response_rate, source=Source.CLI,
        )
    err_console.print(f"mailbox {mailbox.id} ({escape(mailbox.email)}) is {mailbox.state.value}; "
                      "send its owner to this URL to consent:", highlight=False)
    typer.echo(mailbox.oauth_url or "")


@app.command("list", cls=_Command)
def list_mailboxes(
    state: Annotated[str | None, typer.Option(metavar="STATE", help="Only mailboxes in this state.")] = None,
    owner: Annotated[str | None, typer.Option(metavar="ID", help="Only mailboxes of this owner id.")] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="At most this many (the oldest).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", metavar="", help="Print JSON instead of a table.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """List mailboxes, oldest first."""
    with _guard():
        wanted = _state(state)
        with _open_flow(database_url) as flow:
            mailboxes = flow.list(state=wanted, owner_id=owner, limit=limit)
    if as_json:
        _write_json("-", {"mailboxes": [mb.to_dict() for mb in mailboxes]})
        return
    table = Table()
    table.add_column("id", no_wrap=True, min_width=36)  # whole: it is what `show` takes
    for column in ("email", "state", "campaign", "owner", "changed"):
        table.add_column(column, overflow="fold")  # wrapped on a narrow terminal, never cut
    for mb in mailboxes:
        table.add_row(str(mb.id), mb.email, mb.state.value, str(mb.campaign_id or ""),
                      mb.owner_id or "", mb.state_changed_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


def _lookup(flow: MailboxFlow, key: str) -> Mailbox:
    if "@" in key:
        found = flow.find_by_email(key)
        if found is None:
            raise MailboxNotFound(key)
        return found
    return flow.get(key)


@app.command(cls=_Command)
def show(
    mailbox: Annotated[str, typer.Argument(help="A mailbox id (UUID) or an email address.",
                                           metavar="ID|EMAIL")],
    as_json: Annotated[bool, typer.Option(
        "--json", metavar="", help="Print JSON instead of tables.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Show one mailbox and its audit trail as a timeline (an email shows its live or latest one)."""
    with _guard(), _open_flow(database_url) as flow:
        found = _lookup(flow, mailbox)
        trail = flow.history(found.id)
    if as_json:
        _write_json("-", {
            "mailbox": found.to_dict(),
            "history": [
                {"at": e.at.isoformat(), "trigger": e.trigger, "from_state": e.from_state.value,
                 "to_state": e.to_state.value, "source": e.source.value, "request_id": e.request_id,
                 "detail": e.detail}
                for e in trail
            ],
        })
        return
    fields = Table.grid(padding=(0, 2))
    fields.add_column(no_wrap=True)
    fields.add_column(overflow="fold")
    for key, value in found.to_dict().items():
        if value is not None:
            fields.add_row(f"[bold]{key}[/bold]", escape(str(value)))
    console.print(fields)
    rows = [(found.created_at.strftime("%Y-%m-%d %H:%M:%S"), "● requested", "created", "", "", "")]
    rows += [(e.at.strftime("%Y-%m-%d %H:%M:%S"), f"{e.from_state.value} → {e.to_state.value}",
              e.trigger, e.source.value, e.request_id or "",
              ", ".join(f"{k}={v}" for k, v in e.detail.items())) for e in trail]
    _print_timeline(rows)


#: Narrower than this, `show` prints its timeline entry by entry instead of as a table.
_TIMELINE_TABLE_WIDTH = 140


def _print_timeline(rows: list[tuple[str, str, str, str, str, str]]) -> None:
    """The timeline: a table on a wide terminal, else one entry after another; nothing is cut
    (request ids whole, details wrapped)."""
    if console.width >= _TIMELINE_TABLE_WIDTH:
        timeline = Table(title="Timeline", title_justify="left")
        for column in ("when", "transition", "trigger", "source"):
            timeline.add_column(column, no_wrap=True)
        timeline.add_column("request id", no_wrap=True, min_width=36)  # quoted to Mailivery's support
        timeline.add_column("detail", overflow="fold", ratio=1)
        for when, transition, trigger, source, request_id, detail in rows:
            timeline.add_row(when, transition, trigger, source, request_id, escape(detail))
        console.print(timeline)
        return
    console.print("[bold]Timeline[/bold]")
    for when, transition, trigger, source, request_id, detail in rows:
        console.print(f"{when}  {transition}  {escape(trigger)}" + (f" ({source})" if source else ""),
                      highlight=False, overflow="fold")
        entry = Table.grid(padding=(0, 2))
        entry.add_column(no_wrap=True)
        entry.add_column(overflow="fold")
        if request_id:
            entry.add_row("request id", request_id)
        if detail:
            entry.add_row("detail", escape(detail))
        if entry.row_count:
            console.print(Padding(entry, (0, 0, 0, 4)))


# -- schema, diagram, states -------------------------------------------------------------------------


@db_app.command("upgrade", cls=_Command)
def db_upgrade(database_url: DatabaseOption = None) -> None:
    """Apply the Alembic migrations shipped with mailbox_flow (creates the tables on a new database).

    A database created earlier with create_schema() is recognised (its tables match the models) and
    stamped at the current revision instead of being created again.
    """
    from .migrate import upgrade

    with _guard(), _open_flow(database_url) as flow:
        revision = upgrade(flow.database_url)
        target = _safe_url(flow.database_url)
    err_console.print(f"schema at revision {revision} in {escape(target)}", highlight=False)


@app.command(cls=_Command)
def diagram(
    fmt: Annotated[str, typer.Option(
        "--format", metavar="FORMAT",
        help="mermaid (a stateDiagram-v2), dot, or svg (svg needs Graphviz).")] = "mermaid",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="PATH", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the state diagram, generated from the transition table and the shared machine."""
    from .diagram import FORMATS, render

    with _guard():
        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format: choose one of {', '.join(FORMATS)}, not {fmt!r}")
        try:
            text = render(fmt)
        except RuntimeError as exc:
            raise typer.BadParameter(str(exc)) from None
        if output is not None:
            output.write_text(text, encoding="utf-8")
    if output is None:
        sys.stdout.write(text)
    else:
        err_console.print(f"diagram written to {escape(str(output))}", highlight=False)


@app.command(cls=_Command)
def states() -> None:
    """Print the transition table (trigger, from, to, Mailivery call)."""
    from .states import TRANSITIONS

    table = Table("trigger", "from", "to", "Mailivery call")
    for rule in TRANSITIONS:
        table.add_row(rule.trigger, ", ".join(s.value for s in rule.sources), rule.dest.value,
                      rule.effect.value if rule.effect else "-")
    console.print(table)


# -- webhooks ----------------------------------------------------------------------------------------


@webhook_app.command("serve", cls=_Command)
def webhook_serve(
    host: Annotated[str, typer.Option(metavar="HOST", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to listen on.")] = 8000,
    max_body_bytes: Annotated[int, typer.Option(
        min=1, metavar="BYTES",
        help="Refuse (413) webhook bodies larger than this.")] = DEFAULT_MAX_BODY_BYTES,
    body_timeout: Annotated[float, typer.Option(
        min=0.001, metavar="SECONDS",
        help="Seconds a client has to send the whole body; a slower or stalled one is "
        "answered 408 and nothing is stored.")] = DEFAULT_BODY_TIMEOUT,
    background_workers: Annotated[int | None, typer.Option(
        min=0, max=256, metavar="N", help="Answer 202 once a delivery is stored and act on it in this many "
        "background threads (default: MAILBOX_FLOW_WEBHOOK_BACKGROUND_WORKERS, 0 = act before "
        "answering).")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run the webhook receiver: POST /webhooks/mailivery/{secret} and GET /healthz.

    Needs MAILBOX_FLOW_WEBHOOK_SECRET (the secret path segment configured in Mailivery's admin
    panel) and MAILBOX_FLOW_MAILIVERY_API_KEY (each campaign is re-read before any warmup call).
    With background workers, deliveries still waiting at shutdown stay stored as received; every
    receiver sweeps the inbox once per lease and acts on those left longer than the lease.
    """
    from .web import serve

    with _guard(), _open_flow(database_url, warn=True) as flow:
        if flow.settings.webhook_secret is None:
            raise typer.BadParameter("set MAILBOX_FLOW_WEBHOOK_SECRET: without it every delivery "
                                     "would be refused")
        flow.client  # noqa: B018 - a missing API key fails now, not on the first webhook
        err_console.print(f"receiving webhooks on http://{host}:{port}/webhooks/mailivery/<secret>",
                          highlight=False)
        workers = (flow.settings.webhook_background_workers if background_workers is None
                   else background_workers)
        serve(flow, host, port, max_body_bytes=max_body_bytes, background_workers=workers,
              body_timeout=body_timeout)


@webhook_app.command("replay", cls=_Command)
def webhook_replay(
    ids: Annotated[list[int] | None, typer.Option(
        "--id", metavar="ID", help="A stored delivery to process again (repeat for several).")] = None,
    replay_all: Annotated[bool, typer.Option(
        "--all", metavar="",
        help="Every delivery that failed, or was received and never processed.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Process stored webhook deliveries again (ones that failed or were never processed).

    Exit status: 0 when each is now handled, 1 when some still wait (Mailivery unreachable, or the
    warmup call refused), 2 on error.
    """
    rows: list[tuple[str, ...]] = []
    waiting = 0
    with _guard(), _open_flow(database_url) as flow:
        if not ids and not replay_all:
            raise typer.BadParameter("give --id N (repeatable) or --all")
        targets = list(ids or [])
        if replay_all:
            from .models import utcnow

            settled = utcnow() - flow.lease
            targets += [d.id for d in flow.deliveries("failed")]
            targets += [d.id for d in flow.deliveries("received") if d.received_at < settled]
        for delivery_id in dict.fromkeys(targets):
            stored = flow.store.get_delivery(delivery_id)
            if stored is None:
                raise typer.BadParameter(f"--id: no stored delivery {delivery_id}")
            if stored.status not in ("failed", "received"):
                rows.append((str(delivery_id), stored.event_type or "", str(stored.campaign_id or ""),
                             f"skipped ({stored.status})", "", "already handled"))
                continue
            result = flow.reprocess_delivery(delivery_id)
            if result.outcome in (Outcome.DEFERRED, Outcome.PENDING):
                waiting += 1
            rows.append((str(delivery_id), stored.event_type or "", str(stored.campaign_id or ""),
                         result.outcome.value, result.mailbox.state.value if result.mailbox else "",
                         escape((result.detail or "")[:80])))
    table = Table("delivery", "event", "campaign", "outcome", "mailbox state", "detail")
    for row in rows:
        table.add_row(*row)
    console.print(table if rows else "nothing to replay")
    raise typer.Exit(1 if waiting else 0)


# -- simulator and demo ------------------------------------------------------------------------------


@app.command(cls=_Command)
def simulate(
    host: Annotated[str, typer.Option(metavar="HOST", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 8025,
    webhook_url: Annotated[str | None, typer.Option(metavar="URL", help="Where to post webhooks.")] = None,
    api_key: Annotated[str, typer.Option(
        metavar="KEY", help="The API key the simulator accepts.")] = "sim-key",
) -> None:
    """Run the Mailivery simulator standalone (API under /api/v1, consent pages, /_sim controls)."""
    from .simulator import run

    console.print(f"Mailivery simulator on http://{host}:{port}/api/v1 (API key {api_key!r})")
    run(host=host, port=port, webhook_url=webhook_url, api_key=api_key)


@app.command(cls=_Command)
def demo() -> None:
    """Run the end-to-end demo against a built-in simulator (no account, no network needed)."""
    from .demo import run_demo

    raise typer.Exit(run_demo(console))


def main() -> None:
    """Entry point of the ``mailbox-flow`` console script."""
    app(prog_name="mailbox-flow")


if __name__ == "__main__":
    main()
