"""A circuit breaker in front of the CRM: after consecutive outages it opens, and instead of burning
retries against a CRM that is down — or waiting inside the handler, which would keep the consumer
from polling and drop it from its group — it raises BackpressureError: the consumer pauses the
decisions' partitions (order kept) and keeps polling. After the cooldown the partitions resume and
the next call probes the CRM (half-open); success closes, failure reopens for longer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import TypeVar

from changegate.core.errors import BackpressureError
from changegate.core.logging import get_logger
from changegate.executor.crm.port import CrmUnavailableError
from prometheus_client import Counter, Gauge

T = TypeVar("T")
log = get_logger(__name__)

STATE = Gauge(
    "changegate_executor_crm_breaker_state", "CRM circuit breaker: 0 closed, 1 half-open, 2 open", ["target"]
)
OPENED = Counter(
    "changegate_executor_crm_breaker_opened_total", "Times the CRM circuit breaker opened", ["target"]
)


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    def __init__(
        self,
        target: str,
        failures: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
    ) -> None:
        self.target = target
        self.threshold, self.base_cooldown, self.max_cooldown = failures, cooldown, max_cooldown
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at = 0.0
        self._set(State.CLOSED)

    def _set(self, state: State) -> None:
        self.state = state
        STATE.labels(target=self.target).set(int(state))

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` through the breaker. Open: BackpressureError until the cooldown has passed, then
        ``fn`` is the probe. A CrmUnavailableError that opens (or reopens) the circuit comes out as
        BackpressureError; before that it is raised as it is (retried by the consumer)."""
        self._allowed()
        try:
            result = await fn()
        except CrmUnavailableError as exc:
            self._failed()
            if self.state is State.OPEN:
                raise self._backpressure(self.cooldown) from exc
            raise
        if self.state is not State.CLOSED:
            log.info("CRM answers again: circuit closed", target=self.target)
        self.failures, self.cooldown = 0, self.base_cooldown
        self._set(State.CLOSED)
        return result

    def _backpressure(self, retry_after: float) -> BackpressureError:
        return BackpressureError(retry_after, "crm_unavailable")

    def _allowed(self) -> None:
        if self.state is not State.OPEN:
            return
        remaining = self.opened_at + self.cooldown - time.monotonic()
        if remaining > 0:
            raise self._backpressure(remaining)
        self._set(State.HALF_OPEN)

    def _failed(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self._open()
        elif self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        if self.state is not State.OPEN:
            OPENED.labels(target=self.target).inc()
            log.warning("CRM unavailable: circuit open", target=self.target, cooldown=self.cooldown)
        self.opened_at = time.monotonic()
        self._set(State.OPEN)
