"""What review-api consumes into PostgreSQL: pending proposals (the queue), decisions made elsewhere
and executions, so any proposal can be read (deciding is decisions.py); expiry and queue gauges."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from changegate.core.contracts import (
    Decision,
    Execution,
    FieldChange,
    Proposal,
    ReviewRequest,
)
from changegate.core.db import Queryable
from changegate.review_api import metrics

SERVICE = "review-api"


async def enqueue(conn: Queryable, request: ReviewRequest) -> bool:
    """Insert a pending proposal; False if it was already queued (redelivery)."""
    proposal = request.proposal
    inserted = await conn.fetchval(
        "INSERT INTO review_queue (proposal_id, kind, object_type, record_id, confidence, proposal,"
        " queue, priority, expires_at, routed_by, explanation, required_approvals)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (proposal_id) DO NOTHING RETURNING 1",
        proposal.proposal_id,
        proposal.kind.value,
        proposal.object_type.value,
        proposal.record_id,
        proposal.confidence,
        proposal.model_dump(mode="json"),
        request.queue,
        request.priority,
        request.expires_at,
        request.routed_by.model_dump(mode="json"),
        request.explanation,
        request.required_approvals,
    )
    return inserted is not None


# The columns a decision fills, in the order of _DECISION_VALUES.
_DECISION_COLUMNS = (
    "proposal_id, kind, object_type, record_id, confidence, proposal, status, decision_id, decided_by,"
    " decided_at, comment, decider, decision_explanation, final_changes"
)


def _decision_values(decision: Decision) -> tuple[Any, ...]:
    proposal = decision.proposal
    return (
        proposal.proposal_id,
        proposal.kind.value,
        proposal.object_type.value,
        proposal.record_id,
        proposal.confidence,
        proposal.model_dump(mode="json"),
        decision.outcome.value,
        decision.decision_id,
        decision.decided_by.identity,
        decision.decided_at,
        decision.comment,
        decision.decided_by.model_dump(mode="json"),
        decision.explanation,
        [c.model_dump(mode="json") for c in decision.final_changes] if decision.final_changes else None,
    )


async def record_decision(conn: Queryable, decision: Decision) -> bool:
    """A decision made elsewhere (auto-applied or rejected by policy, superseded by a newer proposal)
    is kept, so the proposal can be read; a pending item it names is closed. False if the proposal
    was already decided (our own decisions come back this way)."""
    # An upsert: if the decision overtakes the review request (they travel on different topics),
    # the row it leaves makes the late request a no-op instead of an approvable item.
    closed = await conn.fetchval(
        f"INSERT INTO review_queue ({_DECISION_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (proposal_id) DO UPDATE SET status = EXCLUDED.status,"
        " decision_id = EXCLUDED.decision_id, decided_by = EXCLUDED.decided_by,"
        " decided_at = EXCLUDED.decided_at, comment = EXCLUDED.comment, decider = EXCLUDED.decider,"
        " decision_explanation = EXCLUDED.decision_explanation, final_changes = EXCLUDED.final_changes"
        " WHERE review_queue.status = 'pending' RETURNING 1",
        *_decision_values(decision),
    )
    return closed is not None


async def record_execution(conn: Queryable, execution: Execution) -> bool:
    """The item shows what its execution did; one not known yet (the execution overtook its
    decision) is recorded from the decision the execution carries. False if the execution is of
    another decision than the item's."""
    updated = await conn.fetchval(
        f"INSERT INTO review_queue ({_DECISION_COLUMNS}, execution_id, execution_status, executed_at,"
        " execution_error, execution_writes, merged_into)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
        " ON CONFLICT (proposal_id) DO UPDATE SET execution_id = EXCLUDED.execution_id,"
        " execution_status = EXCLUDED.execution_status, executed_at = EXCLUDED.executed_at,"
        " execution_error = EXCLUDED.execution_error, execution_writes = EXCLUDED.execution_writes,"
        " merged_into = EXCLUDED.merged_into"
        " WHERE review_queue.decision_id = EXCLUDED.decision_id"
        " AND review_queue.execution_id IS DISTINCT FROM EXCLUDED.execution_id RETURNING 1",
        *_decision_values(execution.decision),
        execution.execution_id,
        execution.status.value,
        execution.executed_at,
        execution.error[:2000] if execution.error else None,
        [w.model_dump(mode="json") for w in execution.writes],
        execution.merged_into,
    )
    return updated is not None


async def overdue(pool: asyncpg.Pool, limit: int = 100) -> list[uuid.UUID]:
    rows = await pool.fetch(
        "SELECT proposal_id FROM review_queue WHERE status = 'pending' AND expires_at <= now()"
        " ORDER BY expires_at LIMIT $1",
        limit,
    )
    return [r["proposal_id"] for r in rows]


_seen_depth: set[tuple[str, str]] = set()


async def refresh_depth(pool: asyncpg.Pool) -> None:
    """Depth and the oldest item's age by kind and queue, from the database (true across replicas);
    a kind and queue that emptied reads 0."""
    rows = await pool.fetch(
        "SELECT kind, queue, count(*) AS n, extract(epoch FROM now() - min(enqueued_at)) AS age"
        " FROM review_queue WHERE status = 'pending' GROUP BY kind, queue"
    )
    now = {(r["kind"], r["queue"] or ""): (r["n"], float(r["age"] or 0)) for r in rows}
    for key in _seen_depth | set(now):
        depth, age = now.get(key, (0, 0.0))
        metrics.PENDING.labels(*key).set(depth)
        metrics.OLDEST_PENDING_AGE.labels(*key).set(age)
    _seen_depth.update(now)


def json_type(value: object) -> str:
    """A value's JSON type as a reviewer sees it: a number is a number, int or float."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "null" if value is None else type(value).__name__


def merge_modifications(proposal: Proposal, modified: dict[str, Any]) -> list[FieldChange]:
    """A reviewer's edits: new proposed values for fields the proposal changes, each of the type the
    proposal gives the field (its proposed value's, else its previous value's), or null to clear it."""
    unknown = sorted(set(modified) - {c.field for c in proposal.changes})
    if unknown:
        raise ValueError(f"fields not in the proposal: {', '.join(unknown)}")
    for change in proposal.changes:
        if change.field not in modified or modified[change.field] is None:
            continue
        typed = change.proposed if change.proposed is not None else change.previous
        want, got = json_type(typed), json_type(modified[change.field])
        if typed is not None and want != got:
            raise ValueError(f"{change.field} takes a {want}, not a {got}")
    return [
        FieldChange(field=c.field, previous=c.previous, proposed=modified.get(c.field, c.proposed))
        for c in proposal.changes
    ]
