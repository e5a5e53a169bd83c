"""Proposal: a change the automation wants to make, with its rationale and confidence."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from changegate.core.contracts.base import Contract, PropertyName, PropertyValue, UtcDatetime, is_empty
from changegate.core.contracts.crm_event import ObjectType
from changegate.core.contracts.signature import Signature
from pydantic import Field

# Namespace of deterministic proposal ids: the same detection always yields the same id.
PROPOSAL_NAMESPACE = uuid.UUID("6b1f0c3e-8f7d-4c65-9a43-2f1d7f0e5a10")


class ProposalKind(StrEnum):
    FIELD_UPDATE = "field_update"
    MERGE = "merge"
    LIFECYCLE_TRANSITION = "lifecycle_transition"
    OWNER_REASSIGNMENT = "owner_reassignment"
    EMAIL_VERIFICATION = "email_verification"


class Trigger(StrEnum):
    DEFINED_EVENT = "defined_event"
    AI_SCORE = "ai_score"
    RULE = "rule"
    ENRICHMENT = "enrichment"
    VERIFICATION = "verification"
    SIMILARITY = "similarity"


class FieldChange(Contract):
    field: PropertyName
    previous: PropertyValue = Field(description="the value the detector saw; compare-and-set key")
    proposed: PropertyValue

    @property
    def fills_empty(self) -> bool:
        return is_empty(self.previous)


class ProposalSource(Contract):
    system: str = Field(min_length=1, description="system the triggering event came from")
    event_id: str = Field(min_length=1, description="source event id")
    detector: str = Field(min_length=1)
    detector_version: str = Field(min_length=1)
    trigger: Trigger
    # Optional, written only when known: proposals without it read (and verify) as before.
    occurred_at: UtcDatetime | None = Field(
        None,
        exclude_if=lambda at: at is None,
        description="when the triggering event happened at its source (else when changegate received "
        "it): the start of the event-age SLI, measured at the audit row",
    )


class Proposal(Contract):
    proposal_id: uuid.UUID
    kind: ProposalKind
    object_type: ObjectType
    record_id: str = Field(min_length=1, description="the record changed (for merges: the survivor)")
    other_record_ids: list[str] = Field(
        default_factory=list, description="for merges: the records merged into record_id"
    )
    changes: list[FieldChange] = Field(min_length=1)
    source: ProposalSource
    confidence: float = Field(ge=0, le=1)
    rationale: str = Field(min_length=1)
    evidence: dict[str, Any] = Field(default_factory=dict)
    proposed_at: UtcDatetime
    requested_by: str | None = Field(
        None, max_length=256, description="who caused it (from its event); they may not approve it"
    )
    signature: Signature | None = Field(
        None,
        description="its producer's signature (the detector; the executor for a re-proposal after a "
        "conflict); policy, review-api and the executor refuse a proposal without one",
    )

    @staticmethod
    def make_id(detector: str, record_id: str, changes: list[FieldChange], source_event_id: str) -> uuid.UUID:
        """Deterministic from detector, record, change and source event: re-detection is idempotent."""
        change_key = ";".join(f"{c.field}={c.proposed!r}" for c in sorted(changes, key=lambda c: c.field))
        return uuid.uuid5(PROPOSAL_NAMESPACE, f"{detector}|{record_id}|{change_key}|{source_event_id}")
