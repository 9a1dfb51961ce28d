"""End to end over real HTTP: client → simulator → consent page → webhook → receiver → warming.

The first tests wire everything by hand on SQLite and PostgreSQL (``database_url``); the last ones
use the pytest plugin (`mailbox_flow.testing`) exactly as a partner would.
"""

from __future__ import annotations

import html
import importlib.metadata
import re
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import mailbox_flow.testing as plugin
from mailbox_flow import MailboxFlow, MailiveryClient, Source, State
from mailbox_flow.simulator import Simulator, SimulatorServer, serve_in_thread
from mailbox_flow.testing import wait_for_state
from mailbox_flow.web import create_app

from .helpers import API_KEY, SECRET

ROOT = Path(__file__).resolve().parent.parent


def browser_accept(oauth_url: str, button: str = "accept") -> httpx.Response:
    """Open the consent page and submit its Accept (or Decline) form, as a browser would."""
    with httpx.Client(timeout=5.0) as browser:
        page = browser.get(oauth_url)
        assert page.status_code == 200, page.text
        form = re.search(rf'<form method="post" action="([^"]*/{button})">(.*?)</form>', page.text,
                         re.DOTALL)
        assert form, page.text
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form[2]))
        action = urllib.parse.urljoin(oauth_url, html.unescape(form[1]))
        return browser.post(action, data={k: html.unescape(v) for k, v in fields.items()})


@pytest.fixture
def receiver(flow: MailboxFlow, sim: Simulator) -> Iterator[str]:
    """``create_app(flow)`` served on a loopback port; the simulator posts its webhooks there."""
    url, stop = serve_in_thread(create_app(flow), "127.0.0.1", 0)
    sim.webhook_url = f"{url}/webhooks/mailivery/{SECRET}"
    try:
        yield url
    finally:
        sim.wait_for_webhooks()
        stop()


def connect(flow: MailboxFlow, email: str, owner: str = "user-1") -> Any:
    return flow.request_connection(owner_id=owner, email=email, first_name="Ada", last_name="Lovelace")


# -- wired by hand, on SQLite and PostgreSQL --------------------------------------------------------


def test_connect_consent_webhook_warming_over_http(flow: MailboxFlow, sim: Simulator, receiver: str
                                                   ) -> None:
    """A mailbox goes requested → oauth_sent → (consent over HTTP, webhook to the receiver) → warming."""
    mb = connect(flow, "Ada@Contoso.com")
    assert mb.state is State.OAUTH_SENT
    done = browser_accept(mb.oauth_url)
    assert done.status_code == 200 and "Mailbox connected" in done.text
    assert sim.wait_for_webhooks()
    assert [w.result for w in sim.webhooks_sent] == [200]
    warm = wait_for_state(flow, mb.id, State.WARMING)
    assert warm.campaign_id is not None
    assert sim.campaign(warm.campaign_id)["status_code"] == "active"
    assert sim.count("PATCH", f"/campaigns/{warm.campaign_id}/start-warmup") == 1
    assert sim.count("GET", f"/campaigns/{warm.campaign_id}") == 1  # re-read before starting
    assert [(e.trigger, e.to_state, e.source) for e in flow.history(mb.id)] == [
        ("send_oauth", State.OAUTH_SENT, Source.API),
        ("mark_pending", State.PENDING, Source.WEBHOOK),
        ("start", State.WARMING, Source.WEBHOOK),
    ]
    assert [(d.status, d.outcome) for d in flow.deliveries()] == [("processed", "started")]
    assert httpx.get(f"{receiver}/healthz").json() == {"status": "ok"}


def test_declined_consent_changes_nothing(flow: MailboxFlow, sim: Simulator, receiver: str) -> None:
    """Declining on the consent page creates no campaign, posts no webhook, leaves oauth_sent."""
    mb = connect(flow, "decliner@contoso.com")
    done = browser_accept(mb.oauth_url, button="decline")
    assert done.status_code == 200 and "declined" in done.text
    assert sim.wait_for_webhooks()
    assert sim.campaigns() == [] and sim.webhooks_sent == []
    assert flow.get(mb.id).state is State.OAUTH_SENT
    assert httpx.get(mb.oauth_url).status_code == 404


def test_orphan_and_failed_start_over_http(flow: MailboxFlow, sim: Simulator, receiver: str) -> None:
    """Over HTTP, an unsolicited campaign is rejected and a failed start is healed by reconcile."""
    sim.create_campaign("stranger@fabrikam.com", "Eve")
    sim.faults.start_fails("grace@contoso.com", times=1)
    mb = connect(flow, "grace@contoso.com", owner="user-2")
    browser_accept(mb.oauth_url)
    assert sim.wait_for_webhooks()
    assert [w.result for w in sim.webhooks_sent] == [200, 200]
    orphan = flow.find_by_email("stranger@fabrikam.com")
    assert orphan is not None and orphan.state is State.REJECTED and orphan.owner_id is None
    assert sim.count("PATCH", f"/campaigns/{orphan.campaign_id}/start-warmup") == 0
    pending = flow.get(mb.id)
    assert pending.state is State.PENDING and "CONNECTION_CHECK_FAILED" in (pending.last_error or "")
    report = flow.reconcile(stuck_after=timedelta(0), fix=True)
    assert [(f.reason, f.action) for f in report.findings] == [("stuck_pending", "started")]
    assert flow.get(mb.id).state is State.WARMING


def test_duplicated_webhooks_start_once_over_http(flow: MailboxFlow, sim: Simulator, receiver: str
                                                  ) -> None:
    """When Mailivery posts the webhook three times, the receiver starts warmup exactly once."""
    sim.faults.duplicate_webhooks(3)
    mb = connect(flow, "ada@contoso.com")
    browser_accept(mb.oauth_url)
    assert sim.wait_for_webhooks()
    assert [w.result for w in sim.webhooks_sent] == [200, 200, 200]
    warm = wait_for_state(flow, mb.id, State.WARMING)
    assert sim.count("PATCH", f"/campaigns/{warm.campaign_id}/start-warmup") == 1
    assert sorted(d.status for d in flow.deliveries()) == ["duplicate", "duplicate", "processed"]


# -- the pytest plugin, as a partner uses it ----------------------------------------------------


def test_plugin_flow_reaches_warming(mailbox_flow: MailboxFlow, mailivery_sim: Simulator) -> None:
    """With only the plugin's fixtures, accepting the consent drives the flow to warming."""
    mb = mailbox_flow.request_connection(owner_id="user-1", email="ada@contoso.com", first_name="Ada")
    mailivery_sim.accept(mb.oauth_url)
    warm = wait_for_state(mailbox_flow, mb.id, State.WARMING)
    assert mailivery_sim.campaign(warm.campaign_id)["status_code"] == "active"
    assert mailivery_sim.wait_for_webhooks()  # the receiver's answer may still be on its way back
    assert [w.result for w in mailivery_sim.webhooks_sent] == [200]
    assert mailivery_sim.sent_payloads("campaign.pending")[0]["account"]["email"] == "ada@contoso.com"


def test_plugin_faults_and_reconcile(mailbox_flow: MailboxFlow, mailivery_sim: Simulator) -> None:
    """Fault injection through the plugin's simulator: a failed start stays pending, reconcile heals."""
    mailivery_sim.faults.start_fails("grace@contoso.com")
    mb = mailbox_flow.request_connection(owner_id="user-2", email="grace@contoso.com",
                                         first_name="Grace")
    mailivery_sim.accept(mb.oauth_url)
    assert mailivery_sim.wait_for_webhooks()
    assert mailbox_flow.get(mb.id).state is State.PENDING
    mailbox_flow.reconcile(stuck_after=timedelta(0), fix=True)
    assert mailbox_flow.get(mb.id).state is State.WARMING


def test_plugin_fixtures_are_fresh_and_consistent(
    mailivery_sim: Simulator, mailivery_simulator: SimulatorServer, mailivery_server: SimulatorServer,
    mailivery_client: MailiveryClient, mailbox_flow_db: str, mailbox_flow_webhook_secret: str,
) -> None:
    """Each test gets a reset simulator (our conftest's API key), one server, a client and a DB URL."""
    assert mailivery_simulator is mailivery_server and mailivery_server.sim is mailivery_sim
    assert mailivery_sim.campaigns() == [] and mailivery_sim.calls == []
    assert mailivery_sim.webhook_url is None
    assert mailivery_sim.faults.snapshot()["start_fails"] == {}
    assert mailivery_sim.api_key == API_KEY  # tests/conftest.py overrides mailivery_api_key
    assert mailivery_client.base_url.rstrip("/") == mailivery_server.api_url
    assert mailivery_client.rate_limiter is None
    assert mailivery_client.list_campaigns() == []
    assert mailbox_flow_db.startswith("sqlite:///") and len(mailbox_flow_webhook_secret) >= 32


def test_wait_for_state_fails_with_what_it_saw(mailbox_flow: MailboxFlow) -> None:
    """wait_for_state fails the test after its timeout, naming the state the mailbox is in."""
    mb = mailbox_flow.request_connection(owner_id="u", email="slow@contoso.com", first_name="S")
    with pytest.raises(pytest.fail.Exception, match=r"slow@contoso\.com is oauth_sent, not warming"):
        wait_for_state(mailbox_flow, mb.id, "warming", timeout=0.05)


@pytest.mark.postgres
def test_postgres_schema_passes_settings_to_every_connection(postgres_url: str) -> None:
    """postgres_schema(settings=...) reaches every connection made from its URL, beside the
    search_path; a value that could smuggle another option in is refused."""
    import sqlalchemy as sa

    from .conftest import PG_URL

    with plugin.postgres_schema(PG_URL, prefix="mf_opts",
                                settings={"synchronous_commit": "off", "lock_timeout": "5s"}) as url:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "off"
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "5s"
            assert conn.execute(sa.text("SELECT current_schema()")).scalar().startswith("mf_opts_")
        engine.dispose()
    for bad in ({"synchronous_commit": "off -csearch_path=public"}, {"Bad Name": "1"},
                {"search_path": "public"}):
        with pytest.raises(ValueError, match="not a PostgreSQL setting"), \
                plugin.postgres_schema(PG_URL, settings=bad):
            pass


def test_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    """The pytest11 entry point `mailbox_flow` names mailbox_flow.testing, and pytest loaded it."""
    points = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in points if p.name == "mailbox_flow"] == ["mailbox_flow.testing"], (
        "reinstall the package (pip install -e .) to register the pytest11 entry point"
    )
    assert pytestconfig.pluginmanager.get_plugin("mailbox_flow") is plugin


def _example_from_docstring() -> str:
    doc = plugin.__doc__ or ""
    block = doc.split("Example (a partner's test file; nothing else is needed)::", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def _example_from_docs() -> str:
    text = (ROOT / "docs" / "testing.md").read_text()
    return re.findall(r'```python title="test_mailboxes.py"\n(.*?)```', text, re.DOTALL)[0]


@pytest.mark.parametrize("source", ["docstring", "docs"])
def test_partner_example_runs_with_only_the_plugin(source: str, tmp_path: Path) -> None:
    """The documented example test passes in a bare project: no conftest, only the installed plugin."""
    example = _example_from_docstring() if source == "docstring" else _example_from_docs()
    (tmp_path / "test_partner.py").write_text(example)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_partner.py"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b[2-9] passed\b", proc.stdout), proc.stdout
