"""Executor entrypoint: consume decisions, execute the approved ones in the CRM, emit executions."""

from __future__ import annotations

import asyncpg
from changegate.core.kafka import ConsumerLoop, Subscription
from changegate.core.logging import configure_logging, get_logger
from changegate.core.outbox import OutboxRelay
from changegate.core.service import ServiceRuntime
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm.breaker import Breaker
from changegate.executor.crm.port import CrmAdapter
from changegate.executor.crm.sandbox import SandboxCrm
from changegate.executor.handler import SERVICE, Executor
from changegate.executor.settings import ExecutorSettings

log = get_logger(__name__)


def make_crm(settings: ExecutorSettings, pool: asyncpg.Pool) -> CrmAdapter:
    if settings.crm == "hubspot":
        from changegate.executor.crm.hubspot.adapter import HubSpotCrm

        if settings.hubspot_token is None:
            raise SystemExit(
                "executor: CHANGEGATE_CRM=hubspot needs CHANGEGATE_HUBSPOT_TOKEN (a private app token)"
            )
        return HubSpotCrm.from_settings(settings)
    return SandboxCrm(pool)


async def main() -> None:
    settings = ExecutorSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    runtime = ServiceRuntime(SERVICE, settings)
    pool = await runtime.open_database(SERVICE, "changegate.executor.migrations")
    producer = await runtime.open_producer()
    crm = make_crm(settings, pool)
    breaker = Breaker(
        crm.target,
        failures=settings.breaker_failures,
        cooldown=settings.breaker_cooldown_seconds,
    )
    executor = Executor(
        pool,
        TopicNames(settings.topic_prefix),
        settings.signing(SERVICE),
        settings.verifier(SERVICE),
        crm,
        breaker,
    )
    loop = ConsumerLoop(
        settings,
        "changegate-executor",
        [Subscription(Topic.DECISIONS, executor.handle, frozenset({"decision"}))],
        producer,
        runtime.stop,
    )
    relay = OutboxRelay(pool, producer, SERVICE, runtime.stop)
    runtime.checks["consumer"] = loop.has_partitions
    log.info("executing to", crm=crm.target)
    try:
        await runtime.run(runtime.app(), [loop.run, relay.run])
    finally:
        await crm.close()
        await producer.stop()
        await pool.close()
