"""AuditEntry: one row of the append-only log per field of every outcome (executed or not)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from changegate.core.contracts.base import Contract, PropertyValue, UtcDatetime
from changegate.core.contracts.crm_event import ObjectType
from changegate.core.contracts.signature import Signature
from pydantic import Field


class AuditMode(StrEnum):
    AUTO_APPLIED = "auto_applied"
    APPROVED = "approved"
    APPROVED_WITH_CHANGES = "approved_with_changes"  # a reviewer changed the proposed value
    # Outcomes that changed nothing in the CRM: decided against, or stopped at execution.
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    CONFLICT = "conflict"  # the CRM value changed since the proposal: compare-and-set refused
    FAILED = "failed"
    NOOP = "noop"  # the CRM already held the value

    @property
    def applied(self) -> bool:
        """Whether the row's new value was written to the CRM."""
        return self in APPLIED_MODES


APPLIED_MODES = frozenset({AuditMode.AUTO_APPLIED, AuditMode.APPROVED, AuditMode.APPROVED_WITH_CHANGES})


class AuditEntry(Contract):
    seq: int = Field(ge=1, description="position in the hash chain")
    hash_version: int = Field(
        1, ge=1, le=2, description="1: legacy json.dumps form; 2: RFC 8785 canonical JSON (docs/audit.md)"
    )
    object_type: ObjectType
    record_id: str
    kind: str | None = Field(None, description="the proposal's kind (field_update, merge, ...); v2 rows")
    field: str
    previous_value: PropertyValue = Field(description="the value before (for conflicts: found in the CRM)")
    new_value: PropertyValue = Field(
        description="the value written; for an outcome that wrote nothing, the value that was proposed"
    )
    source_system: str
    source_event_id: str
    detector: str
    confidence: float = Field(ge=0, le=1)
    mode: AuditMode = Field(description="the outcome: applied (auto or by a human) or why not")
    decider: str | None = Field(None, description="policy, human or system (who decided); v2 rows")
    approver: str = Field(description="policy:<version> when decided by policy, else the principal")
    policy_version: str | None
    policy_hash: str | None
    rule_id: str | None
    reason: str | None = Field(
        None, description="why: the decision's explanation and comment, or the execution's error; v2 rows"
    )
    proposal_id: uuid.UUID
    decision_id: uuid.UUID
    execution_id: uuid.UUID | None = Field(description="none for outcomes decided without execution")
    reverts_seq: int | None = Field(None, ge=1, description="the entry this change reverts, if a revert")
    proposed_at: UtcDatetime
    decided_at: UtcDatetime
    executed_at: UtcDatetime | None
    proposed_value: PropertyValue = Field(
        None, description="approved_with_changes: the value first proposed (new_value is the reviewer's)"
    )
    prev_hash: str = Field(description="hash of the previous row ('' for the first)")
    hash: str = Field(description="sha256 over this row's content and prev_hash (docs/audit.md)")


class AuditCheckpoint(Contract):
    """A signed head of the chain: the audit service verified the chain up to ``seq`` and vouches
    for the hash there. Published on audit.checkpoints; a chain rewritten and recomputed afterwards
    no longer carries ``hash`` at ``seq``."""

    seq: int = Field(ge=1, description="the row it covers (and every row before it)")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="the hash of row seq")
    previous_seq: int = Field(ge=0, description="the checkpoint before it (0: none)")
    signed_at: UtcDatetime
    signature: Signature | None = Field(None, description="the audit service's Ed25519 signature")
