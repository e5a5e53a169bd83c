"""Checkpoints: the audit service signs the chain's head (Ed25519, its own key) every ``every``
rows or ``seconds`` seconds, after verifying the rows since the checkpoint before. Each is kept in
audit_checkpoints and published on audit.checkpoints (through the outbox, in the same transaction):
a copy outside the database is what catches a chain rewritten by whoever owns it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

import asyncpg
from changegate.audit.chain import VerifyReport
from changegate.audit.retention import Archived, anchor_of, archives, verify_log
from changegate.core import outbox
from changegate.core.contracts import AuditCheckpoint
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import Queryable
from changegate.core.kafka import is_transient
from changegate.core.logging import get_logger
from changegate.core.signing import SignatureRefusedError, SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from pydantic import ValidationError

log = get_logger(__name__)
SERVICE = "audit"
MONTH_ENDS_SECONDS = 60.0  # how often the last rows of past months are looked at (and signed)


async def latest(conn: Queryable) -> AuditCheckpoint | None:
    text = await conn.fetchval("SELECT checkpoint FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
    return AuditCheckpoint.model_validate_json(text) if text else None


async def sign_head(
    pool: asyncpg.Pool, signer: SigningKey, names: TopicNames
) -> tuple[AuditCheckpoint | None, VerifyReport]:
    """Verify the rows after the last checkpoint and sign the head if they are intact (None: the
    chain is broken, or nothing new)."""
    last = await latest(pool)
    start = (last.seq, last.hash) if last else None
    report, _ = await verify_log(pool, start=start)
    if not report.ok or report.head_seq == (last.seq if last else 0):
        return None, report
    return await _sign(pool, signer, names, report.head_seq, report.head_hash), report


async def _sign(
    pool: asyncpg.Pool, signer: SigningKey, names: TopicNames, seq: int, digest: str
) -> AuditCheckpoint | None:
    """Sign row ``seq``'s hash, keep it and publish it (None: another replica signed it first)."""
    previous = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM audit_checkpoints WHERE seq < $1", seq)
    checkpoint = signer.sign(AuditCheckpoint(seq=seq, hash=digest, previous_seq=previous, signed_at=utcnow()))
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO audit_checkpoints (seq, hash, signed_at, checkpoint) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (seq) DO NOTHING RETURNING seq",
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.signed_at,
            checkpoint.model_dump_json(),
        )
        if inserted is None:  # another replica signed this row
            return None
        envelope = make_envelope(checkpoint, service=SERVICE, dedup_key=f"checkpoint|{checkpoint.seq}")
        await outbox.enqueue(conn, SERVICE, names(Topic.AUDIT_CHECKPOINTS), "chain", envelope)
    log.info("checkpoint signed", seq=checkpoint.seq)
    return checkpoint


async def month_ends(conn: Queryable) -> list[int]:
    """The last row of each month that is over and still attached, if no checkpoint names it yet:
    `changegate audit archive` needs a signed checkpoint at a month's last row."""
    found: list[int] = []
    before = await conn.fetchval("SELECT date_trunc('month', now(), 'UTC')")
    while True:
        row = await conn.fetchrow(
            "SELECT seq, appended_at FROM audit_entries WHERE appended_at < $1 ORDER BY seq DESC LIMIT 1",
            before,
        )
        if row is None:
            break
        found.append(row["seq"])
        before = await conn.fetchval("SELECT date_trunc('month', $1::timestamptz, 'UTC')", row["appended_at"])
    if not found:
        return []
    signed = await conn.fetch("SELECT seq FROM audit_checkpoints WHERE seq = ANY($1::bigint[])", found)
    return sorted(set(found) - {r["seq"] for r in signed})


async def sign_month_ends(pool: asyncpg.Pool, signer: SigningKey, names: TopicNames) -> list[AuditCheckpoint]:
    """Sign the last row of every month that is over (see ``month_ends``), once the rows from the
    checkpoint before the first of them to the head verify."""
    ends = await month_ends(pool)
    if not ends:
        return []
    before = await pool.fetchrow(
        "SELECT seq, hash FROM audit_checkpoints WHERE seq < $1 ORDER BY seq DESC LIMIT 1", ends[0]
    )
    report, _ = await verify_log(pool, start=(before["seq"], before["hash"]) if before else None)
    if not report.ok:
        log.error("chain broken: month ends not signed", problems=report.problems[:10])
        return []
    signed = []
    for seq in ends:
        digest = await pool.fetchval("SELECT hash FROM audit_entries WHERE seq = $1", seq)
        if digest is not None and (checkpoint := await _sign(pool, signer, names, seq, digest)):
            signed.append(checkpoint)
    return signed


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    checked: int  # checkpoints checked
    problems: list[str]


async def check_checkpoints(
    conn: Queryable, verifier: Verifier
) -> tuple[CheckpointReport, AuditCheckpoint | None]:
    """Every kept checkpoint: its signature, and whether its row still carries its hash (a row of an
    archived month: the archive's last hash, for its last row). Each archived month's last row must
    be named by a good checkpoint: verification starts from it. Returns the report and the latest
    checkpoint that passed on an attached row (where incremental verification starts)."""
    rows = await conn.fetch(
        "SELECT c.seq, c.checkpoint, e.hash AS row_hash FROM audit_checkpoints c"
        " LEFT JOIN audit_entries e ON e.seq = c.seq ORDER BY c.seq"
    )
    done = await archives(conn)
    anchor = anchor_of(done)
    archived_upto = anchor.last_seq or 0 if anchor else 0
    archived_last = {a.last_seq: a for a in done if a.last_seq is not None}
    problems: list[str] = []
    good: AuditCheckpoint | None = None
    named: set[tuple[int, str]] = set()
    for row in rows:
        try:
            checkpoint = AuditCheckpoint.model_validate_json(row["checkpoint"])
            verifier.checkpoint(checkpoint)
        except (ValidationError, SignatureRefusedError, json.JSONDecodeError) as exc:
            problems.append(f"checkpoint at {row['seq']}: not a checkpoint audit signed ({exc})")
            continue
        if checkpoint.seq != row["seq"]:
            problems.append(f"checkpoint at {row['seq']}: names row {checkpoint.seq}")
        elif row["row_hash"] is None and row["seq"] <= archived_upto:
            month = archived_last.get(row["seq"])
            if month is not None and month.last_hash != checkpoint.hash:
                problems.append(
                    f"checkpoint at {row['seq']}: the archive of {month.label} records another hash for it"
                )
            named.add((checkpoint.seq, checkpoint.hash))
        elif row["row_hash"] is None:
            problems.append(f"checkpoint at {row['seq']}: row {row['seq']} is missing (the log was cut)")
        elif row["row_hash"] != checkpoint.hash:
            problems.append(
                f"checkpoint at {row['seq']}: row {row['seq']} no longer carries the signed hash (rewritten)"
            )
        elif good is None or checkpoint.seq > good.seq:
            good = checkpoint
    for month in done:
        if month.last_seq is not None and (month.last_seq, month.last_hash) not in named:
            problems.append(
                f"archive of {month.label}: no signed checkpoint names its last row {month.last_seq}"
            )
    return CheckpointReport(not problems, len(rows), problems), good


@dataclass(frozen=True)
class ChainReport:
    """The checkpoints, then the rows after the latest good one (or every row)."""

    marks: CheckpointReport
    rows: VerifyReport
    archived: Archived | None = None  # where the rows started: the last archived month's end

    @property
    def problems(self) -> list[str]:
        return self.marks.problems + self.rows.problems

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_chain(
    pool: asyncpg.Pool, verifier: Verifier, head: tuple[int, str] | None = None, from_genesis: bool = False
) -> ChainReport:
    """Every checkpoint (signature, and its row's hash), then the rows: from genesis, or from the
    latest checkpoint that passed (incremental: rows before it were verified when it was signed).
    Once months are archived, "genesis" is the last archived row (reported as ``archived``)."""
    marks, good = await check_checkpoints(pool, verifier)
    start = None if from_genesis or good is None else (good.seq, good.hash)
    rows, anchor = await verify_log(pool, head, start)
    return ChainReport(marks, rows, anchor)


class Checkpointer:
    """Signs the head every ``every`` new rows or, when rows came since, every ``seconds``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        signer: SigningKey,
        names: TopicNames,
        every: int,
        seconds: float,
        stop: asyncio.Event,
    ) -> None:
        self.pool, self.signer, self.names = pool, signer, names
        self.every, self.seconds, self.stop = every, seconds, stop

    async def run(self) -> None:
        signed_at = time.monotonic()
        ends_at = 0.0  # when the last rows of past months were last looked at
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), min(1.0, self.seconds))
            if self.stop.is_set():
                return
            try:
                # At start and every minute, not only when the month changes: a transaction that
                # began in the old month may still commit rows into it just after.
                if time.monotonic() - ends_at >= MONTH_ENDS_SECONDS:
                    await sign_month_ends(self.pool, self.signer, self.names)
                    ends_at = time.monotonic()
                head = await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM audit_entries")
                last = await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM audit_checkpoints")
                due = head - last >= self.every or (
                    head > last and time.monotonic() - signed_at >= self.seconds
                )
                if not due:
                    continue
                checkpoint, report = await sign_head(self.pool, self.signer, self.names)
                signed_at = time.monotonic()
                if checkpoint is None and not report.ok:
                    log.error("chain broken: no checkpoint signed", problems=report.problems[:10])
            except Exception as exc:  # the log keeps appending; the next round tries again
                if not is_transient(exc):
                    log.exception("checkpoint failed")
