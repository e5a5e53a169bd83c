"""Detector entrypoint: consume crm.events, detect, publish proposals through the outbox."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from changegate.core.contracts.envelope import Envelope
from changegate.core.kafka import ConsumerLoop, Subscription
from changegate.core.logging import configure_logging
from changegate.core.outbox import OutboxRelay
from changegate.core.service import ServiceRuntime
from changegate.core.topics import Topic
from changegate.detector.handler import SERVICE, Detector
from changegate.detector.settings import DetectorSettings


async def main() -> None:
    settings = DetectorSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    runtime = ServiceRuntime(SERVICE, settings)
    pool = await runtime.open_database(SERVICE, "changegate.detector.migrations")
    producer = await runtime.open_producer()
    detector = Detector(pool, settings)

    async def handle(envelope: Envelope[Any], _: ConsumerRecord[bytes, bytes]) -> None:
        await detector.handle(envelope)

    loop = ConsumerLoop(
        settings,
        "changegate-detector",
        [Subscription(Topic.CRM_EVENTS, handle, frozenset({"crm_event"}))],
        producer,
        runtime.stop,
    )
    relay = OutboxRelay(pool, producer, SERVICE, runtime.stop)
    runtime.checks["consumer"] = loop.ready.is_set
    try:
        await runtime.run(runtime.app(), [loop.run, relay.run])
    finally:
        await producer.stop()
        await pool.close()
