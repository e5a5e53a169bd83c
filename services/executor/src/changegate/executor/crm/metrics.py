"""Requests to the CRM, whichever adapter makes them: one count and one duration per request (an HTTP
call to HubSpot, a statement on the sandbox), retries counted one by one."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Histogram

P = ParamSpec("P")
T = TypeVar("T")

REQUESTS = Counter(
    "changegate_crm_requests_total",
    "Requests to the CRM, by target, operation and outcome (an HTTP status, timeout or error; the "
    "sandbox: ok or error)",
    ["target", "operation", "status"],
)
REQUEST_SECONDS = Histogram(
    "changegate_crm_request_duration_seconds",
    "One request to the CRM (a retry is another request)",
    ["target", "operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def record(target: str, operation: str, status: str, seconds: float) -> None:
    REQUESTS.labels(target=target, operation=operation, status=status).inc()
    REQUEST_SECONDS.labels(target=target, operation=operation).observe(seconds)


def measured(
    operation: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """An adapter method (of an object with ``target``) counted and timed as one request."""

    def wrap(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            target: Any = getattr(args[0], "target", "crm")
            started = time.perf_counter()
            try:
                result = await method(*args, **kwargs)
            except Exception:
                record(str(target), operation, "error", time.perf_counter() - started)
                raise
            record(str(target), operation, "ok", time.perf_counter() - started)
            return result

        return call

    return wrap
