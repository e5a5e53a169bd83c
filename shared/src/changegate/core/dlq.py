"""Operating the dead-letter topics: read them, replay what they hold once the cause is fixed, and
move a consumer group past one message. Works on Kafka and on the embedded Tansu broker (which
misreports the end offset of a partition: reads stop at the fetch high watermark instead)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from changegate.core.kafka import (
    HEADER_ERROR,
    HEADER_GROUP,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_TRUNCATED,
    make_admin,
    make_producer,
    start_with_retry,
)
from changegate.core.settings import CommonSettings
from changegate.core.topics import DLQ_SUFFIX, Topic, TopicNames

HEADER_REPLAYED_FROM = "x-changegate-replayed-from"
SKIPPED_REASON = "skipped_by_operator"


class OperatorError(Exception):
    """What an operator asked cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)

    def _header(self, name: str) -> str:
        return self.headers.get(name, b"").decode("utf-8", "replace")

    @property
    def reason(self) -> str:
        return self._header(HEADER_REASON) or "unknown"

    @property
    def error(self) -> str:
        return self._header(HEADER_ERROR)

    @property
    def group(self) -> str:
        return self._header(HEADER_GROUP)

    @property
    def truncated(self) -> bool:
        return self.headers.get(HEADER_TRUNCATED) == b"true"

    @property
    def source(self) -> tuple[str, int, int] | None:
        """The message's place in its source topic, when the dead letter says (outbox refusals
        were never in a topic)."""
        topic, part, offset = (
            self._header(h) for h in (HEADER_SOURCE_TOPIC, HEADER_SOURCE_PARTITION, HEADER_SOURCE_OFFSET)
        )
        if topic and part.isdigit() and offset.isdigit():
            return topic, int(part), int(offset)
        return None

    @property
    def target_topic(self) -> str:
        """Where a replay sends it: its source topic, else the topic the dead-letter topic is for."""
        source = self.source
        return source[0] if source else self.topic.removesuffix(DLQ_SUFFIX)


def dlq_name(settings: CommonSettings, topic: str) -> str:
    """``decisions``, ``changegate.decisions`` or ``changegate.decisions.dlq`` -> the DLQ's name."""
    if topic.endswith(DLQ_SUFFIX):
        return topic
    names = TopicNames(settings.topic_prefix)
    logical = topic.removeprefix(settings.topic_prefix)
    if logical not in {t.value for t in Topic}:
        raise OperatorError(f"no topic {topic!r}; one of: {', '.join(t.value for t in Topic)}")
    return names.dlq(Topic(logical))


def _consumer(settings: CommonSettings, **kwargs: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        **settings.kafka_security(),
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **kwargs,
    )


async def dlq_topics(settings: CommonSettings) -> list[str]:
    admin = make_admin(settings)
    await start_with_retry(admin)
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(t for t in topics if t.startswith(settings.topic_prefix) and t.endswith(DLQ_SUFFIX))


async def read_all(
    settings: CommonSettings,
    topic: str,
    wait_seconds: float = 30,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[DeadLetter]:
    """Every record of ``topic`` from the start to its high watermark, partition by partition."""
    consumer = _consumer(settings)
    await start_with_retry(consumer)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer.topics()  # refresh metadata once
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise OperatorError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + wait_seconds
        done: set[TopicPartition] = set()
        while len(done) < len(tps):
            if time.monotonic() > deadline:
                raise OperatorError(f"reading {topic} did not reach its end in {wait_seconds:.0f}s")
            batch = await consumer.getmany(*[tp for tp in tps if tp not in done], timeout_ms=200)
            for records in batch.values():
                for r in records:
                    yield DeadLetter(
                        r.topic, r.partition, r.offset, r.timestamp, r.key, r.value or b"", dict(r.headers)
                    )
                if progress:
                    progress(len(records))
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    done.add(tp)
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    sent: bool
    why_not: str | None = None


async def replay(
    settings: CommonSettings,
    letters: list[DeadLetter],
    dry_run: bool,
) -> list[Replayed]:
    """Send each dead letter back to its source topic, once per source message (several consumer
    groups may have dead-lettered the same one). Consumers deduplicate on the event id, so a
    message already processed changes nothing; truncated dead letters cannot be replayed."""
    out: list[Replayed] = []
    seen: set[tuple[str, int, int]] = set()
    to_send: list[DeadLetter] = []
    for letter in letters:
        source = letter.source
        if source is not None and source in seen:
            out.append(Replayed(letter, False, "same source message replayed from another dead letter"))
            continue
        if source is not None:
            seen.add(source)
        if letter.truncated:
            out.append(Replayed(letter, False, "truncated: the body is only in the source topic"))
            continue
        to_send.append(letter)
    if dry_run:
        return out + [Replayed(letter, False, "dry run") for letter in to_send]
    producer: AIOKafkaProducer = make_producer(settings, "changegate-dlq-replay")
    await start_with_retry(producer)
    try:
        for letter in to_send:
            headers = [(HEADER_REPLAYED_FROM, f"{letter.topic}/{letter.partition}/{letter.offset}".encode())]
            await producer.send_and_wait(letter.target_topic, letter.value, key=letter.key, headers=headers)
            out.append(Replayed(letter, True))
    finally:
        await producer.stop()
    return out


@dataclass(frozen=True)
class Skipped:
    group: str
    topic: str
    partition: int
    offset: int
    committed_before: int | None
    dead_letter: str


async def skip(
    settings: CommonSettings,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    wait_seconds: float = 60,
    force: bool = False,
    report: Callable[[str], None] = lambda _: None,
) -> Skipped:
    """Copy the message at ``topic``/``partition``/``offset`` to the dead-letter topic, then commit
    ``offset + 1`` for ``group``, so its consumers resume after it.

    Brokers take a group's offsets only from a member (Tansu even when the group is empty), so
    this joins the group for ``topic`` and waits to be given the partition: stop the service
    first, or its live members keep the partition (and their position in memory)."""
    tp = TopicPartition(topic, partition)
    members = await _members(settings, group)
    if members:
        report(f"group {group} has {members} live member(s); stop its service, or the partition may not come")
    reader = _consumer(settings)
    await start_with_retry(reader)
    try:
        if reader.partitions_for_topic(topic) is None:
            await reader.topics()
        if partition not in (reader.partitions_for_topic(topic) or set()):
            raise OperatorError(f"{topic} has no partition {partition}")
        reader.assign([tp])
        reader.seek(tp, offset)
        batch = await reader.getmany(tp, timeout_ms=5000, max_records=1)
        records = [r for r in batch.get(tp, []) if r.offset == offset]
        if not records:
            raise OperatorError(
                f"no message at {topic}/{partition}/{offset} (high watermark {reader.highwater(tp)})"
            )
        message = records[0]
    finally:
        await reader.stop()

    member = _consumer(
        settings,
        group_id=group,
        client_id=f"changegate-skip-{group}",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
    )
    await start_with_retry(member)
    try:
        member.subscribe([topic])
        report(f"joining group {group} for {topic} (the broker may first wait out stale members)")
        deadline = time.monotonic() + wait_seconds
        while tp not in member.assignment():
            if time.monotonic() > deadline:
                raise OperatorError(
                    f"not given {topic}/{partition} in group {group} within {wait_seconds:.0f}s: "
                    "stop the service that consumes it, then run this again"
                )
            member.pause(*member.assignment())  # join only: read nothing
            await member.getmany(timeout_ms=200)
        committed = await member.committed(tp)
        if committed is not None and committed > offset:
            raise OperatorError(f"group {group} is already past offset {offset} (committed {committed})")
        if committed is not None and committed < offset and not force:
            raise OperatorError(
                f"group {group} resumes at {committed}: committing {offset + 1} would also skip "
                f"{committed}..{offset - 1}; pass --force if that is what you want"
            )
        dlq = await _copy_to_dlq(settings, group, message)
        await member.commit({tp: offset + 1})
        return Skipped(group, topic, partition, offset, committed, dlq)
    finally:
        await member.stop()


async def _copy_to_dlq(settings: CommonSettings, group: str, message: Any) -> str:
    dlq = f"{message.topic}{DLQ_SUFFIX}"
    headers = [
        (HEADER_REASON, SKIPPED_REASON.encode()),
        (HEADER_ERROR, f"skipped by an operator for group {group}".encode()),
        (HEADER_SOURCE_TOPIC, message.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(message.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(message.offset).encode()),
        (HEADER_GROUP, group.encode()),
    ]
    producer = make_producer(settings, "changegate-skip")
    await start_with_retry(producer)
    try:
        await producer.send_and_wait(dlq, message.value or b"", key=message.key, headers=headers)
    finally:
        await producer.stop()
    return dlq


async def _members(settings: CommonSettings, group: str) -> int:
    admin = make_admin(settings)
    await start_with_retry(admin)
    try:
        described = await asyncio.wait_for(admin.describe_consumer_groups([group]), 10)
        return sum(len(g[5]) for response in described for g in response.groups if g[1] == group)
    except Exception:  # only a hint for the operator
        return 0
    finally:
        await admin.close()
