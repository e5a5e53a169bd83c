"""What a consumer loop tells about itself: lag per partition from the fetch high watermark on every
fetch (never from ListOffsets, which the embedded broker answers wrongly), when each partition last
made progress (a stall detector sees one stuck partition), when the loop last polled (liveness),
which partitions it holds paused, and how often its group rebalanced.

Per-partition series are removed when the partition is revoked: a partition that moved to another
replica must not keep reporting its last lag here forever."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterable
from typing import ClassVar, Protocol

from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge

LAG = Gauge(
    "changegate_consumer_lag_messages",
    "Messages waiting: the fetch high watermark minus the next offset to process, per partition",
    ["group", "topic", "partition"],
)
LAST_PROGRESS = Gauge(
    "changegate_consumer_last_progress_timestamp_seconds",
    "When the partition last committed progress or had nothing to do (Unix time)",
    ["group", "topic", "partition"],
)
LAST_POLL = Gauge(
    "changegate_consumer_last_poll_timestamp_seconds",
    "When the consumer loop last polled the broker (Unix time)",
    ["group"],
)
PAUSED = Gauge(
    "changegate_consumer_partition_paused",
    "1 while the partition is paused for backpressure (the loop keeps polling)",
    ["group", "topic", "partition"],
)
REBALANCES = Counter(
    "changegate_consumer_rebalances_total",
    "Partition assignments this member received (the first join counts one)",
    ["group"],
)
_PER_PARTITION = (LAG, LAST_PROGRESS, PAUSED)


class Fetcher(Protocol):
    """What is read of the consumer: aiokafka's AIOKafkaConsumer."""

    def highwater(self, tp: TopicPartition) -> int | None: ...


def _labels(group: str, tp: TopicPartition) -> tuple[str, str, str]:
    return group, tp.topic, str(tp.partition)


class ConsumerHealth:
    """One consumer loop's lag, progress, last poll and pauses (metrics) and its liveness."""

    _all: ClassVar[weakref.WeakSet[ConsumerHealth]] = weakref.WeakSet()

    def __init__(self, group: str) -> None:
        self.group = group
        self.last_poll = time.monotonic()
        self.polling = False  # liveness counts from the first poll (start-up may wait for the broker)
        self._next: dict[TopicPartition, int] = {}
        ConsumerHealth._all.add(self)

    # -- the loop reports -------------------------------------------------------------------
    def polled(self) -> None:
        self.polling = True
        self.last_poll = time.monotonic()
        LAST_POLL.labels(group=self.group).set(time.time())

    def fetched(
        self,
        consumer: Fetcher,
        first_offsets: dict[TopicPartition, int],
        positions: dict[TopicPartition, int],
    ) -> None:
        """After a fetch: ``first_offsets`` of the records it returned per partition (the next to
        process), ``positions`` of the assigned partitions it returned nothing for."""
        now = time.time()
        for tp, next_offset in {**positions, **first_offsets}.items():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            lag = max(0, highwater - next_offset)
            LAG.labels(*_labels(self.group, tp)).set(lag)
            if lag == 0 or self._next.get(tp) is None:
                # Caught up is not stalled; a partition just taken starts its clock now.
                LAST_PROGRESS.labels(*_labels(self.group, tp)).set(now)
            self._next.setdefault(tp, next_offset)

    def committed(self, consumer: Fetcher, offsets: dict[TopicPartition, int]) -> None:
        now = time.time()
        for tp, next_offset in offsets.items():
            if next_offset > self._next.get(tp, -1):
                LAST_PROGRESS.labels(*_labels(self.group, tp)).set(now)
            self._next[tp] = next_offset
            highwater = consumer.highwater(tp)
            if highwater is not None:
                LAG.labels(*_labels(self.group, tp)).set(max(0, highwater - next_offset))

    def paused(self, partitions: Iterable[TopicPartition], paused: bool) -> None:
        for tp in partitions:
            PAUSED.labels(*_labels(self.group, tp)).set(1 if paused else 0)

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        REBALANCES.labels(group=self.group).inc()
        for tp in partitions:
            PAUSED.labels(*_labels(self.group, tp)).set(0)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._next.pop(tp, None)
            for metric in _PER_PARTITION:
                with contextlib.suppress(KeyError):  # never reported on
                    metric.remove(*_labels(self.group, tp))

    # -- liveness ---------------------------------------------------------------------------
    def stuck_for(self) -> float:
        """Seconds since the last poll (0 before the loop first polled)."""
        return time.monotonic() - self.last_poll if self.polling else 0.0

    @classmethod
    def stuck(cls, bound: float) -> list[str]:
        """The groups of this process whose loop has not polled for longer than ``bound`` seconds."""
        return sorted(h.group for h in cls._all if h.stuck_for() > bound)
