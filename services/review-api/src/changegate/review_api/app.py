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
from changegate.review_api import idempotency, inbox, metrics, queue
from changegate.review_api.api import router
from changegate.review_api.decisions import Action, ActionRefusedError, act
from changegate.review_api.events import Hub
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
        """Every decision is kept (any proposal can be read, whatever its route); a supersession
        takes its item off the queue. Ours (a human's, an expiry) were recorded when made."""
        theirs = [
            (n, e)
            for n, e in enumerate(envelopes)
            if e.payload.decided_by.kind != "human" and e.payload.outcome is not DecisionOutcome.EXPIRED
        ]
        # Nothing forged is shown to a reviewer or closes an item.
        refused, decisions = screen([e for _, e in theirs], self.verifier.decision)
        if decisions:
            for decision in await queue.record_decisions(self.pool, [d for _, d in decisions]):
                metrics.DECISIONS.labels(outcome=decision.outcome.value).inc()
                log.debug(
                    "decided elsewhere",
                    outcome=decision.outcome.value,
                    correlation_id=str(decision.proposal.proposal_id),
                )
        return {theirs[n][0]: exc for n, exc in refused.items()}

    async def on_executions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        # A forged execution must not show an item as applied.
        refused, executions = screen(envelopes, self.verifier.execution)
        if executions:
            recorded = await queue.record_executions(self.pool, [e for _, e in executions])
            if recorded:
                log.debug("executions recorded", count=len(recorded))
        return refused


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


class Housekeeping:
    """Expires overdue proposals and refreshes the queue gauges, every few seconds."""

    def __init__(self, ctx: Context[ReviewApiSettings]) -> None:
        self.pool, self.names, self.stop = ctx.pool, ctx.names, ctx.runtime.stop
        self.signer = ctx.signer()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                for proposal_id in await queue.overdue(self.pool):
                    with contextlib.suppress(ActionRefusedError):  # decided meanwhile
                        await act(
                            self.pool,
                            self.names,
                            proposal_id,
                            Action.EXPIRE,
                            f"system:{SERVICE}",
                            "not reviewed before it expired",
                            signer=self.signer,
                        )
                        log.info("expired", correlation_id=str(proposal_id))
                await queue.refresh_depth(self.pool)
                await idempotency.expire(self.pool)
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
    hub = Hub(ctx.settings.database_url, ctx.runtime.stop)
    ctx.runtime.checks["change_feed"] = lambda: hub.listening
    return Parts(
        consumers=[Consumer("changegate-review-api", subscriptions)],
        app=build_app(ctx.runtime, ctx.pool, ctx.settings, hub),
        workers=[Housekeeping(ctx).run],
        per_process=[hub.run],  # each process streams to its own SSE clients
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
    http_workers=lambda settings: settings.review_workers,
)
main = REVIEW_API.main
