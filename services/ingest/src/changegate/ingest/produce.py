"""Producing a request's CrmEvents: every one acknowledged by the broker (acks=all), or an error
that becomes a 503 — never a 2xx for an event that is not stored.

Each event's envelope id is derived from its source's event id, so a redelivered webhook (HubSpot
retries, a sender retrying a 503) gives the same ids, which every consumer deduplicates on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from changegate.core import metrics as core_metrics
from changegate.core import tracing
from changegate.core.contracts import CrmEvent
from changegate.core.contracts.envelope import make_envelope
from changegate.core.serde import encode
from changegate.ingest import metrics
from changegate.ingest.refusals import BrokerUnavailableError, TooLargeError

SERVICE = "ingest"


class Publisher:
    def __init__(
        self, producer: AIOKafkaProducer, topic: str, timeout: float, max_bytes: int, retry_after: int
    ) -> None:
        self.producer, self.topic, self.timeout = producer, topic, timeout
        self.max_bytes, self.retry_after = max_bytes, retry_after

    async def publish(self, source: str, events: Sequence[tuple[CrmEvent, str]]) -> list[uuid.UUID]:
        """Each event in its envelope, keyed by record id, in order; returns their envelope ids
        once the broker has acknowledged all of them."""
        envelopes = [make_envelope(event, service=SERVICE, dedup_key=key) for event, key in events]
        encoded = [encode(envelope) for envelope in envelopes]
        for i, value in enumerate(encoded):
            if len(value) > self.max_bytes:  # every consumer would dead-letter it
                raise TooLargeError(
                    "event_too_large", f"event {i} is {len(value)} bytes once encoded, over {self.max_bytes}"
                )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                # send() queues in call order (per partition, hence per record); then wait for every ack.
                trace = tracing.kafka_headers()  # the webhook request's span: each event's trace starts here
                futures: list[asyncio.Future[Any]] = [
                    await self.producer.send(self.topic, value, key=event.record_id.encode(), headers=trace)
                    for (event, _), value in zip(events, encoded, strict=True)
                ]
                await asyncio.gather(*futures)
        except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
            raise TooLargeError(
                "event_too_large", f"the broker refuses an event as too large: {exc}"
            ) from exc
        except (KafkaError, TimeoutError, OSError) as exc:
            # Some events may be stored: the sender's retry carries the same ids, consumers act once.
            raise BrokerUnavailableError(
                "broker_unavailable",
                "the event store did not acknowledge every event; retry later (what was stored keeps "
                f"its id, so nothing is processed twice): {type(exc).__name__}",
                {"Retry-After": str(self.retry_after)},
            ) from exc
        metrics.PRODUCE_SECONDS.labels(source=source).observe(time.perf_counter() - started)
        core_metrics.MESSAGES_PRODUCED.labels(topic=self.topic).inc(len(encoded))
        for event, _ in events:
            metrics.EVENTS_PRODUCED.labels(source=source, kind=event.kind.value).inc()
        return [envelope.event_id for envelope in envelopes]
