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
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    ObjectType,
    Proposal,
    ProposalKind,
    ReviewRequest,
)
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import DbConn
from changegate.core.errors import MessageRefusedError
from changegate.core.kafka import Refusals, handle_one, screen
from changegate.core.logging import get_logger
from changegate.core.signing import SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.detector import dedup, learning, state
from changegate.detector.changelog import SERVICE, Changed, RecordFeed
from changegate.detector.matching.normalize import feature_fields
from changegate.detector.supersede import (
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


def _indexed(execution: Execution) -> bool:
    """Whether an execution wrote a property the index is made of: a write of others (an enriched
    job title) changes no replica's index, so it goes on no changelog."""
    fields = feature_fields(execution.decision.proposal.object_type.value)
    return any(w.field in fields for w in execution.writes)


class ProposalLifecycle:
    """Batch handlers: a polled batch of each topic in one transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        names: TopicNames,
        signer: SigningKey,
        verifier: Verifier,
        indexes: dedup.Indexes,
        feed: RecordFeed | None = None,
    ) -> None:
        self.pool, self.names, self.signer, self.verifier = pool, names, signer, verifier
        self.indexes, self.feed = indexes, feed

    async def on_decisions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        # A forged decision must not end a proposal's lifecycle.
        refused, decisions = screen(envelopes, self.verifier.decision)
        if decisions:
            async with self.pool.acquire() as conn, conn.transaction():
                closed = await close(conn, [(d.proposal.proposal_id, d.outcome.value) for _, d in decisions])
                await learning.record(conn, [d for _, d in decisions])
                for _, decision in decisions:
                    if (
                        decision.outcome is DecisionOutcome.REJECTED
                        and decision.proposal.kind is ProposalKind.MERGE
                    ):
                        await self._rejected(conn, decision.proposal)
            for outcome in closed:
                CLOSED.labels(outcome=outcome).inc()
        return refused

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

    async def on_executions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        """Applied executions only; the others change nothing here and are not verified."""
        applied = [(n, e) for n, e in enumerate(envelopes) if e.payload.status is ExecutionStatus.APPLIED]
        refused, executions = screen([e for _, e in applied], self.verifier.execution)
        merges = [e for _, e in executions if e.decision.proposal.kind is ProposalKind.MERGE]
        writes = [e for _, e in executions if e.decision.proposal.kind is not ProposalKind.MERGE and e.writes]
        if merges or writes:
            async with self.pool.acquire() as conn, conn.transaction():
                changed = await self._written(conn, writes) if writes else {}
                for merge in merges:
                    changed.update(await self._merged(conn, merge))
                if self.feed is not None:  # what changed, for the other replicas' indexes
                    by = {
                        (e.decision.proposal.object_type, e.decision.proposal.record_id): e.execution_id
                        for e in [*filter(_indexed, writes), *merges]
                    }
                    await outbox.enqueue_many(
                        conn,
                        SERVICE,
                        self.feed.messages(
                            [
                                Changed(ot, rid, False, "changegate", f"execution:{by[ot, rid]}")
                                for ot, rid in changed
                                if (ot, rid) in by
                            ]
                            + [
                                Changed(
                                    m.decision.proposal.object_type,
                                    rid,
                                    False,
                                    "changegate",
                                    f"execution:{m.execution_id}",
                                )
                                for m in merges
                                for rid in m.decision.proposal.other_record_ids
                            ]
                        ),
                    )
            # The index follows once the state it derives from is committed.
            for (object_type, record_id), props in changed.items():
                self.indexes.update(object_type, record_id, props)
            for merge in merges:
                self.indexes.remove(
                    merge.decision.proposal.object_type, merge.decision.proposal.other_record_ids
                )
        return {applied[n][0]: exc for n, exc in refused.items()}

    async def _written(
        self, conn: DbConn, executions: list[Execution]
    ) -> dict[tuple[ObjectType, str], dict[str, Any]]:
        """The detector's view follows what changegate wrote, without waiting for the CRM to echo
        it (the sandbox never does): the next proposal starts from the value now in the CRM."""
        return await state.apply_executed(
            conn,
            [
                (
                    e.decision.proposal.object_type,
                    e.decision.proposal.record_id,
                    {w.field: w.new for w in e.writes},
                    e.executed_at,
                )
                for e in executions
            ],
        )

    async def _merged(
        self, conn: DbConn, execution: Execution
    ) -> dict[tuple[ObjectType, str], dict[str, Any]]:
        """The merged-away records leave the state and clusters; the survivor takes the merge's
        writes, and the open changes of the records merged into it. The survivor's properties if
        the merge wrote any."""
        merge = execution.decision.proposal
        gone = merge.other_record_ids
        values = {w.field: w.new for w in execution.writes}
        await state.mark_gone(conn, merge.object_type, gone)
        await dedup.leave_clusters(conn, merge.object_type, gone)
        written = await state.apply_executed(
            conn, [(merge.object_type, merge.record_id, values, execution.executed_at)]
        )
        survivor = written.get((merge.object_type, merge.record_id))
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
        if retired:
            log.info("retired proposals of merged-away records", count=len(retired), retargeted=len(moved))
        RETARGETED.inc(len(moved))
        return written

    async def on_review_requests(self, envelopes: list[Envelope[Any]]) -> Refusals:
        """Review requests for proposals the detector did not raise (conflict re-proposals) open
        them; the others are known here already (and not verified: nothing is done with them)."""
        requests: list[ReviewRequest] = [e.payload for e in envelopes]
        refused: dict[int, MessageRefusedError] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            ids = [r.proposal.proposal_id for r in requests]
            known = {
                r["proposal_id"]
                for r in await conn.fetch(
                    "SELECT proposal_id FROM detector_open_proposals WHERE proposal_id = ANY($1::uuid[])"
                    " UNION SELECT proposal_id FROM detector_closed_proposals"
                    " WHERE proposal_id = ANY($1::uuid[])",
                    ids,
                )
            }
            for n, request in enumerate(requests):
                proposal = request.proposal
                if proposal.proposal_id in known:
                    continue  # raised here (and still open) or already decided
                try:
                    self.verifier.review_request(request)  # a forged request must not supersede real ones
                except MessageRefusedError as exc:
                    refused[n] = exc
                    continue
                known.add(proposal.proposal_id)
                retired = await supersede(conn, proposal)
                await enqueue_retirements(conn, self.names, self.signer, proposal.record_id, retired)
                OPENED.inc()
                log.info("tracking a proposal raised elsewhere", correlation_id=str(proposal.proposal_id))
        return refused

    async def on_decision(self, envelope: Envelope[Any]) -> None:
        await handle_one(self.on_decisions, envelope)

    async def on_execution(self, envelope: Envelope[Any]) -> None:
        await handle_one(self.on_executions, envelope)

    async def on_review_request(self, envelope: Envelope[Any]) -> None:
        await handle_one(self.on_review_requests, envelope)
