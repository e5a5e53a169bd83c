"""The audit service verifies its own hash chain on a schedule and says so in metrics, so an altered
or missing row pages someone (ChangegateAuditChainBroken) instead of waiting for an audit.

Each round checks every signed checkpoint (signature, and that its row still carries its hash) and
the rows after the latest good one, as ``GET /v1/audit/verify`` does: a chain rewritten and
recomputed breaks a checkpoint; rows before the latest checkpoint were verified when it was signed.
A row changed without recomputing the rest is found by a verify from genesis (the API's
``?from=genesis``, ``changegate audit verify``)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from changegate.audit.checkpoints import verify_chain
from changegate.core.logging import get_logger
from changegate.core.signing import Verifier
from prometheus_client import Counter, Gauge

log = get_logger(__name__)
PROBLEMS = Gauge(
    "changegate_audit_chain_problems",
    "Rows altered or missing and checkpoints not matching that the last verification of the chain found",
)
ROWS = Gauge(
    "changegate_audit_chain_rows",
    "Rows the last verification of the chain recomputed (after the latest checkpoint)",
)
LAST_VERIFIED = Gauge(
    "changegate_audit_chain_last_verification_timestamp_seconds",
    "When the last verification of the chain finished (Unix time)",
)
VERIFICATIONS = Counter(
    "changegate_audit_chain_verifications_total", "Verifications of the chain, by result", ["result"]
)
SECONDS = Gauge("changegate_audit_chain_verification_duration_seconds", "How long the last verification took")


class ChainWatch:
    """Verify the chain from its checkpoints every ``interval`` seconds (the first at start), until
    ``stop``."""

    def __init__(self, pool: asyncpg.Pool, verifier: Verifier, interval: float, stop: asyncio.Event) -> None:
        self.pool, self.verifier, self.interval, self.stop = pool, verifier, interval, stop

    async def once(self) -> bool:
        started = time.perf_counter()
        report = await verify_chain(self.pool, self.verifier)  # from an archived month's end, if any
        elapsed = time.perf_counter() - started
        PROBLEMS.set(len(report.problems))
        ROWS.set(report.rows.rows)
        SECONDS.set(elapsed)
        LAST_VERIFIED.set(time.time())
        VERIFICATIONS.labels(result="intact" if report.ok else "broken").inc()
        if report.ok:
            log.info(
                "audit chain verified",
                rows=report.rows.rows,
                from_seq=report.rows.from_seq,
                checkpoints=report.marks.checked,
                seconds=round(elapsed, 3),
            )
        else:
            log.error("AUDIT CHAIN BROKEN", rows=report.rows.rows, problems=report.problems[:20])
        return report.ok

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self.once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("audit chain verification failed to run; next try later", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval)
