"""Kafka plumbing on aiokafka: producer, topic creation, and the consumer loop every service uses.

The consumer loop commits an offset only after the handler's effects are durable, retries transient
failures (database or broker unavailable) without moving on, and sends a message it cannot process
to the dead-letter topic with the reason, then keeps going."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
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
from changegate.core import decompression, metrics, tracing
from changegate.core.backpressure import PartitionGate
from changegate.core.consumer_health import ConsumerHealth
from changegate.core.contracts.envelope import Envelope, UnknownEventError
from changegate.core.errors import BackpressureError, TransientError
from changegate.core.errors import MessageRefusedError as MessageRefusedError  # re-exported
from changegate.core.logging import correlation, get_logger
from changegate.core.serde import MessageLimits, decode, encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import TOPICS, Topic, TopicNames
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_exponential_jitter,
)

log = get_logger(__name__)
_T = TypeVar("_T")
decompression.install()  # every aiokafka consumer of the process: bounded before aiokafka inflates

Handler = Callable[[Envelope[Any]], Awaitable[None]]
# What a batch handler refuses for good, by position in its batch: dead-lettered with the reason,
# while the rest of the batch counts as done.
Refusals = Mapping[int, MessageRefusedError]
# Handles a poll's messages of one topic at once (one transaction for many messages); returns the
# messages it refuses, if any. Raising fails the whole batch: then each message is retried alone.
BatchHandler = Callable[[list[Envelope[Any]]], Awaitable[Refusals | None]]

# Infrastructure being away is not the message's fault: retry it without end, never dead-letter it.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
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


def is_transient(exc: BaseException) -> bool:
    """Infrastructure trouble worth waiting out. Kafka says itself which of its errors are; one it
    calls final (a message too large, an unauthorised topic) is the message's problem."""
    if isinstance(exc, KafkaError):
        # KafkaTimeoutError says retriable=False, yet it is what a broker outage looks like.
        return not isinstance(exc, PERMANENT_KAFKA_ERRORS)
    return isinstance(exc, _TRANSIENT_TYPES)


def make_producer(settings: CommonSettings, service: str, **options: Any) -> AIOKafkaProducer:
    """acks=all, idempotence as configured; ``options`` override aiokafka's others (e.g. a shorter
    ``request_timeout_ms`` where a caller waits for the acknowledgement)."""
    defaults: dict[str, Any] = {"linger_ms": 2, "max_batch_size": settings.kafka_producer_batch_bytes}
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        **settings.kafka_security(),
        client_id=service,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        **(defaults | options),
    )


def make_admin(settings: CommonSettings) -> AIOKafkaAdminClient:
    servers = settings.kafka_bootstrap_servers
    return AIOKafkaAdminClient(bootstrap_servers=servers, **settings.kafka_security())


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
    admin = make_admin(settings)
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
    await producer.send_and_wait(
        topic, encode(envelope), key=key.encode() if key else None, headers=tracing.headers_for(envelope)
    )
    metrics.MESSAGES_PRODUCED.labels(topic=topic).inc()


def screen(
    envelopes: Sequence[Envelope[Any]], check: Callable[[Any], object]
) -> tuple[dict[int, MessageRefusedError], list[tuple[int, Any]]]:
    """Each message's payload through ``check`` (e.g. a signature check): those it refuses
    (MessageRefusedError) by position, and the others' (position, payload)."""
    refused: dict[int, MessageRefusedError] = {}
    passed: list[tuple[int, Any]] = []
    for n, envelope in enumerate(envelopes):
        try:
            check(envelope.payload)
        except MessageRefusedError as exc:
            refused[n] = exc
            continue
        passed.append((n, envelope.payload))
    return refused, passed


async def screen_more(
    refused: dict[int, MessageRefusedError],
    passed: list[tuple[int, Any]],
    check: Callable[[Any], Awaitable[object]],
) -> list[tuple[int, Any]]:
    """``screen`` again, with an async ``check`` (e.g. one that asks the database): what it refuses
    joins ``refused``; the rest is returned."""
    still: list[tuple[int, Any]] = []
    for n, payload in passed:
        try:
            await check(payload)
        except MessageRefusedError as exc:
            refused[n] = exc
            continue
        still.append((n, payload))
    return still


async def handle_one(handler: BatchHandler, envelope: Envelope[Any]) -> None:
    """A batch handler on one message; what it refuses is raised."""
    refused = await handler([envelope])
    if refused:
        raise refused[0]


@dataclass(frozen=True)
class Subscription:
    """A topic a consumer reads, the event types it accepts there, and its handler: one message at
    a time (``handler``) or, what every service uses, a poll's messages at once (``batch_handler``)."""

    topic: Topic
    handler: Handler | None
    event_types: frozenset[str]
    batch_handler: BatchHandler | None = None

    @classmethod
    def batch(cls, topic: Topic, event_types: frozenset[str], handler: BatchHandler) -> Subscription:
        return cls(topic, None, event_types, handler)


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


# Headers of a dead letter: why it was refused, and where it came from (for `changegate dlq`).
HEADER_REASON = "x-changegate-reason"
HEADER_ERROR = "x-changegate-error"
HEADER_SOURCE_TOPIC = "x-changegate-source-topic"
HEADER_SOURCE_PARTITION = "x-changegate-source-partition"
HEADER_SOURCE_OFFSET = "x-changegate-source-offset"
HEADER_GROUP = "x-changegate-consumer-group"
HEADER_TRUNCATED = "x-changegate-truncated"
# A dead letter keeps at most this much of the original body when the broker refuses all of it.
TRUNCATED_BODY_BYTES = 1024


def header_bytes(text: str, limit: int = 2000) -> bytes:
    """Header text as UTF-8, whatever it holds (an error may quote a lone surrogate)."""
    return text[:limit].encode("utf-8", "backslashreplace")


# CPU-bound loops over a polled batch (decoding, signing) give the event loop a turn this often, so
# the process's other tasks (its outbox relay, the producer's sender, fetches, heartbeats) do not
# wait for a whole batch: a relay starved that way held finished work back for seconds.
YIELD_EVERY = 50


class MessageProcessor:
    """Decode, handle with retries, dead-letter: the per-message policy every consumer shares.

    Whatever a message holds, it ends processed or dead-lettered with the reason; the consumer moves
    on. Logic errors — any exception but infrastructure trouble — get ``handler_max_attempts`` tries
    with backoff, then the dead-letter topic; ``MessageRefusedError`` goes there at once. Transient
    errors (database or broker away) are retried without end: the message is not the problem, so it
    is never dropped."""

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
        decompression.set_limit(settings.kafka_max_decompressed_batch_bytes)
        self.limits = MessageLimits(
            max_bytes=settings.message_max_bytes,
            max_depth=settings.message_max_depth,
            max_string_length=settings.message_max_string_length,
        )
        # True when the caller commits only after process() returns: a transient retry may then
        # give up at shutdown, as the message stays uncommitted and is redelivered.
        self.abort_on_stop = abort_on_stop

    async def process(self, record: Record) -> None:
        sub = self.by_topic[record.topic]
        if sub.handler is None:
            await self.process_batch([record])
            return
        handler = sub.handler
        started = time.perf_counter()
        envelope = await self._decode(record)
        if envelope is None:
            return
        with (
            correlation(envelope.correlation_id, event_id=envelope.event_id),
            tracing.processing([record], [envelope], self.group_id),
        ):
            try:
                await self._with_retry(lambda: handler(envelope), record.topic)
            except BackpressureError:
                raise
            except Exception as exc:
                await self._handler_failed(record, exc)
                return
        metrics.MESSAGES_CONSUMED.labels(topic=record.topic, outcome="processed").inc()
        metrics.PROCESSING_SECONDS.labels(topic=record.topic).observe(time.perf_counter() - started)

    async def process_batch(self, records: Sequence[Record]) -> None:
        """Records of one topic (any of its partitions, each partition's in order) through the
        subscription's batch handler. Messages it refuses are dead-lettered and the rest are done; if
        the batch fails for a reason other than infrastructure, each message is retried alone, so only
        the poison one is dead-lettered."""
        if not records:
            return
        topic = records[0].topic
        sub = self.by_topic[topic]
        batch_handler = sub.batch_handler or _one_at_a_time(sub)
        started = time.perf_counter()
        decoded = []
        for n, record in enumerate(records, 1):
            if (envelope := await self._decode(record)) is not None:
                decoded.append((record, envelope))
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # decoding does not suspend: let the outbox relay, fetches run
        envelopes = [e for _, e in decoded]
        if not envelopes:
            return
        try:
            with tracing.processing([r for r, _ in decoded], envelopes, self.group_id):
                refused = await self._with_retry(lambda: batch_handler(envelopes), topic, attempts=1)
        except BackpressureError:
            raise
        except Exception:
            log.warning("batch failed, handling its messages one by one", topic=topic, size=len(envelopes))
            for record, envelope in decoded:
                with correlation(envelope.correlation_id, event_id=envelope.event_id):
                    try:
                        alone = await self._with_retry(lambda e=envelope: batch_handler([e]), topic)  # type: ignore[misc]
                    except BackpressureError:
                        raise
                    except Exception as exc:
                        await self._handler_failed(record, exc)
                        continue
                    if alone:
                        await self._handler_failed(record, alone[0])
                        continue
                metrics.MESSAGES_CONSUMED.labels(topic=topic, outcome="processed").inc()
            return
        for index, refusal in (refused or {}).items():
            record, envelope = decoded[index]
            with correlation(envelope.correlation_id, event_id=envelope.event_id):
                await self._handler_failed(record, refusal)
        done = len(envelopes) - len(refused or {})
        metrics.MESSAGES_CONSUMED.labels(topic=topic, outcome="processed").inc(done)
        # One observation per message, of its share of the batch's time.
        elapsed, histogram = (
            (time.perf_counter() - started) / len(envelopes),
            metrics.PROCESSING_SECONDS.labels(topic=topic),
        )
        for _ in range(done):
            histogram.observe(elapsed)

    async def _handler_failed(self, record: Record, exc: Exception) -> None:
        if isinstance(exc, MessageRefusedError):
            log.warning("message refused, dead-lettering", topic=record.topic, reason=exc.reason)
            await self.dead_letter(record, exc.reason, exc.detail)
            return
        log.error("handler failed, dead-lettering", topic=record.topic, exc_info=exc)
        await self.dead_letter(record, "handler_error", f"{type(exc).__name__}: {exc}")

    async def _decode(self, record: Record) -> Envelope[Any] | None:
        refused = decompression.refused_batch(record.value)
        if refused is not None:  # a batch screened out before aiokafka decompressed it
            await self.dead_letter(record, *refused)
            return None
        try:
            return decode(record.value, set(self.by_topic[record.topic].event_types), self.limits)
        except UnknownEventError as exc:
            await self.dead_letter(record, exc.reason, str(exc))
        except Exception as exc:  # decode promises UnknownEventError; a bug there must not stop us
            await self.dead_letter(record, "undecodable", f"{type(exc).__name__}: {exc}")
        return None

    async def _with_retry(
        self, call: Callable[[], Awaitable[_T]], topic: str, attempts: int | None = None
    ) -> _T:
        """Logic errors: ``attempts`` tries with backoff, then raise. Transient errors (database
        or broker away): retry without end, or give up at shutdown when that is safe."""
        limit = attempts or self.settings.handler_max_attempts
        logic_failures = 0

        def retry(state: RetryCallState) -> bool:
            nonlocal logic_failures
            exc = state.outcome.exception() if state.outcome else None
            if exc is None or isinstance(exc, MessageRefusedError | BackpressureError):
                return False  # refused: dead-lettered; backpressure: the loop pauses the partitions
            if is_transient(exc):
                return not (self.stop.is_set() and self.abort_on_stop)
            logic_failures += 1
            return logic_failures < limit

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return (_TRANSIENT_WAIT if exc is not None and is_transient(exc) else _LOGIC_WAIT)(state)

        def before_sleep(state: RetryCallState) -> None:
            metrics.RETRIES.labels(topic=topic).inc()
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None and is_transient(exc):
                log.warning("transient failure, retrying", error=repr(exc), attempt=state.attempt_number)

        try:
            async for attempt in AsyncRetrying(
                retry=retry, wait=wait, before_sleep=before_sleep, reraise=True
            ):
                with attempt:
                    result = await call()
            return result  # the loop ends after the attempt that succeeded
        except Exception as exc:
            if is_transient(exc):  # given up only at shutdown: uncommitted, redelivered after restart
                raise asyncio.CancelledError from exc
            raise

    async def dead_letter(self, record: Record, reason: str, error: str) -> None:
        """Copy the message to its topic's dead-letter topic with the reason; retried until the
        broker takes it (the consumer must not move past a message it has not put somewhere)."""
        sub = self.by_topic[record.topic]
        headers = [
            (HEADER_REASON, header_bytes(reason, 100)),
            (HEADER_ERROR, header_bytes(error)),
            (HEADER_SOURCE_TOPIC, record.topic.encode()),
            (HEADER_SOURCE_PARTITION, str(record.partition).encode()),
            (HEADER_SOURCE_OFFSET, str(record.offset).encode()),
            (HEADER_GROUP, self.group_id.encode()),
        ]
        dlq = self.names.dlq(sub.topic)
        body = record.value or b""

        async def send() -> None:
            nonlocal body
            try:
                await self.producer.send_and_wait(dlq, body, key=record.key, headers=headers)
            except (MessageSizeTooLargeError, RecordTooLargeError):
                # Keep the reason and the source coordinates; the body stays in the source topic.
                body = body[:TRUNCATED_BODY_BYTES]
                headers.append((HEADER_TRUNCATED, b"true"))
                raise

        async for attempt in AsyncRetrying(
            wait=_TRANSIENT_WAIT,
            before_sleep=lambda s: log.error(
                "dead-letter send failed, retrying",
                dlq=dlq,
                error=repr(s.outcome.exception() if s.outcome else None),
                attempt=s.attempt_number,
            ),
            reraise=True,
        ):
            with attempt:
                await send()
        metrics.DEAD_LETTERS.labels(topic=record.topic, reason=reason).inc()
        metrics.MESSAGES_CONSUMED.labels(topic=record.topic, outcome="dead_lettered").inc()
        log.warning("dead-lettered", topic=record.topic, dlq=dlq, reason=reason, error=error[:500])


# Backoff between attempts: logic errors briefly (they are likely to fail again), infrastructure
# trouble up to a few seconds (it may take a while to come back).
_LOGIC_WAIT = wait_exponential(multiplier=0.05, max=1)
_TRANSIENT_WAIT = wait_exponential_jitter(multiplier=0.1, max=5, jitter=0.5)


def _one_at_a_time(sub: Subscription) -> BatchHandler:
    """A per-message handler as a batch handler (the messages in order, each on its own)."""
    handler = sub.handler
    assert handler is not None

    async def each(envelopes: list[Envelope[Any]]) -> None:
        for envelope in envelopes:
            await handler(envelope)

    return each


class _AssignmentTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Knows whether the member holds its assignment (joined, not in the middle of a rebalance)."""

    def __init__(self, health: ConsumerHealth) -> None:
        self.joined = False
        self.partitions: frozenset[TopicPartition] = frozenset()
        self.health = health

    async def on_partitions_revoked(self, revoked: object) -> None:
        self.joined = False
        self.health.revoked(revoked)  # type: ignore[arg-type]

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.partitions = frozenset(assigned)  # type: ignore[call-overload]
        self.joined = True
        self.health.assigned(self.partitions)


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
        committed: Callable[[], None] | None = None,
    ) -> None:
        self.group_id = group_id
        self.stop = stop
        # Called when a batch's transaction has committed, before its offsets are (the outbox
        # relay starts publishing what the batch wrote while the offsets go to the broker).
        self.committed = committed or (lambda: None)
        self.ready = asyncio.Event()
        self.processor = MessageProcessor(settings, group_id, subscriptions, producer, stop)
        self.health = ConsumerHealth(group_id)
        self.assignment = _AssignmentTracker(self.health)
        # Backpressure: partitions paused, and where to rewind those of the poll in hand.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._topic_in_hand = ""
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            **settings.kafka_security(),
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_poll_records=settings.kafka_max_batch,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
            max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        )
        self.gate = PartitionGate(self.consumer, self.health)

    def has_partitions(self) -> bool:
        """Readiness: joined the group and holding its assignment (possibly empty, when the group
        has more members than the topics have partitions)."""
        return self.ready.is_set() and self.assignment.joined

    def share(self, topic: Topic) -> float:
        """The share of ``topic``'s partitions this member holds (0 before it joined)."""
        name = self.processor.names(topic)
        total = self.consumer.partitions_for_topic(name)
        held = sum(1 for tp in self.assignment.partitions if tp.topic == name)
        return held / len(total) if total else 0.0

    async def run(self) -> None:
        await start_with_retry(self.consumer)
        self.consumer.subscribe(list(self.processor.by_topic), listener=self.assignment)
        self.ready.set()
        log.info("consuming", group=self.group_id, topics=sorted(self.processor.by_topic))
        try:
            while not self.stop.is_set():
                self.gate.release_due()
                batch = await self._poll()
                # Records fetched but not yet committed, per partition: where to rewind on backpressure.
                self._uncommitted = {tp: records[0].offset for tp, records in batch.items() if records}
                try:
                    await self._process(batch)
                except BackpressureError as exc:
                    self.gate.hold(exc, self._topic_in_hand, self._uncommitted)
        finally:
            await self.consumer.stop()
            log.info("consumer stopped", group=self.group_id)

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        # Batch subscriptions take every partition's records of a poll at once (one
        # transaction); order within each partition is kept.
        batched: dict[str, dict[TopicPartition, list[Any]]] = {}
        for tp, records in batch.items():
            if self.processor.by_topic[tp.topic].batch_handler is not None:
                batched.setdefault(tp.topic, {})[tp] = records
        for topic, parts in batched.items():
            self._topic_in_hand = topic
            await self.processor.process_batch([r for records in parts.values() for r in records])
            self.committed()
            await self._commit({tp: records[-1].offset + 1 for tp, records in parts.items()})
        for tp, records in batch.items():
            if self.processor.by_topic[tp.topic].batch_handler is not None:
                continue
            next_offset = None
            self._topic_in_hand = tp.topic
            for record in records:
                if self.stop.is_set() and next_offset is not None:
                    break  # shut down between messages; the rest is redelivered
                await self.processor.process(record)
                next_offset = record.offset + 1
                self._uncommitted[tp] = next_offset
            if next_offset is not None:
                self.committed()
                await self._commit({tp: next_offset})

    async def _poll(self) -> dict[TopicPartition, list[Any]]:
        """One fetch; a broker error is waited out (logged), never the end of the consumer."""
        try:
            batch: dict[TopicPartition, list[Any]] = await self.consumer.getmany(timeout_ms=200)
        except KafkaError as exc:
            self.health.polled()
            metrics.RETRIES.labels(topic="(fetch)").inc()
            log.warning("fetch failed, retrying", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            return {}
        self.health.polled()
        await self._observe(batch)
        return batch

    async def _observe(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Lag of every held partition from this fetch's high watermark: those with records from
        the first one to process, the others from the position."""
        firsts = {tp: records[0].offset for tp, records in batch.items() if records}
        positions = {}
        for tp in self.consumer.assignment() - set(firsts):
            with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                positions[tp] = await self.consumer.position(tp)
        self.health.fetched(self.consumer, firsts, positions)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Only now are the effects of every record up to ``next_offset`` durable. A rebalance may
        have taken the partition meanwhile, or the broker may not answer: the records are then
        redelivered, and every handler is idempotent, so that is a log line, not a crash."""
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.warning("commit refused; the records will be redelivered", error=repr(exc))
            return
        self.health.committed(self.consumer, offsets)
        for tp, next_offset in offsets.items():
            if self._uncommitted.get(tp, -1) <= next_offset:
                self._uncommitted.pop(tp, None)
