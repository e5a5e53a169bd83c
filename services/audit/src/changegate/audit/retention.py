"""Retention: the log is partitioned by month (migration 0006); the audit service keeps the next
months' partitions made, and `changegate audit archive` exports a past month, verifies the export
like docs/verify_audit.py does, writes a manifest and only then detaches the month's partition.
Nothing is updated in place: the detached table is kept (in schema audit_archive) until an operator
drops it.

Once months are archived, verification starts at the last archived row: its seq and hash come from
the archive's record, and a signed checkpoint must name them (the archive refuses a month whose last
row no checkpoint names)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
from changegate.audit import query
from changegate.audit.chain import (
    GENESIS,
    LEGACY,
    VALUE_COLUMNS,
    VerifyReport,
    canonical_hash,
    legacy_hash,
    verify,
)
from changegate.core.contracts import AuditCheckpoint
from changegate.core.db import Queryable
from changegate.core.errors import TransientError
from changegate.core.logging import get_logger
from changegate.core.signing import SignatureRefusedError, Verifier
from prometheus_client import Gauge
from pydantic import ValidationError

log = get_logger(__name__)
ARCHIVE_SCHEMA = "audit_archive"
READY_UNTIL = Gauge(
    "changegate_audit_partitions_ready_until_timestamp_seconds",
    "End of the last month the audit log has a partition for (Unix time): rows after it cannot be appended",
)
_MONTH = re.compile(r"(\d{4})-(\d{2})")


def parse_month(text: str) -> date:
    """``YYYY-MM`` to the month's first day; ValueError otherwise."""
    match = _MONTH.fullmatch(text)
    if not match or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1:
        raise ValueError("expected a month as YYYY-MM, e.g. 2026-10")
    return date(int(match[1]), int(match[2]), 1)


def partition_name(month: date) -> str:
    return f"audit_entries_{month:%Y_%m}"


# --- the next months' partitions -------------------------------------------------------------------


async def add_partitions(conn: Queryable, ahead: int) -> int:
    """Make the current month's partition and the next ``ahead`` ones where missing (as the audit
    role: through the owner's SECURITY DEFINER function). Returns how many were made."""
    made: int = await conn.fetchval("SELECT audit_add_partitions($1)", ahead)
    until = await conn.fetchval(
        "SELECT max(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz)"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_entries'::regclass"
    )
    if until is not None:
        READY_UNTIL.set(until.timestamp())
    return made


@contextlib.asynccontextmanager
async def month_partitions(pool: asyncpg.Pool, ahead: int) -> AsyncIterator[None]:
    """Around an append: a row refused for want of its month's partition (the service was down for
    months, or could not make them) makes them and is retried (TransientError: never dead-lettered)."""
    try:
        yield
    except asyncpg.CheckViolationError as exc:
        if "no partition of relation" not in str(exc):
            raise
        made = await add_partitions(pool, ahead)
        log.warning("no audit partition for this month: made now, the batch is retried", made=made)
        raise TransientError("no partition of the audit log for this month yet") from exc


class PartitionKeeper:
    """Keeps ``ahead`` months of partitions made beyond the current one: at start (before the first
    row would need one) and every ``interval`` seconds."""

    def __init__(self, pool: asyncpg.Pool, ahead: int, interval: float, stop: asyncio.Event) -> None:
        self.pool, self.ahead, self.interval, self.stop = pool, ahead, interval, stop

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                made = await add_partitions(self.pool, self.ahead)
                if made:
                    log.info("audit partitions made", months=made, ahead=self.ahead)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("audit partitions not made; next try later", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval)


# --- archives and the verification that starts after them ------------------------------------------


@dataclass(frozen=True)
class Archived:
    """A month archived and detached, as audit_archives records it."""

    month: date
    rows: int
    first_seq: int | None
    last_seq: int | None
    prev_hash: str | None
    last_hash: str | None
    file_sha256: str
    detached_as: str

    @property
    def label(self) -> str:
        return f"{self.month:%Y-%m}"


async def archives(conn: Queryable) -> list[Archived]:
    """Every archived month, oldest first (none before migration 0006)."""
    if await conn.fetchval("SELECT to_regclass('audit_archives')") is None:
        return []
    rows = await conn.fetch(
        "SELECT month, rows, first_seq, last_seq, prev_hash, last_hash, file_sha256, detached_as"
        " FROM audit_archives ORDER BY month"
    )
    return [Archived(**dict(r)) for r in rows]


def anchor_of(done: list[Archived]) -> Archived | None:
    """The archived month whose last row verification starts after (the one with the latest rows)."""
    with_rows = [a for a in done if a.last_seq is not None]
    return max(with_rows, key=lambda a: a.last_seq or 0) if with_rows else None


async def verify_log(
    conn: Queryable,
    expect_head: tuple[int, str] | None = None,
    start: tuple[int, str] | None = None,
) -> tuple[VerifyReport, Archived | None]:
    """``chain.verify``, starting no earlier than the last archived row: rows up to it are detached,
    and the first row attached must link to its hash. Returns the report and that archive (None:
    nothing archived)."""
    anchor = anchor_of(await archives(conn))
    if anchor is None or anchor.last_seq is None or anchor.last_hash is None:
        return await verify(conn, expect_head, start), None
    if start is not None and start[0] > anchor.last_seq:
        return await verify(conn, expect_head, start), anchor
    report = await verify(conn, expect_head, (anchor.last_seq, anchor.last_hash), archived=True)
    return report, anchor


# --- exporting and verifying a month ---------------------------------------------------------------


class ArchiveRefusedError(Exception):
    """The month is not archived, and why; its partition stays attached."""


@dataclass(frozen=True)
class ExportCheck:
    rows: int
    first_seq: int | None
    last_seq: int | None
    first_hash: str | None
    last_hash: str | None
    sha256: str
    checkpoints: list[dict[str, Any]]
    problems: list[str]


def line_hash(row: dict[str, Any]) -> str:
    """The hash an exported row should carry, by its hash_version (as docs/verify_audit.py computes
    it): version 2 over the line's fields as they are; version 1 over its values as values."""
    if row.get("hash_version", LEGACY) == LEGACY:
        body = dict(row)
        for name in VALUE_COLUMNS:
            body[name] = json.loads(body[name]) if body.get(name) is not None else None
        return legacy_hash(body, row["prev_hash"])
    return canonical_hash({k: v for k, v in row.items() if k != "hash"})


def check_export(path: Path, after: tuple[int, str], verifier: Verifier) -> ExportCheck:
    """Check an export file as written, by docs/verify_audit.py's rules: each row's hash, each link,
    no gap, the first row linking to ``after`` (the seq and hash before it: the month before's last
    row, or 0 and genesis), every checkpoint's signature and row, and the last row named by a signed
    checkpoint."""
    problems: list[str] = []
    digest = hashlib.sha256()
    checkpoints: list[dict[str, Any]] = []
    hashes: dict[int, str] = {}
    prev_seq, prev_hash = after
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    rows = 0
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, 1):
            digest.update(raw)
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not JSON ({exc})")
                continue
            if "checkpoint" in item:
                checkpoints.append(item["checkpoint"])
                continue
            rows += 1
            seq = item["seq"]
            if seq != prev_seq + 1:
                problems.append(f"row {seq}: expected row {prev_seq + 1} (rows missing or out of order)")
            if item["prev_hash"] != prev_hash:
                problems.append(f"row {seq}: prev_hash does not link to row {prev_seq}")
            if line_hash(item) != item["hash"]:
                problems.append(f"row {seq}: content does not match its hash (altered)")
            hashes[seq] = item["hash"]
            first = first or item
            last = item
            prev_seq, prev_hash = seq, item["hash"]
    for checkpoint in checkpoints:
        seq = checkpoint.get("seq")
        try:
            verifier.checkpoint(AuditCheckpoint.model_validate(checkpoint))
        except (ValidationError, SignatureRefusedError) as exc:
            problems.append(f"checkpoint at {seq}: not a checkpoint audit signed ({exc})")
            continue
        if seq in hashes and hashes[seq] != checkpoint["hash"]:
            problems.append(f"checkpoint at {seq}: row {seq} does not carry the signed hash (rewritten)")
    if last is not None and not any(
        c.get("seq") == last["seq"] and c.get("hash") == last["hash"] for c in checkpoints
    ):
        problems.append(f"row {last['seq']} (the last) is named by no signed checkpoint in the export")
    return ExportCheck(
        rows,
        first["seq"] if first else None,
        last["seq"] if last else None,
        first["hash"] if first else None,
        last["hash"] if last else None,
        digest.hexdigest(),
        checkpoints,
        problems,
    )


@dataclass(frozen=True)
class ArchiveResult:
    month: date
    already: bool  # archived by an earlier run: nothing done now
    rows: int
    export: Path | None
    manifest: Path | None
    detached_as: str
    manifest_body: dict[str, Any]


def _current_month() -> date:
    now = datetime.now(UTC)
    return date(now.year, now.month, 1)


async def _attached(conn: Queryable, name: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE i.inhparent = 'audit_entries'::regclass AND n.nspname = 'public' AND c.relname = $1",
            name,
        )
    )


async def archive_month(
    pool: asyncpg.Pool,
    month: date,
    out: Path,
    verifier: Verifier,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ArchiveResult:
    """Export ``month`` to ``out`` (JSONL with its checkpoints, and a manifest), verify the file,
    and only then detach the month's partition into schema audit_archive, recording it in
    audit_archives (one transaction). Run as the database owner. Refuses (ArchiveRefusedError) the
    current or a future month, a month after one still attached, and any export that does not verify;
    a month archived before is reported as such (``already``), nothing done."""
    name = partition_name(month)
    done = {a.month: a for a in await archives(pool)}
    if month in done:
        record = done[month]
        manifest = json.loads(
            await pool.fetchval("SELECT manifest FROM audit_archives WHERE month = $1", month)
        )
        return ArchiveResult(month, True, record.rows, None, None, record.detached_as, manifest)
    if month >= _current_month():
        raise ArchiveRefusedError(f"{month:%Y-%m} is not over: only past months are archived")
    if not await _attached(pool, name):
        raise ArchiveRefusedError(f"no partition for {month:%Y-%m}: nothing was logged that month")
    stats = await pool.fetchrow(f'SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM "{name}"')
    assert stats is not None
    count, first_seq, last_seq = stats["n"], stats["lo"], stats["hi"]
    anchor = anchor_of(list(done.values()))
    after = (anchor.last_seq or 0, anchor.last_hash or GENESIS) if anchor else (0, GENESIS)
    if count:
        older = await pool.fetchval("SELECT min(seq) FROM audit_entries WHERE seq < $1", first_seq)
        if older is not None:
            raise ArchiveRefusedError(
                f"row {older} of an earlier month is still attached: archive the oldest months first"
            )
        if last_seq - first_seq + 1 != count:
            raise ArchiveRefusedError(
                f"{month:%Y-%m} holds {count} rows for seq {first_seq}..{last_seq}:"
                " not one stretch of the chain"
            )
        if first_seq != after[0] + 1:
            raise ArchiveRefusedError(
                f"{month:%Y-%m} starts at row {first_seq}, not at row {after[0] + 1} after the last archived"
            )
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    export = out / f"audit-{month:%Y-%m}.jsonl"
    part = export.with_name(export.name + ".part")
    try:
        await _export(pool, part, after[0], last_seq if count else None, count, progress)
        check = await asyncio.to_thread(check_export, part, after, verifier)
        problems = list(check.problems)
        if check.rows != count:
            problems.append(f"the export holds {check.rows} rows, the partition {count}")
        if problems:
            raise ArchiveRefusedError(
                f"{month:%Y-%m} does not verify; its partition stays attached:\n" + "\n".join(problems)
            )
    except BaseException:
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise
    await asyncio.to_thread(part.replace, export)
    detached_as = f"{ARCHIVE_SCHEMA}.{name}"
    last_checkpoint = next((c for c in check.checkpoints if c["seq"] == check.last_seq), None)
    body: dict[str, Any] = {
        "month": f"{month:%Y-%m}",
        "rows": count,
        "first_seq": check.first_seq,
        "last_seq": check.last_seq,
        "prev_hash": after[1] if count else None,
        "first_hash": check.first_hash,
        "last_hash": check.last_hash,
        "file": export.name,
        "sha256": check.sha256,
        "checkpoint": last_checkpoint,
        "checkpoints": len(check.checkpoints),
        "detached_as": detached_as,
        "archived_at": datetime.now(UTC).isoformat(),
    }
    manifest = out / f"audit-{month:%Y-%m}.manifest.json"
    await asyncio.to_thread(manifest.write_text, json.dumps(body, indent=2) + "\n")
    await _detach(pool, month, name, body)
    log.info("audit month archived", month=body["month"], rows=count, detached_as=detached_as)
    return ArchiveResult(month, False, count, export, manifest, detached_as, body)


async def _export(
    pool: asyncpg.Pool,
    part: Path,
    after_seq: int,
    last_seq: int | None,
    count: int,
    progress: Callable[[int, int], None],
) -> None:
    """The rows after ``after_seq`` up to ``last_seq`` (none if None) and their checkpoints, as
    GET /v1/audit/export streams them, to ``part``."""
    written = 0
    with part.open("wb") as sink:
        if last_seq is not None:
            async for chunk in query.export_jsonl(pool, query.Filters(), after_seq, last_seq):
                await asyncio.to_thread(sink.write, chunk)
                written += chunk.count(b"\n")  # a line a row (the checkpoints come last)
                progress(min(written, count), count)


async def _detach(pool: asyncpg.Pool, month: date, name: str, body: dict[str, Any]) -> None:
    """Detach the month's partition, check it still holds exactly what was exported, move it to
    schema audit_archive (append-only as before) and record the archive: all or nothing."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '30s'")
        await conn.execute(f'ALTER TABLE audit_entries DETACH PARTITION "{name}"')
        now = await conn.fetchrow(
            f"SELECT count(*) AS n, max(seq) AS hi,"
            f' (SELECT hash FROM "{name}" ORDER BY seq DESC LIMIT 1) AS h FROM "{name}"'
        )
        assert now is not None
        if (now["n"], now["hi"], now["h"]) != (body["rows"], body["last_seq"], body["last_hash"]):
            raise ArchiveRefusedError(f"{body['month']} changed while it was exported; nothing detached")
        await conn.execute(f'ALTER TABLE "{name}" SET SCHEMA {ARCHIVE_SCHEMA}')
        table = f'{ARCHIVE_SCHEMA}."{name}"'
        # The triggers cloned from the log went with the detach: the archived table keeps refusing.
        await conn.execute(
            f"CREATE OR REPLACE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION public.audit_refuse_change()"
        )
        await conn.execute(
            "INSERT INTO audit_archives (month, rows, first_seq, last_seq, prev_hash, last_hash,"
            " file_sha256, manifest, detached_as) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            month,
            body["rows"],
            body["first_seq"],
            body["last_seq"],
            body["prev_hash"],
            body["last_hash"],
            body["sha256"],
            json.dumps(body),
            body["detached_as"],
        )
