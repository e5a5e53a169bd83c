"""The hash chain: how a row's hash is computed (two versions), and verification of the log.

Version 2 (every row written since the log holds every outcome): the hash is the sha256 of the RFC
8785 canonical JSON of the row's ``CHAIN_FIELDS`` (its ``prev_hash`` included), values as the JSON
text stored; docs/audit.md gives it byte for byte, and docs/verify_audit.py checks an export.
Version 1 (rows written before): sha256 over ``json.dumps(sort_keys=True)`` of the then fields and
``|prev_hash``; such rows keep verifying as they were written."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from changegate.core import canonical
from changegate.core.contracts import AuditEntry
from changegate.core.db import Queryable
from pydantic import AwareDatetime, TypeAdapter

GENESIS = ""
HEAD_PATTERN = r"^[1-9][0-9]{0,17}:[0-9a-f]{64}$"  # SEQ:HASH, a seq within bigint and a sha256
LEGACY, CANONICAL = 1, 2
HASH_VERSION = CANONICAL  # what new rows are written with

VALUE_COLUMNS = ("previous_value", "new_value", "proposed_value")
TIME_COLUMNS = ("proposed_at", "decided_at", "executed_at")
UUID_COLUMNS = ("proposal_id", "decision_id", "execution_id")
# What a version 2 hash covers: every column but the hash itself.
CHAIN_FIELDS = tuple(f for f in AuditEntry.model_fields if f != "hash")
# What a version 1 hash covered (the columns of the log then; proposed_value only when modified).
LEGACY_FIELDS = (
    "seq", "object_type", "record_id", "field", "previous_value", "new_value", "source_system",
    "source_event_id", "detector", "confidence", "mode", "approver", "policy_version", "policy_hash",
    "rule_id", "proposal_id", "decision_id", "execution_id", "proposed_at", "decided_at", "executed_at",
)  # fmt: skip


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as verify prints it) to its parts; ValueError if it is not one."""
    if not re.fullmatch(HEAD_PATTERN, text):
        raise ValueError("expected SEQ:HASH, e.g. 42:<64 hex digits>")
    seq, _, digest = text.partition(":")
    return int(seq), digest


# json.dumps(sort_keys=True, separators=(",", ":"), default=str), built once (dumps builds an
# encoder per call when given options).
_LEGACY = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_TIME = TypeAdapter(AwareDatetime)
_MINUTE = timedelta(minutes=1)


@functools.lru_cache(maxsize=4096)  # the rows of one outcome share their times: format them once
def json_time(value: datetime) -> str:
    """A time as the version 2 chain hashes it: in UTC, ``Z``, microseconds unless zero. Always
    UTC: PostgreSQL gives back UTC whatever offset a producer sent, so the form hashed at append
    must be the one read back (equal instants give equal text, which the cache relies on)."""
    return f"{value.astimezone(UTC).isoformat()[:-6]}Z"


def legacy_time(value: datetime) -> str:
    """A timestamp's JSON form as pydantic writes it (what version 1 hashed)."""
    offset = value.utcoffset()
    if offset is None or offset % _MINUTE:
        return str(_TIME.dump_python(value, mode="json"))  # an unusual offset: pydantic's own form
    text = value.isoformat()
    return f"{text[:-6]}Z" if not offset else text


@functools.lru_cache(maxsize=4096)
def _uuid_text(value: uuid.UUID) -> str:
    return str(value)


def legacy_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """Version 1: sha256 over the json.dumps form of the fields (values as values), then
    ``|prev_hash``. The proposed value counted only where the reviewer changed it."""
    body = {k: fields[k] for k in LEGACY_FIELDS}
    if fields.get("mode") == "approved_with_changes":
        body["proposed_value"] = fields.get("proposed_value")
    return hashlib.sha256(f"{_LEGACY.encode(body)}|{prev_hash}".encode()).hexdigest()


# A chain body is flat, its keys ASCII: where every value is a string, null, an integer within
# +-2**53 or a float that Python and ECMAScript print alike, the C encoder with sorted keys writes
# RFC 8785's bytes (as core.canonical explains) without core.canonical's walk over the values.
_FLAT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
_SAFE = 2**53


def _flat_and_plain(body: dict[str, Any]) -> bool:
    for value in body.values():
        kind = type(value)
        if kind is str or value is None or (kind is int and -_SAFE < value < _SAFE):
            continue
        if kind is float and math.isfinite(value) and not value.is_integer() and abs(value) >= 1e-4:
            continue
        return False
    return True


def canonical_hash(body: dict[str, Any]) -> str:
    """Version 2: sha256 of the RFC 8785 form of the chain body (``CHAIN_FIELDS``, value columns as
    their stored JSON text, times as pydantic writes them, ids as strings)."""
    if _flat_and_plain(body) and all(k.isascii() for k in body):
        try:
            return hashlib.sha256(_FLAT.encode(body).encode()).hexdigest()
        except UnicodeEncodeError:  # a lone surrogate: the reference refuses it, with its own error
            pass
    return hashlib.sha256(canonical.dumps(body)).hexdigest()


def entry_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """The hash of an entry in its JSON form (``AuditEntry.model_dump(mode="json")``: values as
    values), by the entry's hash version."""
    if fields.get("hash_version", LEGACY) == LEGACY:
        return legacy_hash(fields, prev_hash)
    body = {k: fields.get(k) for k in CHAIN_FIELDS}
    body["prev_hash"] = prev_hash
    for name in VALUE_COLUMNS:
        body[name] = json.dumps(body[name])
    for name in TIME_COLUMNS:
        text = body[name]
        if isinstance(text, str):
            with contextlib.suppress(ValueError):  # not a time: hashed as it is (and fails)
                when = datetime.fromisoformat(text)
                if when.tzinfo is not None:
                    body[name] = json_time(when)
    return canonical_hash(body)


def to_column(name: str, value: Any) -> Any:
    """Values go to the database as the JSON text that was hashed (round trip exact)."""
    return json.dumps(value) if name in VALUE_COLUMNS else value


def chain_body(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A stored row as the chain sees it and an export carries it: every column, value columns as
    their stored JSON text, times and ids as JSON strings."""
    body = {k: row[k] for k in CHAIN_FIELDS}
    for name in TIME_COLUMNS:
        if body[name] is not None:
            body[name] = json_time(body[name])
    for name in UUID_COLUMNS:
        if body[name] is not None:
            body[name] = _uuid_text(body[name])
    return body


def row_hash(row: asyncpg.Record | dict[str, Any]) -> str:
    """Recompute a stored row's hash, by its version."""
    if row["hash_version"] == LEGACY:
        body = {k: row[k] for k in CHAIN_FIELDS}
        for name in TIME_COLUMNS:
            if body[name] is not None:
                body[name] = legacy_time(body[name])
        for name in UUID_COLUMNS:
            if body[name] is not None:
                body[name] = str(body[name])
        for name in VALUE_COLUMNS:
            body[name] = json.loads(body[name]) if body[name] is not None else None
        return legacy_hash(body, body["prev_hash"])
    return canonical_hash(chain_body(row))


def row_to_entry(row: asyncpg.Record) -> AuditEntry:
    fields = {k: row[k] for k in AuditEntry.model_fields}  # not appended_at: storage, not the entry
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
    from_seq: int = 0  # verified from after this row (0: from genesis)


_SCAN = 20_000  # rows a verify reads at a time


async def _rows(conn: Queryable, after: int) -> AsyncIterator[list[asyncpg.Record]]:
    while True:
        rows = await conn.fetch(
            "SELECT * FROM audit_entries WHERE seq > $1 ORDER BY seq LIMIT $2", after, _SCAN
        )
        if not rows:
            return
        yield rows
        after = rows[-1]["seq"]


async def verify(
    conn: Queryable,
    expect_head: tuple[int, str] | None = None,
    start: tuple[int, str] | None = None,
    archived: bool = False,
) -> VerifyReport:
    """Recompute the chain; report altered rows (hash mismatch) and missing ones (gaps, broken links).

    From genesis, or from ``start`` (a seq and its hash already verified, e.g. a signed checkpoint):
    the row after it must link to that hash. Rows removed from the end leave a shorter chain that is
    still consistent: only a head recorded elsewhere (``expect_head``: a seq and its hash, e.g. a
    checkpoint) reveals them. ``archived``: ``start`` is the last row of an archived month (detached:
    not looked up here: it is the archive's record, which a signed checkpoint must name)."""
    problems: list[str] = []
    from_seq, prev_hash = start if start else (0, GENESIS)
    expected_seq, count = from_seq + 1, 0
    async for rows in _rows(conn, from_seq):
        for row in rows:
            count += 1
            seq = row["seq"]
            if seq != expected_seq:
                problems.append(f"rows {expected_seq}..{seq - 1} are missing")
            if row["prev_hash"] != prev_hash:
                problems.append(f"row {seq}: prev_hash does not link to the row before it")
            if row_hash(row) != row["hash"]:
                problems.append(f"row {seq}: content does not match its hash (altered)")
            prev_hash, expected_seq = row["hash"], seq + 1
    if start is not None and not archived:
        at = await conn.fetchval("SELECT hash FROM audit_entries WHERE seq = $1", from_seq)
        if at != start[1]:
            problems.append(f"row {from_seq} no longer carries the hash verified earlier")
    if expect_head is not None:
        seq, digest = expect_head
        head_hash = await conn.fetchval("SELECT hash FROM audit_entries WHERE seq = $1", seq)
        if head_hash is None:
            problems.append(f"row {seq} (the expected head) is missing: the log was cut short")
        elif head_hash != digest:
            problems.append(f"row {seq} does not carry the expected head hash")
    return VerifyReport(not problems, count, problems, expected_seq - 1, prev_hash, from_seq)
