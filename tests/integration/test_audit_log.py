"""The audit log in PostgreSQL: every outcome chained, older rows still verifying after the
migration that brought them, and the chain as the standalone verifier reads an export."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import asyncpg
from changegate.audit.chain import GENESIS, row_hash, verify
from changegate.audit.store import append_decisions, append_executions, record_decisions
from changegate.core.contracts import (
    DecisionOutcome,
    ExecutionStatus,
)
from changegate.core.db import _load_migrations, migrate, migrate_core
from helpers import approved_decision, ended_decision, execution_of, legacy_audit_row

MIGRATIONS = "changegate.audit.migrations"


async def test_every_outcome_is_chained_once_and_verifies(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "audit", MIGRATIONS)
    decisions = [
        ended_decision(o, f"r-{o.value}") for o in (DecisionOutcome.REJECTED, DecisionOutcome.EXPIRED)
    ]
    decisions.append(ended_decision(DecisionOutcome.SUPERSEDED, "r-superseded"))
    executions = [
        execution_of(approved_decision(f"r-{s.value}", {"city": (None, "Oslo")}), s, error=f"{s.value}!")
        for s in ExecutionStatus
    ]
    for _ in range(2):  # a redelivered batch writes nothing twice
        async with pool.acquire() as conn, conn.transaction():
            kept = await record_decisions(conn, decisions)
            await append_decisions(conn, [d for d, k in zip(decisions, kept, strict=True) if k])
            fresh = await conn.fetch(
                "SELECT e FROM unnest($1::uuid[]) e WHERE NOT EXISTS"
                " (SELECT 1 FROM audit_entries WHERE execution_id = e)",
                [e.execution_id for e in executions],
            )
            todo = {r["e"] for r in fresh}
            await append_executions(conn, [e for e in executions if e.execution_id in todo])
    rows = await pool.fetch("SELECT record_id, mode, reason, decider FROM audit_entries ORDER BY seq")
    assert [(r["record_id"], r["mode"]) for r in rows] == [
        ("r-rejected", "rejected"),
        ("r-expired", "expired"),
        ("r-superseded", "superseded"),
        ("r-applied", "approved"),
        ("r-conflict", "conflict"),
        ("r-failed", "failed"),
        ("r-noop", "noop"),
    ]
    assert (rows[0]["reason"], rows[0]["decider"]) == ("rejected in review", "human")
    assert rows[5]["reason"] == "failed!"
    report = await verify(pool)
    assert (report.ok, report.rows) == (True, 7), report.problems


async def _apply_up_to(pool: asyncpg.Pool, last: int) -> None:
    """The audit migrations up to ``last``, as an older release applied them."""
    await migrate_core(pool)
    for version, name, sql in _load_migrations(MIGRATIONS):
        if version <= last:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO changegate_migrations (component, version, name, checksum)"
                    " VALUES ('audit', $1, $2, $3)",
                    version,
                    name,
                    hashlib.sha256(sql.encode()).hexdigest(),
                )


async def test_rows_written_before_the_migration_still_verify_and_the_chain_continues(
    pool: asyncpg.Pool,
) -> None:
    await _apply_up_to(pool, 3)
    prev, hashes = GENESIS, []
    for seq, value in enumerate(["CTO", 2.5e16, 10**18, "Ünïcode"], 1):
        row = legacy_audit_row(seq, prev, value)
        args = dict(row)
        for name in ("previous_value", "new_value", "proposed_value"):
            args[name] = json.dumps(row[name])
        for name in ("proposed_at", "decided_at", "executed_at"):
            args[name] = datetime.fromisoformat(row[name])
        for name in ("proposal_id", "decision_id", "execution_id"):
            args[name] = uuid.UUID(row[name])
        places = ", ".join(f"${i + 1}" for i in range(len(args)))
        await pool.execute(f"INSERT INTO audit_entries ({', '.join(args)}) VALUES ({places})", *args.values())
        prev = row["hash"]
        hashes.append(prev)

    assert await migrate(pool, "audit", MIGRATIONS) == [4, 5, 6]
    stored = await pool.fetch("SELECT *, tableoid::regclass::text AS part FROM audit_entries ORDER BY seq")
    assert {r["hash_version"] for r in stored} == {1}
    assert all(row_hash(r) == r["hash"] for r in stored)
    # Partitioned by month (0006): the old rows in their outcome's month, moved as they were.
    assert {r["part"] for r in stored} == {"audit_entries_2026_11"}
    assert [r["hash"] for r in stored] == hashes
    async with pool.acquire() as conn, conn.transaction():
        decision = approved_decision("new-1", {"city": (None, "Oslo")})
        await append_executions(conn, [execution_of(decision, ExecutionStatus.APPLIED)])
    report = await verify(pool)
    assert (report.ok, report.rows) == (True, 5), report.problems
    new = await pool.fetchrow(
        "SELECT hash_version, prev_hash, tableoid::regclass::text AS part FROM audit_entries WHERE seq = 5"
    )
    assert new is not None
    assert (new["hash_version"], new["prev_hash"]) == (2, prev)
    assert new["part"] == f"audit_entries_{datetime.now(UTC):%Y_%m}"  # appended now: this month
