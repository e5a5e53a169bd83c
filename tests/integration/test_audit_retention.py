"""Retention on the real PostgreSQL: rows land in their month's partition; `changegate audit
archive` exports a past month, verifies it, writes a manifest and detaches it (the standalone
verifier accepts the archive); the log still verifies after (CLI and API, incremental and from
genesis); a tampered month, a month out of order and the current month are refused and stay
attached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from changegate.audit.chain import GENESIS, to_column
from changegate.audit.checkpoints import check_checkpoints, sign_month_ends
from changegate.audit.retention import ArchiveRefusedError, archive_month, month_partitions, verify_log
from changegate.audit.store import append_executions, entries_for
from changegate.core.contracts import AuditEntry, ExecutionStatus
from changegate.core.db import migrate, migrate_core
from changegate.core.errors import TransientError
from changegate.core.kafka import is_transient
from changegate.core.settings import CommonSettings
from changegate.core.topics import TopicNames
from helpers import (
    ServiceProcess,
    approved_decision,
    audit_public_key,
    audit_service,
    eventually,
    execution_of,
    legacy_audit_row,
    rewrite_audit_chain,
    run_audit_verifier,
    signing_env,
    signing_key,
    verifier,
    viewer_client,
)

OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)
COLUMNS = [*AuditEntry.model_fields, "appended_at"]


def _now_month() -> date:
    now = datetime.now(UTC)
    return date(now.year, now.month, 1)


async def _append_at(pool: asyncpg.Pool, when: datetime, records: list[str]) -> None:
    """Rows chained after the head, appended as if at ``when`` (the append path stamps the clock;
    a past month is only reachable this way, as the owner)."""
    head = await pool.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    seq, prev = (head["seq"] + 1, head["hash"]) if head else (1, GENESIS)
    rows = []
    for record in records:
        execution = execution_of(
            approved_decision(record, {"jobtitle": ("Engineer", "CTO")}), ExecutionStatus.APPLIED
        )
        for entry in entries_for(execution, seq, prev):
            rows.append([*(to_column(c, getattr(entry, c)) for c in AuditEntry.model_fields), when])
            seq, prev = seq + 1, entry.hash
    await pool.copy_records_to_table("audit_entries", columns=COLUMNS, records=rows)


async def _append_legacy_at(pool: asyncpg.Pool, when: datetime) -> None:
    """One row as release 3 wrote it (hash version 1), appended as if at ``when``."""
    head = await pool.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    seq, prev = (head["seq"] + 1, head["hash"]) if head else (1, GENESIS)
    row = legacy_audit_row(seq, prev, "CTO")
    args: dict[str, Any] = dict(row)
    for name in ("previous_value", "new_value", "proposed_value"):
        args[name] = json.dumps(row[name])
    for name in ("proposed_at", "decided_at", "executed_at"):
        args[name] = datetime.fromisoformat(row[name])
    for name in ("proposal_id", "decision_id", "execution_id"):
        args[name] = __import__("uuid").UUID(row[name])
    args["appended_at"] = when
    places = ", ".join(f"${i + 1}" for i in range(len(args)))
    await pool.execute(f"INSERT INTO audit_entries ({', '.join(args)}) VALUES ({places})", *args.values())


async def _partition_of(pool: asyncpg.Pool, seq: int) -> str:
    return str(await pool.fetchval("SELECT tableoid::regclass::text FROM audit_entries WHERE seq = $1", seq))


async def _attached(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_entries'::regclass ORDER BY c.relname"
    )
    return [r["relname"] for r in rows]


@pytest.fixture
async def unsigned_log(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Rows in October (a version 1 row among them), November and this month; no checkpoint."""
    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    for month in (OCTOBER, NOVEMBER):
        await pool.execute(
            "SELECT audit_add_partition($1)", datetime(month.year, month.month, 15, tzinfo=UTC)
        )
    await _append_legacy_at(pool, datetime(2026, 10, 2, tzinfo=UTC))
    await _append_at(pool, datetime(2026, 10, 30, 23, 59, tzinfo=UTC), ["oct-1", "oct-2"])
    await _append_at(pool, datetime(2026, 11, 1, tzinfo=UTC), ["nov-1", "nov-2"])
    async with pool.acquire() as conn, conn.transaction():  # the append path: this month
        more = [approved_decision(f"now-{i}", {"city": (None, "Oslo")}) for i in range(2)]
        await append_executions(conn, [execution_of(d, ExecutionStatus.APPLIED) for d in more])
    return pool


@pytest.fixture
async def log(unsigned_log: asyncpg.Pool, settings: CommonSettings) -> asyncpg.Pool:
    """And the signed checkpoints of October's and November's last rows (as the service signs them)."""
    signed = await sign_month_ends(unsigned_log, signing_key("audit"), TopicNames(settings.topic_prefix))
    assert [c.seq for c in signed] == [3, 5]
    assert await sign_month_ends(unsigned_log, signing_key("audit"), TopicNames(settings.topic_prefix)) == []
    return unsigned_log


async def test_rows_land_in_their_months_partition(log: asyncpg.Pool) -> None:
    this = _now_month()
    assert [await _partition_of(log, s) for s in range(1, 8)] == [
        *["audit_entries_2026_10"] * 3,
        *["audit_entries_2026_11"] * 2,
        *[f"audit_entries_{this:%Y_%m}"] * 2,
    ]
    # This month and the next three are made; the audit role may make more, nothing else.
    attached = await _attached(log)
    assert f"audit_entries_{this:%Y_%m}" in attached
    assert len([p for p in attached if p >= f"audit_entries_{this:%Y_%m}"]) == 4
    report, anchor = await verify_log(log)
    assert (report.ok, report.rows, anchor) == (True, 7, None), report.problems


async def test_a_row_for_a_month_without_partition_makes_it_and_is_retried(pool: asyncpg.Pool) -> None:
    """Never dead-lettered: the batch fails as transient (retried without end) once the month's
    partition is made (the service was down for months, or could not make them)."""
    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    this = f"audit_entries_{_now_month():%Y_%m}"
    await pool.execute(f"ALTER TABLE audit_entries DETACH PARTITION {this}")
    await pool.execute(f"DROP TABLE {this}")

    async def append() -> None:
        execution = execution_of(approved_decision("r-1", {"city": (None, "Oslo")}), ExecutionStatus.APPLIED)
        async with month_partitions(pool, 1), pool.acquire() as conn, conn.transaction():
            await append_executions(conn, [execution])

    with pytest.raises(TransientError) as refused:
        await append()
    assert is_transient(refused.value)
    assert this in await _attached(pool)
    await append()
    assert await _partition_of(pool, 1) == this


def _cli(settings: CommonSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CHANGEGATE_DATABASE_URL": settings.database_url,
        "CHANGEGATE_TOPIC_PREFIX": settings.topic_prefix,
        "CHANGEGATE_TRUSTED_KEYS": signing_env("audit")["CHANGEGATE_TRUSTED_KEYS"],
    }
    return subprocess.run(
        [sys.executable, "-m", "changegate.cli", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_past_month_is_exported_verified_and_detached_and_the_log_still_verifies(
    log: asyncpg.Pool, settings: CommonSettings, tmp_path: Path
) -> None:
    this = _now_month()
    current = _cli(settings, "archive", "--month", f"{this:%Y-%m}", "--out", str(tmp_path))
    assert current.returncode == 1, current.stdout + current.stderr
    assert "is not over" in current.stderr
    out_of_order = _cli(settings, "archive", "--month", "2026-11", "--out", str(tmp_path))
    assert out_of_order.returncode == 1
    assert "archive the oldest months first" in out_of_order.stderr

    done = _cli(settings, "archive", "--month", "2026-10", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2026-10 archived" in done.stderr
    assert "audit_entries_2026_10" not in await _attached(log)
    assert await log.fetchval("SELECT count(*) FROM audit_archive.audit_entries_2026_10") == 3
    export, manifest_path = tmp_path / "audit-2026-10.jsonl", tmp_path / "audit-2026-10.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [line.get("seq") for line in lines[:3]] == [1, 2, 3]
    assert lines[0]["hash_version"] == 1
    assert (manifest["rows"], manifest["first_seq"], manifest["last_seq"], manifest["prev_hash"]) == (
        3,
        1,
        3,
        "",
    )
    assert manifest["last_hash"] == lines[2]["hash"]
    assert (manifest["checkpoint"]["seq"], manifest["checkpoint"]["hash"]) == (3, lines[2]["hash"])
    # The standalone verifier accepts the archive against its manifest, and a changed file it does not.
    result = run_audit_verifier(
        export, "--manifest", str(manifest_path), f"--public-key={audit_public_key()}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 3 rows (seq 1..3), 1 checkpoints, 0 problems" in result.stdout
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(export.read_text().replace("CTO", "CEO", 1))
    assert run_audit_verifier(tampered, "--manifest", str(manifest_path)).returncode == 1
    # Nothing changed in place: the detached table still refuses updates.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await log.execute("UPDATE audit_archive.audit_entries_2026_10 SET new_value = '\"x\"'")

    again = _cli(settings, "archive", "--month", "2026-10", "--out", str(tmp_path))
    assert again.returncode == 0
    assert "2026-10 was archived before" in again.stderr

    # The log verifies from the archived month's last row (from genesis, and through the CLI).
    report, anchor = await verify_log(log)
    assert (report.ok, report.from_seq, report.rows) == (True, 3, 4), report.problems
    assert anchor is not None
    assert anchor.label == "2026-10"
    marks, _ = await check_checkpoints(log, verifier())
    assert marks.ok, marks.problems
    cli = _cli(settings, "verify")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "rows 1..3 are archived (up to 2026-10" in cli.stderr
    assert "4 rows checked: chain intact" in cli.stderr

    # November next: its first row links to October's last; then this month's rows alone remain.
    result_nov = await archive_month(log, NOVEMBER, tmp_path, verifier())
    assert (result_nov.rows, result_nov.manifest_body["prev_hash"]) == (2, manifest["last_hash"])
    nov = tmp_path / "audit-2026-11.jsonl"
    ok = run_audit_verifier(
        nov, "--manifest", str(tmp_path / "audit-2026-11.manifest.json"), f"--public-key={audit_public_key()}"
    )
    assert ok.returncode == 0, ok.stdout
    report, anchor = await verify_log(log)
    assert (report.ok, report.from_seq, report.rows) == (True, 5, 2), report.problems


async def test_a_tampered_month_is_refused_and_stays_attached(
    log: asyncpg.Pool, tmp_path: Path, settings: CommonSettings
) -> None:
    await log.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
    await log.execute("UPDATE audit_entries SET new_value = '\"CEO\"' WHERE seq = 2")
    with pytest.raises(ArchiveRefusedError, match="row 2: content does not match its hash"):
        await archive_month(log, OCTOBER, tmp_path, verifier())

    # Rewritten and rehashed from there on: the signed checkpoint of row 3 no longer matches.
    await rewrite_audit_chain(log, {2: "CEO"})
    with pytest.raises(ArchiveRefusedError, match="checkpoint at 3: row 3 does not carry the signed hash"):
        await archive_month(log, OCTOBER, tmp_path, verifier())
    assert "audit_entries_2026_10" in await _attached(log)
    assert await log.fetchval("SELECT count(*) FROM audit_archives") == 0
    # The CLI's verify checks the signed checkpoints too (as the API does): the rewrite is caught.
    cli = _cli(settings, "verify")
    assert cli.returncode == 1
    assert "checkpoint at 3: row 3 no longer carries the signed hash (rewritten)" in cli.stderr
    assert not (tmp_path / "audit-2026-10.jsonl").exists()
    assert not (tmp_path / "audit-2026-10.jsonl.part").exists()


@pytest.fixture
def audit(
    unsigned_log: asyncpg.Pool, settings: CommonSettings, topics: None, tmp_path: Path
) -> Iterator[ServiceProcess]:
    with audit_service(settings, tmp_path, checkpoint_every=1000) as svc:  # started on a filled log
        yield svc


@pytest.fixture
async def client(audit: ServiceProcess, unsigned_log: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with viewer_client(unsigned_log, audit) as client:
        yield client


async def test_the_service_signs_month_ends_and_verifies_after_an_archive_saying_where_it_starts(
    unsigned_log: asyncpg.Pool, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    log = unsigned_log
    await eventually(
        lambda: client.get("/v1/audit/checkpoints"),
        lambda r: [c["seq"] for c in r.json()["items"]][:2] == [3, 5],
        what="the last rows of October and November signed by the service",
    )
    await archive_month(log, OCTOBER, tmp_path, verifier())
    for start in ("genesis", "checkpoint"):
        report = (await client.get("/v1/audit/verify", params={"from": start})).json()
        assert report["ok"], (start, report)
        assert report["archived"]["month"] == "2026-10"
        assert report["archived"]["last_seq"] == 3
    genesis = (await client.get("/v1/audit/verify", params={"from": "genesis"})).json()
    assert (genesis["from_seq"], genesis["rows"]) == (3, 4)
    # The service made this month's partition and the next three (at start), and says until when.
    metrics = (await client.get("/metrics")).text
    [ready] = [
        line for line in metrics.splitlines() if line.startswith("changegate_audit_partitions_ready_until")
    ]
    this = _now_month()
    assert (
        float(ready.split()[-1])
        == datetime(this.year + (this.month + 3) // 12, (this.month + 3) % 12 + 1, 1, tzinfo=UTC).timestamp()
    )
    # The chain's first attached row no longer linking to the archive is caught.
    await log.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
    await log.execute("UPDATE audit_entries SET prev_hash = 'x' WHERE seq = 4")
    broken = (await client.get("/v1/audit/verify", params={"from": "genesis"})).json()
    assert not broken["ok"]
    assert "row 4: prev_hash does not link to the row before it" in broken["problems"]
