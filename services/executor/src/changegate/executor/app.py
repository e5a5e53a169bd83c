"""Executor entrypoint: consume decisions, execute the approved ones in the CRM, emit executions."""

from __future__ import annotations

import asyncpg
from changegate.core.kafka import Subscription
from changegate.core.logging import get_logger
from changegate.core.service import Consumer, Context, Parts, Service
from changegate.core.topics import Topic
from changegate.executor.crm.breaker import Breaker
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.port import CrmAdapter
from changegate.executor.crm.sandbox import SandboxCrm
from changegate.executor.handler import SERVICE, Executor
from changegate.executor.settings import ExecutorSettings

log = get_logger(__name__)


def make_crm(settings: ExecutorSettings, pool: asyncpg.Pool) -> CrmAdapter:
    if settings.crm == "hubspot":
        if settings.hubspot_token is None:
            raise SystemExit(
                "executor: CHANGEGATE_CRM=hubspot needs CHANGEGATE_HUBSPOT_TOKEN (a private app token)"
            )
        return HubSpotCrm.from_settings(settings)
    return SandboxCrm(pool)


GROUP = "changegate-executor"


async def setup(ctx: Context[ExecutorSettings]) -> Parts:
    settings = ctx.settings
    crm = make_crm(settings, ctx.pool)
    breaker = Breaker(
        crm.target,
        failures=settings.breaker_failures,
        cooldown=settings.breaker_cooldown_seconds,
    )
    executor = Executor(ctx.pool, ctx.names, ctx.signer(), ctx.verifier(), crm, breaker)
    parts = Parts(
        consumers=[
            Consumer(
                GROUP, [Subscription.batch(Topic.DECISIONS, frozenset({"decision"}), executor.handle_batch)]
            )
        ],
        closers=[crm.close],
    )
    if isinstance(crm, HubSpotCrm) and settings.hubspot_rate_share is None:
        # The share of the decisions' partitions it holds. Holding none yet (or between
        # rebalances) it makes no calls; say 1 meanwhile.
        crm.client.share = lambda: parts.loops[GROUP].share(Topic.DECISIONS) or 1.0
    log.info("executing to", crm=crm.target)
    return parts


EXECUTOR = Service(SERVICE, ExecutorSettings, setup, migrations="changegate.executor.migrations", outbox=True)
main = EXECUTOR.main
