"""The webhook edge: an ASGI app (Starlette) to mount in a partner's service or run as it is.

``POST /webhooks/mailivery/{secret}``: Mailivery signs nothing, so the secret lives in the URL configured in
Mailivery's admin panel and is compared in constant time before anything is read or stored.

==========  ==================================================================================
status      when
==========  ==================================================================================
200         processed, duplicate, ignored, rejected or pending (warmup call failed: retried later)
202         deferred: Mailivery could not be asked; the delivery is stored and will be finished;
            or accepted (with ``background_workers``): stored, to be acted on in the background
400         malformed body (stored as ``invalid``)
401         bad secret (nothing stored)
408         the body did not arrive within ``body_timeout`` seconds (nothing stored; connection closed)
413         body larger than ``max_body_bytes`` (nothing stored)
503         the database is unavailable (nothing decided; the sender may retry)
==========  ==================================================================================

A client that goes away mid-body is dropped quietly (nothing stored, no traceback in the server's log).

``GET /healthz`` answers 200 ``{"status": "ok"}`` only when deliveries can be stored: 503
``{"status": "unavailable"}`` when the database does not answer, 503 ``{"status": "degraded",
"reason": ...}`` when it answers but refuses writes (a no-op write probe, rolled back: read-only file or
transaction, missing privilege) or when the last `STORE_FAILURES_DEGRADED` deliveries could not be
stored and none was since (a full disk), for `STORE_FAILURE_WINDOW` seconds after the last failure.
No input produces a 500.

By default each delivery is acted on before it is answered (two Mailivery calls for a new mailbox, under
the client's rate limit). With ``background_workers=N`` the receiver answers as soon as the delivery is
stored and de-duplicated (202 ``accepted``) and N threads act on it (`MailboxFlow.process_delivery`): a
flood is taken in at the rate of the database, not of Mailivery. When more than ``max_queued``
deliveries wait, a new one is processed before it is answered (back-pressure on the sender). On
shutdown, deliveries still waiting get ``drain_seconds`` to be processed; any left are in the inbox as
``received``, and every ``sweep_seconds`` (the lease, by default) each receiver queues the deliveries
left ``received`` for longer than the lease: after a restart or a crash they are acted on within two
leases, without waiting for the nightly reconcile.
Run it with ``mailbox-flow webhook serve`` or any ASGI server; never enable an access log that prints
request paths, since the path carries the secret.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ._bounds import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from .audit import error_fields, get_logger
from .errors import MailboxFlowError, StorageError, WebhookAuthError, WebhookPayloadError
from .models import utcnow
from .types import Outcome

if TYPE_CHECKING:
    from .flow import MailboxFlow

__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "WEBHOOK_PATH", "create_app", "serve"]

log = get_logger("mailbox_flow.web")

WEBHOOK_PATH = "/webhooks/mailivery/{secret}"


class _TooLarge(Exception):
    pass


#: /healthz answers ``degraded`` after this many deliveries in a row could not be stored...
STORE_FAILURES_DEGRADED = 3
#: ...as long as the last of them is at most this many seconds old (and none was stored since).
STORE_FAILURE_WINDOW = 60.0


def _cause_name(exc: BaseException) -> str:
    """The name of the database driver's error behind a `StorageError` (never its message, which
    may name hosts, users or tables)."""
    cause = exc.__cause__
    return type(getattr(cause, "orig", None) or cause or exc).__name__


class _StoreHealth:
    """The outcome of the receiver's last attempts to store a delivery, for /healthz.

    A write probe cannot see a full disk (it writes nothing); failed deliveries can. Failures are
    forgotten after `STORE_FAILURE_WINDOW` seconds: a receiver that a load balancer took out of
    rotation gets no deliveries, so none could ever succeed to clear them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._last_failure = 0.0
        self._error = ""

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            self._last_failure = time.monotonic()
            self._error = _cause_name(exc)

    def stored(self) -> None:
        with self._lock:
            self._failures = 0

    def problem(self) -> str | None:
        """Why deliveries cannot be stored now, or None."""
        with self._lock:
            if (self._failures >= STORE_FAILURES_DEGRADED
                    and time.monotonic() - self._last_failure <= STORE_FAILURE_WINDOW):
                return (f"the last {self._failures} deliveries could not be stored ({self._error}); "
                        "none stored since")
        return None


class _Background:
    """Threads that act on accepted deliveries (`MailboxFlow.process_delivery`), at most ``max_queued``
    waiting, and a sweeper that queues the deliveries left ``received`` for longer than the lease
    (their process died, or they were still waiting at a shutdown), every ``sweep_seconds``.

    Started by the app's lifespan, or by its first request (a mounted sub-application gets no
    lifespan events of its own; a load balancer's health checks count).
    """

    def __init__(self, flow: MailboxFlow, workers: int, max_queued: int, drain_seconds: float,
                 sweep_seconds: float) -> None:
        self._flow = flow
        self._workers = workers
        self._slots = threading.BoundedSemaphore(max_queued)
        self._drain_seconds = drain_seconds
        self._sweep_seconds = sweep_seconds
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._queued: set[int] = set()
        self._stopping = threading.Event()
        self._stop_at: float | None = None

    def start(self) -> None:
        """Start the workers and the sweeper (once; not after `close`)."""
        with self._lock:
            if self._pool is not None or self._stop_at is not None:
                return
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mailbox-flow-webhook")
        threading.Thread(target=self._sweep_loop, name="mailbox-flow-webhook-sweep", daemon=True).start()

    def submit(self, delivery_id: int) -> bool:
        """Queue a delivery (True also when it already waits); False when the queue is full or closed:
        the caller then processes it itself."""
        self.start()
        with self._lock:
            if delivery_id in self._queued:
                return True
            if self._pool is None or self._stop_at is not None or not self._slots.acquire(blocking=False):
                return False
            self._queued.add(delivery_id)
            self._pool.submit(self._run, delivery_id)
        return True

    def _run(self, delivery_id: int) -> None:
        try:
            if self._stop_at is not None and time.monotonic() > self._stop_at:
                return  # shutting down and out of time: it stays received, for the next sweep
            self._flow.process_delivery(delivery_id)
        except Exception as exc:  # stored as failed (or left received): a replay finishes it
            log.error("mailbox_flow.webhook_error", delivery_id=delivery_id, **error_fields(exc))
        finally:
            with self._lock:
                self._queued.discard(delivery_id)
            self._slots.release()

    def sweep(self) -> int:
        """Queue the deliveries received more than a lease ago and still not acted on; how many."""
        queued = 0
        cutoff = utcnow() - self._flow.lease
        for delivery in self._flow.store.scan_deliveries("received", received_before=cutoff):
            if delivery.id in self._queued:
                continue
            if not self.submit(delivery.id):
                break  # full (or closing): the rest at the next sweep
            queued += 1
        if queued:
            log.info("mailbox_flow.webhook_sweep", queued=queued)
        return queued

    def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sweep()
            except Exception as exc:  # the database is away: try again at the next sweep
                log.warning("mailbox_flow.webhook_sweep_failed", error=type(exc).__name__)
            self._stopping.wait(self._sweep_seconds)

    def close(self) -> None:
        """Stop taking deliveries, give the waiting ones ``drain_seconds``, wait for those running."""
        with self._lock:
            self._stop_at = time.monotonic() + self._drain_seconds
            pool = self._pool
        self._stopping.set()
        if pool is not None:
            pool.shutdown(wait=True)


async def _read_limited(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refusing (early) anything over ``limit`` bytes.

    Raises `_TooLarge`, `TimeoutError` when the whole body has not arrived within ``timeout``
    seconds, or starlette's `ClientDisconnect` when the client goes away before sending all of it.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _TooLarge
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    with anyio.fail_after(timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    flow: MailboxFlow,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    background_workers: int = 0,
    max_queued: int = 1000,
    drain_seconds: float = 10.0,
    sweep_seconds: float | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> Starlette:
    """The webhook receiver and health check for ``flow``, as an ASGI app.

    ``body_timeout``: seconds a client has to send the whole body once its headers are in; a slower
    (or stalled) one is answered 408 and the connection closed, nothing stored.

    ``background_workers`` > 0: answer once a delivery is stored (202 ``accepted``) and act on it in that
    many threads, and every ``sweep_seconds`` (default: the flow's lease) queue the deliveries left
    ``received`` for longer than the lease (see the module's notes); 0 (the default): act on each
    delivery before answering.
    """
    sweep = flow.lease.total_seconds() if sweep_seconds is None else sweep_seconds
    if background_workers < 0 or max_queued < 1 or drain_seconds < 0 or sweep <= 0:
        raise ValueError("background_workers >= 0, max_queued >= 1, drain_seconds >= 0 and "
                         "sweep_seconds > 0, please")
    if not body_timeout > 0:
        raise ValueError(f"body_timeout must be > 0 seconds, not {body_timeout!r}")
    background = (_Background(flow, background_workers, max_queued, drain_seconds, sweep)
                  if background_workers else None)
    health = _StoreHealth()

    async def receive(request: Request) -> JSONResponse:
        if background is not None:
            background.start()
        secret = str(request.path_params.get("secret", ""))
        try:
            flow.verify_secret(secret)
        except WebhookAuthError:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            body = await _read_limited(request, max_body_bytes, body_timeout)
        except _TooLarge:
            return JSONResponse({"error": "payload_too_large", "limit": max_body_bytes},
                                status_code=413, headers={"Connection": "close"})
        except TimeoutError:  # the rest of the body never came: the connection is of no further use
            log.info("mailbox_flow.webhook_body_timeout", timeout=body_timeout)
            return JSONResponse({"error": "request_timeout", "timeout": body_timeout},
                                status_code=408, headers={"Connection": "close"})
        except ClientDisconnect:  # gone mid-body: nobody reads this answer, nothing is stored
            log.info("mailbox_flow.webhook_client_disconnected")
            return JSONResponse({"error": "client_disconnected"}, status_code=400)
        headers = {k: v for k, v in request.headers.items() if k.lower() == "x-request-id"}
        try:
            if background is None:
                result = await run_in_threadpool(flow.handle_webhook, body, secret, headers)
            else:
                result = await run_in_threadpool(flow.accept_webhook, body, secret, headers)
                if result.outcome is Outcome.ACCEPTED and not background.submit(result.delivery_id or 0):
                    result = await run_in_threadpool(flow.process_delivery, result.delivery_id or 0)
        except WebhookAuthError:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        except WebhookPayloadError as exc:
            health.stored()
            return JSONResponse(
                {"error": "invalid_payload", "detail": exc.message, "delivery_id": exc.delivery_id},
                status_code=400,
            )
        except MailboxFlowError as exc:
            if isinstance(exc, StorageError):
                health.failed(exc)
            log.error("mailbox_flow.webhook_unavailable", error=type(exc).__name__)
            return JSONResponse({"error": "unavailable"}, status_code=503)
        except Exception as exc:  # never a 500: the sender retries, the reconciler finishes it
            log.error("mailbox_flow.webhook_error", **error_fields(exc))
            return JSONResponse({"error": "unavailable"}, status_code=503)
        health.stored()
        payload: dict[str, Any] = {
            "outcome": result.outcome.value,
            "delivery_id": result.delivery_id,
            "mailbox_id": str(result.mailbox.id) if result.mailbox else None,
            "state": result.mailbox.state.value if result.mailbox else None,
        }
        status = 202 if result.outcome in (Outcome.DEFERRED, Outcome.ACCEPTED) else 200
        return JSONResponse(payload, status_code=status)

    async def healthz(_request: Request) -> JSONResponse:
        if background is not None:
            background.start()
        try:
            ok = await run_in_threadpool(flow.store.ping)
        except Exception:
            ok = False
        if not ok:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        try:
            await run_in_threadpool(flow.store.probe_write)
        except Exception as exc:
            return JSONResponse({"status": "degraded",
                                 "reason": f"the database refuses writes ({_cause_name(exc)})"},
                                status_code=503)
        problem = health.problem()
        if problem is not None:
            return JSONResponse({"status": "degraded", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if background is not None:
            background.start()
        yield
        if background is not None:
            await run_in_threadpool(background.close)

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def serve(
    flow: MailboxFlow,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    workers_log_level: str = "info",
    background_workers: int = 0,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> None:
    """Run the receiver with uvicorn in the foreground (access log off: paths carry the secret)."""
    import uvicorn

    uvicorn.run(
        create_app(flow, max_body_bytes=max_body_bytes, background_workers=background_workers,
                   body_timeout=body_timeout),
        host=host,
        port=port,
        access_log=False,
        log_level=workers_log_level,
    )
