"""HubSpot's per-app limit on the client side: at most ``limit`` requests in any rolling ``window``
seconds (private apps: 190 / 10 s, HubSpot's "ten-secondly rolling" limit), as HubSpot counts them.

HubSpot counts a request when it arrives, which is after we send it and before its answer comes
back. So a request holds its slot from the moment it is sent until ``window`` seconds after its
answer: then it has certainly left HubSpot's window too, whatever the network did to it. (A window
counted from sending, as ``limits``' moving window counts, lets a request sent the moment a slot
frees arrive inside HubSpot's window of a slower one before it; aiolimiter's leaky bucket lets
``limit`` more through while the first ``limit`` drain, twice the budget in one window.) A whole
window's budget may go at once: a burst at the start of a window is what HubSpot allows, and the
batched executor needs it to reach the ideal rate. Holding until the answer costs one round trip a
window.

Several replicas (and an import) share one app's limit: each spends ``share()`` of it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass
class Slot:
    """One request's place in the window. ``room``: slots this client had left after taking it;
    ``sent_before``: how many requests the client had sent before this one."""

    room: int
    sent_before: int


class RollingWindowLimiter:
    def __init__(self, limit: int, window: float, share: Callable[[], float] | None = None) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a rate limit needs at least one request and a window longer than 0 s")
        self.limit, self.window = limit, window
        # This client's share of the app's limit (an import's setting; a replica's partitions).
        self.share: Callable[[], float] = share or (lambda: 1.0)
        self.in_flight = 0
        self.sent = 0  # requests sent so far (each attempt of a retried call counts)
        self._frees_at: list[float] = []  # heap: when each answered request leaves the window
        self._changed = asyncio.Condition()

    def capacity(self) -> int:
        """Requests this client may have in any window: its share of the limit, at least one."""
        return max(1, math.floor(self.limit * min(max(self.share(), 0.0), 1.0) + 1e-9))

    def held(self) -> int:
        """Slots taken now: requests in flight and those answered less than a window ago."""
        now = time.monotonic()
        while self._frees_at and self._frees_at[0] <= now:
            heapq.heappop(self._frees_at)
        return self.in_flight + len(self._frees_at)

    def remaining(self) -> int:
        return max(0, self.capacity() - self.held())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Wait for a free slot and hold it while the request is sent and answered (or fails),
        then for a window after that."""
        async with self._changed:
            while self.held() >= self.capacity():
                # The next slot frees when the oldest answered request leaves the window; with all
                # of them in flight, a window after one is answered (notified). A share that grows
                # is seen at the latest a window later.
                wait = self._frees_at[0] - time.monotonic() if self._frees_at else self.window
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
            self.in_flight += 1
            taken = Slot(room=self.capacity() - self.held(), sent_before=self.sent)
            self.sent += 1
        try:
            yield taken
        finally:
            self.in_flight -= 1
            heapq.heappush(self._frees_at, time.monotonic() + self.window)
            async with self._changed:
                self._changed.notify_all()
