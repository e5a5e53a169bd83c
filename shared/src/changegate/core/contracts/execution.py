"""Execution: what the executor did in the CRM for one decision."""

from __future__ import annotations

import uuid
from enum import StrEnum

from changegate.core.contracts.base import Contract, PropertyValue, UtcDatetime
from changegate.core.contracts.decision import Decision
from changegate.core.contracts.signature import Signature
from pydantic import Field

EXECUTION_NAMESPACE = uuid.UUID("a3c4e2f1-5b6d-4e7f-8a9b-0c1d2e3f4a5b")


class ExecutionStatus(StrEnum):
    APPLIED = "applied"
    CONFLICT = "conflict"
    FAILED = "failed"
    NOOP = "noop"


class FieldWrite(Contract):
    field: str
    expected: PropertyValue = Field(description="the proposal's previous value (compare-and-set key)")
    overwritten: PropertyValue = Field(description="the value actually in the CRM before the write")
    new: PropertyValue


class Execution(Contract):
    execution_id: uuid.UUID
    decision: Decision
    status: ExecutionStatus
    writes: list[FieldWrite] = Field(default_factory=list)
    crm_target: str = Field(description="the CRM adapter that executed it, e.g. sandbox")
    crm_response_ids: list[str] = Field(default_factory=list)
    attempts: int = Field(1, ge=1)
    error: str | None = None
    merged_into: str | None = Field(
        None, description="for merges: the record the merged ids now resolve to (a new id in HubSpot)"
    )
    executed_at: UtcDatetime
    signature: Signature | None = Field(
        None, description="the executor's signature; audit refuses one without"
    )

    @staticmethod
    def make_id(decision_id: uuid.UUID) -> uuid.UUID:
        """One execution per decision."""
        return uuid.uuid5(EXECUTION_NAMESPACE, str(decision_id))
