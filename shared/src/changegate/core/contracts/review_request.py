"""ReviewRequest: a proposal sent to human review, with where and how urgently to review it."""

from __future__ import annotations

from typing import Literal

from changegate.core.contracts.base import Contract, UtcDatetime
from changegate.core.contracts.decision import Decider
from changegate.core.contracts.proposal import Proposal
from changegate.core.contracts.signature import Signature
from pydantic import Field


class ReviewRequest(Contract):
    proposal: Proposal
    queue: str = Field("default", min_length=1, description="which reviewers' queue")
    priority: Literal["low", "normal", "high"] = "normal"
    expires_at: UtcDatetime | None = Field(
        None, description="undecided by then, the proposal expires (decision outcome 'expired')"
    )
    routed_by: Decider = Field(description="the policy rule (or service) that asked for review")
    explanation: str = Field(min_length=1, description="one line: why it needs a human")
    required_approvals: int = Field(
        1,
        ge=1,
        le=5,
        description="distinct reviewers who must approve before the decision is made (four-eyes: 2)",
    )
    signature: Signature | None = Field(
        None,
        description="the router's signature (policy; the executor for a conflict); review-api and the "
        "detector refuse a review request without one",
    )
