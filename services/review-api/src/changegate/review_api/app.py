"""Review API entrypoint: consume pending proposals into the queue; serve the reviewers' HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from changegate.core import __version__
from changegate.core.auth import Authenticator, RateLimit
from changegate.core.contracts import DecisionOutcome
from changegate.core.contracts.envelope import Envelope
from changegate.core.kafka import Refusals, Subscription, is_transient, screen
from changegate.core.logging import get_logger
from changegate.core.service import Consumer, Context, Parts, Service, ServiceRuntime
from changegate.core.signing import Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.review_api import metrics, queue
from changegate.review_api.api import router
from changegate.review_api.settings import ReviewApiSettings
from fastapi import FastAPI

SERVICE = queue.SERVICE
log = get_logger(__name__)


class QueueConsumer:
    """The review queue's inputs, a polled batch per transaction."""

    def __init__(self, pool: asyncpg.Pool, verifier: Verifier) -> None:
        self.pool, self.verifier = pool, verifier

    async def on_pending(self, envelopes: list[Envelope[Any]]) -> Refusals:
        # Nobody but policy and the executor queues work for reviewers.
        refused, requests = screen(envelopes, self.verifier.review_request)
        if not requests:
            return refused
        queued = await queue.enqueue_many(self.pool, [r for _, r in requests])
        for request in queued:
            metrics.ENQUEUED.labels(kind=request.proposal.kind.value).inc()
        if queued:
            log.debug("queued for review", count=len(queued))
        return refused

    async def on_decisions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        """Only supersessions act here; the other decisions are not verified (nothing is done with
        them)."""
        superseded = [
            (n, e) for n, e in enumerate(envelopes) if e.payload.outcome is DecisionOutcome.SUPERSEDED
        ]
        # A forged supersession must not take an item off the queue.
        refused, decisions = screen([e for _, e in superseded], self.verifier.decision)
        if decisions:
            for decision in await queue.retire_many(self.pool, [d for _, d in decisions]):
                metrics.DECISIONS.labels(outcome=decision.outcome.value).inc()
                log.info("retired: superseded", correlation_id=str(decision.proposal.proposal_id))
        return {superseded[n][0]: exc for n, exc in refused.items()}

    async def on_executions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        """Executions of decisions made here show on their items; the others (auto-applied ones)
        are not verified: nothing is done with them."""
        ours = await queue.decided_here(
            self.pool,
            [(e.payload.decision.proposal.proposal_id, e.payload.decision.decision_id) for e in envelopes],
        )
        mine = [(n, e) for n, e in enumerate(envelopes) if e.payload.decision.decision_id in ours]
        # A forged execution must not show an item as applied.
        refused, executions = screen([e for _, e in mine], self.verifier.execution)
        refused = {mine[n][0]: exc for n, exc in refused.items()}
        if executions:
            recorded = await queue.record_executions(self.pool, [e for _, e in executions])
            if recorded:
                log.debug("executions recorded", count=recorded)
        return refused


def build_app(runtime: ServiceRuntime, pool: asyncpg.Pool, settings: ReviewApiSettings) -> FastAPI:
    app = FastAPI(
        title="changegate review API",
        version=__version__,
        description="Reviewers list pending proposals and approve, reject or modify them. Authenticate "
        "with 'Authorization: Bearer <token>': an OIDC access token or a changegate API token. Reading "
        "needs the viewer role, deciding the reviewer role (within its queue and kind scopes).",
    )
    app.state.pool = pool
    app.state.authenticator = Authenticator(settings, pool)
    app.state.signer = settings.signing(SERVICE)
    app.state.decision_limit = RateLimit("decisions", settings.review_decision_rate_limit)
    app.state.names = TopicNames(settings.topic_prefix)
    app.include_router(router)
    return runtime.app(app)


class Housekeeping:
    """Expires overdue proposals and refreshes the queue gauges, every few seconds."""

    def __init__(self, ctx: Context[ReviewApiSettings]) -> None:
        self.pool, self.names, self.stop = ctx.pool, ctx.names, ctx.runtime.stop
        self.signer = ctx.signer()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                for proposal_id in await queue.overdue(self.pool):
                    with contextlib.suppress(queue.NotPendingError):  # decided meanwhile
                        await queue.decide(
                            self.pool,
                            self.names,
                            proposal_id,
                            DecisionOutcome.EXPIRED,
                            f"system:{SERVICE}",
                            "not reviewed before it expired",
                            signer=self.signer,
                            by_system=True,
                        )
                        log.info("expired", correlation_id=str(proposal_id))
                await queue.refresh_depth(self.pool)
            except Exception as exc:  # a gauge may go stale; the service must not stop
                if not is_transient(exc):
                    raise
                log.warning("queue depth not refreshed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 5)


async def setup(ctx: Context[ReviewApiSettings]) -> Parts:
    consumer = QueueConsumer(ctx.pool, ctx.verifier())
    subscriptions = [
        Subscription.batch(Topic.PROPOSALS_PENDING, frozenset({"review_request"}), consumer.on_pending),
        Subscription.batch(Topic.DECISIONS, frozenset({"decision"}), consumer.on_decisions),
        Subscription.batch(Topic.EXECUTIONS, frozenset({"execution"}), consumer.on_executions),
    ]
    return Parts(
        consumers=[Consumer("changegate-review-api", subscriptions)],
        app=build_app(ctx.runtime, ctx.pool, ctx.settings),
        workers=[Housekeeping(ctx).run],
    )


def _configured(settings: ReviewApiSettings) -> None:
    """Authentication configured and the keys to sign and verify with: else it refuses to start."""
    settings.require_configured(SERVICE)
    settings.signing(SERVICE)
    settings.verifier(SERVICE)


REVIEW_API = Service(
    SERVICE,
    ReviewApiSettings,
    setup,
    migrations="changegate.review_api.migrations",
    outbox=True,
    check=_configured,
)
main = REVIEW_API.main
