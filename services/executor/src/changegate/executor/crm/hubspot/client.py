"""HTTP to HubSpot's CRM v3 API: a private app's bearer token, a client-side rate limit (HubSpot's
private-app default, 190 requests in any rolling 10 s: ``limiter.py``), a timeout on every call,
and retries with backoff for what HubSpot says to retry: 429 (after Retry-After, or the rate-limit
window its headers give), 423 (a locked record: wait and retry), 5xx, timeouts and connection
errors. What still fails after the configured attempts is ``CrmUnavailableError``: the executor
retries it later (its circuit breaker pauses consumption meanwhile).

HubSpot counts the limit per app, across every replica that uses its token (and an import): each
spends only its share (``share``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from changegate.core import tracing
from changegate.core.logging import get_logger
from changegate.executor.crm import metrics as crm_metrics
from changegate.executor.crm.hubspot.limiter import RollingWindowLimiter, Slot
from changegate.executor.crm.port import CrmUnavailableError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

log = get_logger(__name__)
LOCKED_WAIT_SECONDS = 2.0
_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.5)  # 5xx, timeouts


class _RetryError(Exception):
    def __init__(self, why: str, after: float | None = None) -> None:
        super().__init__(why)
        self.after = after


class HubSpotClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        requests_per_window: int = 190,
        window_seconds: float = 10.0,
        timeout: float = 10.0,
        attempts: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        share: Callable[[], float] | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        # This client's share of the app's limit: fixed, or the executor's share of partitions.
        self.limiter = RollingWindowLimiter(requests_per_window, window_seconds, share)
        self.attempts = attempts
        self._not_before = 0.0  # HubSpot's own rate-limit headers said to wait until then

    async def close(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """One call, retried as HubSpot asks; any answer but 429/423/5xx is returned to the caller."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_RetryError),
                wait=self._wait,
                stop=stop_after_attempt(self.attempts),
                reraise=True,
            ):
                with attempt:
                    return await self._once(operation, method, path, json, params)
        except _RetryError as exc:
            raise CrmUnavailableError(f"HubSpot {operation}: {exc} (after {self.attempts} attempts)") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, operation: str, method: str, path: str, json: Any, params: dict[str, Any] | None
    ) -> httpx.Response:
        pause = self._not_before - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self.limiter.slot() as slot:
            with tracing.client_span(f"HubSpot {operation}", **{"http.request.method": method}) as trace:
                started = time.perf_counter()
                try:
                    response = await self.http.request(method, path, json=json, params=params, headers=trace)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    outcome = "timeout" if isinstance(exc, httpx.TimeoutException) else "error"
                    crm_metrics.record("hubspot", operation, outcome, time.perf_counter() - started)
                    raise _RetryError(f"{type(exc).__name__}: {exc}") from exc
            self._note_rate_limit(response, slot)
        crm_metrics.record("hubspot", operation, str(response.status_code), time.perf_counter() - started)
        status = response.status_code
        if status == 429:
            raise _RetryError("429 rate limited", _retry_after(response) or self._window_left(response))
        if status == 423:
            raise _RetryError("423 record locked", LOCKED_WAIT_SECONDS)
        if status >= 500:
            raise _RetryError(f"{status} server error")
        return response

    @property
    def share(self) -> Callable[[], float]:
        return self.limiter.share

    @share.setter
    def share(self, share: Callable[[], float]) -> None:
        self.limiter.share = share

    async def remaining(self) -> int:
        """Requests this client may still send in the current window."""
        return self.limiter.remaining()

    def _note_rate_limit(self, response: httpx.Response, slot: Slot) -> None:
        """X-HubSpot-RateLimit-Remaining at 0 although this client's own requests cannot fill
        HubSpot's window: others spend the app's budget too (another app on the token, replicas
        out of share), so hold every call for a window. Of ours, HubSpot can have counted at most
        the slots held as this request was sent (``slot.room`` is what was left) and the requests
        sent since (they may have overtaken it); judged on the answer, a slot freed meanwhile is
        not room HubSpot saw, and taking it for that held a client running at its whole limit for
        a full window every few seconds."""
        remaining = response.headers.get("X-HubSpot-RateLimit-Remaining")
        if remaining is None or remaining.strip() != "0":
            return
        overtaken = self.limiter.sent - slot.sent_before - 1
        if slot.room - overtaken < 1:
            return
        wait = self._window_left(response)
        if wait:
            self._not_before = max(self._not_before, time.monotonic() + wait)

    @staticmethod
    def _window_left(response: httpx.Response) -> float | None:
        interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        try:
            return float(interval) / 1000 if interval else None
        except ValueError:
            return None

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryError) and exc.after is not None:
            return min(exc.after, 60.0)
        return _BACKOFF(state)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
