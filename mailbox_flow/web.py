"""The webhook edge: an ASGI app (Starlette) to mount in a partner's service or run as it is.

``POST /webhooks/mailivery/{secret}``: Mailivery signs nothing, so the secret lives in the URL configured in
Mailivery's admin panel and is compared in constant time before anything is read or stored.

==========  ==================================================================================
status      when
==========  ==================================================================================
200         processed, duplicate, ignored, rejected or pending (warmup call failed: retried later)
202         deferred: Mailivery could not be asked; the delivery is stored and will be finished
400         malformed body (stored as ``invalid``)
401         bad secret (nothing stored)
413         body larger than ``max_body_bytes`` (nothing stored)
503         the database is unavailable (nothing decided; the sender may retry)
==========  ==================================================================================

``GET /healthz`` answers 200 when the database is reachable, 503 otherwise. No input produces a 500.
Run it with ``mailbox-flow webhook serve`` or any ASGI server; never enable an access log that prints
request paths, since the path carries the secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .errors import MailboxFlowError, WebhookAuthError, WebhookPayloadError
from .types import Outcome

if TYPE_CHECKING:
    from .flow import MailboxFlow

__all__ = ["DEFAULT_MAX_BODY_BYTES", "WEBHOOK_PATH", "create_app", "serve"]

log = structlog.get_logger("mailbox_flow")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
WEBHOOK_PATH = "/webhooks/mailivery/{secret}"


class _TooLarge(Exception):
    pass


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (early) anything over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _TooLarge
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(flow: MailboxFlow, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The webhook receiver and health check for ``flow``, as an ASGI app."""

    async def receive(request: Request) -> JSONResponse:
        secret = str(request.path_params.get("secret", ""))
        try:
            flow.verify_secret(secret)
        except WebhookAuthError:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            body = await _read_limited(request, max_body_bytes)
        except _TooLarge:
            return JSONResponse({"error": "payload_too_large", "limit": max_body_bytes},
                                status_code=413)
        headers = {k: v for k, v in request.headers.items() if k.lower() == "x-request-id"}
        try:
            result = await run_in_threadpool(flow.handle_webhook, body, secret, headers)
        except WebhookAuthError:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        except WebhookPayloadError as exc:
            return JSONResponse(
                {"error": "invalid_payload", "detail": exc.message, "delivery_id": exc.delivery_id},
                status_code=400,
            )
        except MailboxFlowError as exc:
            log.error("mailbox_flow.webhook_unavailable", error=type(exc).__name__)
            return JSONResponse({"error": "unavailable"}, status_code=503)
        except Exception as exc:  # never a 500: the sender retries, the reconciler finishes it
            log.error("mailbox_flow.webhook_error", error=type(exc).__name__, exc_info=True)
            return JSONResponse({"error": "unavailable"}, status_code=503)
        payload: dict[str, Any] = {
            "outcome": result.outcome.value,
            "delivery_id": result.delivery_id,
            "mailbox_id": str(result.mailbox.id) if result.mailbox else None,
            "state": result.mailbox.state.value if result.mailbox else None,
        }
        return JSONResponse(payload, status_code=202 if result.outcome is Outcome.DEFERRED else 200)

    async def healthz(_request: Request) -> JSONResponse:
        try:
            ok = await run_in_threadpool(flow.store.ping)
        except Exception:
            ok = False
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def serve(
    flow: MailboxFlow,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    workers_log_level: str = "info",
) -> None:
    """Run the receiver with uvicorn in the foreground (access log off: paths carry the secret)."""
    import uvicorn

    uvicorn.run(
        create_app(flow, max_body_bytes=max_body_bytes),
        host=host,
        port=port,
        access_log=False,
        log_level=workers_log_level,
    )
