"""Reading the log: filtered keyset pages, a record's history, and exports (JSONL, CSV) whose rows
are the chain bodies as hashed, so anyone can check them (docs/verify_audit.py)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from changegate.audit.chain import CHAIN_FIELDS, chain_body
from changegate.core.contracts import AuditMode
from changegate.core.db import Queryable

EXPORT_FIELDS = (*CHAIN_FIELDS, "hash")
EXPORT_PAGE = 5_000


@dataclass(frozen=True)
class Filters:
    """Every filter is optional; those given must all hold. ``since``/``until`` apply to the time
    of the outcome: when it executed, else when it was decided."""

    record_id: str | None = None
    object_type: str | None = None
    field: str | None = None
    approver: str | None = None
    modes: tuple[AuditMode, ...] = ()
    rule_id: str | None = None
    source_system: str | None = None
    proposal_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self, after_seq: int, args: list[Any]) -> str:
        """The WHERE clause (parameters appended to ``args``), keyset from ``after_seq``."""
        args.append(after_seq)
        clauses = [f"seq > ${len(args)}"]
        for column, value in (
            ("record_id", self.record_id),
            ("object_type", self.object_type),
            ("field", self.field),
            ("approver", self.approver),
            ("rule_id", self.rule_id),
            ("source_system", self.source_system),
            ("proposal_id", self.proposal_id),
        ):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        if self.modes:
            args.append([m.value for m in self.modes])
            clauses.append(f"mode = ANY(${len(args)}::text[])")
        if self.since is not None:
            args.append(self.since)
            clauses.append(f"coalesce(executed_at, decided_at) >= ${len(args)}")
        if self.until is not None:
            args.append(self.until)
            clauses.append(f"coalesce(executed_at, decided_at) < ${len(args)}")
        return " AND ".join(clauses)


async def page(conn: Queryable, filters: Filters, after_seq: int, limit: int) -> list[Any]:
    """Rows after ``after_seq`` matching ``filters``, oldest first."""
    args: list[Any] = []
    where = filters.where(after_seq, args)
    args.append(limit)
    return await conn.fetch(
        f"SELECT * FROM audit_entries WHERE {where} ORDER BY seq LIMIT ${len(args)}", *args
    )


async def _bodies(
    conn: Queryable, filters: Filters, after_seq: int, until_seq: int | None
) -> AsyncIterator[dict[str, Any]]:
    while True:
        rows = await page(conn, filters, after_seq, EXPORT_PAGE)
        for row in rows:
            if until_seq is not None and row["seq"] > until_seq:
                return
            body = chain_body(row)
            body["hash"] = row["hash"]
            yield body
        if len(rows) < EXPORT_PAGE:
            return
        after_seq = rows[-1]["seq"]


async def export_jsonl(
    conn: Queryable, filters: Filters, after_seq: int, until_seq: int | None
) -> AsyncIterator[bytes]:
    """One JSON object per line: each row as the chain hashed it (value columns as their JSON
    text), then each checkpoint within the rows' range as ``{"checkpoint": {...}}``."""
    first = last = None
    buffer: list[str] = []
    async for body in _bodies(conn, filters, after_seq, until_seq):
        first = body["seq"] if first is None else first
        last = body["seq"]
        buffer.append(json.dumps(body, ensure_ascii=False))
        if len(buffer) >= 1000:
            yield ("\n".join(buffer) + "\n").encode()
            buffer.clear()
    if buffer:
        yield ("\n".join(buffer) + "\n").encode()
    if first is not None:
        for checkpoint in await checkpoints_between(conn, first, last or first):
            yield (json.dumps({"checkpoint": checkpoint}) + "\n").encode()


async def export_csv(
    conn: Queryable, filters: Filters, after_seq: int, until_seq: int | None
) -> AsyncIterator[bytes]:
    """A header, then a row per entry (the JSONL export's fields, in ``EXPORT_FIELDS`` order; an
    empty cell is null)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    count = 0
    async for body in _bodies(conn, filters, after_seq, until_seq):
        writer.writerow(["" if body[f] is None else body[f] for f in EXPORT_FIELDS])
        count += 1
        if count % 1000 == 0:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


async def checkpoints_between(conn: Queryable, first: int, last: int) -> list[dict[str, Any]]:
    if await conn.fetchval("SELECT to_regclass('audit_checkpoints')") is None:
        return []
    rows = await conn.fetch(
        "SELECT checkpoint FROM audit_checkpoints WHERE seq BETWEEN $1 AND $2 ORDER BY seq", first, last
    )
    return [json.loads(r["checkpoint"]) for r in rows]
