"""The simulator's webhook subscription: every change to a record is reported to a target URL the
way a HubSpot app's subscription reports it — batches of at most 100 events, each with HubSpot's
fields (eventId, subscriptionId, portalId, appId, occurredAt, subscriptionType, attemptNumber,
objectId, changeSource, sourceId; propertyName/propertyValue for a property change;
primaryObjectId/mergedObjectIds/newObjectId for a merge), signed with signature v3:
base64(HMAC-SHA256(client secret, method + URI + body + timestamp)) in ``X-HubSpot-Signature-v3``,
the timestamp in ``X-HubSpot-Request-Timestamp``.

Batches go out in the order the changes happened, one request at a time; a batch the target does
not accept (non-2xx, unreachable) is retried with backoff, its ``attemptNumber`` raised, and the
ones behind it wait (HubSpot retries up to 10 times; so does this)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

MAX_BATCH = 100
SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
ATTEMPTS = 10


def signature_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """HubSpot's signature v3 (written here on its own, not borrowed from ingest, so the simulator
    checks ingest's verification instead of agreeing with it by construction)."""
    message = method.encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Subscription:
    """Where the app's webhooks go and what it subscribed to (``properties``: the properties whose
    changes it hears of; None: every property)."""

    url: str
    client_secret: str
    app_id: int
    portal_id: int
    properties: frozenset[str] | None = None


class _NotAcceptedError(Exception):
    pass


@dataclass
class WebhookQueue:
    """Events waiting to be sent, in order; ``flush`` waits until every one queued so far is sent."""

    subscription: Subscription | None = None
    events: deque[dict[str, Any]] = field(default_factory=deque)
    delivered: int = 0  # events the target accepted
    requests: int = 0  # batches posted (attempts included)
    failures: list[str] = field(default_factory=list)  # batches given up on, and why
    _ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(int(time.time() * 1000) % 10**9)
    )
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0

    def emit(self, events: list[dict[str, Any]]) -> None:
        if self.subscription is None or not events:
            return
        subscription = self.subscription
        for event in events:
            name = event.get("propertyName")
            if (
                name is not None
                and subscription.properties is not None
                and name not in subscription.properties
            ):
                continue
            self.events.append(
                {
                    "eventId": next(self._ids),
                    "subscriptionId": 1,
                    "portalId": subscription.portal_id,
                    "appId": subscription.app_id,
                    "attemptNumber": 0,
                    **event,
                }
            )
        if self.events:
            self._idle.clear()
            self._wake.set()

    async def flush(self) -> None:
        """Returns once everything queued before the call is sent (or given up on)."""
        if self.events or self.in_flight:
            await self._idle.wait()

    async def run(self, client: httpx.AsyncClient) -> None:
        while True:
            if not self.events:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self.events.popleft() for _ in range(min(MAX_BATCH, len(self.events)))]
            self.in_flight = len(batch)
            try:
                await self._send(client, batch)
                self.delivered += len(batch)
            except (_NotAcceptedError, httpx.HTTPError) as exc:
                self.failures.append(f"{len(batch)} events not delivered after {ATTEMPTS} attempts: {exc}")
            finally:
                self.in_flight = 0

    async def _send(self, client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
        subscription = self.subscription
        assert subscription is not None
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((_NotAcceptedError, httpx.HTTPError)),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_after_attempt(ATTEMPTS),
            reraise=True,
        ):
            with attempt:
                number = attempt.retry_state.attempt_number - 1
                body = json.dumps([{**e, "attemptNumber": number} for e in batch]).encode()
                stamp = str(int(time.time() * 1000))
                headers = {
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: signature_v3(
                        subscription.client_secret, "POST", subscription.url, body, stamp
                    ),
                    TIMESTAMP_HEADER: stamp,
                }
                self.requests += 1
                response = await client.post(subscription.url, content=body, headers=headers)
                if not 200 <= response.status_code < 300:
                    raise _NotAcceptedError(f"{response.status_code} {response.text[:300]}")
