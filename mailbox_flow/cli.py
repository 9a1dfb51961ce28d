"""The ``mailbox-flow`` command line: thin commands over the library (Typer + Rich)."""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .audit import configure_logging
from .errors import MailboxFlowError
from .flow import MailboxFlow
from .settings import Settings

__all__ = ["app", "main", "parse_duration"]

app = typer.Typer(
    name="mailbox-flow",
    help="Connect Microsoft/Outlook mailboxes to Mailivery warmup, correctly by construction.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``90m``, ``1h``, ``7d``, ``30s``, ``2w`` → timedelta (typer.BadParameter otherwise)."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90m, 1h or 7d")
    return timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})


def _flow(database_url: str | None) -> MailboxFlow:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return MailboxFlow(database_url, settings=settings)


DatabaseOption = Annotated[
    str | None,
    typer.Option("--database-url", envvar="MAILBOX_FLOW_DATABASE_URL",
                 help="SQLAlchemy URL of the database (default: sqlite:///mailbox_flow.db)."),
]


@app.command("list")
def list_mailboxes(
    state: Annotated[str | None, typer.Option(help="Only mailboxes in this state.")] = None,
    owner: Annotated[str | None, typer.Option(help="Only mailboxes of this owner id.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """List mailboxes, oldest first."""
    try:
        with _flow(database_url) as flow:
            mailboxes = flow.list(state=state, owner_id=owner)
    except MailboxFlowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table("id", "email", "state", "campaign", "owner", "changed")
    for mb in mailboxes:
        table.add_row(str(mb.id), mb.email, mb.state.value, str(mb.campaign_id or ""),
                      mb.owner_id or "", mb.state_changed_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command()
def reconcile(
    stuck_after: Annotated[str, typer.Option(help="Pending longer than this is stuck.")] = "1h",
    expire_after: Annotated[str, typer.Option(help="OAuth older than this is abandoned.")] = "7d",
    remote: Annotated[bool, typer.Option(help="Also compare with Mailivery's campaign list.")] = False,
    fix: Annotated[bool, typer.Option(help="Heal what is safe to heal.")] = False,
    json_path: Annotated[str | None, typer.Option("--json", help="Write the report as JSON "
                                                  "to PATH ('-' for stdout).")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Find mailboxes stuck in pending, abandoned OAuth and unprocessed deliveries.

    Exit status: 0 clean, 1 findings remain, 2 error.
    """
    stuck, expire = parse_duration(stuck_after), parse_duration(expire_after)
    try:
        with _flow(database_url) as flow:
            report = flow.reconcile(stuck_after=stuck, expire_after=expire, remote=remote, fix=fix)
    except MailboxFlowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if json_path == "-":
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        if json_path:
            Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        table = Table("reason", "action", "email", "state", "age", "detail")
        for f in report.findings:
            table.add_row(f.reason, f.action, f.email or "", f.state.value if f.state else "",
                          str(f.age).split(".")[0], (f.detail or "")[:80])
        console.print(table if report.findings else "[green]clean: nothing to report[/green]")
    raise typer.Exit(0 if report.clean else 1)


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8025,
    webhook_url: Annotated[str | None, typer.Option(help="Where to post webhooks.")] = None,
    api_key: Annotated[str, typer.Option(help="The API key the simulator accepts.")] = "sim-key",
) -> None:
    """Run the Mailivery simulator standalone (API under /api/v1, consent pages, /_sim controls)."""
    from .simulator import run

    console.print(f"Mailivery simulator on http://{host}:{port}/api/v1 (API key {api_key!r})")
    run(host=host, port=port, webhook_url=webhook_url, api_key=api_key)


@app.command()
def states() -> None:
    """Print the transition table."""
    from .states import TRANSITIONS

    table = Table("trigger", "from", "to", "Mailivery call")
    for rule in TRANSITIONS:
        table.add_row(rule.trigger, ", ".join(s.value for s in rule.sources), rule.dest.value,
                      rule.effect.value if rule.effect else "-")
    console.print(table)


def main() -> None:
    """Entry point of the ``mailbox-flow`` console script."""
    app()
