"""AuditEntry: one row of the append-only log per executed field change."""

from __future__ import annotations

import uuid
from enum import StrEnum

from changegate.core.contracts.base import Contract, PropertyValue, UtcDatetime
from changegate.core.contracts.crm_event import ObjectType
from pydantic import Field


class AuditMode(StrEnum):
    AUTO_APPLIED = "auto_applied"
    APPROVED = "approved"
    APPROVED_WITH_CHANGES = "approved_with_changes"  # a reviewer changed the proposed value


class AuditEntry(Contract):
    seq: int = Field(ge=1, description="position in the hash chain")
    object_type: ObjectType
    record_id: str
    field: str
    previous_value: PropertyValue
    new_value: PropertyValue
    source_system: str
    source_event_id: str
    detector: str
    confidence: float = Field(ge=0, le=1)
    mode: AuditMode
    approver: str = Field(description="policy:<version> when auto-applied, else the human principal")
    policy_version: str | None
    policy_hash: str | None
    rule_id: str | None
    proposal_id: uuid.UUID
    decision_id: uuid.UUID
    execution_id: uuid.UUID
    proposed_at: UtcDatetime
    decided_at: UtcDatetime
    executed_at: UtcDatetime
    proposed_value: PropertyValue = Field(
        None, description="approved_with_changes: the value first proposed (new_value is the reviewer's)"
    )
    prev_hash: str = Field(description="hash of the previous row ('' for the first)")
    hash: str = Field(description="sha256 over this row's content and prev_hash")
