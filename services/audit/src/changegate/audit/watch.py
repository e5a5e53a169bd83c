"""The audit service verifies its own hash chain on a schedule and says so in metrics, so an altered
or missing row pages someone (ChangegateAuditChainBroken) instead of waiting for an audit."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from changegate.audit.retention import verify_log
from changegate.core.logging import get_logger
from prometheus_client import Counter, Gauge

log = get_logger(__name__)
PROBLEMS = Gauge(
    "changegate_audit_chain_problems", "Rows altered or missing that the last verification of the chain found"
)
ROWS = Gauge("changegate_audit_chain_rows", "Rows the last verification of the chain checked")
LAST_VERIFIED = Gauge(
    "changegate_audit_chain_last_verification_timestamp_seconds",
    "When the last verification of the chain finished (Unix time)",
)
VERIFICATIONS = Counter(
    "changegate_audit_chain_verifications_total", "Verifications of the chain, by result", ["result"]
)
SECONDS = Gauge("changegate_audit_chain_verification_duration_seconds", "How long the last verification took")


class ChainWatch:
    """Verify the whole chain every ``interval`` seconds (the first at start), until ``stop``."""

    def __init__(self, pool: asyncpg.Pool, interval: float, stop: asyncio.Event) -> None:
        self.pool, self.interval, self.stop = pool, interval, stop

    async def once(self) -> bool:
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            report, _ = await verify_log(conn)  # from the last archived month's end, if any
        elapsed = time.perf_counter() - started
        PROBLEMS.set(len(report.problems))
        ROWS.set(report.rows)
        SECONDS.set(elapsed)
        LAST_VERIFIED.set(time.time())
        VERIFICATIONS.labels(result="intact" if report.ok else "broken").inc()
        if report.ok:
            log.info("audit chain verified", rows=report.rows, seconds=round(elapsed, 3))
        else:
            log.error("AUDIT CHAIN BROKEN", rows=report.rows, problems=report.problems[:20])
        return report.ok

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self.once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("audit chain verification failed to run; next try later", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval)
