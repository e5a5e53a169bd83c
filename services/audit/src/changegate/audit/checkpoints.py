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
from changegate.audit.chain import VerifyReport, verify
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
    report = await verify(pool, start=start)
    if not report.ok or report.head_seq == (last.seq if last else 0):
        return None, report
    checkpoint = signer.sign(
        AuditCheckpoint(
            seq=report.head_seq,
            hash=report.head_hash,
            previous_seq=last.seq if last else 0,
            signed_at=utcnow(),
        )
    )
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO audit_checkpoints (seq, hash, signed_at, checkpoint) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (seq) DO NOTHING RETURNING seq",
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.signed_at,
            checkpoint.model_dump_json(),
        )
        if inserted is None:  # another replica signed this head
            return None, report
        envelope = make_envelope(checkpoint, service=SERVICE, dedup_key=f"checkpoint|{checkpoint.seq}")
        await outbox.enqueue(conn, SERVICE, names(Topic.AUDIT_CHECKPOINTS), "chain", envelope)
    log.info("checkpoint signed", seq=checkpoint.seq, rows=report.rows)
    return checkpoint, report


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    checked: int  # checkpoints checked
    problems: list[str]


async def check_checkpoints(
    conn: Queryable, verifier: Verifier
) -> tuple[CheckpointReport, AuditCheckpoint | None]:
    """Every kept checkpoint: its signature, and whether its row still carries its hash. Returns the
    report and the latest checkpoint that passed (where incremental verification starts)."""
    rows = await conn.fetch(
        "SELECT c.seq, c.checkpoint, e.hash AS row_hash FROM audit_checkpoints c"
        " LEFT JOIN audit_entries e ON e.seq = c.seq ORDER BY c.seq"
    )
    problems: list[str] = []
    good: AuditCheckpoint | None = None
    for row in rows:
        try:
            checkpoint = AuditCheckpoint.model_validate_json(row["checkpoint"])
            verifier.checkpoint(checkpoint)
        except (ValidationError, SignatureRefusedError, json.JSONDecodeError) as exc:
            problems.append(f"checkpoint at {row['seq']}: not a checkpoint audit signed ({exc})")
            continue
        if checkpoint.seq != row["seq"]:
            problems.append(f"checkpoint at {row['seq']}: names row {checkpoint.seq}")
        elif row["row_hash"] is None:
            problems.append(f"checkpoint at {row['seq']}: row {row['seq']} is missing (the log was cut)")
        elif row["row_hash"] != checkpoint.hash:
            problems.append(
                f"checkpoint at {row['seq']}: row {row['seq']} no longer carries the signed hash (rewritten)"
            )
        elif good is None or checkpoint.seq > good.seq:
            good = checkpoint
    return CheckpointReport(not problems, len(rows), problems), good


@dataclass(frozen=True)
class ChainReport:
    """The checkpoints, then the rows after the latest good one (or every row)."""

    marks: CheckpointReport
    rows: VerifyReport

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
    latest checkpoint that passed (incremental: rows before it were verified when it was signed)."""
    marks, good = await check_checkpoints(pool, verifier)
    start = None if from_genesis or good is None else (good.seq, good.hash)
    return ChainReport(marks, await verify(pool, head, start))


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
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), min(1.0, self.seconds))
            if self.stop.is_set():
                return
            try:
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
