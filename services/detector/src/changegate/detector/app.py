"""Detector entrypoint: a Faust agent consumes crm.events; proposals leave through the outbox.

Faust commits offsets of events the agent has acked (every 0.5 s and at stop), and the agent acks an
event only once its effects are durable; every effect is idempotent in PostgreSQL, so what a crash
makes Faust redeliver changes nothing twice."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from changegate.core import field_risk
from changegate.core.kafka import ConsumerLoop, MessageProcessor, Subscription
from changegate.core.logging import configure_logging, get_logger
from changegate.core.outbox import OutboxRelay
from changegate.core.service import ServiceRuntime
from changegate.core.topics import Topic, TopicNames
from changegate.detector.faust_health import FaustLag
from changegate.detector.faust_runtime import make_app
from changegate.detector.handler import SERVICE, Detector
from changegate.detector.open_proposals import GROUP as LIFECYCLE_GROUP
from changegate.detector.open_proposals import ProposalLifecycle
from changegate.detector.settings import DetectorSettings

log = get_logger(__name__)
GROUP = "changegate-detector"


async def main() -> None:
    settings = DetectorSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    unknown = settings.field_risk_refusals(field_risk.table())
    if unknown:
        raise SystemExit("detector: " + "; ".join(unknown))
    runtime = ServiceRuntime(SERVICE, settings)
    pool = await runtime.open_database(SERVICE, "changegate.detector.migrations")
    producer = await runtime.open_producer()
    signer = settings.signing(SERVICE)
    detector = Detector(pool, settings, signer)
    await detector.load_index()
    lifecycle = ProposalLifecycle(
        pool, TopicNames(settings.topic_prefix), signer, settings.verifier(SERVICE), detector.indexes
    )
    # Decisions, review requests and merges end and open proposals; a consumer group of its own.
    lifecycle_loop = ConsumerLoop(
        settings,
        LIFECYCLE_GROUP,
        [
            Subscription(Topic.DECISIONS, lifecycle.on_decision, frozenset({"decision"})),
            Subscription(Topic.PROPOSALS_PENDING, lifecycle.on_review_request, frozenset({"review_request"})),
            Subscription(Topic.EXECUTIONS, lifecycle.on_execution, frozenset({"execution"})),
        ],
        producer,
        runtime.stop,
    )
    processor = MessageProcessor(
        settings,
        GROUP,
        [Subscription(Topic.CRM_EVENTS, detector.handle, frozenset({"crm_event"}), detector.handle_batch)],
        producer,
        runtime.stop,
        abort_on_stop=True,  # giving up at shutdown exits the process unacked (see the agent)
    )
    app = make_app(GROUP, settings)
    lag = FaustLag(app, GROUP)
    topic = app.topic(
        TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS), value_serializer="raw", key_serializer="raw"
    )

    @app.agent(topic)
    async def detect(stream: Any) -> None:
        # Batches: one PostgreSQL transaction per batch instead of per event. Faust acks a batch
        # when the loop body returns, and also when it raises or is cancelled: so on anything but
        # success the process ends here, before that ack, and the batch is redelivered.
        async for events in stream.take_events(settings.kafka_max_batch, within=settings.batch_wait_seconds):
            try:
                await processor.process_batch([event.message for event in events])
                lag.done(event.message for event in events)
            except BaseException as exc:
                stopping = runtime.stop.is_set() and isinstance(exc, asyncio.CancelledError)
                log.log(
                    logging.INFO if stopping else logging.CRITICAL,
                    "batch not processed; exiting so that it is redelivered",
                    size=len(events),
                )
                os._exit(0 if stopping else 70)

    started = False

    async def run_faust() -> None:
        nonlocal started
        await app.start()  # returns after the first partition assignment
        started = True
        await runtime.stop.wait()
        await app.stop()

    relay = OutboxRelay(pool, producer, SERVICE, runtime.stop)

    # Joined the group and holding the assignment (not in the middle of a rebalance).
    runtime.checks["consumer"] = lambda: started and not app.rebalancing
    runtime.checks["lifecycle_consumer"] = lifecycle_loop.has_partitions
    try:
        await runtime.run(
            runtime.app(), [run_faust, lifecycle_loop.run, relay.run, lambda: lag.run(runtime.stop)]
        )
    finally:
        await producer.stop()
        await pool.close()
