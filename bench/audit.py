"""Audit log figures, each beside its baseline or target, measured in the same run on the embedded
stack (which it starts and stops itself):

- append: rows/s of ``append_executions`` on batches as the consumer polls them (chaining, RFC 8785
  hashing and the COPY, under the chain's lock, a transaction each) next to a bare COPY of the very
  same rows, prebuilt, in one transaction into a table of the log's kind (partitioned by month, the
  same columns and indexes), in binary and in text format: the faster is the baseline. Target:
  >= 20,000 rows/s, or >= 50% of the COPY;
- the audit service draining a backlog of signed executions from the broker (decoding, verifying
  two signatures each, claiming, appending; for reference, and to compare with another checkout's
  service with --code);
- at --log-size rows (default 1,000,000): ``verify`` from genesis (target <= 10 s; beside it, the
  same verify with every row recomputed in Python, as it was before the database did it), incremental
  from the latest checkpoint after 1,000 new rows (target <= 100 ms), and the p99 of a record's
  history and of a filtered page (approver and outcome) as the API runs them (target <= 20 ms).

    .venv/bin/python bench/audit.py [--count 20000] [--batch 500] [--rounds 3] [--log-size 1000000]
                                    [--code DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _stack import SIGNING_KEYS, code_env, preload, start_service, stop
from changegate.audit import query
from changegate.audit.chain import GENESIS, to_column, verify
from changegate.audit.store import (
    _COLUMNS,
    Outcome,
    _copy_text,
    append_executions,
    append_outcomes,
    entries_for,
)
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.contracts import AuditMode, Decider, Execution, ExecutionStatus, FieldWrite
from changegate.core.contracts.base import PropertyValue, utcnow
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
DETECTOR_KEY = SigningKey.parse(SIGNING_KEYS["detector"], "detector")


def executions(count: int) -> list[Execution]:
    """Applied executions of one field each, signed by the executor, of decisions signed by review-api."""
    out = []
    for i in range(count):
        # Signed with this run's keys (the helper signs with the tests' own, which the service
        # started here does not trust: it dead-lettered every execution and the bench waited).
        template = approved_decision(f"audit-{i}", {"jobtitle": ("Engineer", "CTO")})
        proposal = DETECTOR_KEY.sign(template.proposal.model_copy(update={"signature": None}))
        decision = REVIEW_KEY.sign(template.model_copy(update={"proposal": proposal, "signature": None}))
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


# A table of the log's kind: its columns, defaults and indexes, partitioned by month the same way.
_LIKE_THE_LOG = """
CREATE TABLE {name} (LIKE audit_entries INCLUDING ALL) PARTITION BY RANGE (appended_at);
CREATE TABLE {name}_now PARTITION OF {name}
    FOR VALUES FROM (date_trunc('month', now())) TO (date_trunc('month', now()) + interval '2 months');
"""


async def copy_baseline(pool: asyncpg.Pool, batch: list[Execution]) -> tuple[float, float]:
    """Rows/s of a bare COPY of the same rows (chained beforehand), binary and text, each into a
    fresh table of the log's kind (partitioned by month, the same indexes), one transaction each."""
    entries, seq, prev = [], 1, GENESIS
    for execution in batch:
        for entry in entries_for(execution, seq, prev):
            entries.append(entry)
            seq, prev = seq + 1, entry.hash
    rows = [[to_column(c, getattr(entry, c)) for c in _COLUMNS] for entry in entries]
    text = "".join(
        "\t".join(_copy_text(to_column(c, getattr(entry, c))) for c in _COLUMNS) + "\n" for entry in entries
    ).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(text), 1 << 16):
            yield text[at : at + (1 << 16)]

    rates = []
    async with pool.acquire() as conn:
        for kind in ("binary", "text"):
            name = f"copy_{kind}_{uuid.uuid4().hex[:8]}"
            await conn.execute(_LIKE_THE_LOG.format(name=name))
            started = time.perf_counter()
            async with conn.transaction():
                if kind == "binary":
                    await conn.copy_records_to_table(name, columns=_COLUMNS, records=rows)
                else:
                    await conn.copy_to_table(name, columns=_COLUMNS, source=chunks(), format="text")
            rates.append(len(rows) / (time.perf_counter() - started))
    return rates[0], rates[1]


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
        deadline = time.monotonic() + 600
        first = last = 0.0
        while (n := await pool.fetchval("SELECT count(*) FROM audit_entries") - before) < len(batch):
            if n and not first:
                first = time.perf_counter()
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError(
                    f"only {n} of {len(batch)} rows: {(workdir / 'audit.log').read_text()[-2000:]}"
                )
            await asyncio.sleep(0.05)
        last = time.perf_counter()
    finally:
        stop(proc)
        await pool.close()
    return len(batch) / (last - (first or started))


MODES = list(AuditMode)
FIELDS_PER_OUTCOME = 10


async def fill(pool: asyncpg.Pool, rows: int, prefix: str = "big") -> int:
    """``rows`` rows: outcomes of 10 fields each over rows/10 records, every outcome and 50 approvers
    (built from one decision by copies: signing a million would measure signing)."""
    template = approved_decision("audit-big", {"jobtitle": ("Engineer", "CTO")})
    deciders = [Decider(kind="human", identity=f"reviewer-{n}@example.com") for n in range(50)]
    fields: list[tuple[str, PropertyValue, PropertyValue]] = [
        (f"field_{j}", "before", "after") for j in range(FIELDS_PER_OUTCOME)
    ]
    now = utcnow()
    done, batch = 0, []
    progress = max(rows // 10, 1)
    for i in range(rows // FIELDS_PER_OUTCOME):
        proposal = template.proposal.model_copy(
            update={"record_id": f"{prefix}-{i}", "proposal_id": uuid.uuid4()}
        )
        decision = template.model_copy(
            update={"proposal": proposal, "decision_id": uuid.uuid4(), "decided_by": deciders[i % 50]}
        )
        mode = MODES[i % len(MODES)]
        executed = mode.applied or mode in (AuditMode.CONFLICT, AuditMode.FAILED, AuditMode.NOOP)
        batch.append(
            Outcome(
                decision, mode, fields, "bench", uuid.uuid4() if executed else None, now if executed else None
            )
        )
        if len(batch) == 500:
            async with pool.acquire() as conn, conn.transaction():
                done += await append_outcomes(conn, batch)
            batch = []
            if done % progress < 500 * FIELDS_PER_OUTCOME:
                print(f"  {done:,} rows", flush=True)
    if batch:
        async with pool.acquire() as conn, conn.transaction():
            await append_outcomes(conn, batch)
    return rows // FIELDS_PER_OUTCOME  # records filled


def p99(samples: list[float]) -> float:
    return sorted(samples)[max(0, int(len(samples) * 0.99) - 1)]


async def at_scale(pool: asyncpg.Pool, size: int) -> None:
    print(f"filling the log to {size:,} rows", flush=True)
    started = time.perf_counter()
    records = await fill(pool, size - await pool.fetchval("SELECT count(*) FROM audit_entries"))
    print(f"  filled in {time.perf_counter() - started:.0f} s; ANALYZE", flush=True)
    await pool.execute("ANALYZE audit_entries")
    started = time.perf_counter()
    full = await verify(pool)
    full_s = time.perf_counter() - started
    assert full.ok, full.problems[:5]
    started = time.perf_counter()
    in_python = await verify(pool, in_database=False)
    python_s = time.perf_counter() - started
    assert in_python == full, in_python.problems[:5]
    await fill(pool, 1_000, prefix="more")
    started = time.perf_counter()
    incremental = await verify(pool, start=(full.head_seq, full.head_hash))
    incremental_s = time.perf_counter() - started
    assert incremental.ok, incremental.problems
    assert incremental.rows == 1_000, incremental.rows
    print(f"verify from genesis, {full.rows:,} rows:       {full_s:>8.2f} s   (target <= 10 s)")
    print(f"  the same, every row recomputed in Python:  {python_s:>8.2f} s   (the previous way)")
    print(
        f"verify after a checkpoint, {incremental.rows:,} new rows: {incremental_s * 1000:>8.1f} ms"
        "  (target <= 100 ms)"
    )
    history, filtered = [], []
    for n in range(300):
        at = time.perf_counter()
        rows = await query.page(
            pool, query.Filters(record_id=f"big-{(n * 7919) % records}", object_type="contact"), 0, 1001
        )
        history.append(time.perf_counter() - at)
        assert len(rows) == FIELDS_PER_OUTCOME
        filters = query.Filters(approver=f"reviewer-{n % 50}@example.com", modes=(MODES[n % len(MODES)],))
        at = time.perf_counter()
        await query.page(pool, filters, (n * 3331) % size, 101)
        filtered.append(time.perf_counter() - at)
    print(f"record history p99 (300 records):       {p99(history) * 1000:>8.1f} ms  (target <= 20 ms)")
    print(f"filtered page p99 (approver + outcome):  {p99(filtered) * 1000:>8.1f} ms  (target <= 20 ms)")


async def bench(args: argparse.Namespace, bootstrap: str, database_url: str, workdir: Path) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        await migrate_core(pool)
        await migrate(pool, "audit", "changegate.audit.migrations")
        print(f"signing {args.count} executions", flush=True)
        batch = executions(args.count)
        rounds = []
        for _ in range(args.rounds):  # the machine may be shared: each round is a COPY and an append
            binary, text = await copy_baseline(pool, batch)
            rounds.append((binary, text, await append(pool, batch, args.batch)))
    finally:
        await pool.close()
    for n, (binary, text, appended) in enumerate(rounds, 1):
        share = appended / max(binary, text)
        print(
            f"  round {n}: COPY binary {binary:,.0f}, text {text:,.0f};"
            f" append {appended:,.0f} rows/s ({share:.0%})"
        )
    binary, text, appended = (statistics.median(r[i] for r in rounds) for i in range(3))
    copied = max(binary, text)
    print(f"bare COPY of the same rows, binary:  {binary:>10,.0f} rows/s  (median of {len(rounds)} rounds)")
    print(f"bare COPY of the same rows, text:    {text:>10,.0f} rows/s")
    print(
        f"append_executions, {args.batch} a batch:     {appended:>10,.0f} rows/s"
        f"  ({appended / copied:.0%} of the faster COPY)"
    )
    met = appended / copied >= 0.5 or appended >= 20_000
    print(f"target: >= 20,000 rows/s or >= 50% of the COPY: {'met' if met else 'NOT met'}")
    drained = await service(bootstrap, database_url, executions(args.service_count), workdir, args.code)
    where = f" (services of {args.code})" if args.code else ""
    print(f"audit service, from a backlog{where}: {drained:>10,.0f} rows/s  (decode, verify, claim, append)")
    if args.log_size:
        pool = await create_pool(database_url, max_size=2)
        try:
            await at_scale(pool, args.log_size)
        finally:
            await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000, help="executions (one row each) appended")
    parser.add_argument("--rounds", type=int, default=3, help="COPY + append rounds (medians reported)")
    parser.add_argument("--batch", type=int, default=500, help="executions per transaction (the poll size)")
    parser.add_argument("--service-count", type=int, default=5_000, help="executions the service drains")
    parser.add_argument(
        "--log-size", type=int, default=1_000_000, help="rows for verify and queries (0: skip)"
    )
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
