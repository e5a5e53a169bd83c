"""The HubSpot client's reading of HubSpot's rate-limit headers: "0 remaining" holds every call for
a window only when this client had room left in its own window as it sent the request — others
spend the app's budget. When the client had spent its whole budget itself, its own moving window
holds it back already; a slot that freed while the request was in flight is not room HubSpot saw
(taking it for that held a client running at its whole limit for a window every few seconds)."""

from __future__ import annotations

import time

import httpx
from changegate.executor.crm.hubspot.client import HubSpotClient

NONE_LEFT = {"X-HubSpot-RateLimit-Remaining": "0", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}


def test_none_left_after_spending_its_own_budget_holds_nothing() -> None:
    client = HubSpotClient("http://hubspot.invalid", "token", requests_per_window=3, window_seconds=1)
    client._note_rate_limit(httpx.Response(200, headers=NONE_LEFT), room=0)
    assert client._not_before == 0.0


def test_none_left_while_it_had_room_holds_every_call_for_the_window() -> None:
    client = HubSpotClient("http://hubspot.invalid", "token", requests_per_window=3, window_seconds=1)
    client._note_rate_limit(httpx.Response(200, headers=NONE_LEFT), room=2)
    assert client._not_before > time.monotonic() + 9
    # A share of a third: one request costs three, so two left is no room for another.
    shared = HubSpotClient("http://hubspot.invalid", "token", requests_per_window=9, window_seconds=1)
    shared.share = lambda: 1 / 3
    shared._note_rate_limit(httpx.Response(200, headers=NONE_LEFT), room=2)
    assert shared._not_before == 0.0


def test_some_left_holds_nothing() -> None:
    client = HubSpotClient("http://hubspot.invalid", "token", requests_per_window=3, window_seconds=1)
    headers = {**NONE_LEFT, "X-HubSpot-RateLimit-Remaining": "4"}
    client._note_rate_limit(httpx.Response(200, headers=headers), room=2)
    assert client._not_before == 0.0
