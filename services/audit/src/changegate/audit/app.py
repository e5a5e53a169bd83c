"""Audit entrypoint: consume decisions and executions into the append-only log; serve queries."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import asyncpg
from changegate.audit import api
from changegate.audit.chain import row_to_entry
from changegate.audit.checkpoints import Checkpointer
from changegate.audit.retention import PartitionKeeper, month_partitions
from changegate.audit.settings import AuditSettings
from changegate.audit.store import (
    Outcome,
    append_outcomes,
    decision_outcome,
    execution_outcome,
    record_decisions,
)
from changegate.audit.watch import ChainWatch
from changegate.core import __version__
from changegate.core.auth import Authenticator, UnscopedViewer
from changegate.core.contracts import AuditEntry, Execution
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope
from changegate.core.db import claim_events
from changegate.core.http import MAX_BIGINT, Name, problem_responses, refuse_unknown_query
from changegate.core.kafka import Refusals, Subscription, screen, screen_more
from changegate.core.logging import get_logger
from changegate.core.policy_versions import RecordedPolicies
from changegate.core.service import Consumer, Context, Parts, Service, ServiceRuntime
from changegate.core.signing import Verifier
from changegate.core.topics import Topic
from fastapi import Depends, FastAPI, Query, Request
from prometheus_client import Counter, Histogram

SERVICE = "audit"
log = get_logger(__name__)
ROWS_WRITTEN = Counter("changegate_audit_rows_written_total", "Audit rows appended", ["mode"])
# The SLI of the auto-apply path (deploy/prometheus/rules: 99% within 60 s): from the event at its
# source to its audit row; human approvals are measured too, in their own mode.
EVENT_AGE = Histogram(
    "changegate_event_age_seconds",
    "From the CRM's event to the audit row of the change it led to, by mode (auto_applied, approved)",
    ["mode"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400, 259200, 604800),
)


def observe_event_age(execution: Execution, mode: str) -> None:
    happened = execution.decision.proposal.source.occurred_at
    if happened is not None:
        EVENT_AGE.labels(mode=mode).observe(max(0.0, (utcnow() - happened).total_seconds()))


def count_rows(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        ROWS_WRITTEN.labels(mode=outcome.mode.value).inc(len(outcome.fields))


class AuditConsumer:
    """Decisions and executions into the log, a polled batch per transaction."""

    def __init__(self, pool: asyncpg.Pool, verifier: Verifier, partitions_ahead: int = 3) -> None:
        self.pool, self.verifier, self.ahead = pool, verifier, partitions_ahead
        self.policies = RecordedPolicies(pool)

    async def on_decisions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        # A forged decision never reaches the log, nor one of a policy version never loaded.
        refused, decisions = screen(envelopes, self.verifier.decision)
        decisions = await screen_more(refused, decisions, self.policies.check)
        if decisions:
            batch = [d for _, d in decisions]
            async with (
                month_partitions(self.pool, self.ahead),
                self.pool.acquire() as conn,
                conn.transaction(),
            ):
                kept = await record_decisions(conn, batch)
                # Those that end their proposal here (rejected, expired, superseded) go in the chain
                # now, once: a decision kept before (redelivery) is not kept again.
                outcomes = [o for d, k in zip(batch, kept, strict=True) if k and (o := decision_outcome(d))]
                await append_outcomes(conn, outcomes)
            count_rows(outcomes)
            if not all(kept):
                log.debug("decisions not kept", count=kept.count(False))
        return refused

    async def on_executions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        # Signed by the executor, of a properly signed decision of a recorded policy version.
        refused, executions = screen(envelopes, self.verifier.execution)
        executions = await screen_more(
            refused, executions, lambda e: self.policies.check(e.decision, "execution")
        )
        if not executions:
            return refused
        async with month_partitions(self.pool, self.ahead), self.pool.acquire() as conn, conn.transaction():
            fresh = await claim_events(conn, "audit-executions", [e.execution_id for _, e in executions])
            # Already logged ones write no second row (redelivery); each execution once.
            todo = list({e.execution_id: e for _, e in executions if e.execution_id in fresh}.values())
            outcomes = [o for e in todo if (o := execution_outcome(e))]
            written = await append_outcomes(conn, outcomes)
        count_rows(outcomes)
        for execution in todo:
            observe_event_age(
                execution, "auto_applied" if execution.decision.decided_by.kind == "policy" else "approved"
            )
        if written:
            log.debug("audited", rows=written, executions=len(todo))
        return refused


def build_app(runtime: ServiceRuntime, pool: asyncpg.Pool, settings: AuditSettings) -> FastAPI:
    app = FastAPI(
        title="changegate audit",
        version=__version__,
        description="Query, export and verify the append-only, hash-chained log of every outcome "
        "(applied, or why not). Authenticate with 'Authorization: Bearer <token>' (viewer role or above, "
        "without queue or kind scopes: the log spans every queue).",
    )
    app.state.pool = pool
    app.state.authenticator = Authenticator(settings, pool)
    errors = problem_responses(401, 403, 422)
    app.include_router(api.router)

    @app.get(
        "/audit/entries",
        response_model=list[AuditEntry],
        tags=["audit"],
        responses=errors,
        dependencies=[Depends(refuse_unknown_query)],
        summary="Entries by record or proposal (see /v1/audit/entries for every filter)",
    )
    async def list_entries(
        request: Request,
        _: UnscopedViewer,
        record_id: Annotated[Name | None, Query(description="only this CRM record")] = None,
        proposal_id: Annotated[uuid.UUID | None, Query(description="only this proposal")] = None,
        after_seq: Annotated[
            int, Query(ge=0, le=MAX_BIGINT, description="page after this sequence number")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditEntry]:
        rows = await request.app.state.pool.fetch(
            "SELECT * FROM audit_entries WHERE seq > $1"
            " AND ($2::text IS NULL OR record_id = $2) AND ($3::uuid IS NULL OR proposal_id = $3)"
            " ORDER BY seq LIMIT $4",
            after_seq,
            record_id,
            proposal_id,
            limit,
        )
        return [row_to_entry(r) for r in rows]

    @app.get(
        "/audit/verify",
        tags=["audit"],
        summary="Recompute the hash chain from genesis",
        response_model=api.VerifyResult,
        responses=errors,
        dependencies=[Depends(refuse_unknown_query)],
    )
    async def verify_chain(
        request: Request,
        _: UnscopedViewer,
        head: api.HeadQuery = None,
    ) -> dict[str, Any]:
        return await api.verify_result(request, head, from_genesis=True)

    return runtime.app(app)


async def setup(ctx: Context[AuditSettings]) -> Parts:
    verifier = ctx.verifier()
    consumer = AuditConsumer(ctx.pool, verifier, ctx.settings.audit_partitions_ahead)
    checkpointer = Checkpointer(
        ctx.pool,
        ctx.signer(),
        ctx.names,
        ctx.settings.checkpoint_every,
        ctx.settings.checkpoint_seconds,
        ctx.runtime.stop,
    )
    app = build_app(ctx.runtime, ctx.pool, ctx.settings)
    app.state.verifier, app.state.signer, app.state.names = verifier, checkpointer.signer, ctx.names
    subscriptions = [
        Subscription.batch(Topic.DECISIONS, frozenset({"decision"}), consumer.on_decisions),
        Subscription.batch(Topic.EXECUTIONS, frozenset({"execution"}), consumer.on_executions),
    ]
    return Parts(
        consumers=[Consumer("changegate-audit", subscriptions)],
        app=app,
        workers=[
            PartitionKeeper(
                ctx.pool,
                ctx.settings.audit_partitions_ahead,
                ctx.settings.audit_partitions_interval_seconds,
                ctx.runtime.stop,
            ).run,
            checkpointer.run,
            ChainWatch(ctx.pool, verifier, ctx.settings.audit_verify_interval_seconds, ctx.runtime.stop).run,
        ],
    )


AUDIT = Service(
    SERVICE,
    AuditSettings,
    setup,
    migrations="changegate.audit.migrations",
    outbox=True,  # checkpoints (and revert proposals) are published with the rows that cause them
    check=lambda settings: settings.require_configured(SERVICE),
)
main = AUDIT.main
