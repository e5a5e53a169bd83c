"""Live updates: every change of an item (its history row) is announced by PostgreSQL NOTIFY on
commit; each replica listens on one connection and streams the changes to its Server-Sent Events
clients, each within its reader's scopes. A client that reconnects with ``Last-Event-ID`` is
replayed what it missed from the history table, so a stream is gap-free across reconnects
(at least once: dedupe on the event id)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from changegate.core.auth import Principal
from changegate.core.logging import get_logger
from changegate.review_api import metrics, store
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

log = get_logger(__name__)
CHANNEL = "changegate_review"
KEEPALIVE_SECONDS = 15.0
BUFFER = 1000  # events a slow client may fall behind before its stream is closed (it resumes)


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    proposal_id: uuid.UUID | None = None
    kind: str | None = None
    queue: str | None = None
    events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(BUFFER))

    def wants(self, event: dict[str, Any]) -> bool:
        return (
            store.may_read(self.principal, event.get("queue"), event.get("kind", ""))
            and (self.proposal_id is None or event.get("proposal_id") == str(self.proposal_id))
            and (self.kind is None or event.get("kind") == self.kind)
            and (self.queue is None or event.get("queue") == self.queue)
        )


class Hub:
    def __init__(self, dsn: str, stop: asyncio.Event) -> None:
        self.dsn, self.stop = dsn, stop
        self.subscribers: set[Subscriber] = set()
        self.listening = False

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        self.subscribers.add(subscriber)
        metrics.STREAMS.set(len(self.subscribers))
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        metrics.STREAMS.set(len(self.subscribers))

    def publish(self, event: dict[str, Any]) -> None:
        for subscriber in list(self.subscribers):
            if not subscriber.wants(event):
                continue
            try:
                subscriber.events.put_nowait(event)
            except asyncio.QueueFull:  # too slow: end its stream; it resumes from Last-Event-ID
                self.unsubscribe(subscriber)
                with contextlib.suppress(asyncio.QueueFull):
                    subscriber.events.get_nowait()
                    subscriber.events.put_nowait(None)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            self.publish(json.loads(str(payload)))
        except ValueError:
            log.warning("unreadable notification", payload=str(payload)[:200])

    async def run(self) -> None:
        """LISTEN until the service stops, reconnecting when the database goes away."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)),
            wait=wait_exponential_jitter(initial=0.2, max=5),
        ):
            with attempt:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await conn.add_listener(CHANNEL, self._on_notify)
                    self.listening = True
                    while not self.stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stop.wait(), 5)
                        await conn.execute("SELECT 1")  # notices a dead connection
                finally:
                    self.listening = False
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
        for subscriber in list(self.subscribers):  # end every stream at shutdown
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.events.put_nowait(None)


def format_event(event: dict[str, Any]) -> str:
    data = json.dumps(event, default=str, separators=(",", ":"))
    return f"id: {event['seq']}\nevent: {event['event']}\ndata: {data}\n\n"


async def stream(
    hub: Hub, pool: asyncpg.Pool, subscriber: Subscriber, last_event_id: int | None
) -> AsyncIterator[str]:
    """An SSE stream: what was missed since ``last_event_id``, then live changes, and a comment
    every few seconds so proxies keep the connection open."""
    hub.subscribe(subscriber)
    try:
        yield "retry: 2000\n: connected\n\n"
        last = last_event_id or 0
        if last_event_id is not None:
            for row in await store.history_since(pool, last_event_id, subscriber.principal):
                event: dict[str, Any] = {
                    k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(row).items()
                }
                if subscriber.wants(event):
                    last = max(last, int(event["seq"]))
                    yield format_event(event)
        while not hub.stop.is_set():
            try:
                live = await asyncio.wait_for(subscriber.events.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if live is None:
                return
            if int(live["seq"]) > last:
                last = int(live["seq"])
                yield format_event(live)
    finally:
        hub.unsubscribe(subscriber)
