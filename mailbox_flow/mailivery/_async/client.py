"""`AsyncMailiveryClient`: the Mailivery calls over one long-lived `httpx.AsyncClient`.

The async client is the source of both: `MailiveryClient` is generated from it by
``python -m tools.unasync`` (``--check`` in CI), so the two never differ but for ``async``/``await``.
Everything that does no I/O (checks, retry decisions, error mapping, parsing, logging) is
`ClientBase`'s, in ``mailivery/_base.py``. Awaited, nothing blocks the event loop: the requests, the
rate limiter's waits and the retries' backoff (``Retry-After`` included) all yield.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
import stamina

from ...errors import MailiveryUnavailable
from .._base import (
    _DEADLINE,
    ClientBase,
    _Answer,
    _check_campaign_id,
    _check_request_id,
    _OutOfTime,
    _Retryable,
)
from ..schemas import Campaign, ConnectResult

__all__ = ["AsyncMailiveryClient"]


class AsyncMailiveryClient(ClientBase):
    """A small, safe client for Mailivery's campaign API (one per API key, shared by threads or tasks).

    ``AsyncMailiveryClient(api_key, base_url=..., transport=None, timeout=10.0, rate_per_second=4.0,
    ...)``: the arguments and guarantees of `mailbox_flow.mailivery.ClientBase`; every call validates
    its input before any traffic, carries a request id, throttles itself, retries what is safe to
    retry and maps Mailivery's errors to the typed errors of `mailbox_flow.errors`.
    """

    _http: httpx.AsyncClient

    def _make_http(self, transport: Any, options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=transport, **options)

    async def __aenter__(self) -> AsyncMailiveryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP connection pool (idempotent)."""
        await self._http.aclose()

    # -- public calls ---------------------------------------------------------------------------

    async def connect_microsoft(
        self,
        *,
        first_name: str,
        email: str,
        last_name: str | None = None,
        email_per_day: int = 40,
        response_rate: int = 30,
        meta: Mapping[str, str] | None = None,
        owner_email: str | None = None,
        timezone: str | None = None,
        tags: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> ConnectResult:
        """``POST /campaigns/microsoft`` (multipart): mint the OAuth consent URL for a mailbox."""
        parts = self._connect_parts(
            first_name=first_name, email=email, last_name=last_name, email_per_day=email_per_day,
            response_rate=response_rate, meta=meta, owner_email=owner_email, timezone=timezone,
            tags=tags,
        )
        rid = _check_request_id(request_id)
        answer = await self._call("POST", "connect_microsoft", request_id=rid, files=parts)
        return self._connect_result(answer)

    async def get_campaign(self, campaign_id: int, *, request_id: str | None = None) -> Campaign:
        """``GET /campaigns/{id}``: one campaign (``data`` envelope or bare)."""
        cid = _check_campaign_id(campaign_id)
        rid = _check_request_id(request_id)
        answer = await self._call("GET", "get_campaign", campaign_id=cid, request_id=rid)
        return self._campaign_result(answer)

    async def list_campaigns(self, *, request_id: str | None = None) -> list[Campaign]:
        """``GET /campaigns``: every campaign of the account (entries without an id are skipped)."""
        rid = _check_request_id(request_id)
        answer = await self._call("GET", "list_campaigns", request_id=rid)
        return self._campaign_list(answer)

    async def start_warmup(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/start-warmup`` (Mailivery checks SMTP/IMAP first)."""
        return await self._simple("PATCH", "start_warmup", campaign_id, request_id)

    async def resume_warmup(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/resume-warmup``: resume a paused campaign."""
        return await self._simple("PATCH", "resume_warmup", campaign_id, request_id)

    async def pause_warmup(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``PATCH /campaigns/{id}/pause-warmup``."""
        return await self._simple("PATCH", "pause_warmup", campaign_id, request_id)

    async def delete_campaign(self, campaign_id: int, *, request_id: str | None = None) -> dict[str, Any]:
        """``DELETE /campaigns/{id}`` (a retried delete may answer 404: the first one worked)."""
        return await self._simple("DELETE", "delete_campaign", campaign_id, request_id)

    async def _simple(
        self, method: str, operation: str, campaign_id: int, request_id: str | None
    ) -> dict[str, Any]:
        cid = _check_campaign_id(campaign_id)
        rid = _check_request_id(request_id)
        answer = await self._call(method, operation, campaign_id=cid, request_id=rid)
        return self._simple_result(answer)

    # -- transport and retries ------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        operation: str,
        *,
        request_id: str,
        campaign_id: int | None = None,
        files: list[tuple[str, tuple[None, bytes]]] | None = None,
    ) -> _Answer:
        path = self._path(operation, campaign_id)
        context: dict[str, Any] = {"request_id": request_id, "method": method, "path": path}
        deadline = _DEADLINE.get()
        last: list[MailiveryUnavailable] = []
        try:
            async for attempt in stamina.retry_context(**self._retry_options(deadline)):
                with attempt:
                    try:
                        response = await self._attempt(operation, context, attempt.num, files, deadline)
                    except _Retryable as exc:
                        last.append(exc.error)
                        raise
                    except _OutOfTime:
                        error = self._out_of_time(last, context)
                        raise error from error.__cause__
                    return _Answer(response, method, path, request_id)
        except _Retryable as exc:
            raise exc.error from exc.error.__cause__
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        operation: str,
        context: Mapping[str, Any],
        attempt: int,
        files: list[tuple[str, tuple[None, bytes]]] | None,
        deadline: float | None,
    ) -> httpx.Response:
        self._attempt_timeout(deadline)  # no attempt (nor rate-limit wait) without time for it
        if self.rate_limiter is not None:
            await self.rate_limiter.aacquire()
        left = self._attempt_timeout(deadline)
        started = time.perf_counter()
        try:
            response = await self._http.request(
                context["method"],
                context["path"],
                headers={self.request_id_header: context["request_id"]},
                files=files,
                timeout=httpx.USE_CLIENT_DEFAULT if left is None else min(self.timeout, left),
            )
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc, operation, context, attempt, started) from exc
        return self._answered(response, operation, context, attempt, started)
