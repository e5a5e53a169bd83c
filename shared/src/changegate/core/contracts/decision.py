"""Decision: what the policy or a human reviewer decided about a proposal."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from changegate.core.contracts.base import Contract, UtcDatetime
from changegate.core.contracts.proposal import FieldChange, Proposal
from changegate.core.contracts.signature import Signature
from pydantic import Field, model_validator

DECISION_NAMESPACE = uuid.UUID("0d5b7a5e-2c1b-4f0e-8d39-7a4f1b2c9e61")


class DecisionOutcome(StrEnum):
    AUTO_APPROVED = "auto_approved"
    APPROVED = "approved"
    APPROVED_WITH_CHANGES = "approved_with_changes"
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"

    @property
    def executes(self) -> bool:
        """Only these outcomes may reach the CRM."""
        return self in EXECUTABLE_OUTCOMES


EXECUTABLE_OUTCOMES = frozenset(
    {DecisionOutcome.AUTO_APPROVED, DecisionOutcome.APPROVED, DecisionOutcome.APPROVED_WITH_CHANGES}
)


class Decider(Contract):
    kind: Literal["policy", "human", "system"]
    identity: str = Field(
        min_length=1,
        description="policy: 'policy:<version>'; human: the authenticated principal; system: service",
    )
    policy_version: str | None = None
    policy_hash: str | None = Field(None, description="sha256 of the policy file's content")
    rule_id: str | None = None

    @model_validator(mode="after")
    def _policy_fields(self) -> Decider:
        if self.kind == "policy" and not (self.policy_hash and self.rule_id and self.policy_version):
            raise ValueError("a policy decision names the policy version, hash and rule id")
        return self


class Decision(Contract):
    decision_id: uuid.UUID
    proposal: Proposal
    outcome: DecisionOutcome
    decided_by: Decider
    decided_at: UtcDatetime
    explanation: str = Field(min_length=1, description="one line: why this outcome")
    comment: str | None = None
    final_changes: list[FieldChange] = Field(
        default_factory=list, description="the changes to apply (empty unless the outcome executes)"
    )
    signature: Signature | None = Field(
        None, description="the deciding service's signature; executor and audit refuse a decision without one"
    )

    @model_validator(mode="after")
    def _changes_match_outcome(self) -> Decision:
        if self.outcome.executes and not self.final_changes:
            raise ValueError(f"outcome {self.outcome} needs final_changes")
        if not self.outcome.executes and self.final_changes:
            raise ValueError(f"outcome {self.outcome} must not carry final_changes")
        return self

    @staticmethod
    def policy_decision_id(proposal_id: uuid.UUID, policy_hash: str) -> uuid.UUID:
        """The same proposal under the same policy always yields the same decision."""
        return uuid.uuid5(DECISION_NAMESPACE, f"{proposal_id}|{policy_hash}")
