"""Pausing partitions instead of waiting in a handler (the shape of quix-streams' sinks): when a
handler raises BackpressureError, the consumer loop rewinds every partition of its poll to the first
message it has not committed, pauses the failing topic's partitions, keeps polling (heartbeats and
group membership stay healthy however long the outage) and resumes them when ``retry_after`` has
passed — the next message's call is then the breaker's probe."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from changegate.core.consumer_health import ConsumerHealth
from changegate.core.errors import BackpressureError
from changegate.core.logging import get_logger
from prometheus_client import Counter

log = get_logger(__name__)
PAUSES = Counter(
    "changegate_consumer_backpressure_pauses_total",
    "Times a consumer paused partitions because what its handler calls pushed back, by reason",
    ["group", "reason"],
)


class PartitionGate:
    """The partitions a loop holds paused, and when each resumes."""

    def __init__(self, consumer: AIOKafkaConsumer, health: ConsumerHealth) -> None:
        self.consumer, self.health = consumer, health
        self.until: dict[TopicPartition, float] = {}

    def hold(self, exc: BackpressureError, topic: str, rewind: dict[TopicPartition, int]) -> None:
        """Rewind ``rewind`` (partition -> first offset not yet committed) and pause every held
        partition of ``topic`` for ``exc.retry_after`` seconds."""
        for tp, offset in rewind.items():
            self.consumer.seek(tp, offset)
        held = [tp for tp in self.consumer.assignment() if tp.topic == topic]
        resume_at = time.monotonic() + exc.retry_after
        for tp in held:
            self.until[tp] = resume_at
        self.consumer.pause(*held)
        self.health.paused(held, True)
        PAUSES.labels(group=self.health.group, reason=exc.reason).inc()
        log.warning(
            "backpressure: partitions paused, still polling",
            topic=topic,
            partitions=sorted(tp.partition for tp in held),
            retry_after=round(exc.retry_after, 2),
            reason=exc.reason,
        )

    def release_due(self) -> None:
        """Resume the partitions whose pause is over (and forget those no longer held)."""
        if not self.until:
            return
        now, assigned = time.monotonic(), self.consumer.assignment()
        due = [tp for tp, at in self.until.items() if at <= now or tp not in assigned]
        for tp in due:
            del self.until[tp]
        resumed = [tp for tp in due if tp in assigned]
        if resumed:
            self.consumer.resume(*resumed)
            self.health.paused(resumed, False)
            log.info(
                "backpressure over: partitions resumed", partitions=sorted(tp.partition for tp in resumed)
            )
