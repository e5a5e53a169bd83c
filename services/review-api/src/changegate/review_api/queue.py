"""The review queue in PostgreSQL: enqueue pending proposals, decide them exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
from changegate.core import outbox
from changegate.core.auth import Grant
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    FieldChange,
    Proposal,
    ReviewRequest,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import Queryable
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from changegate.review_api import metrics

SERVICE = "review-api"
T = TypeVar("T")


class NotPendingError(Exception):
    def __init__(self, status: str | None) -> None:
        self.status = status


async def enqueue_many(conn: Queryable, requests: list[ReviewRequest]) -> list[ReviewRequest]:
    """Insert pending proposals in one statement; the ones not queued before (the others are
    redeliveries), each once."""
    rows = await conn.fetch(
        "INSERT INTO review_queue (proposal_id, kind, object_type, record_id, confidence, proposal,"
        " queue, priority, expires_at, routed_by, explanation)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::jsonb[],"
        " $7::text[], $8::text[], $9::timestamptz[], $10::jsonb[], $11::text[])"
        " ON CONFLICT (proposal_id) DO NOTHING RETURNING proposal_id",
        *_columns(
            requests,
            11,
            lambda r: (
                r.proposal.proposal_id,
                r.proposal.kind.value,
                r.proposal.object_type.value,
                r.proposal.record_id,
                r.proposal.confidence,
                r.proposal.model_dump(mode="json"),
                r.queue,
                r.priority,
                r.expires_at,
                r.routed_by.model_dump(mode="json"),
                r.explanation,
            ),
        ),
    )
    return _once(requests, lambda r: r.proposal.proposal_id, {r["proposal_id"] for r in rows})


async def enqueue(conn: Queryable, request: ReviewRequest) -> bool:
    """Insert a pending proposal; False if it was already queued (redelivery)."""
    return bool(await enqueue_many(conn, [request]))


async def retire_many(conn: Queryable, decisions: list[Decision]) -> list[Decision]:
    """Decisions made elsewhere (a newer proposal superseded these) close pending items; the ones
    that closed one."""
    # An upsert: if the decision overtakes the review request (they travel on different topics),
    # the row it leaves makes the late request a no-op instead of an approvable item.
    rows = await conn.fetch(
        "INSERT INTO review_queue (proposal_id, kind, object_type, record_id, confidence, proposal,"
        " status, decision_id, decided_by, decided_at, comment)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::jsonb[],"
        " $7::text[], $8::uuid[], $9::text[], $10::timestamptz[], $11::text[])"
        " ON CONFLICT (proposal_id) DO UPDATE SET status = EXCLUDED.status,"
        " decision_id = EXCLUDED.decision_id, decided_by = EXCLUDED.decided_by,"
        " decided_at = EXCLUDED.decided_at, comment = EXCLUDED.comment"
        " WHERE review_queue.status = 'pending' RETURNING proposal_id",
        *_columns(
            # One decision per proposal in a statement (an upsert may touch a row once): the first.
            list({d.proposal.proposal_id: d for d in reversed(decisions)}.values()),
            11,
            lambda d: (
                d.proposal.proposal_id,
                d.proposal.kind.value,
                d.proposal.object_type.value,
                d.proposal.record_id,
                d.proposal.confidence,
                d.proposal.model_dump(mode="json"),
                d.outcome.value,
                d.decision_id,
                d.decided_by.identity,
                d.decided_at,
                d.explanation,
            ),
        ),
    )
    return _once(decisions, lambda d: d.proposal.proposal_id, {r["proposal_id"] for r in rows})


async def retire(conn: Queryable, decision: Decision) -> bool:
    """A decision made elsewhere (a newer proposal superseded this one) closes a pending item."""
    return bool(await retire_many(conn, [decision]))


async def decided_here(conn: Queryable, decisions: list[tuple[uuid.UUID, uuid.UUID]]) -> set[uuid.UUID]:
    """Which of these (proposal id, decision id) closed an item of the queue: their decision ids."""
    rows = await conn.fetch(
        "SELECT decision_id FROM review_queue"
        " WHERE proposal_id = ANY($1::uuid[]) AND decision_id IS NOT NULL",
        [proposal_id for proposal_id, _ in decisions],
    )
    closed = {r["decision_id"] for r in rows}
    return {decision_id for _, decision_id in decisions if decision_id in closed}


async def record_executions(conn: Queryable, executions: list[Execution]) -> int:
    """Items decided here show what their executions did; how many were items of ours."""
    rows = await conn.fetch(
        "UPDATE review_queue AS q SET execution_id = v.execution_id, execution_status = v.status,"
        " executed_at = v.executed_at, execution_error = v.error"
        " FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[])"
        " AS v(proposal_id, decision_id, execution_id, status, executed_at, error)"
        " WHERE q.proposal_id = v.proposal_id AND q.decision_id = v.decision_id RETURNING 1",
        *_columns(
            executions,
            6,
            lambda e: (
                e.decision.proposal.proposal_id,
                e.decision.decision_id,
                e.execution_id,
                e.status.value,
                e.executed_at,
                e.error[:2000] if e.error else None,
            ),
        ),
    )
    return len(rows)


async def record_execution(conn: Queryable, execution: Execution) -> bool:
    """The item decided here shows what its execution did; False if it is not an item of ours."""
    return bool(await record_executions(conn, [execution]))


def _columns(items: list[T], width: int, row: Callable[[T], tuple[Any, ...]]) -> list[list[Any]]:
    """Items as ``width`` column arrays (for ``unnest``), the fields of ``row``."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for item in items:
        for column, value in zip(columns, row(item), strict=True):
            column.append(value)
    return columns


def _once(items: list[T], key: Callable[[T], uuid.UUID], chosen: set[uuid.UUID]) -> list[T]:
    """The items whose key is chosen, the first of each key."""
    out = []
    for item in items:
        if key(item) in chosen:
            chosen.discard(key(item))
            out.append(item)
    return out


async def overdue(pool: asyncpg.Pool, limit: int = 100) -> list[uuid.UUID]:
    rows = await pool.fetch(
        "SELECT proposal_id FROM review_queue WHERE status = 'pending' AND expires_at <= now()"
        " ORDER BY expires_at LIMIT $1",
        limit,
    )
    return [r["proposal_id"] for r in rows]


def scope_filter(scopes: list[Grant] | None, first: int) -> tuple[str, list[Any]]:
    """SQL (and its arguments, numbered from ``first``) keeping the items some grant covers; None:
    every item. A grant without queues or kinds covers all of them."""
    if scopes is None:
        return "TRUE", []
    args: list[Any] = []
    ors = []
    for grant in scopes:
        ands = ["TRUE"]
        for column, allowed in (("queue", grant.queues), ("kind", grant.kinds)):
            if allowed is not None:
                args.append(sorted(allowed))
                ands.append(f"{column} = ANY(${first + len(args) - 1}::text[])")
        ors.append(f"({' AND '.join(ands)})")
    return f"({' OR '.join(ors) or 'FALSE'})", args


async def list_items(
    pool: asyncpg.Pool,
    status: str,
    kind: str | None,
    queue: str | None,
    limit: int,
    offset: int,
    scopes: list[Grant] | None = None,
) -> list[asyncpg.Record]:
    """Highest priority first, then oldest first; only what ``scopes`` cover (None: everything)."""
    visible, args = scope_filter(scopes, 6)
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM review_queue WHERE status = $1 AND ($2::text IS NULL OR kind = $2)"
        f" AND ($3::text IS NULL OR queue = $3) AND {visible}"
        " ORDER BY priority_rank, enqueued_at, proposal_id LIMIT $4 OFFSET $5",
        status,
        kind,
        queue,
        limit,
        offset,
        *args,
    )
    return rows


async def statistics(pool: asyncpg.Pool, scopes: list[Grant] | None = None) -> list[asyncpg.Record]:
    """Items by queue, kind and status, with the oldest enqueue time; only what ``scopes`` cover."""
    visible, args = scope_filter(scopes, 1)
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT queue, kind, status, count(*) AS count, min(enqueued_at) AS oldest FROM review_queue"
        f" WHERE {visible} GROUP BY queue, kind, status ORDER BY queue, kind, status",
        *args,
    )
    return rows


async def get_item(pool: asyncpg.Pool, proposal_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM review_queue WHERE proposal_id = $1", proposal_id
    )
    return row


async def decide(
    pool: asyncpg.Pool,
    names: TopicNames,
    proposal_id: uuid.UUID,
    outcome: DecisionOutcome,
    identity: str,
    comment: str | None,
    final_changes: list[FieldChange] | None = None,
    *,
    signer: SigningKey,
    by_system: bool = False,
) -> Decision:
    """Close a pending item and emit its decision, in one transaction. Raises NotPendingError."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT proposal, status, enqueued_at, expires_at <= now() AS overdue FROM review_queue"
            " WHERE proposal_id = $1 FOR UPDATE",
            proposal_id,
        )
        if row is None or row["status"] != "pending":
            raise NotPendingError(None if row is None else row["status"])
        if row["overdue"] and not by_system:
            raise NotPendingError("expired")  # the sweeper has not got to it yet
        proposal = Proposal.model_validate(row["proposal"])
        if outcome is DecisionOutcome.APPROVED:
            final_changes = list(proposal.changes)
        decision = Decision(
            decision_id=uuid.uuid4(),
            proposal=proposal,
            outcome=outcome,
            decided_by=Decider(kind="system" if by_system else "human", identity=identity),
            decided_at=utcnow(),
            explanation=f"{outcome.value.replace('_', ' ')} by {identity}",
            comment=comment,
            final_changes=final_changes or [],
        )
        decision = signer.sign(decision)
        await conn.execute(
            "UPDATE review_queue SET status = $2, decision_id = $3, decided_by = $4,"
            " decided_at = $5, comment = $6 WHERE proposal_id = $1",
            proposal_id,
            outcome.value,
            decision.decision_id,
            identity,
            decision.decided_at,
            comment,
        )
        envelope = make_envelope(
            decision,
            service=SERVICE,
            correlation_id=proposal.proposal_id,
            dedup_key=str(decision.decision_id),
        )
        await outbox.enqueue(conn, SERVICE, names(Topic.DECISIONS), proposal.record_id, envelope)
    metrics.DECISIONS.labels(outcome=outcome.value).inc()
    metrics.REVIEW_LATENCY.observe((decision.decided_at - row["enqueued_at"]).total_seconds())
    return decision


async def refresh_depth(pool: asyncpg.Pool) -> None:
    """Queue depth and the oldest item's age, from the database (true across replicas)."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(enqueued_at)) AS age"
        " FROM review_queue WHERE status = 'pending'"
    )
    metrics.PENDING.set(row["n"] if row else 0)
    metrics.OLDEST_PENDING_AGE.set(float(row["age"] or 0) if row else 0)


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
