"""HTTP routes of the review queue."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from changegate.core.auth import Principal, Reviewer, Role, Viewer
from changegate.core.auth.dependencies import AUTH_FAILURES
from changegate.core.contracts import DecisionOutcome, Proposal, ProposalKind
from changegate.core.http import Comment, Name, Value, problem_responses
from changegate.review_api import queue
from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

router = APIRouter(prefix="/proposals", tags=["review"], responses=problem_responses(401, 403))
MAX_OFFSET = 100_000  # deeper pages: filter by kind or queue instead

QueueStatus = Literal["pending", "approved", "approved_with_changes", "rejected", "expired", "superseded"]


class ExecutionOutcome(BaseModel):
    execution_id: uuid.UUID
    status: Literal["applied", "conflict", "failed", "noop"] = Field(
        description="applied; conflict (the record changed: re-proposed for review); failed; noop"
    )
    executed_at: datetime
    error: str | None


class ReviewItem(BaseModel):
    proposal_id: uuid.UUID
    status: QueueStatus
    queue: str
    priority: Literal["low", "normal", "high"]
    explanation: str | None = Field(None, description="why it needs a human (policy rule)")
    routed_by: dict[str, Any] | None = None
    enqueued_at: datetime
    expires_at: datetime | None
    decision_id: uuid.UUID | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    execution: ExecutionOutcome | None = Field(None, description="what the executor did, once it did")
    proposal: Proposal


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: Comment | None = None


class ModifyBody(DecisionBody):
    changes: dict[Name, Value | int | float | bool | None] = Field(
        min_length=1,
        max_length=100,
        description="field -> the value to apply instead of the proposed one (of the proposed value's type)",
    )


class DecisionResult(BaseModel):
    proposal_id: uuid.UUID
    decision_id: uuid.UUID
    outcome: DecisionOutcome
    decided_by: str


def _item(row: Any) -> ReviewItem:
    execution = (
        {
            "execution_id": row["execution_id"],
            "status": row["execution_status"],
            "executed_at": row["executed_at"],
            "error": row["execution_error"],
        }
        if row["execution_id"] is not None
        else None
    )
    return ReviewItem.model_validate({**dict(row), "proposal": row["proposal"], "execution": execution})


class QueueCount(BaseModel):
    queue: str
    kind: ProposalKind
    status: QueueStatus
    count: int
    oldest_enqueued_at: datetime


class QueueStatistics(BaseModel):
    counts: list[QueueCount] = Field(description="items by queue, kind and status, within your scopes")


@router.get("", response_model=list[ReviewItem], summary="List the review queue (within your scopes)")
async def list_proposals(
    request: Request,
    principal: Viewer,
    status_: Annotated[QueueStatus, Query(alias="status")] = "pending",
    kind: Annotated[ProposalKind | None, Query(description="only this proposal kind")] = None,
    queue_: Annotated[Name | None, Query(alias="queue", description="only this review queue")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[ReviewItem]:
    rows = await queue.list_items(
        request.app.state.pool,
        status_,
        kind.value if kind else None,
        queue_,
        limit,
        offset,
        principal.reads(),
    )
    return [_item(r) for r in rows]


@router.get(
    "/stats",
    response_model=QueueStatistics,
    summary="How many items each queue holds, by kind and status (within your scopes)",
)
async def queue_statistics(request: Request, principal: Viewer) -> QueueStatistics:
    rows = await queue.statistics(request.app.state.pool, principal.reads())
    return QueueStatistics(
        counts=[
            QueueCount(
                queue=r["queue"],
                kind=r["kind"],
                status=r["status"],
                count=r["count"],
                oldest_enqueued_at=r["oldest"],
            )
            for r in rows
        ]
    )


async def _visible_item(request: Request, principal: Principal, proposal_id: uuid.UUID) -> Any:
    """The item, if the principal's scopes let them read it; else 404, as if it did not exist."""
    row = await queue.get_item(request.app.state.pool, proposal_id)
    if row is not None and not principal.may(Role.VIEWER, queue=row["queue"], kind=row["kind"]):
        AUTH_FAILURES.labels(reason="out_of_scope").inc()
        row = None
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no proposal {proposal_id} in the queue")
    return row


@router.get(
    "/{proposal_id}",
    response_model=ReviewItem,
    summary="One proposal of the queue",
    responses=problem_responses(404),
)
async def get_proposal(request: Request, principal: Viewer, proposal_id: uuid.UUID) -> ReviewItem:
    return _item(await _visible_item(request, principal, proposal_id))


async def _decide(
    request: Request,
    principal: Principal,
    proposal_id: uuid.UUID,
    outcome: DecisionOutcome,
    comment: str | None,
    modified: dict[str, Any] | None = None,
) -> DecisionResult:
    state = request.app.state
    await state.decision_limit.check(principal.subject)
    row = await _visible_item(request, principal, proposal_id)
    if not principal.may(Role.REVIEWER, queue=row["queue"], kind=row["kind"]):
        AUTH_FAILURES.labels(reason="out_of_scope").inc()
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"your role does not cover {row['kind']} proposals in queue {row['queue']}",
        )
    proposal = Proposal.model_validate(row["proposal"])
    if outcome is not DecisionOutcome.REJECTED and principal.is_(proposal.requested_by):
        AUTH_FAILURES.labels(reason="self_approval").inc()
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "you requested this change: another reviewer must approve it"
        )
    final = None
    if modified is not None:
        try:
            final = queue.merge_modifications(proposal, modified)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    try:
        decision = await queue.decide(
            state.pool,
            state.names,
            proposal_id,
            outcome,
            principal.subject,
            comment,
            final,
            signer=state.signer,
        )
    except queue.NotPendingError as exc:
        if exc.status is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no proposal {proposal_id} in the queue") from exc
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"proposal {proposal_id} is already {exc.status}"
        ) from exc
    return DecisionResult(
        proposal_id=proposal_id,
        decision_id=decision.decision_id,
        outcome=outcome,
        decided_by=principal.subject,
    )


DECISION_ERRORS = problem_responses(404, 409, 429)


@router.post(
    "/{proposal_id}/approve",
    response_model=DecisionResult,
    summary="Approve as proposed",
    responses=DECISION_ERRORS,
)
async def approve(
    request: Request, principal: Reviewer, proposal_id: uuid.UUID, body: DecisionBody | None = None
) -> DecisionResult:
    comment = body.comment if body else None
    return await _decide(request, principal, proposal_id, DecisionOutcome.APPROVED, comment)


@router.post(
    "/{proposal_id}/reject", response_model=DecisionResult, summary="Reject", responses=DECISION_ERRORS
)
async def reject(
    request: Request, principal: Reviewer, proposal_id: uuid.UUID, body: DecisionBody | None = None
) -> DecisionResult:
    comment = body.comment if body else None
    return await _decide(request, principal, proposal_id, DecisionOutcome.REJECTED, comment)


@router.post(
    "/{proposal_id}/modify",
    response_model=DecisionResult,
    summary="Approve with changed values",
    responses=DECISION_ERRORS,
)
async def modify(
    request: Request, principal: Reviewer, proposal_id: uuid.UUID, body: ModifyBody
) -> DecisionResult:
    return await _decide(
        request, principal, proposal_id, DecisionOutcome.APPROVED_WITH_CHANGES, body.comment, body.changes
    )
