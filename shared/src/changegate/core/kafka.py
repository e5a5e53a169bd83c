"""Kafka plumbing on aiokafka: producer, topic creation, and the consumer loop every service uses.

The consumer loop commits an offset only after the handler's effects are durable, retries transient
failures (database or broker unavailable) without moving on, and sends a message it cannot process
to the dead-letter topic with the reason, then keeps going."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from changegate.core import metrics
from changegate.core.contracts.envelope import Envelope, UnknownEventError
from changegate.core.logging import correlation, get_logger
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import TOPICS, Topic, TopicNames
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

log = get_logger(__name__)

Handler = Callable[[Envelope[Any]], Awaitable[None]]
# Handles a partition's batch at once (one transaction for many messages).
BatchHandler = Callable[[list[Envelope[Any]]], Awaitable[None]]

# Infrastructure being away is not the message's fault: retry it without end, never dead-letter it.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.PostgresConnectionError,  # the server went away mid-query (restart, failover)
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.ReadOnlySQLTransactionError,  # a failover in progress
)
# Kafka errors that are the message's fault for good: everything else from Kafka is waited out.
PERMANENT_KAFKA_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


class MessageRefusedError(Exception):
    """A handler refuses a message for good (e.g. a decision it may not execute): it is dead-lettered
    at once with ``reason`` (a short machine-readable label) and ``detail``, without retries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def is_transient(exc: BaseException) -> bool:
    """Infrastructure trouble worth waiting out. Kafka says itself which of its errors are; one it
    calls final (a message too large, an unauthorised topic) is the message's problem."""
    if isinstance(exc, KafkaError):
        # KafkaTimeoutError says retriable=False, yet it is what a broker outage looks like.
        return not isinstance(exc, PERMANENT_KAFKA_ERRORS)
    return isinstance(exc, _TRANSIENT_TYPES)


def make_producer(settings: CommonSettings, service: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=service,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=2,
    )


async def start_with_retry(client: AIOKafkaProducer | AIOKafkaConsumer, wait_seconds: float = 60) -> None:
    """Start a client, waiting for the broker to come up."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(KafkaConnectionError),
        wait=wait_exponential(multiplier=0.2, max=2),
        stop=stop_after_delay(wait_seconds),
        reraise=True,
    ):
        with attempt:
            await client.start()


async def ensure_topics(settings: CommonSettings, topics: Sequence[Topic] | None = None) -> None:
    """Create the topics (and their dead-letter topics) that do not exist yet."""
    names = TopicNames(settings.topic_prefix)
    wanted = list(topics or TOPICS)
    new = [
        NewTopic(
            name=n,
            num_partitions=TOPICS[t].partitions,
            replication_factor=settings.kafka_replication_factor,
        )
        for t in wanted
        for n in (names(t), names.dlq(t))
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(KafkaConnectionError),
        wait=wait_exponential(multiplier=0.2, max=2),
        stop=stop_after_delay(60),
        reraise=True,
    ):
        with attempt:
            await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in new if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another service was first
                response = await admin.create_topics(missing)
                failed = [
                    (err[0], err[1], err[2] if len(err) > 2 else None)
                    for err in response.topic_errors
                    if err[1] not in (0, TopicAlreadyExistsError.errno)
                ]
                if failed:
                    raise RuntimeError(f"topics not created: {failed}")
            log.info("topics created", topics=[t.name for t in missing])
    finally:
        await admin.close()


async def publish(producer: AIOKafkaProducer, topic: str, key: str | None, envelope: Envelope[Any]) -> None:
    await producer.send_and_wait(topic, encode(envelope), key=key.encode() if key else None)
    metrics.MESSAGES_PRODUCED.labels(topic=topic).inc()


@dataclass(frozen=True)
class Subscription:
    topic: Topic
    handler: Handler
    event_types: frozenset[str]
    batch_handler: BatchHandler | None = None


class Record(Protocol):
    """What the processor needs of a consumed message (aiokafka's and Faust's both fit)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class MessageProcessor:
    """Decode, handle with retries, dead-letter: the per-message policy every consumer shares.

    Logic errors get ``handler_max_attempts`` tries with backoff, then the message goes to the
    dead-letter topic with the reason and the consumer moves on. Transient errors (database or
    broker away) are retried without end: the message is not the problem, so it is never dropped."""

    def __init__(
        self,
        settings: CommonSettings,
        group_id: str,
        subscriptions: Sequence[Subscription],
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
        abort_on_stop: bool = True,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.names = TopicNames(settings.topic_prefix)
        self.by_topic = {self.names(s.topic): s for s in subscriptions}
        self.producer = producer
        self.stop = stop
        # True when the caller commits only after process() returns: a transient retry may then
        # give up at shutdown, as the message stays uncommitted and is redelivered.
        self.abort_on_stop = abort_on_stop

    async def process(self, record: Record) -> None:
        sub = self.by_topic[record.topic]
        started = time.perf_counter()
        envelope = await self._decode(record)
        if envelope is None:
            return
        with correlation(envelope.correlation_id, event_id=envelope.event_id):
            try:
                await self._with_retry(lambda: sub.handler(envelope), record.topic)
            except Exception as exc:
                await self._handler_failed(record, exc)
                return
        metrics.MESSAGES_CONSUMED.labels(topic=record.topic, outcome="processed").inc()
        metrics.PROCESSING_SECONDS.labels(topic=record.topic).observe(time.perf_counter() - started)

    async def process_batch(self, records: Sequence[Record]) -> None:
        """One partition's records through the subscription's batch handler; if the batch fails
        for a reason other than infrastructure, each message is retried alone, so only the poison
        one is dead-lettered."""
        if not records:
            return
        topic = records[0].topic
        sub = self.by_topic[topic]
        assert sub.batch_handler is not None
        batch_handler = sub.batch_handler
        started = time.perf_counter()
        decoded = [(r, e) for r in records if (e := await self._decode(r)) is not None]
        envelopes = [e for _, e in decoded]
        if not envelopes:
            return
        try:
            await self._with_retry(lambda: batch_handler(envelopes), topic, attempts=1)
        except Exception:
            log.warning("batch failed, handling its messages one by one", topic=topic, size=len(envelopes))
            for record, envelope in decoded:
                with correlation(envelope.correlation_id, event_id=envelope.event_id):
                    try:
                        await self._with_retry(lambda e=envelope: batch_handler([e]), topic)  # type: ignore[misc]
                    except Exception as exc:
                        await self._handler_failed(record, exc)
                        continue
                metrics.MESSAGES_CONSUMED.labels(topic=topic, outcome="processed").inc()
            return
        metrics.MESSAGES_CONSUMED.labels(topic=topic, outcome="processed").inc(len(envelopes))
        # One observation per message, of its share of the batch's time.
        elapsed, histogram = (
            (time.perf_counter() - started) / len(envelopes),
            metrics.PROCESSING_SECONDS.labels(topic=topic),
        )
        for _ in envelopes:
            histogram.observe(elapsed)

    async def _handler_failed(self, record: Record, exc: Exception) -> None:
        if isinstance(exc, MessageRefusedError):
            log.warning("message refused, dead-lettering", topic=record.topic, reason=exc.reason)
            await self.dead_letter(record, exc.reason, exc.detail)
            return
        log.exception("handler failed, dead-lettering", topic=record.topic)
        await self.dead_letter(record, "handler_error", f"{type(exc).__name__}: {exc}")

    async def _decode(self, record: Record) -> Envelope[Any] | None:
        try:
            return decode(record.value, set(self.by_topic[record.topic].event_types))
        except UnknownEventError as exc:
            await self.dead_letter(record, "undecodable", str(exc))
            return None

    async def _with_retry(
        self, call: Callable[[], Awaitable[None]], topic: str, attempts: int | None = None
    ) -> None:
        """Logic errors: ``attempts`` tries with backoff, then raise. Transient errors (database
        or broker away): retry without end, or give up at shutdown when that is safe."""
        transient = 0
        while True:
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(
                        lambda e: not is_transient(e) and not isinstance(e, MessageRefusedError)
                    ),
                    wait=wait_exponential(multiplier=0.05, max=1),
                    stop=stop_after_attempt(attempts or self.settings.handler_max_attempts),
                    reraise=True,
                    before_sleep=lambda _: metrics.RETRIES.labels(topic=topic).inc(),
                ):
                    with attempt:
                        await call()
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                transient += 1
                metrics.RETRIES.labels(topic=topic).inc()
                log.warning("transient failure, retrying", error=repr(exc), attempt=transient)
                if self.stop.is_set() and self.abort_on_stop:
                    raise asyncio.CancelledError from exc  # uncommitted: redelivered after restart
                await asyncio.sleep(min(5.0, 0.1 * 2**transient))

    async def dead_letter(self, record: Record, reason: str, error: str) -> None:
        sub = self.by_topic[record.topic]
        headers = [
            ("x-changegate-reason", reason.encode()),
            ("x-changegate-error", error[:2000].encode()),
            ("x-changegate-source-topic", record.topic.encode()),
            ("x-changegate-source-partition", str(record.partition).encode()),
            ("x-changegate-source-offset", str(record.offset).encode()),
            ("x-changegate-consumer-group", self.group_id.encode()),
        ]
        dlq = self.names.dlq(sub.topic)
        value = record.value or b""
        attempt = 0
        while True:
            try:
                await self.producer.send_and_wait(dlq, value, key=record.key, headers=headers)
                break
            except MessageSizeTooLargeError:
                # Keep the reason and the source coordinates; the body stays in the source topic.
                value = value[:1024]
                headers.append(("x-changegate-truncated", b"true"))
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                log.warning("dead-letter send failed, retrying", error=repr(exc), attempt=attempt)
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        metrics.DEAD_LETTERS.labels(topic=record.topic, reason=reason).inc()
        metrics.MESSAGES_CONSUMED.labels(topic=record.topic, outcome="dead_lettered").inc()
        log.warning("dead-lettered", topic=record.topic, dlq=dlq, reason=reason, error=error[:500])


class ConsumerLoop:
    """Consume ``subscriptions`` in one consumer group until ``stop`` is set, committing each
    partition's offset only after its messages' effects are durable."""

    def __init__(
        self,
        settings: CommonSettings,
        group_id: str,
        subscriptions: Sequence[Subscription],
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> None:
        self.group_id = group_id
        self.stop = stop
        self.ready = asyncio.Event()
        self.processor = MessageProcessor(settings, group_id, subscriptions, producer, stop)
        self.consumer = AIOKafkaConsumer(
            *self.processor.by_topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_poll_records=settings.kafka_max_batch,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
        )

    async def run(self) -> None:
        await start_with_retry(self.consumer)
        self.ready.set()
        log.info("consuming", group=self.group_id, topics=sorted(self.processor.by_topic))
        try:
            while not self.stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200)
                # Batch subscriptions take every partition's records of a poll at once (one
                # transaction); order within each partition is kept.
                batched: dict[str, dict[TopicPartition, list[Any]]] = {}
                for tp, records in batch.items():
                    if self.processor.by_topic[tp.topic].batch_handler is not None:
                        batched.setdefault(tp.topic, {})[tp] = records
                for parts in batched.values():
                    await self.processor.process_batch([r for records in parts.values() for r in records])
                    await self._commit({tp: records[-1].offset + 1 for tp, records in parts.items()})
                for tp, records in batch.items():
                    if self.processor.by_topic[tp.topic].batch_handler is not None:
                        continue
                    next_offset = None
                    for record in records:
                        if self.stop.is_set() and next_offset is not None:
                            break  # shut down between messages; the rest is redelivered
                        await self.processor.process(record)
                        next_offset = record.offset + 1
                    if next_offset is not None:
                        await self._commit({tp: next_offset})
        finally:
            await self.consumer.stop()
            log.info("consumer stopped", group=self.group_id)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Only now are the effects of every record up to ``next_offset`` durable. A rebalance may
        have taken the partition meanwhile: its new owner gets the records again, and every
        handler is idempotent, so that is a log line, not a crash."""
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit refused after a rebalance; records will be redelivered", error=repr(exc))
            return
        for tp, next_offset in offsets.items():
            self._record_lag(tp, next_offset)

    def _record_lag(self, tp: TopicPartition, next_offset: int) -> None:
        # The fetch high watermark is right on Tansu; its ListOffsets answer for the end is not.
        highwater = self.consumer.highwater(tp)
        if highwater is not None:
            lag = max(0, highwater - next_offset)
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
