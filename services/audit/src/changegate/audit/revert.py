"""Undo through the gate: a revert of an applied entry is a new proposal that restores the value
the entry overwrote, compare-and-set against the value the entry wrote, signed by audit and sent
straight to human review (never to the policy: a revert is never auto-applied). Its execution is
audited like any other, with ``reverts_seq`` naming the entry it undoes.

A merge cannot be undone in HubSpot (the merged-away records are gone): the answer says so and
offers the merged-away records' last values the detector showed the reviewer, for a human to
re-create them if they decide to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg
from changegate.audit.chain import row_to_entry
from changegate.audit.store import REVERTS_KEY
from changegate.core import __version__, outbox
from changegate.core.contracts import (
    APPLIED_MODES,
    Decider,
    FieldChange,
    Proposal,
    ProposalKind,
    ProposalSource,
    ReviewRequest,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import Queryable, claim_event
from changegate.core.signing import REVERT_PREFIX, SigningKey
from changegate.core.topics import Topic, TopicNames

SERVICE = "audit"
DETECTOR = "audit-revert"
QUEUE = "reverts"


class RevertRefusedError(Exception):
    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


@dataclass(frozen=True)
class Reverting:
    proposal: Proposal
    queued: bool  # False: the same revert was asked for before (one proposal per entry)


async def _merged_away(conn: Queryable, decision_id: Any) -> list[dict[str, Any]]:
    """The merged-away records' values as the merge proposal showed them (its evidence)."""
    text = await conn.fetchval(
        "SELECT decision::text FROM audit_decisions WHERE decision_id = $1", decision_id
    )
    if text is None:
        return []
    proposal = json.loads(text).get("proposal", {})
    members = proposal.get("evidence", {}).get("members", {})
    return [
        {"record_id": rid, "last_known_values": members.get(rid, {})}
        for rid in proposal.get("other_record_ids", [])
    ]


async def revert(
    pool: asyncpg.Pool,
    names: TopicNames,
    signer: SigningKey,
    seq: int,
    requested_by: str,
    comment: str | None,
) -> Reverting:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT * FROM audit_entries WHERE seq = $1", seq)
        if row is None:
            raise RevertRefusedError(404, f"no audit entry {seq}")
        entry = row_to_entry(row)
        if entry.mode not in APPLIED_MODES:
            raise RevertRefusedError(
                409, f"entry {seq} is {entry.mode.value}: it wrote nothing, so there is nothing to revert"
            )
        if entry.kind == ProposalKind.MERGE.value or (
            entry.kind is None and await _is_merge(conn, entry.decision_id)
        ):
            raise RevertRefusedError(
                409,
                "a merge cannot be reverted: HubSpot keeps no merged-away record to restore (their ids "
                "now resolve to the survivor). Re-create them by hand from their last known values if "
                "you decide to; the survivor keeps the merged history.",
                merged_away=await _merged_away(conn, entry.decision_id),
            )
        kind = ProposalKind(entry.kind) if entry.kind else ProposalKind.FIELD_UPDATE
        # Compare-and-set against the value we wrote: if the record changed since, it is a conflict.
        changes = [FieldChange(field=entry.field, previous=entry.new_value, proposed=entry.previous_value)]
        event_id = f"{REVERT_PREFIX}{seq}"
        why = f" ({comment})" if comment else ""
        proposal = Proposal(
            proposal_id=Proposal.make_id(DETECTOR, entry.record_id, changes, event_id),
            kind=kind,
            object_type=entry.object_type,
            record_id=entry.record_id,
            changes=changes,
            source=ProposalSource(
                system="changegate-audit",
                event_id=event_id,
                detector=DETECTOR,
                detector_version=__version__,
                trigger=Trigger.RULE,
            ),
            confidence=1.0,  # what the field held before is on the record: entry {seq}
            rationale=f"revert of audit entry {seq} ({entry.mode.value} by {entry.approver}): "
            f"{entry.field} back from {entry.new_value!r} to {entry.previous_value!r}, as asked by "
            f"{requested_by}{why}",
            evidence={
                REVERTS_KEY: seq,
                "reverts": {
                    "seq": seq,
                    "hash": entry.hash,
                    "mode": entry.mode.value,
                    "approver": entry.approver,
                    "proposal_id": str(entry.proposal_id),
                    "executed_at": entry.executed_at.isoformat() if entry.executed_at else None,
                },
            },
            proposed_at=utcnow(),
            requested_by=requested_by,  # who asked may not approve it
        )
        proposal = signer.sign(proposal)
        request = signer.sign(
            ReviewRequest(
                proposal=proposal,
                queue=QUEUE,
                priority="high",
                routed_by=Decider(kind="system", identity=SERVICE, rule_id="revert-needs-a-human"),
                explanation="a revert is always decided by a human",
            )
        )
        claimed = await claim_event(conn, "audit-reverts", proposal.proposal_id)
        if claimed:
            envelope = make_envelope(
                request,
                service=SERVICE,
                correlation_id=proposal.proposal_id,
                dedup_key=f"review|{proposal.proposal_id}",
            )
            await outbox.enqueue(conn, SERVICE, names(Topic.PROPOSALS_PENDING), entry.record_id, envelope)
    return Reverting(proposal, claimed)


async def _is_merge(conn: Queryable, decision_id: Any) -> bool:
    kind = await conn.fetchval(
        "SELECT decision->'proposal'->>'kind' FROM audit_decisions WHERE decision_id = $1", decision_id
    )
    return bool(kind == ProposalKind.MERGE.value)
