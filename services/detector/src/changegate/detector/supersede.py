"""A newer proposal for the same record and field supersedes the older open one: the older one is
retired with a ``superseded`` decision, so review-api takes it off the queue."""

from __future__ import annotations

import uuid

from changegate.core.contracts import Decider, Decision, DecisionOutcome, Proposal, ProposalKind
from changegate.core.contracts.base import utcnow
from changegate.core.db import DbConn

SUPERSEDE_NAMESPACE = uuid.UUID("5e3c1a2b-7d4f-4e6a-9b8c-1f2e3d4c5b6a")


async def supersede(conn: DbConn, proposal: Proposal) -> list[Decision]:
    """Record ``proposal`` as the open one for each field it changes; return decisions retiring the
    older open proposals it replaces (merges are pairwise, they are not superseded this way)."""
    if proposal.kind is ProposalKind.MERGE:
        return []
    retired: dict[uuid.UUID, Proposal] = {}
    for change in proposal.changes:
        old = await conn.fetchval(
            "SELECT proposal FROM detector_open_proposals"
            " WHERE object_type = $1 AND record_id = $2 AND field = $3 FOR UPDATE",
            proposal.object_type.value,
            proposal.record_id,
            change.field,
        )
        if old is not None and old["proposal_id"] != str(proposal.proposal_id):
            older = Proposal.model_validate(old)
            retired[older.proposal_id] = older
        await conn.execute(
            "INSERT INTO detector_open_proposals (object_type, record_id, field, proposal_id, proposal)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (object_type, record_id, field) DO UPDATE"
            " SET proposal_id = EXCLUDED.proposal_id, proposal = EXCLUDED.proposal",
            proposal.object_type.value,
            proposal.record_id,
            change.field,
            proposal.proposal_id,
            proposal.model_dump(mode="json"),
        )
    return [
        Decision(
            decision_id=uuid.uuid5(SUPERSEDE_NAMESPACE, f"{older.proposal_id}|{proposal.proposal_id}"),
            proposal=older,
            outcome=DecisionOutcome.SUPERSEDED,
            decided_by=Decider(kind="system", identity="detector"),
            decided_at=utcnow(),
            explanation=f"superseded by {proposal.proposal_id} (event {proposal.source.event_id})",
        )
        for older in retired.values()
    ]
