"""Executing a decision: exactly once, compare-and-set, against whichever CRM the adapter speaks to.

Per decision: verify it (signed by a service that may make it; merges and owner changes decided by
a human), record the intent in the ledger, execute through the adapter (reading first when an
earlier attempt may have written), then mark it done and emit the signed Execution — and, on a
conflict, the refreshed proposal for review — in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
from changegate.core import field_risk, outbox
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
from changegate.core.contracts.base import PropertyValue, utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import DbConn
from changegate.core.errors import MessageRefusedError
from changegate.core.logging import get_logger
from changegate.core.policy_versions import RecordedPolicies
from changegate.core.signing import REPROPOSAL_PREFIX, SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.executor import ledger
from changegate.executor.crm.breaker import Breaker
from changegate.executor.crm.port import (
    CrmAdapter,
    CrmRefusedError,
    OwnerStatus,
    RecordNotFoundError,
    WriteResult,
    WriteStatus,
)
from changegate.executor.crm.values import same
from prometheus_client import Counter, Histogram

SERVICE = "executor"
log = get_logger(__name__)
# Set by the CRM when records merge (read-only in HubSpot): reported, never written.
MERGE_BOOKKEEPING = frozenset({"hs_merged_object_ids"})
OWNER_FIELD = "hubspot_owner_id"

EXECUTIONS = Counter("changegate_executions_total", "Executions by status", ["status"])
SKIPPED = Counter(
    "changegate_executor_skipped_decisions_total", "Decisions that do not execute, by outcome", ["outcome"]
)
REFUSED = Counter(
    "changegate_executor_refused_decisions_total",
    "Decisions refused whatever their signature, by reason",
    ["reason"],
)
REDELIVERED = Counter(
    "changegate_executor_redelivered_total", "Decisions already executed: acknowledged without a second write"
)
DECISION_SECONDS = Histogram(
    "changegate_executor_decision_duration_seconds",
    "Time to carry out one decision in the CRM, every request and retry included",
    ["target"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10),
)


def require_human(decision: Decision) -> None:
    """Defence in depth: whatever the policy said and whoever signed, a change the field-risk table
    gives to a human (an owner, an email, an erased value, a merge) executes on a human's approval
    only. MessageRefusedError (dead-lettered, counted) otherwise."""
    why = field_risk.table().human_reasons(decision.proposal.kind, decision.final_changes)
    if why and decision.decided_by.kind != "human":
        REFUSED.labels(reason="not_decided_by_a_human").inc()
        raise MessageRefusedError(
            "not_decided_by_a_human",
            f"{'; '.join(why)}: executes on a human's approval only, not a {decision.decided_by.kind}'s",
        )


@dataclass
class Outcome:
    status: ExecutionStatus
    writes: list[FieldWrite] = field(default_factory=list)
    current: dict[str, PropertyValue] = field(default_factory=dict)
    response_ids: list[str] = field(default_factory=list)
    error: str | None = None
    merged_into: str | None = None


class Executor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        names: TopicNames,
        signer: SigningKey,
        verifier: Verifier,
        crm: CrmAdapter,
        breaker: Breaker,
    ) -> None:
        self.pool, self.names, self.signer, self.verifier = pool, names, signer, verifier
        self.crm, self.breaker = crm, breaker
        self.policies = RecordedPolicies(pool)

    async def handle(self, envelope: Envelope[Any]) -> None:
        decision: Decision = envelope.payload
        self.verifier.decision(decision)  # only what a trusted service may decide, signed by it
        proposal = decision.proposal
        if not decision.outcome.executes:
            SKIPPED.labels(outcome=decision.outcome.value).inc()
            return  # nothing executes without an approving decision
        require_human(decision)
        await self.policies.check(decision)  # a version the policy service loaded and recorded
        async with self.pool.acquire() as conn:
            entry = await ledger.open_entry(conn, decision, self.crm.target)
        if entry.done:
            REDELIVERED.inc()
            log.info("decision already executed", decision_id=str(decision.decision_id))
            return
        with DECISION_SECONDS.labels(target=self.crm.target).time():
            outcome = await self._execute(decision, entry)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await ledger.finish(conn, decision.decision_id, outcome.status.value):
                return  # another replica finished it and emitted the execution
            execution = Execution(
                execution_id=Execution.make_id(decision.decision_id),
                decision=decision,
                status=outcome.status,
                writes=outcome.writes,
                crm_target=self.crm.target,
                crm_response_ids=outcome.response_ids,
                attempts=entry.attempts,
                error=outcome.error,
                merged_into=outcome.merged_into,
                executed_at=utcnow(),
            )
            out = make_envelope(
                self.signer.sign(execution),
                service=SERVICE,
                correlation_id=proposal.proposal_id,
                dedup_key=str(execution.execution_id),
            )
            await outbox.enqueue(conn, SERVICE, self.names(Topic.EXECUTIONS), proposal.record_id, out)
            if outcome.status is ExecutionStatus.CONFLICT:
                await self._back_to_review(conn, decision, outcome.current)
        EXECUTIONS.labels(status=outcome.status.value).inc()
        log.info("executed", status=outcome.status.value, record_id=proposal.record_id, error=outcome.error)

    async def _execute(self, decision: Decision, entry: ledger.Entry) -> Outcome:
        proposal = decision.proposal
        try:
            if proposal.kind is ProposalKind.MERGE:
                return await self._merge(decision, entry)
            owner = next((c.proposed for c in decision.final_changes if c.field == OWNER_FIELD), None)
            if owner is not None:
                status = await self.breaker.call(lambda: self.crm.owner_status(str(owner)))
                if status is not OwnerStatus.ACTIVE:
                    return Outcome(
                        ExecutionStatus.FAILED, error=f"owner {owner} is {status.value}: not assigned"
                    )
            return await self._write(decision, entry, proposal.record_id, decision.final_changes)
        except RecordNotFoundError as exc:
            return Outcome(ExecutionStatus.FAILED, error=str(exc))
        except CrmRefusedError as exc:
            raise MessageRefusedError("crm_refused", str(exc)) from exc

    async def _write(
        self, decision: Decision, entry: ledger.Entry, record_id: str, changes: list[FieldChange]
    ) -> Outcome:
        object_type = decision.proposal.object_type
        changes = [c for c in changes if c.field not in MERGE_BOOKKEEPING]
        if entry.resumed:
            # An earlier attempt may have written: the CRM says whether it did, never a second write.
            states = await self.breaker.call(
                lambda: self.crm.read(object_type, [record_id], [c.field for c in changes])
            )
            state = states.get(record_id)
            if state is None:
                raise RecordNotFoundError(f"{object_type.value} {record_id} is gone")
            if all(same(c.field, state.properties.get(c.field), c.proposed) for c in changes):
                observed = entry.observed or {}
                held = all(same(c.field, observed.get(c.field), c.proposed) for c in changes)
                writes = [
                    FieldWrite(
                        field=c.field, expected=c.previous, overwritten=observed.get(c.field), new=c.proposed
                    )
                    for c in changes
                ]
                return Outcome(ExecutionStatus.NOOP if held else ExecutionStatus.APPLIED, writes)

        async def observe(current: dict[str, PropertyValue]) -> None:
            async with self.pool.acquire() as conn:
                await ledger.observe(conn, decision.decision_id, current)

        result: WriteResult = await self.breaker.call(
            lambda: self.crm.write(object_type, record_id, changes, before_write=observe)
        )
        status = {
            WriteStatus.APPLIED: ExecutionStatus.APPLIED,
            WriteStatus.NOOP: ExecutionStatus.NOOP,
            WriteStatus.CONFLICT: ExecutionStatus.CONFLICT,
        }[result.status]
        error = f"changed since proposed: {', '.join(result.conflicts)}" if result.conflicts else result.note
        return Outcome(status, result.writes, result.current, result.response_ids, error)

    async def _merge(self, decision: Decision, entry: ledger.Entry) -> Outcome:
        proposal = decision.proposal
        object_type, survivor, losers = proposal.object_type, proposal.record_id, proposal.other_record_ids
        if entry.resumed:
            states = await self.breaker.call(lambda: self.crm.read(object_type, [survivor, *losers], []))
            target = states.get(survivor)
            if target and all(states.get(x) and states[x].record_id == target.record_id != x for x in losers):
                return Outcome(
                    ExecutionStatus.APPLIED, self._merge_writes(decision, {}), merged_into=target.record_id
                )
        # The survivorship fills first (a compare-and-set on the survivor), then the merge itself.
        filled = await self._write(decision, entry, survivor, decision.final_changes)
        if filled.status is ExecutionStatus.CONFLICT:
            return filled
        if not filled.writes:
            async with self.pool.acquire() as conn:  # no fills: still, the CRM is about to change
                await ledger.observe(conn, decision.decision_id, {})
        merged = await self.breaker.call(lambda: self.crm.merge(object_type, survivor, losers))
        return Outcome(
            ExecutionStatus.APPLIED,
            self._merge_writes(decision, {w.field: w for w in filled.writes}),
            response_ids=filled.response_ids + merged.response_ids,
            merged_into=merged.merged_id,
        )

    @staticmethod
    def _merge_writes(decision: Decision, filled: dict[str, FieldWrite]) -> list[FieldWrite]:
        """What the audit log records of a merge: every fill, and the merged ids."""
        writes = []
        for c in decision.final_changes:
            write = filled.get(c.field)
            writes.append(
                write
                or FieldWrite(field=c.field, expected=c.previous, overwritten=c.previous, new=c.proposed)
            )
        return writes

    async def _back_to_review(self, conn: DbConn, decision: Decision, current: dict[str, Any]) -> None:
        """A stale proposal never overwrites: re-propose it against the value the CRM holds now."""
        old = decision.proposal
        changes = [
            FieldChange(field=c.field, previous=current.get(c.field), proposed=c.proposed)
            for c in decision.final_changes
            if c.field in current and not same(c.field, current.get(c.field), c.proposed)
        ]
        if not changes:
            return  # the CRM already holds what was proposed
        source_event = f"{REPROPOSAL_PREFIX}{decision.decision_id}"
        refreshed = Proposal(
            proposal_id=Proposal.make_id(old.source.detector, old.record_id, changes, source_event),
            kind=old.kind,
            object_type=old.object_type,
            record_id=old.record_id,
            other_record_ids=old.other_record_ids,
            changes=changes,
            source=ProposalSource(**{**old.source.model_dump(), "event_id": source_event}),
            confidence=old.confidence,
            rationale=_reproposal_rationale(old, changes),
            evidence={
                **old.evidence,
                "conflict": {"decision_id": str(decision.decision_id), "values_at_execution": current},
            },
            proposed_at=utcnow(),
            requested_by=old.requested_by,
        )
        refreshed = self.signer.sign(refreshed)  # review-api accepts the executor's re-proposals only
        request = ReviewRequest(
            proposal=refreshed,
            queue="conflicts",
            priority="high",
            routed_by=Decider(kind="system", identity=SERVICE, rule_id="compare-and-set-conflict"),
            explanation="sent back to review: the record changed after the proposal was approved",
        )
        out = make_envelope(
            self.signer.sign(request),
            service=SERVICE,
            correlation_id=refreshed.proposal_id,
            dedup_key=f"review|{refreshed.proposal_id}",
        )
        await outbox.enqueue(conn, SERVICE, self.names(Topic.PROPOSALS_PENDING), old.record_id, out)


def _reproposal_rationale(old: Proposal, changes: list[FieldChange]) -> str:
    """A re-proposal explains its own values: what the record holds now and what is still
    proposed, then why it was first proposed (whose values are no longer the record's)."""
    now = "; ".join(f"{c.field} now holds {c.previous!r}, still proposed {c.proposed!r}" for c in changes)
    return (
        f"re-proposed because the record changed after the first proposal was approved: {now}. "
        f"First proposed because: {old.rationale}"
    )[:10_000]
