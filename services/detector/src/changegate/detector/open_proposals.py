"""Following a proposal to the end of its lifecycle, from the topics where it ends: every decision
closes its proposal (it can no longer be superseded); a review request for a proposal the detector
did not raise — the executor's re-proposal after a compare-and-set conflict — opens it like any
detected one (it may supersede, and be superseded); an applied merge takes the records it merged
away out of the detector's state, index and clusters, and retires their open proposals — the CRM's
own merge webhook may come later, or never (the sandbox sends none)."""

from __future__ import annotations

from typing import Any

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import Execution, ExecutionStatus, ObjectType, ProposalKind, ReviewRequest
from changegate.core.contracts.envelope import Envelope
from changegate.core.db import DbConn
from changegate.core.errors import MessageRefusedError
from changegate.core.kafka import Refusals, handle_one, screen
from changegate.core.logging import get_logger
from changegate.core.signing import SigningKey, Verifier
from changegate.core.topics import TopicNames
from changegate.detector import dedup, state
from changegate.detector.changelog import SERVICE, Changed, RecordFeed
from changegate.detector.supersede import close, enqueue_retirements, retire_merged_away, supersede
from prometheus_client import Counter

log = get_logger(__name__)
CLOSED = Counter(
    "changegate_detector_proposals_closed_total", "Open proposals closed, by outcome", ["outcome"]
)
OPENED = Counter(
    "changegate_detector_proposals_reopened_total",
    "Proposals raised elsewhere (conflict re-proposals) tracked as open",
)

GROUP = "changegate-detector-lifecycle"


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
            for outcome in closed:
                CLOSED.labels(outcome=outcome).inc()
        return refused

    async def on_executions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        """Applied executions only; the others change nothing here and are not verified."""
        applied = [(n, e) for n, e in enumerate(envelopes) if e.payload.status is ExecutionStatus.APPLIED]
        refused, executions = screen([e for _, e in applied], self.verifier.execution)
        merges = [e for _, e in executions if e.decision.proposal.kind is ProposalKind.MERGE]
        writes = [e for _, e in executions if e.decision.proposal.kind is not ProposalKind.MERGE and e.writes]
        if merges or writes:
            async with self.pool.acquire() as conn, conn.transaction():
                changed = await self._written(conn, writes) if writes else {}
                gone = [await self._merged(conn, m) for m in merges]
                if self.feed is not None:  # what changed, for the other replicas' indexes
                    source = {e.decision.proposal.record_id: e for e in writes}
                    await outbox.enqueue_many(
                        conn,
                        SERVICE,
                        self.feed.messages(
                            [
                                Changed(ot, rid, False, "changegate", f"execution:{source[rid].execution_id}")
                                for ot, rid in changed
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
            for object_type, ids in gone:
                self.indexes.remove(object_type, ids)
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

    async def _merged(self, conn: DbConn, execution: Execution) -> tuple[ObjectType, list[str]]:
        merge = execution.decision.proposal
        gone = merge.other_record_ids
        await state.mark_gone(conn, merge.object_type, gone)
        await dedup.leave_clusters(conn, merge.object_type, gone)
        retired = await retire_merged_away(conn, merge)
        await enqueue_retirements(conn, self.names, self.signer, merge.record_id, retired)
        if retired:
            log.info("retired proposals of merged-away records", count=len(retired))
        return merge.object_type, gone

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
