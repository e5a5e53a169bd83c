"""The HubSpot client's rate limit. The limiter: a request holds its slot from sending until a window
after its answer, so however answers and sends interleave, no window of the server's clock can see
more than the limit; a whole window's budget may go at once; a share takes its part of the limit.
The reading of HubSpot's headers: "0 remaining" holds every call for a window only when this
client's own requests cannot account for it — others spend the app's budget."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.executor.crm.hubspot.limiter import RollingWindowLimiter, Slot

NONE_LEFT = {"X-HubSpot-RateLimit-Remaining": "0", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}


async def _through(limiter: RollingWindowLimiter, count: int, answer: float) -> list[tuple[float, float]]:
    """``count`` requests sent together, each answered after up to ``answer`` s: (sent, answered)."""
    rng = random.Random(7)

    async def one() -> tuple[float, float]:
        async with limiter.slot():
            sent = time.monotonic()
            await asyncio.sleep(rng.uniform(0, answer))
            return sent, time.monotonic()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_no_request_is_sent_before_the_one_it_replaces_left_the_window() -> None:
    limiter = RollingWindowLimiter(4, 0.2)
    calls = await _through(limiter, 14, answer=0.03)
    answers = sorted(answered for _, answered in calls)
    sends = sorted(sent for sent, _ in calls)
    # The first four go at once; the n-th after them only once the (n-4)-th answer is a window old:
    # whenever the server counted a request (between its sending and its answer), it sees at most 4
    # in any window.
    assert sends[3] - sends[0] < 0.1
    for n in range(4, len(sends)):
        assert sends[n] >= answers[n - 4] + 0.2
    for start in sends:
        assert sum(1 for s in sends if start <= s < start + 0.2) <= 4


async def test_a_share_spends_its_part_of_the_limit_and_at_least_one() -> None:
    limiter = RollingWindowLimiter(9, 60, share=lambda: 1 / 3)
    assert limiter.capacity() == 3
    await _through(limiter, 3, answer=0)
    assert limiter.remaining() == 0
    limiter.share = lambda: 1.0  # the replica took over the others' partitions
    assert limiter.remaining() == 6
    assert RollingWindowLimiter(2, 60, share=lambda: 0.1).capacity() == 1


async def test_a_request_that_fails_still_holds_its_slot_for_a_window() -> None:
    limiter = RollingWindowLimiter(1, 60)
    with pytest.raises(ConnectionError):
        async with limiter.slot():
            raise ConnectionError("the request may have reached HubSpot")
    assert limiter.remaining() == 0


def test_a_limit_must_let_something_through() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        RollingWindowLimiter(0, 10)


def _client(limit: int = 3) -> HubSpotClient:
    return HubSpotClient("http://hubspot.invalid", "token", requests_per_window=limit, window_seconds=1)


def test_none_left_after_spending_its_own_budget_holds_nothing() -> None:
    client = _client()
    client.limiter.sent = 3
    client._note_rate_limit(httpx.Response(200, headers=NONE_LEFT), Slot(room=0, sent_before=2))
    assert client._not_before == 0.0


def test_none_left_while_its_own_requests_cannot_fill_the_window_holds_every_call() -> None:
    client = _client()
    client.limiter.sent = 1
    client._note_rate_limit(httpx.Response(200, headers=NONE_LEFT), Slot(room=2, sent_before=0))
    assert client._not_before > time.monotonic() + 9


def test_requests_sent_after_it_may_have_filled_the_window_themselves() -> None:
    # Room for two as it was sent, but two more went out before its answer came: they may have
    # reached HubSpot first, so 0 remaining may be this client's own doing.
    client = _client()
    client.limiter.sent = 3
    client._note_rate_limit(httpx.Response(200, headers=NONE_LEFT), Slot(room=2, sent_before=0))
    assert client._not_before == 0.0


def test_some_left_holds_nothing() -> None:
    client = _client()
    headers = {**NONE_LEFT, "X-HubSpot-RateLimit-Remaining": "4"}
    client.limiter.sent = 1
    client._note_rate_limit(httpx.Response(200, headers=headers), Slot(room=2, sent_before=0))
    assert client._not_before == 0.0
