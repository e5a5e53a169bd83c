"""The hash chain: how a row's hash is computed, and verification of the whole log."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
from changegate.core.contracts import AuditEntry
from changegate.core.db import Queryable

GENESIS = ""


def entry_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """sha256 over the canonical JSON of every field but the hashes, then the previous hash."""
    body = {k: v for k, v in fields.items() if k not in ("hash", "prev_hash")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{canonical}|{prev_hash}".encode()).hexdigest()


def row_to_entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry.model_validate(dict(row))


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    problems: list[str]


async def verify(conn: Queryable) -> VerifyReport:
    """Recompute the chain; report altered rows (hash mismatch) and missing ones (gaps, broken links)."""
    problems: list[str] = []
    prev_hash, expected_seq, count = GENESIS, 1, 0
    for row in await conn.fetch("SELECT * FROM audit_entries ORDER BY seq"):
        count += 1
        entry = row_to_entry(row)
        if entry.seq != expected_seq:
            problems.append(f"rows {expected_seq}..{entry.seq - 1} are missing")
        if entry.prev_hash != prev_hash:
            problems.append(f"row {entry.seq}: prev_hash does not link to the row before it")
        if entry_hash(entry.model_dump(mode="json"), entry.prev_hash) != entry.hash:
            problems.append(f"row {entry.seq}: content does not match its hash (altered)")
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    return VerifyReport(not problems, count, problems)
