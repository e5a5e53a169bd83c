"""What review-api consumes into PostgreSQL: pending proposals (the queue), decisions made elsewhere
and executions, so any proposal can be read (deciding is decisions.py); expiry and queue gauges."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

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
T = TypeVar("T")


async def enqueue_many(conn: Queryable, requests: list[ReviewRequest]) -> list[ReviewRequest]:
    """Insert pending proposals in one statement; the ones not queued before (the others are
    redeliveries), each once."""
    if not requests:
        return []
    rows = await conn.fetch(
        "INSERT INTO review_queue (proposal_id, kind, object_type, record_id, confidence, proposal,"
        " queue, priority, expires_at, routed_by, explanation, required_approvals)"
        f" {_select(_REQUEST_TYPES)}"
        " ON CONFLICT (proposal_id) DO NOTHING RETURNING proposal_id",
        *_columns(
            requests,
            lambda r: (
                r.proposal.proposal_id,
                r.proposal.kind.value,
                r.proposal.object_type.value,
                r.proposal.record_id,
                r.proposal.confidence,
                _json(r.proposal.model_dump(mode="json")),
                r.queue,
                r.priority,
                r.expires_at,
                _json(r.routed_by.model_dump(mode="json")),
                r.explanation,
                r.required_approvals,
            ),
        ),
    )
    return _once(requests, lambda r: r.proposal.proposal_id, {r["proposal_id"] for r in rows})


async def enqueue(conn: Queryable, request: ReviewRequest) -> bool:
    """Insert a pending proposal; False if it was already queued (redelivery)."""
    return bool(await enqueue_many(conn, [request]))


# The columns a decision fills, in the order of _decision_values, and their array types for unnest.
_DECISION_COLUMNS = (
    "proposal_id, kind, object_type, record_id, confidence, proposal, status, decision_id, decided_by,"
    " decided_at, comment, decider, decision_explanation, final_changes"
)
_DECISION_TYPES = [
    *("uuid", "text", "text", "text", "float8", "json", "text"),
    *("uuid", "text", "timestamptz", "text", "json", "text", "json"),
]
_EXECUTION_TYPES = [*_DECISION_TYPES, "uuid", "text", "timestamptz", "text", "json", "text"]
_REQUEST_TYPES = [
    *("uuid", "text", "text", "text", "float8", "json"),
    *("text", "text", "timestamptz", "json", "text", "int2"),
]


def _decision_values(decision: Decision) -> tuple[Any, ...]:
    proposal = decision.proposal
    return (
        proposal.proposal_id,
        proposal.kind.value,
        proposal.object_type.value,
        proposal.record_id,
        proposal.confidence,
        _json(proposal.model_dump(mode="json")),
        decision.outcome.value,
        decision.decision_id,
        decision.decided_by.identity,
        decision.decided_at,
        decision.comment,
        _json(decision.decided_by.model_dump(mode="json")),
        decision.explanation,
        _json([c.model_dump(mode="json") for c in decision.final_changes])
        if decision.final_changes
        else None,
    )


def _select(types: list[str]) -> str:
    """``SELECT`` of column arrays (``_columns``) row by row; JSON goes as text (an array of JSON
    arrays would be taken for a two-dimensional array) and becomes jsonb here."""
    names = [f"c{n}" for n in range(1, len(types) + 1)]
    params = ", ".join(f"${n}::{'text' if t == 'json' else t}[]" for n, t in enumerate(types, 1))
    exprs = ", ".join(f"{c}::jsonb" if t == "json" else c for c, t in zip(names, types, strict=True))
    return f"SELECT {exprs} FROM unnest({params}) AS u({', '.join(names)})"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def record_decisions(conn: Queryable, decisions: list[Decision]) -> list[Decision]:
    """Decisions made elsewhere (auto-applied or rejected by policy, superseded by a newer proposal)
    are kept, so their proposals can be read; pending items they name are closed. The decisions
    kept; not those of proposals decided already (our own decisions come back this way), and of one
    proposal decided twice in the batch, the first only."""
    # An upsert: if the decision overtakes the review request (they travel on different topics),
    # the row it leaves makes the late request a no-op instead of an approvable item. A statement
    # may touch a row once: one decision per proposal.
    if not decisions:
        return []
    first = list({d.proposal.proposal_id: d for d in reversed(decisions)}.values())
    rows = await conn.fetch(
        f"INSERT INTO review_queue ({_DECISION_COLUMNS}) {_select(_DECISION_TYPES)}"
        " ON CONFLICT (proposal_id) DO UPDATE SET status = EXCLUDED.status,"
        " decision_id = EXCLUDED.decision_id, decided_by = EXCLUDED.decided_by,"
        " decided_at = EXCLUDED.decided_at, comment = EXCLUDED.comment, decider = EXCLUDED.decider,"
        " decision_explanation = EXCLUDED.decision_explanation, final_changes = EXCLUDED.final_changes"
        " WHERE review_queue.status = 'pending' RETURNING decision_id",
        *_columns(first, _decision_values),
    )
    return _once(decisions, lambda d: d.decision_id, {r["decision_id"] for r in rows})


async def record_decision(conn: Queryable, decision: Decision) -> bool:
    """One decision made elsewhere (see ``record_decisions``); False if not kept."""
    return bool(await record_decisions(conn, [decision]))


async def record_executions(conn: Queryable, executions: list[Execution]) -> list[Execution]:
    """Items show what their executions did; one not known yet (the execution overtook its
    decision) is recorded from the decision the execution carries. The executions recorded; not
    those of another decision than their item's (nor one recorded already)."""
    if not executions:
        return []
    last = list({e.decision.proposal.proposal_id: e for e in executions}.values())
    rows = await conn.fetch(
        f"INSERT INTO review_queue ({_DECISION_COLUMNS}, execution_id, execution_status, executed_at,"
        " execution_error, execution_writes, merged_into)"
        f" {_select(_EXECUTION_TYPES)}"
        " ON CONFLICT (proposal_id) DO UPDATE SET execution_id = EXCLUDED.execution_id,"
        " execution_status = EXCLUDED.execution_status, executed_at = EXCLUDED.executed_at,"
        " execution_error = EXCLUDED.execution_error, execution_writes = EXCLUDED.execution_writes,"
        " merged_into = EXCLUDED.merged_into"
        " WHERE review_queue.decision_id = EXCLUDED.decision_id"
        " AND review_queue.execution_id IS DISTINCT FROM EXCLUDED.execution_id RETURNING execution_id",
        *_columns(
            last,
            lambda e: (
                *_decision_values(e.decision),
                e.execution_id,
                e.status.value,
                e.executed_at,
                e.error[:2000] if e.error else None,
                _json([w.model_dump(mode="json") for w in e.writes]),
                e.merged_into,
            ),
        ),
    )
    return _once(executions, lambda e: e.execution_id, {r["execution_id"] for r in rows})


async def record_execution(conn: Queryable, execution: Execution) -> bool:
    """One execution (see ``record_executions``); False if not recorded."""
    return bool(await record_executions(conn, [execution]))


def _columns(items: list[T], row: Callable[[T], tuple[Any, ...]]) -> list[list[Any]]:
    """Items as column arrays (for ``unnest``), the fields of ``row``."""
    return [list(column) for column in zip(*(row(item) for item in items), strict=True)]


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
