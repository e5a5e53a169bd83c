"""The hash chain: how a row's hash is computed (two versions), and verification of the log.

Version 2 (every row written since the log holds every outcome): the hash is the sha256 of the RFC
8785 canonical JSON of the row's ``CHAIN_FIELDS`` (its ``prev_hash`` included), values as the JSON
text stored; docs/audit.md gives it byte for byte, and docs/verify_audit.py checks an export.
Version 1 (rows written before): sha256 over ``json.dumps(sort_keys=True)`` of the then fields and
``|prev_hash``; such rows keep verifying as they were written."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from changegate.core import canonical
from changegate.core.contracts import AuditEntry
from changegate.core.db import DbConn, Queryable
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
_ZERO = timedelta(0)


def json_time(value: datetime) -> str:
    """A time as the version 2 chain hashes it: in UTC, ``Z``, microseconds unless zero. Always
    UTC: PostgreSQL gives back UTC whatever offset a producer sent, so the form hashed at append
    must be the one read back. (Not cached: an outcome's rows share one conversion, and a cache
    costs more than isoformat on the distinct times of a batch.)"""
    if value.tzinfo is not UTC and value.utcoffset() != _ZERO:  # UTC by another name: as it is
        value = value.astimezone(UTC)
    return f"{value.isoformat()[:-6]}Z"


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


# Member by member: an RFC 8785 object is "{", its members (sorted by key) joined by ",", "}", and
# a member's text depends on its own value only. The keys are ASCII, so code-point order is JCS's
# UTF-16 order.
_ORDER = tuple(sorted(CHAIN_FIELDS))
_ESCAPE = json.encoder.encode_basestring  # RFC 8785's string escapes (no ASCII escaping)


def json_text(value: Any) -> str:
    """One value's RFC 8785 text: the C escaper for strings, repr where Python and ECMAScript
    print alike (as ``canonical_hash``), core.canonical for anything else."""
    kind = type(value)
    if kind is str:
        return str(_ESCAPE(value))
    if value is None:
        return "null"
    if (kind is int and -_SAFE < value < _SAFE) or (
        kind is float and math.isfinite(value) and not value.is_integer() and abs(value) >= 1e-4
    ):
        return repr(value)
    return canonical.dumps(value).decode()


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


_SCAN = 20_000  # rows a verify reads at a time (rows the database could not check)
_RANGE = 50_000  # seqs the database checks per statement
_WORKERS = 2  # statements at a time (given a pool): the database checks on as many cores


# The database recomputes version 2 hashes itself (sha256 over the same RFC 8785 text, built in
# SQL) where its text forms are provably those of the chain; every other row (version 1, or a
# value outside those forms) and every row whose hash the database finds wrong is recomputed here
# in Python, whose answer counts. A test compares the SQL text with ``rfc8785`` on generated rows.
def _sql_member(column: str) -> str:
    if column in ("seq", "hash_version", "reverts_seq"):
        return f"coalesce({column}::text, 'null')"
    if column == "confidence":  # shortest round-trip digits (extra_float_digits = 1)
        return f"{column}::text"
    if column in UUID_COLUMNS:  # lower-case, hyphenated: as Python's str(uuid)
        return f"""coalesce('"' || {column}::text || '"', 'null')"""
    if column in TIME_COLUMNS:  # json_time: UTC, Z, microseconds unless zero
        return (
            f"""coalesce('"' || replace(to_char({column} AT TIME ZONE 'UTC',"""
            f""" 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '') || 'Z"', 'null')"""
        )
    return f"coalesce(to_json({column})::text, 'null')"  # the escapes of RFC 8785 (and _ESCAPE)


_SQL_BODY = " || ".join(
    [f"""'{"{" if n == 0 else ","}"{key}":' || {_sql_member(key)}""" for n, key in enumerate(_ORDER)]
    + ["'}'"]
)
# Where the SQL text is the chain's: integers JCS accepts, confidences that PostgreSQL and
# ECMAScript print alike (fixed notation between 1e-4 and 1e15, or exactly 0 or 1), times in
# years 2 to 9998 (clear of the ends of Python's range); anything else is left to Python (the answer is NULL).
_SQL_TIME_OK = " AND ".join(
    f"({c} IS NULL OR ({c} >= '0002-01-01 00:00:00+00' AND {c} < '9999-01-01 00:00:00+00'))"
    for c in TIME_COLUMNS
)
_SQL_DOMAIN = (
    "hash_version = 2 AND seq < 9007199254740992"
    " AND (reverts_seq IS NULL OR reverts_seq BETWEEN -9007199254740991 AND 9007199254740991)"
    " AND (confidence::text IN ('0', '1') OR (abs(confidence) >= 1e-4 AND abs(confidence) < 1e15"
    f" AND confidence <> trunc(confidence))) AND {_SQL_TIME_OK}"
)
# What tests compare with rfc8785: the body's text, and where the database may vouch for it.
SQL_CANONICAL, SQL_DOMAIN = _SQL_BODY, _SQL_DOMAIN
_CHECK = f"""
SELECT seq, hash, prev_hash, before_seq, before_hash, after_seq, ok FROM (
    SELECT seq, hash, prev_hash,
           lag(seq) OVER w AS before_seq, lag(hash) OVER w AS before_hash, lead(seq) OVER w AS after_seq,
           CASE WHEN {_SQL_DOMAIN}
                THEN encode(sha256(convert_to({_SQL_BODY}, 'UTF8')), 'hex') = hash END AS ok
    FROM audit_entries WHERE seq > $1 AND seq <= $2
    WINDOW w AS (ORDER BY seq)
) r
WHERE ok IS NOT TRUE OR before_seq IS NULL OR after_seq IS NULL
      OR seq <> before_seq + 1 OR prev_hash <> before_hash
ORDER BY seq
"""
_COUNT = "SELECT count(*) FROM audit_entries WHERE seq > $1 AND seq <= $2"


@dataclass(frozen=True)
class _Range:
    rows: int
    # Records or mappings: first and last rows, breaks, and rows the database did not vouch for.
    marks: Sequence[Any]
    altered: set[int]  # seqs Python recomputed and found not matching their hash


async def _check_range(conn: Queryable, low: int, high: int, in_sql: bool) -> _Range:
    """Rows low < seq <= high: links and gaps inside the range, and each row's hash."""
    if in_sql:
        async with _connection(conn) as c, c.transaction():
            await c.execute("SET LOCAL extra_float_digits = 1")
            found: list[asyncpg.Record] = await c.fetch(_CHECK, low, high)
            rows = await c.fetchval(_COUNT, low, high)
        doubtful = [m["seq"] for m in found if m["ok"] is not True]
        altered = set()
        for at in range(0, len(doubtful), _SCAN):
            for row in await conn.fetch(
                "SELECT * FROM audit_entries WHERE seq = ANY($1::bigint[])", doubtful[at : at + _SCAN]
            ):
                if row_hash(row) != row["hash"]:
                    altered.add(row["seq"])
        return _Range(rows, found, altered)
    marks: list[Mapping[str, Any]] = []
    altered, count, after = set(), 0, low
    while rows := await conn.fetch(
        "SELECT * FROM audit_entries WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3", after, high, _SCAN
    ):
        for row in rows:  # every row is a mark: the links are checked by the caller
            if row_hash(row) != row["hash"]:
                altered.add(row["seq"])
        marks += [{**dict(r.items()), "before_seq": None} for r in rows]
        count, after = count + len(rows), rows[-1]["seq"]
    return _Range(count, marks, altered)


@contextlib.asynccontextmanager
async def _connection(conn: Queryable) -> AsyncIterator[DbConn]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            yield acquired
    else:
        yield conn


async def verify(
    conn: Queryable,
    expect_head: tuple[int, str] | None = None,
    start: tuple[int, str] | None = None,
    in_database: bool = True,
    archived: bool = False,
) -> VerifyReport:
    """Recompute the chain; report altered rows (hash mismatch) and missing ones (gaps, broken links).

    From genesis, or from ``start`` (a seq and its hash already verified, e.g. a signed checkpoint):
    the row after it must link to that hash. Rows removed from the end leave a shorter chain that is
    still consistent: only a head recorded elsewhere (``expect_head``: a seq and its hash, e.g. a
    checkpoint) reveals them. Given a pool, ranges of the log are checked on two connections at once;
    ``in_database=False`` recomputes every row in Python (what the database's check is measured against).
    ``archived``: ``start`` is the last row of an archived month (detached: not looked up here: it is
    the archive's record, which a signed checkpoint must name)."""
    problems: list[str] = []
    from_seq, prev_hash = start if start else (0, GENESIS)
    expected_seq, count = from_seq + 1, 0
    last = await conn.fetchval("SELECT max(seq) FROM audit_entries WHERE seq > $1", from_seq)
    in_sql = in_database and await conn.fetchval("SELECT current_setting('server_encoding') = 'UTF8'")
    bounds = list(range(from_seq, last or from_seq, _RANGE)) if last else []
    limit = asyncio.Semaphore(_WORKERS if isinstance(conn, asyncpg.Pool) else 1)

    async def check(low: int) -> _Range:
        async with limit:
            return await _check_range(conn, low, min(low + _RANGE, last), in_sql)

    tasks = [asyncio.ensure_future(check(low)) for low in bounds]
    try:
        for task in tasks:  # in order: the ranges are linked one to the next here
            checked = await task
            count += checked.rows
            for mark in checked.marks:
                seq = mark["seq"]
                before = (
                    (expected_seq - 1, prev_hash)
                    if mark["before_seq"] is None
                    else (mark["before_seq"], mark["before_hash"])
                )
                if seq != before[0] + 1:
                    problems.append(f"rows {before[0] + 1}..{seq - 1} are missing")
                if mark["prev_hash"] != before[1]:
                    problems.append(f"row {seq}: prev_hash does not link to the row before it")
                if seq in checked.altered:
                    problems.append(f"row {seq}: content does not match its hash (altered)")
                prev_hash, expected_seq = mark["hash"], seq + 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
