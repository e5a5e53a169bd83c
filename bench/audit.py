"""Audit append speed: rows/s the audit log appends — hash-chained, in the database — next to a plain
COPY of the very same rows into a table of the same shape, measured in the same run (the baseline).
Target: appending >= 50% of the COPY.

Three figures: COPY of the precomputed rows (baseline); ``append_executions`` on batches of
executions as the consumer polls them (chaining, hashing and the COPY, under the chain's lock); the
audit service itself draining a backlog of signed executions from the broker (decoding, verifying
two signatures each, claiming, appending; for reference, and to compare with another checkout's
service with --code). Runs on the embedded stack, which it starts and stops itself.

    .venv/bin/python bench/audit.py [--count 20000] [--batch 500] [--code DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _stack import SIGNING_KEYS, code_env, preload, start_service, stop
from changegate.audit.chain import GENESIS, to_column
from changegate.audit.store import _COLUMNS, append_executions, entries_for
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.contracts import Execution, ExecutionStatus, FieldWrite
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import create_pool, migrate, migrate_core
from changegate.core.kafka import ensure_topics
from changegate.core.serde import encode
from changegate.core.settings import CommonSettings
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from helpers import approved_decision

EXECUTOR_KEY = SigningKey.parse(SIGNING_KEYS["executor"], "executor")
REVIEW_KEY = SigningKey.parse(SIGNING_KEYS["review-api"], "review-api")


def executions(count: int) -> list[Execution]:
    """Applied executions of one field each, signed by the executor, of decisions signed by review-api."""
    out = []
    for i in range(count):
        decision = REVIEW_KEY.sign(approved_decision(f"audit-{i}", {"jobtitle": ("Engineer", "CTO")}))
        execution = Execution(
            execution_id=Execution.make_id(decision.decision_id),
            decision=decision,
            status=ExecutionStatus.APPLIED,
            writes=[FieldWrite(field="jobtitle", expected="Engineer", overwritten="Engineer", new="CTO")],
            crm_target="sandbox",
            crm_response_ids=[f"contact/audit-{i}@v2"],
            attempts=1,
            executed_at=utcnow(),
        )
        out.append(EXECUTOR_KEY.sign(execution))
    return out


async def copy_baseline(pool: asyncpg.Pool, batch: list[Execution]) -> float:
    """Rows/s of a COPY of the same rows (chained beforehand) into a table shaped like the log."""
    rows, seq, prev = [], 1, GENESIS
    for execution in batch:
        for entry in entries_for(execution, seq, prev):
            rows.append([to_column(c, getattr(entry, c)) for c in _COLUMNS])
            seq, prev = seq + 1, entry.hash
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE audit_copy (LIKE audit_entries INCLUDING ALL)")
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("audit_copy", columns=_COLUMNS, records=rows)
        return len(rows) / (time.perf_counter() - started)


async def append(pool: asyncpg.Pool, batch: list[Execution], size: int) -> float:
    """Rows/s of ``append_executions``, a transaction per ``size`` executions."""
    started, rows = time.perf_counter(), 0
    async with pool.acquire() as conn:
        for at in range(0, len(batch), size):
            async with conn.transaction():
                rows += await append_executions(conn, batch[at : at + size])
    return rows / (time.perf_counter() - started)


async def service(
    bootstrap: str, database_url: str, batch: list[Execution], workdir: Path, code: Path | None
) -> float:
    """Rows/s of the audit service draining the executions as a backlog."""
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(settings)
    names = TopicNames(settings.topic_prefix)
    payloads = [
        (e.decision.proposal.record_id.encode(), encode(make_envelope(e, service="executor"))) for e in batch
    ]
    await preload(settings, [names(Topic.EXECUTIONS)], payloads)
    pool = await create_pool(database_url, max_size=1)
    before = await pool.fetchval("SELECT count(*) FROM audit_entries")
    started = time.perf_counter()
    proc = start_service("changegate.audit", settings, workdir / "audit.log", free_port(), code_env(code))
    try:
        deadline = time.monotonic() + 1800
        first = last = 0.0
        while (n := await pool.fetchval("SELECT count(*) FROM audit_entries") - before) < len(batch):
            if n and not first:
                first = time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {n} of {len(batch)} rows after 30 minutes")
            await asyncio.sleep(0.05)
        last = time.perf_counter()
    finally:
        stop(proc)
        await pool.close()
    return len(batch) / (last - (first or started))


async def bench(args: argparse.Namespace, bootstrap: str, database_url: str, workdir: Path) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        await migrate_core(pool)
        await migrate(pool, "audit", "changegate.audit.migrations")
        print(f"signing {args.count} executions", flush=True)
        batch = executions(args.count)
        copied = await copy_baseline(pool, batch)
        appended = await append(pool, batch, args.batch)
    finally:
        await pool.close()
    print(f"COPY of the same rows (baseline):    {copied:>10,.0f} rows/s")
    share = f"{appended / copied:.0%} of the COPY"
    print(f"append_executions, {args.batch} a batch:     {appended:>10,.0f} rows/s  ({share})")
    ratio = appended / copied
    print(f"target: appending >= 50% of the COPY: {'met' if ratio >= 0.5 else 'NOT met'}")
    drained = await service(bootstrap, database_url, executions(args.service_count), workdir, args.code)
    where = f" (services of {args.code})" if args.code else ""
    print(f"audit service, from a backlog{where}: {drained:>10,.0f} rows/s  (decode, verify, claim, append)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000, help="executions (one row each) appended")
    parser.add_argument("--batch", type=int, default=500, help="executions per transaction (the poll size)")
    parser.add_argument("--service-count", type=int, default=5_000, help="executions the service drains")
    parser.add_argument("--code", type=Path, help="run the audit service from this checkout (e.g. main)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    postgres = EmbeddedPostgres(workdir / "pg")
    try:
        bootstrap = broker.start()
        database_url = postgres.start()
        asyncio.run(bench(args, bootstrap, database_url, workdir))
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
