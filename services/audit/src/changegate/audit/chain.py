"""The hash chain: how a row's hash is computed, and verification of the whole log."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
from changegate.core.contracts import AuditEntry
from changegate.core.db import Queryable

GENESIS = ""
HEAD_PATTERN = r"^[1-9][0-9]{0,17}:[0-9a-f]{64}$"  # SEQ:HASH, a seq within bigint and a sha256


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as verify prints it) to its parts; ValueError if it is not one."""
    if not re.fullmatch(HEAD_PATTERN, text):
        raise ValueError("expected SEQ:HASH, e.g. 42:<64 hex digits>")
    seq, _, digest = text.partition(":")
    return int(seq), digest


# json.dumps(sort_keys=True, separators=(",", ":"), default=str), built once (dumps builds an
# encoder per call when given options).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """sha256 over the canonical JSON of every field but the hashes, then the previous hash. The
    proposed value counts only where the reviewer changed it (mode approved_with_changes): rows
    written before the field existed verify as they were written."""
    modified = fields.get("mode") == "approved_with_changes"
    return body_hash(
        {
            k: v
            for k, v in fields.items()
            if k not in ("hash", "prev_hash") and (k != "proposed_value" or modified)
        },
        prev_hash,
    )


def body_hash(body: dict[str, Any], prev_hash: str) -> str:
    """``entry_hash`` of fields that hold no hashes already (and a proposed value only if modified)."""
    return hashlib.sha256(f"{_CANONICAL.encode(body)}|{prev_hash}".encode()).hexdigest()


VALUE_COLUMNS = ("previous_value", "new_value", "proposed_value")


def to_column(name: str, value: Any) -> Any:
    """Values go to the database as the JSON text that was hashed (round trip exact)."""
    return json.dumps(value) if name in VALUE_COLUMNS else value


def row_to_entry(row: asyncpg.Record) -> AuditEntry:
    fields = dict(row)
    for name in VALUE_COLUMNS:
        fields[name] = json.loads(fields[name]) if fields[name] is not None else None
    return AuditEntry.model_validate(fields)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    problems: list[str]
    head_seq: int
    head_hash: str


async def verify(conn: Queryable, expect_head: tuple[int, str] | None = None) -> VerifyReport:
    """Recompute the chain; report altered rows (hash mismatch) and missing ones (gaps, broken links).

    Rows removed from the end leave a shorter chain that is still consistent: only a head recorded
    elsewhere (``expect_head``: a seq and its hash, e.g. from an earlier verify) reveals them."""
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
    if expect_head is not None:
        seq, digest = expect_head
        head_hash = await conn.fetchval("SELECT hash FROM audit_entries WHERE seq = $1", seq)
        if head_hash is None:
            problems.append(f"row {seq} (the expected head) is missing: the log was cut short")
        elif head_hash != digest:
            problems.append(f"row {seq} does not carry the expected head hash")
    return VerifyReport(not problems, count, problems, expected_seq - 1, prev_hash)
