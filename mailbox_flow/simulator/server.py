"""Run ASGI apps (the simulator, a webhook receiver, ...) on loopback in a background thread."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from starlette.types import ASGIApp

from mailbox_flow.mailivery.client import shared_tls_context
from mailbox_flow.simulator.app import API_PREFIX, create_app
from mailbox_flow.simulator.state import Simulator

__all__ = ["SimulatorServer", "run", "serve_in_thread"]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> tuple[str, Callable[[], None]]:
    """Serve `app` with uvicorn in a daemon thread; returns ``(base_url, stop)``.

    The socket is bound here first (port 0 = a free port chosen by the OS), so the URL is known
    and the port cannot be taken by someone else before uvicorn starts. Logging stays quiet
    (`log_level`, no access log) and the host process's logging configuration is left untouched.
    `stop()` is idempotent and waits for the thread to end.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP; with proto 0, keep-alive requests stall ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        lifespan="auto",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"asgi-server-{bound_port}",
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise RuntimeError(f"the ASGI server on {host}:{bound_port} did not start")
        time.sleep(0.005)

    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://{_url_host(host)}:{bound_port}", stop


class SimulatorServer:
    """A `Simulator` served over real HTTP on loopback, in a background thread.

    >>> with SimulatorServer() as server:               # doctest: +SKIP
    ...     httpx.get(server.api_url + "/campaigns",
    ...               headers={"Authorization": "Bearer sim-key"})

    Sets ``sim.public_url`` to `url` when it starts (unless the simulator already had one of its
    own), so consent URLs point at this server.
    """

    def __init__(
        self, sim: Simulator | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.sim = sim if sim is not None else Simulator()
        self.host = host
        self.port = port
        self._url: str | None = None
        self._stop: Callable[[], None] | None = None
        self._set_public_url = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only while running)."""
        if self._url is None:
            raise RuntimeError("the simulator server is not running; call start() first")
        return self._url

    @property
    def api_url(self) -> str:
        """``url + "/api/v1"``: what a Mailivery client takes as its base URL."""
        return self.url + API_PREFIX

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._url is not None

    def start(self) -> Self:
        """Start serving (no-op when already running); returns self."""
        if self._url is not None:
            return self
        url, stop = serve_in_thread(create_app(self.sim), self.host, self.port)
        self._url, self._stop = url, stop
        if self.sim.public_url is None or self._set_public_url:
            self.sim.public_url = url
            self._set_public_url = True
        return self

    def stop(self) -> None:
        """Stop serving and the simulator's webhook thread (idempotent)."""
        stop, self._stop, self._url = self._stop, None, None
        if stop is not None:
            stop()
        self.sim.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An `httpx.Client` on `api_url` carrying the simulator's API key."""
        headers = {"Authorization": f"Bearer {self.sim.api_key}", "Accept": "application/json"}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("verify", shared_tls_context())  # not a new certificate bundle per client
        return httpx.Client(base_url=self.api_url, headers=headers, **kwargs)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimulatorServer(url={self._url!r})"


def run(
    host: str = "127.0.0.1",
    port: int = 8025,
    webhook_url: str | None = None,
    api_key: str = "sim-key",
    *,
    public_url: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve a fresh simulator in the foreground until interrupted (``mailbox-flow simulate``)."""
    base = public_url or f"http://{_url_host(host)}:{port}"
    sim = Simulator(api_key=api_key, webhook_url=webhook_url, public_url=base)
    print(
        f"Mailivery simulator: API {base}{API_PREFIX} (Bearer {api_key}), "
        f"webhooks -> {webhook_url or '(none; POST /_sim/config to set)'}, state {base}/_sim/state",
        file=sys.stderr,
    )
    try:
        # no access log: consent paths carry (simulated) OAuth tokens, which never go to a log line
        uvicorn.run(create_app(sim), host=host, port=port, log_level=log_level, access_log=False)
    finally:
        sim.close()
