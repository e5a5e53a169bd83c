"""Following a proposal to the end of its lifecycle, from the topics where it ends: every decision
closes its proposal (it can no longer be superseded); a review request for a proposal the detector
did not raise — the executor's re-proposal after a compare-and-set conflict — opens it like any
detected one (it may supersede, and be superseded); a rejected merge makes its records different
entities for good (they never join one cluster again); an applied merge takes the records it merged
away out of the detector's state, index and clusters, and moves their open field changes to the
survivor (proposed again with the survivor's values as ``previous``) — the CRM's own merge webhook
may come later, or never (the sandbox sends none)."""

from __future__ import annotations

from typing import Any

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import (
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    Proposal,
    ProposalKind,
    ReviewRequest,
)
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import DbConn
from changegate.core.logging import get_logger
from changegate.core.signing import SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.detector import dedup, state
from changegate.detector.supersede import (
    SERVICE,
    close,
    enqueue_retirements,
    retarget,
    retire_merged_away,
    retire_merges_naming,
    supersede,
)
from prometheus_client import Counter

log = get_logger(__name__)
CLOSED = Counter(
    "changegate_detector_proposals_closed_total", "Open proposals closed, by outcome", ["outcome"]
)
OPENED = Counter(
    "changegate_detector_proposals_reopened_total",
    "Proposals raised elsewhere (conflict re-proposals) tracked as open",
)

DISTINCT = Counter(
    "changegate_detector_rejected_merges_total",
    "Rejected merges whose records are remembered as different entities",
)
RETARGETED = Counter(
    "changegate_detector_retargeted_total",
    "Open changes of merged-away records proposed again for the survivor",
)

GROUP = "changegate-detector-lifecycle"


class ProposalLifecycle:
    def __init__(
        self,
        pool: asyncpg.Pool,
        names: TopicNames,
        signer: SigningKey,
        verifier: Verifier,
        indexes: dedup.Indexes,
    ) -> None:
        self.pool, self.names, self.signer, self.verifier = pool, names, signer, verifier
        self.indexes = indexes

    async def on_decision(self, envelope: Envelope[Any]) -> None:
        decision: Decision = envelope.payload
        self.verifier.decision(decision)  # a forged decision must not end a proposal's lifecycle
        proposal = decision.proposal
        async with self.pool.acquire() as conn, conn.transaction():
            if await close(conn, proposal.proposal_id, decision.outcome.value):
                CLOSED.labels(outcome=decision.outcome.value).inc()
            if decision.outcome is DecisionOutcome.REJECTED and proposal.kind is ProposalKind.MERGE:
                await self._rejected(conn, proposal)

    async def _rejected(self, conn: DbConn, merge: Proposal) -> None:
        """Its records are different entities, pair by pair, for good: the clusters holding them
        dissolve (their other records cluster again as events arrive, never two of these together)
        and open merges naming any of their records are retired."""
        dissolved = await dedup.record_distinct(conn, merge)
        members = sorted({merge.record_id, *merge.other_record_ids, *dissolved})
        retired = await retire_merges_naming(
            conn,
            merge.object_type,
            members,
            f"rejected|{merge.proposal_id}",
            f"a reviewer rejected merge {merge.proposal_id}: its records are different entities",
        )
        await enqueue_retirements(conn, self.names, self.signer, merge.record_id, retired)
        DISTINCT.inc()

    async def on_execution(self, envelope: Envelope[Any]) -> None:
        execution: Execution = envelope.payload
        if execution.status is not ExecutionStatus.APPLIED:
            return
        self.verifier.execution(execution)
        if execution.decision.proposal.kind is ProposalKind.MERGE:
            await self._merged(execution)
        elif execution.writes:
            await self._written(execution)

    async def _written(self, execution: Execution) -> None:
        """The detector's view follows what changegate wrote, without waiting for the CRM to echo
        it (the sandbox never does): the next proposal starts from the value now in the CRM."""
        proposal = execution.decision.proposal
        values = {w.field: w.new for w in execution.writes}
        async with self.pool.acquire() as conn:
            props = await state.apply_executed(
                conn, proposal.object_type, proposal.record_id, values, execution.executed_at
            )
        if props is not None:
            self.indexes.update(proposal.object_type, proposal.record_id, props)

    async def _merged(self, execution: Execution) -> None:
        merge = execution.decision.proposal
        gone = merge.other_record_ids
        values = {w.field: w.new for w in execution.writes}
        async with self.pool.acquire() as conn, conn.transaction():
            await state.mark_gone(conn, merge.object_type, gone)
            await dedup.leave_clusters(conn, merge.object_type, gone)
            survivor = await state.apply_executed(
                conn, merge.object_type, merge.record_id, values, execution.executed_at
            )
            if survivor is None:
                survivor = await state.record_properties(conn, merge.object_type, merge.record_id)
            retired = await retire_merged_away(conn, merge)
            moved = await retarget(conn, merge, retired, survivor)
            await enqueue_retirements(conn, self.names, self.signer, merge.record_id, retired)
            for unsigned in moved:
                proposal = self.signer.sign(unsigned)  # its old signature covered the old record
                replaced = await supersede(conn, proposal)  # the survivor's older open ones
                await enqueue_retirements(conn, self.names, self.signer, merge.record_id, replaced)
                envelope = make_envelope(
                    proposal,
                    service=SERVICE,
                    correlation_id=proposal.proposal_id,
                    dedup_key=str(proposal.proposal_id),
                )
                await outbox.enqueue(conn, SERVICE, self.names(Topic.PROPOSALS), proposal.record_id, envelope)
        self.indexes.remove(merge.object_type, gone)
        if values:
            self.indexes.update(merge.object_type, merge.record_id, survivor)
        if retired:
            log.info("retired proposals of merged-away records", count=len(retired), retargeted=len(moved))
        RETARGETED.inc(len(moved))

    async def on_review_request(self, envelope: Envelope[Any]) -> None:
        request: ReviewRequest = envelope.payload
        self.verifier.review_request(request)  # a forged request must not supersede real proposals
        proposal = request.proposal
        async with self.pool.acquire() as conn, conn.transaction():
            known = await conn.fetchval(
                "SELECT 1 FROM detector_open_proposals WHERE proposal_id = $1 UNION ALL"
                " SELECT 1 FROM detector_closed_proposals WHERE proposal_id = $1 LIMIT 1",
                proposal.proposal_id,
            )
            if known:
                return  # raised here (and still open) or already decided
            retired = await supersede(conn, proposal)
            await enqueue_retirements(conn, self.names, self.signer, proposal.record_id, retired)
        OPENED.inc()
        log.info("tracking a proposal raised elsewhere", correlation_id=str(proposal.proposal_id))
