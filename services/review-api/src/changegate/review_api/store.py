"""Reading the queue: filters, keyset pages (priority, then age), one item, its history, the latest
values changegate has seen of a record, statistics — each limited to what the reader may read."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from changegate.core.auth import Principal, Role
from changegate.core.auth.dependencies import AUTH_FAILURES
from changegate.core.db import Queryable

_AGE = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``."""
    match = _AGE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r}: expected a number and s, m, h or d (e.g. 2h)")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@dataclass
class Filters:
    status: str | None = "pending"  # None: any status
    kind: str | None = None
    queue: str | None = None
    source_system: str | None = None
    object_type: str | None = None
    record_id: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_age: timedelta | None = None  # enqueued at least this long ago
    max_age: timedelta | None = None
    rule: str | None = None
    ids: list[uuid.UUID] | None = None


@dataclass
class _Sql:
    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *values: Any) -> None:
        """``clause`` with ``{}`` for each value's placeholder."""
        holders = []
        for value in values:
            self.params.append(value)
            holders.append(f"${len(self.params)}")
        self.clauses.append(clause.format(*holders))

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses) or "TRUE"


def scope_clause(sql: _Sql, principal: Principal, role: Role = Role.VIEWER) -> None:
    """Only the queues and kinds the principal's grants cover for ``role``. An item never sent to a
    queue (auto-applied, rejected by policy) is covered only by a grant without queue scope."""
    grants = [g for g in principal.grants if g.role.includes(role)]
    if any(g.queues is None and g.kinds is None for g in grants):
        return
    alternatives = []
    for grant in grants:
        parts = []
        if grant.queues is not None:
            sql.params.append(sorted(grant.queues))
            parts.append(f"queue = ANY(${len(sql.params)}::text[])")
        if grant.kinds is not None:
            sql.params.append(sorted(grant.kinds))
            parts.append(f"kind = ANY(${len(sql.params)}::text[])")
        alternatives.append("(" + " AND ".join(parts) + ")")
    sql.clauses.append("(" + (" OR ".join(alternatives) or "FALSE") + ")")


def may_read(principal: Principal, queue: str | None, kind: str) -> bool:
    """The same rule as ``scope_clause``, for one item."""
    return any(
        g.role.includes(Role.VIEWER)
        and (g.queues is None or (queue is not None and queue in g.queues))
        and (g.kinds is None or kind in g.kinds)
        for g in principal.grants
    )


def filter_sql(filters: Filters, principal: Principal) -> _Sql:
    sql = _Sql()
    if filters.status is not None:
        sql.add("status = {}", filters.status)
    for column in ("kind", "queue", "source_system", "object_type", "record_id"):
        value = getattr(filters, column)
        if value is not None:
            sql.add(f"{column} = {{}}", value)
    if filters.rule is not None:
        sql.add("rule_id = {}", filters.rule)
    if filters.min_confidence is not None:
        sql.add("confidence >= {}", filters.min_confidence)
    if filters.max_confidence is not None:
        sql.add("confidence <= {}", filters.max_confidence)
    if filters.min_age is not None:
        sql.add("enqueued_at <= now() - {}::interval", filters.min_age)
    if filters.max_age is not None:
        sql.add("enqueued_at >= now() - {}::interval", filters.max_age)
    if filters.ids is not None:
        sql.add("proposal_id = ANY({}::uuid[])", filters.ids)
    scope_clause(sql, principal)
    return sql


class CursorError(ValueError):
    pass


def encode_cursor(row: asyncpg.Record) -> str:
    key = [row["priority_rank"], row["enqueued_at"].isoformat(), str(row["proposal_id"])]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, datetime, uuid.UUID]:
    try:
        rank, at, pid = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return int(rank), datetime.fromisoformat(at), uuid.UUID(pid)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise CursorError("not a cursor this API gave") from exc


# The columns of a list entry (not the history, approvals or execution writes).
LIST_COLUMNS = (
    "proposal_id, kind, object_type, record_id, confidence, proposal, status, queue, priority,"
    " priority_rank, enqueued_at, expires_at, route, rule_id, source_system, decided_by, decided_at,"
    " required_approvals, jsonb_array_length(approvals) AS approvals_given, execution_status, version"
)


async def _page_rows(
    db: Queryable, columns: str, filters: Filters, principal: Principal, limit: int, after: str | None
) -> list[asyncpg.Record]:
    """Up to ``limit`` + 1 rows of the queue after the cursor, in the inbox's order (the extra row
    says whether a next page exists)."""
    sql = filter_sql(filters, principal)
    if after is not None:
        rank, at, pid = decode_cursor(after)
        sql.add("(priority_rank, enqueued_at, proposal_id) > ({}, {}, {})", rank, at, pid)
    sql.params.append(limit + 1)
    rows: list[asyncpg.Record] = await db.fetch(
        f"SELECT {columns} FROM review_queue WHERE {sql.where}"
        f" ORDER BY priority_rank, enqueued_at, proposal_id LIMIT ${len(sql.params)}",
        *sql.params,
    )
    return rows


async def page(
    db: Queryable, filters: Filters, principal: Principal, limit: int, after: str | None
) -> tuple[list[asyncpg.Record], str | None]:
    """One page, highest priority first, then oldest; the cursor of the next page, if any."""
    rows = await _page_rows(db, LIST_COLUMNS, filters, principal, limit, after)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


# A list entry as JSON, built by PostgreSQL (ItemSummary's fields): a page goes out without being
# decoded and encoded again in Python.
SUMMARY_JSON = """json_build_object(
    'proposal_id', proposal_id, 'kind', kind, 'object_type', object_type, 'record_id', record_id,
    'other_record_ids', coalesce(proposal -> 'other_record_ids', '[]'::jsonb), 'status', status,
    'route', route, 'queue', queue, 'priority', priority, 'confidence', confidence,
    'source_system', source_system, 'rule_id', rule_id, 'rationale', proposal -> 'rationale',
    'changes', proposal -> 'changes',
    'enqueued_at', CASE WHEN queue IS NOT NULL OR route = 'review' THEN enqueued_at END,
    'expires_at', expires_at, 'decided_by', decided_by, 'decided_at', decided_at,
    'approvals', json_build_object('given', jsonb_array_length(approvals), 'required', required_approvals),
    'execution_status', execution_status, 'version', version)::text"""


async def page_json(
    db: Queryable, filters: Filters, principal: Principal, limit: int, after: str | None
) -> str:
    """One page as the API's JSON (views.Page), highest priority first, then oldest."""
    columns = f"priority_rank, enqueued_at, proposal_id, {SUMMARY_JSON} AS item"
    rows = await _page_rows(db, columns, filters, principal, limit, after)
    following = json.dumps(encode_cursor(rows[limit - 1])) if len(rows) > limit else "null"
    return '{"items":[' + ",".join(r["item"] for r in rows[:limit]) + '],"next_cursor":' + following + "}"


async def count(db: Queryable, filters: Filters, principal: Principal) -> int:
    sql = filter_sql(filters, principal)
    n: int = await db.fetchval(f"SELECT count(*) FROM review_queue WHERE {sql.where}", *sql.params)
    return n


async def item(db: Queryable, proposal_id: uuid.UUID, principal: Principal) -> asyncpg.Record | None:
    """The item, if it exists and the principal may read it (a read beyond one's scopes is counted)."""
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT * FROM review_queue WHERE proposal_id = $1", proposal_id
    )
    if row is not None and not may_read(principal, row["queue"], row["kind"]):
        AUTH_FAILURES.labels(reason="out_of_scope").inc()
        return None
    return row


async def history(db: Queryable, proposal_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT seq, at, event, actor, detail FROM review_history WHERE proposal_id = $1 ORDER BY seq",
        proposal_id,
    )
    return rows


async def history_since(
    db: Queryable, seq: int, principal: Principal, limit: int = 1000
) -> list[asyncpg.Record]:
    """The change feed after ``seq`` (an SSE client's Last-Event-ID), within the reader's scopes."""
    sql = _Sql()
    sql.add("seq > {}", seq)
    scope_clause(sql, principal)
    sql.params.append(limit)
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT seq, proposal_id, event, at, actor, kind, queue, status, version FROM review_history"
        f" WHERE {sql.where} ORDER BY seq LIMIT ${len(sql.params)}",
        *sql.params,
    )
    return rows


async def last_seq(db: Queryable) -> int:
    """The newest change's id: where a page's live stream starts."""
    seq: int | None = await db.fetchval("SELECT max(seq) FROM review_history")
    return seq or 0


@dataclass(frozen=True)
class Seen:
    """The latest value changegate has seen of a field: what an execution wrote or found there,
    or the value a later proposal's detector saw."""

    value: Any
    as_of: datetime
    source: str  # "execution" or "proposal"
    reference: uuid.UUID


async def latest_values(db: Queryable, object_type: str, record_id: str) -> dict[str, Seen]:
    """Per field of the record, the newest value seen in the proposals and executions recorded here
    (the last 200 items of the record)."""
    rows = await db.fetch(
        "SELECT proposal_id, proposal, execution_id, execution_status, executed_at, execution_writes"
        " FROM review_queue WHERE object_type = $1 AND record_id = $2"
        " ORDER BY greatest(executed_at, enqueued_at) DESC LIMIT 200",
        object_type,
        record_id,
    )
    seen: dict[str, Seen] = {}

    def offer(field_name: str, candidate: Seen) -> None:
        known = seen.get(field_name)
        if known is None or candidate.as_of > known.as_of:
            seen[field_name] = candidate

    for row in rows:
        proposal = row["proposal"]
        proposed_at = datetime.fromisoformat(proposal["proposed_at"])
        for change in proposal.get("changes", []):
            offer(change["field"], Seen(change.get("previous"), proposed_at, "proposal", row["proposal_id"]))
        if row["execution_status"] in ("applied", "noop", "conflict") and row["execution_writes"]:
            for write in row["execution_writes"]:
                value = (
                    write.get("overwritten") if row["execution_status"] == "conflict" else write.get("new")
                )
                offer(write["field"], Seen(value, row["executed_at"], "execution", row["execution_id"]))
    return seen


async def statistics(db: Queryable, principal: Principal) -> list[asyncpg.Record]:
    sql = _Sql(["status = 'pending'"])
    scope_clause(sql, principal)
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT kind, queue, count(*) AS depth, min(enqueued_at) AS oldest,"
        " count(*) FILTER (WHERE jsonb_array_length(approvals) > 0) AS partly_approved,"
        " count(*) FILTER (WHERE expires_at <= now() + interval '1 day') AS expiring_within_a_day"
        f" FROM review_queue WHERE {sql.where} GROUP BY kind, queue ORDER BY kind, queue",
        *sql.params,
    )
    return rows
