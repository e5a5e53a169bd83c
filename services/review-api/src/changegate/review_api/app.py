"""Review API entrypoint: consume pending proposals into the queue; serve the reviewers' HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from changegate.core import __version__
from changegate.core.auth import Authenticator, RateLimit
from changegate.core.contracts import Decision, DecisionOutcome, Execution, ReviewRequest
from changegate.core.contracts.envelope import Envelope
from changegate.core.kafka import ConsumerLoop, Subscription, is_transient
from changegate.core.logging import configure_logging, get_logger
from changegate.core.outbox import OutboxRelay
from changegate.core.service import ServiceRuntime
from changegate.core.signing import Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.review_api import idempotency, inbox, metrics, queue
from changegate.review_api.api import router
from changegate.review_api.decisions import Action, ActionRefusedError, act
from changegate.review_api.events import Hub
from changegate.review_api.settings import ReviewApiSettings
from fastapi import FastAPI

SERVICE = queue.SERVICE
log = get_logger(__name__)


async def on_pending(pool: asyncpg.Pool, verifier: Verifier, envelope: Envelope[Any]) -> None:
    request: ReviewRequest = envelope.payload
    verifier.review_request(request)  # nobody but policy and the executor queues work for reviewers
    proposal = request.proposal
    if await queue.enqueue(pool, request):
        metrics.ENQUEUED.labels(kind=proposal.kind.value).inc()
        log.info("queued for review", kind=proposal.kind.value, record_id=proposal.record_id)


def build_app(runtime: ServiceRuntime, pool: asyncpg.Pool, settings: ReviewApiSettings, hub: Hub) -> FastAPI:
    app = FastAPI(
        title="changegate review API",
        version=__version__,
        description="Reviewers list proposals, read any of them whatever its route, and approve, reject or "
        "approve them with changes, one by one or in bulk; a Server-Sent Events stream tells of changes. "
        "Authenticate with 'Authorization: Bearer <token>': an OIDC access token or a changegate API token. "
        "Reading needs the viewer role, deciding the reviewer role, bulk actions the admin role, each "
        "within its queue and kind scopes. The inbox page for people is at /inbox.",
    )
    app.state.pool = pool
    app.state.settings = settings
    app.state.hub = hub
    app.state.authenticator = Authenticator(settings, pool)
    app.state.signer = settings.signing(SERVICE)
    app.state.decision_limit = RateLimit("decisions", settings.review_decision_rate_limit)
    app.state.names = TopicNames(settings.topic_prefix)
    app.include_router(router)
    inbox.install(app)
    return runtime.app(app)


async def main() -> None:
    settings = ReviewApiSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    settings.require_configured(SERVICE)
    signer, verifier = settings.signing(SERVICE), settings.verifier(SERVICE)
    runtime = ServiceRuntime(SERVICE, settings)
    pool = await runtime.open_database(SERVICE, "changegate.review_api.migrations")
    producer = await runtime.open_producer()

    async def handle(envelope: Envelope[Any]) -> None:
        await on_pending(pool, verifier, envelope)

    async def on_decision(envelope: Envelope[Any]) -> None:
        """Every decision is kept (any proposal can be read, whatever its route); a supersession
        takes its item off the queue."""
        decision: Decision = envelope.payload
        if decision.decided_by.kind == "human" or decision.outcome is DecisionOutcome.EXPIRED:
            return  # ours: recorded when it was made
        verifier.decision(decision)  # nothing forged is shown to a reviewer or closes an item
        if await queue.record_decision(pool, decision):
            metrics.DECISIONS.labels(outcome=decision.outcome.value).inc()
            log.info(
                "decided elsewhere",
                outcome=decision.outcome.value,
                correlation_id=str(decision.proposal.proposal_id),
            )

    async def on_execution(envelope: Envelope[Any]) -> None:
        execution: Execution = envelope.payload
        verifier.execution(execution)  # a forged execution must not show an item as applied
        if await queue.record_execution(pool, execution):
            log.info("execution recorded", status=execution.status.value)

    loop = ConsumerLoop(
        settings,
        "changegate-review-api",
        [
            Subscription(Topic.PROPOSALS_PENDING, handle, frozenset({"review_request"})),
            Subscription(Topic.DECISIONS, on_decision, frozenset({"decision"})),
            Subscription(Topic.EXECUTIONS, on_execution, frozenset({"execution"})),
        ],
        producer,
        runtime.stop,
    )
    relay = OutboxRelay(pool, producer, SERVICE, runtime.stop)
    hub = Hub(settings.database_url, runtime.stop)
    runtime.checks["consumer"] = loop.has_partitions
    runtime.checks["change_feed"] = lambda: hub.listening

    async def housekeeping() -> None:
        """Expire overdue proposals and refresh the queue gauges, every few seconds."""
        names = TopicNames(settings.topic_prefix)
        while not runtime.stop.is_set():
            try:
                for proposal_id in await queue.overdue(pool):
                    with contextlib.suppress(ActionRefusedError):  # decided meanwhile
                        await act(
                            pool,
                            names,
                            proposal_id,
                            Action.EXPIRE,
                            f"system:{SERVICE}",
                            "not reviewed before it expired",
                            signer=signer,
                        )
                        log.info("expired", correlation_id=str(proposal_id))
                await queue.refresh_depth(pool)
                await idempotency.expire(pool)
            except Exception as exc:  # a gauge may go stale; the service must not stop
                if not is_transient(exc):
                    raise
                log.warning("queue depth not refreshed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.stop.wait(), 5)

    try:
        await runtime.run(
            build_app(runtime, pool, settings, hub), [loop.run, relay.run, housekeeping, hub.run]
        )
    finally:
        await producer.stop()
        await pool.close()
