"""Executor entrypoint: consume decisions, apply the executable ones, emit executions.

Per decision, one transaction holds: the processed-decision claim, the compare-and-set write to the
sandbox CRM, and the Execution (and, on conflict, the refreshed proposal) in the outbox."""

from __future__ import annotations

from typing import Any

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import (
    Decider,
    Decision,
    Execution,
    ExecutionStatus,
    FieldChange,
    FieldWrite,
    Proposal,
    ProposalKind,
    ProposalSource,
    ReviewRequest,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.crm import sandbox as sandbox_crm
from changegate.core.db import DbConn, claim_event
from changegate.core.kafka import ConsumerLoop, Subscription
from changegate.core.logging import configure_logging, get_logger
from changegate.core.outbox import OutboxRelay
from changegate.core.service import ServiceRuntime
from changegate.core.signing import SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.executor.settings import ExecutorSettings
from prometheus_client import Counter, Histogram

SERVICE = "executor"
# Kinds whose decision is a set of field writes on one record (compare-and-set).
FIELD_WRITE_KINDS = frozenset(
    {
        ProposalKind.FIELD_UPDATE,
        ProposalKind.LIFECYCLE_TRANSITION,
        ProposalKind.OWNER_REASSIGNMENT,
        ProposalKind.EMAIL_VERIFICATION,
    }
)
log = get_logger(__name__)

EXECUTIONS = Counter("changegate_executions_total", "Executions by status", ["status"])
SKIPPED = Counter(
    "changegate_executor_skipped_decisions_total",
    "Decisions that do not execute, by outcome",
    ["outcome"],
)
CRM_SECONDS = Histogram(
    "changegate_crm_call_duration_seconds",
    "CRM write latency",
    ["target"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


class Executor:
    def __init__(self, pool: asyncpg.Pool, names: TopicNames, signer: SigningKey, verifier: Verifier) -> None:
        self.pool, self.names = pool, names
        self.signer, self.verifier = signer, verifier

    async def handle(self, envelope: Envelope[Any]) -> None:
        decision: Decision = envelope.payload
        self.verifier.decision(decision)  # only what a trusted service may decide, signed by it
        if not decision.outcome.executes:
            SKIPPED.labels(outcome=decision.outcome.value).inc()
            return  # nothing executes without an approving decision
        proposal = decision.proposal
        async with self.pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, SERVICE, decision.decision_id):
                log.info("decision already executed", decision_id=str(decision.decision_id))
                return
            status, error, writes, result = await self._apply(conn, decision)
            execution = Execution(
                execution_id=Execution.make_id(decision.decision_id),
                decision=decision,
                status=status,
                writes=writes,
                crm_target=sandbox_crm.TARGET,
                crm_response_ids=[f"{proposal.object_type.value}/{proposal.record_id}@v{result.version}"]
                if result and result.applied
                else [],
                error=error,
                executed_at=utcnow(),
            )
            out = make_envelope(
                self.signer.sign(execution),
                service=SERVICE,
                correlation_id=proposal.proposal_id,
                dedup_key=str(execution.execution_id),
            )
            await outbox.enqueue(conn, SERVICE, self.names(Topic.EXECUTIONS), proposal.record_id, out)
        EXECUTIONS.labels(status=status.value).inc()
        log.info("executed", status=status.value, record_id=proposal.record_id, error=error)

    async def _apply(
        self, conn: DbConn, decision: Decision
    ) -> tuple[ExecutionStatus, str | None, list[FieldWrite], sandbox_crm.CasResult | None]:
        proposal = decision.proposal
        if proposal.kind not in FIELD_WRITE_KINDS:
            # A merge is not a field write: applying its changes to the survivor alone would report
            # success while the duplicates stay. Refused until a merge adapter exists.
            return ExecutionStatus.FAILED, f"no executor for {proposal.kind.value} yet", [], None
        with CRM_SECONDS.labels(target=sandbox_crm.TARGET).time():
            result = await sandbox_crm.compare_and_set(
                conn, proposal.object_type, proposal.record_id, decision.final_changes
            )
        if result is None:
            return ExecutionStatus.FAILED, "record not found in the CRM", [], None
        if result.applied:
            return ExecutionStatus.APPLIED, None, result.writes, result
        await self._back_to_review(conn, decision, result.current)
        return (
            ExecutionStatus.CONFLICT,
            f"changed since proposed: {', '.join(result.conflicts)}",
            result.writes,
            result,
        )

    async def _back_to_review(self, conn: DbConn, decision: Decision, current: dict[str, Any]) -> None:
        """A stale proposal never overwrites: re-propose it against the value the CRM holds now."""
        old = decision.proposal
        changes = [
            FieldChange(field=c.field, previous=current.get(c.field), proposed=c.proposed)
            for c in decision.final_changes
            if current.get(c.field) != c.proposed
        ]
        if not changes:
            return  # the CRM already holds what was proposed
        source_event = f"conflict:{decision.decision_id}"
        refreshed = Proposal(
            proposal_id=Proposal.make_id(old.source.detector, old.record_id, changes, source_event),
            kind=old.kind,
            object_type=old.object_type,
            record_id=old.record_id,
            other_record_ids=old.other_record_ids,
            changes=changes,
            source=ProposalSource(**{**old.source.model_dump(), "event_id": source_event}),
            confidence=old.confidence,
            rationale=f"{old.rationale} — re-proposed: the record changed after the first proposal",
            evidence={
                **old.evidence,
                "conflict": {
                    "decision_id": str(decision.decision_id),
                    "values_at_execution": current,
                },
            },
            proposed_at=utcnow(),
        )
        request = ReviewRequest(
            proposal=refreshed,
            queue="conflicts",
            priority="high",
            routed_by=Decider(kind="system", identity=SERVICE, rule_id="compare-and-set-conflict"),
            explanation="sent back to review: the record changed after the proposal was approved",
        )
        out = make_envelope(
            request,
            service=SERVICE,
            correlation_id=refreshed.proposal_id,
            dedup_key=f"review|{refreshed.proposal_id}",
        )
        await outbox.enqueue(conn, SERVICE, self.names(Topic.PROPOSALS_PENDING), old.record_id, out)


async def main() -> None:
    settings = ExecutorSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    runtime = ServiceRuntime(SERVICE, settings)
    pool = await runtime.open_database(SERVICE)
    producer = await runtime.open_producer()
    names = TopicNames(settings.topic_prefix)
    executor = Executor(pool, names, settings.signing(SERVICE), settings.verifier(SERVICE))
    loop = ConsumerLoop(
        settings,
        "changegate-executor",
        [Subscription(Topic.DECISIONS, executor.handle, frozenset({"decision"}))],
        producer,
        runtime.stop,
    )
    relay = OutboxRelay(pool, producer, SERVICE, runtime.stop)
    runtime.checks["consumer"] = loop.has_partitions
    try:
        await runtime.run(runtime.app(), [loop.run, relay.run])
    finally:
        await producer.stop()
        await pool.close()
