"""Transactional outbox: messages are written with the state that caused them and published after.

A service that changes state and emits an event must never do one without the other; writing the
message in the same PostgreSQL transaction, then publishing it, makes the pair atomic. Delivery is at
least once: consumers deduplicate on the envelope's event id."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from changegate.core import metrics, tracing
from changegate.core.contracts.envelope import Envelope
from changegate.core.db import DbConn
from changegate.core.kafka import (
    HEADER_ERROR,
    HEADER_REASON,
    HEADER_TRUNCATED,
    PERMANENT_KAFKA_ERRORS,
    TRUNCATED_BODY_BYTES,
    header_bytes,
    is_transient,
)
from changegate.core.logging import get_logger
from changegate.core.serde import encode
from changegate.core.topics import DLQ_SUFFIX
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

log = get_logger(__name__)
HEADER_OUTBOX_ID = "x-changegate-outbox-id"
# Services whose outbox this process wrote to since its relay last looked: a consumer batch that
# wrote wakes the relay as soon as its transaction commits (``OutboxRelay.nudge``), without waiting
# for the NOTIFY round trip; NOTIFY and the poll stay for what this does not cover (another
# replica's relay, writes outside a consumer batch).
_written: set[str] = set()


async def _done(value: object) -> object:
    if isinstance(value, BaseException):
        raise value
    return value


def _channel(service: str) -> str:
    return f"changegate_outbox_{service.replace('-', '_')}"


def _headers(envelope: Envelope[Any]) -> list[list[str]]:
    """The Kafka headers a message will carry (its trace), as the outbox keeps them."""
    return [[k, v.decode("latin-1")] for k, v in tracing.headers_for(envelope)]


async def enqueue(conn: DbConn, service: str, topic: str, key: str | None, envelope: Envelope[Any]) -> None:
    """Add a message to the outbox; call inside the transaction that writes the state."""
    await conn.execute(
        "INSERT INTO changegate_outbox (service, topic, key, value, headers) VALUES ($1, $2, $3, $4, $5)",
        service,
        topic,
        key.encode() if key else None,
        encode(envelope),
        _headers(envelope),
    )
    await conn.execute("SELECT pg_notify($1, '')", _channel(service))  # delivered on commit
    _written.add(service)


async def enqueue_many(
    conn: DbConn, service: str, messages: Sequence[tuple[str, str | None, Envelope[Any]]]
) -> None:
    """Add (topic, key, envelope) messages in one round trip; call inside the transaction."""
    if not messages:
        return
    # One INSERT of arrays, not COPY: PostgreSQL refuses COPY into a table with row-level security
    # (each service owns its outbox rows). Ids follow the messages' order.
    await conn.execute(
        "INSERT INTO changegate_outbox (service, topic, key, value, headers) SELECT $1, t, k, v, h::jsonb"
        " FROM unnest($2::text[], $3::bytea[], $4::bytea[], $5::text[]) WITH ORDINALITY AS m(t, k, v, h, n)"
        " ORDER BY n",
        service,
        [topic for topic, _, _ in messages],
        [key.encode() if key else None for _, key, _ in messages],
        [encode(env) for _, _, env in messages],
        [json.dumps(_headers(env)) for _, _, env in messages],  # JSON text: nested lists read as 2-D arrays
    )
    await conn.execute("SELECT pg_notify($1, '')", _channel(service))
    _written.add(service)


class OutboxRelay:
    """Publishes a service's outbox rows in order. One relay per service is active at a time
    (a PostgreSQL advisory lock), so replicas never publish out of order."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        service: str,
        stop: asyncio.Event,
        batch: int = 500,
        poll_seconds: float = 1.0,
    ) -> None:
        self.pool, self.producer, self.service, self.stop = pool, producer, service, stop
        self.batch, self.poll_seconds = batch, poll_seconds
        self._wake = asyncio.Event()
        self._counted = 0.0
        self._lock_id = zlib.crc32(f"outbox:{service}".encode())

    async def run(self) -> None:
        """Relay until stopped; database or broker trouble is waited out."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),  # after a stop, the next attempt returns at once
            wait=wait_exponential_jitter(multiplier=0.1, max=5, jitter=0.5),
            before_sleep=lambda s: log.warning(
                "outbox relay interrupted, retrying",
                error=repr(s.outcome.exception() if s.outcome else None),
                attempt=s.attempt_number,
            ),
            reraise=True,
        ):
            with attempt:
                if not self.stop.is_set():
                    await self._relay()

    async def _relay(self) -> None:
        channel = _channel(self.service)

        def wake(*_: object) -> None:
            self._wake.set()

        async with self.pool.acquire() as conn:
            await conn.add_listener(channel, wake)
            try:
                while not self.stop.is_set():
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_id):
                        break
                    await self._sleep()  # another replica relays; stand by
                while not self.stop.is_set():
                    self._wake.clear()
                    if await self.publish_pending(conn) < self.batch:
                        await self._sleep()
            finally:
                await conn.execute("SELECT pg_advisory_unlock_all()")
                await conn.remove_listener(channel, wake)

    def nudge(self) -> None:
        """A transaction of this process committed: relay now if it wrote to this outbox (a write
        rolled back costs one empty look)."""
        if self.service in _written:
            _written.discard(self.service)
            self._wake.set()

    async def _sleep(self) -> None:
        stop = asyncio.ensure_future(self.stop.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait({stop, wake}, timeout=self.poll_seconds, return_when="FIRST_COMPLETED")
        for f in (stop, wake):
            f.cancel()

    async def _dead_letter(self, row: asyncpg.Record, error: BaseException) -> None:
        """Where an operator looks: the target topic's dead-letter topic, with the reason and the
        start of the body (the whole message stays in changegate_outbox_failed)."""
        headers = [
            (HEADER_REASON, b"refused_by_broker"),
            (HEADER_ERROR, header_bytes(repr(error))),
            (HEADER_OUTBOX_ID, f"{self.service}/{row['id']}".encode()),
            (HEADER_TRUNCATED, b"true" if len(row["value"]) > TRUNCATED_BODY_BYTES else b"false"),
        ]
        dlq = f"{row['topic']}{DLQ_SUFFIX}"
        try:
            await self.producer.send_and_wait(
                dlq, row["value"][:TRUNCATED_BODY_BYTES], key=row["key"], headers=headers
            )
        except PERMANENT_KAFKA_ERRORS as exc:  # e.g. no such dead-letter topic: the table keeps it
            log.error("outbox dead letter refused too", dlq=dlq, error=repr(exc))
            return
        metrics.DEAD_LETTERS.labels(topic=row["topic"], reason="refused_by_broker").inc()

    async def publish_pending(self, conn: DbConn) -> int:
        rows = await conn.fetch(
            "SELECT id, topic, key, value, headers FROM changegate_outbox"
            " WHERE service = $1 ORDER BY id LIMIT $2",
            self.service,
            self.batch,
        )
        if not rows:
            metrics.OUTBOX_PENDING.set(0)
            return 0

        async def send(row: asyncpg.Record) -> object:
            headers = [(k, v.encode()) for k, v in (row["headers"] or [])]
            try:
                return await self.producer.send(row["topic"], row["value"], key=row["key"], headers=headers)
            except PERMANENT_KAFKA_ERRORS as exc:  # refused before it was sent, e.g. too large
                return exc

        pending = [await send(row) for row in rows]
        # Every row acknowledged by the broker (or refused for good) before it leaves the outbox.
        results = await asyncio.gather(
            *[p if isinstance(p, asyncio.Future) else _done(p) for p in pending], return_exceptions=True
        )
        # Only what Kafka refuses for good is set aside; anything else (an outage) is retried.
        retry = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, PERMANENT_KAFKA_ERRORS)
        ]
        if retry:
            raise retry[0]
        refused = {row["id"]: r for row, r in zip(rows, results, strict=True) if isinstance(r, BaseException)}
        if refused:
            await conn.executemany(
                "INSERT INTO changegate_outbox_failed (id, service, topic, key, value, headers, created_at,"
                " error) SELECT id, service, topic, key, value, headers, created_at, $2"
                " FROM changegate_outbox WHERE id = $1 ON CONFLICT DO NOTHING",
                [(i, repr(e)) for i, e in refused.items()],
            )
            metrics.OUTBOX_FAILED.inc(len(refused))
            log.error(
                "outbox messages refused by the broker, set aside and dead-lettered",
                count=len(refused),
                errors=sorted({repr(e) for e in refused.values()}),
            )
            for row in rows:
                if row["id"] in refused:
                    await self._dead_letter(row, refused[row["id"]])
        for row in rows:
            if row["id"] not in refused:
                metrics.MESSAGES_PRODUCED.labels(topic=row["topic"]).inc()
        await conn.execute(
            "DELETE FROM changegate_outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
        )
        if len(rows) < self.batch:
            metrics.OUTBOX_PENDING.set(0)  # drained
        elif time.monotonic() - self._counted > 5:
            # A backlog: count it now and then, not per batch (the count scans the backlog).
            self._counted = time.monotonic()
            metrics.OUTBOX_PENDING.set(
                await conn.fetchval("SELECT count(*) FROM changegate_outbox WHERE service = $1", self.service)
            )
        log.debug("outbox published", count=len(rows))
        return len(rows)
