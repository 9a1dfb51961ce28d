"""The examples under examples/ run: a FastAPI and a Flask partner service, end to end."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from mailbox_flow import MailboxFlow, State
from mailbox_flow.simulator import serve_in_thread

from .helpers import SECRET

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(relative: str) -> ModuleType:
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_example_" + path.parent.name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_state(flow: MailboxFlow, mailbox_id: str, state: State) -> State:
    deadline = time.monotonic() + 5
    while flow.get(mailbox_id).state is not state and time.monotonic() < deadline:
        time.sleep(0.01)
    return flow.get(mailbox_id).state


def test_fastapi_partner_service(flow: MailboxFlow, sim: Any) -> None:
    """FastAPI example: connect endpoint → consent → mounted receiver → warming."""
    app = load("fastapi_partner/app.py").build_app(flow)
    url, stop = serve_in_thread(app, "127.0.0.1", 0)
    previous = sim.webhook_url
    try:
        sim.webhook_url = f"{url}/webhooks/mailivery/{SECRET}"
        created = httpx.post(f"{url}/users/u-7/outlook",
                             json={"email": "Ada@Contoso.com", "first_name": "Ada"})
        assert created.status_code == 201, created.text
        sim.accept(created.json()["redirect_to"])
        sim.wait_for_webhooks()
        assert wait_state(flow, created.json()["mailbox_id"], State.WARMING) is State.WARMING
        listed = httpx.get(f"{url}/users/u-7/outlook").json()
        assert [m["state"] for m in listed] == ["warming"]
        bad = httpx.post(f"{url}/users/u-7/outlook", json={"email": "nope", "first_name": "A"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "email"
        again = httpx.post(f"{url}/users/u-8/outlook", json={"email": "ada@contoso.com",
                                                               "first_name": "Ada"})
        assert again.status_code == 409
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        sim.wait_for_webhooks()
        sim.webhook_url = previous
        stop()


def test_flask_partner_service(flow: MailboxFlow, sim: Any) -> None:
    """Flask example: its own webhook route calls handle_webhook; statuses map 200/400/401/413."""
    app = load("flask_partner/app.py").build_app(flow)
    web = app.test_client()
    created = web.post("/users/u-9/outlook", json={"email": "grace@navy.mil", "first_name": "Grace"})
    assert created.status_code == 201
    sim.webhook_url, previous = None, sim.webhook_url
    try:
        sim.accept(created.get_json()["redirect_to"])
        sim.wait_for_webhooks()
        body = sim.webhooks_sent[-1].body
    finally:
        sim.webhook_url = previous
    assert web.post("/hooks/mailivery/wrong", data=body).status_code == 401
    assert web.post(f"/hooks/mailivery/{SECRET}", data=b"{").status_code == 400
    assert web.post(f"/hooks/mailivery/{SECRET}", data=b"x" * (65 * 1024)).status_code == 413
    done = web.post(f"/hooks/mailivery/{SECRET}", data=body)
    assert done.status_code == 200 and done.get_json() == {"outcome": "started"}
    assert flow.get(created.get_json()["mailbox_id"]).state is State.WARMING
    assert json.loads(body)["account"]["email"] == "grace@navy.mil"
