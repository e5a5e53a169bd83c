"""Least privilege on the real PostgreSQL: after `changegate migrate`, each service's role touches
only its own tables; the audit role can append to and read the log, and nothing else — it cannot
alter, delete, truncate, or switch off the triggers that keep the log append-only."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from changegate.cli.migrate import migrate_all
from changegate.core.roles import ROLES, role_dsn
from changegate.core.settings import CommonSettings

ROW = {
    "seq": 1,
    "object_type": "contact",
    "record_id": "r-1",
    "field": "jobtitle",
    "previous_value": '"Engineer"',
    "new_value": '"CTO"',
    "source_system": "clay",
    "source_event_id": "e-1",
    "detector": "enrichment@1",
    "confidence": 0.9,
    "mode": "approved",
    "approver": "alice@example.com",
    "proposal_id": uuid.uuid4(),
    "decision_id": uuid.uuid4(),
    "execution_id": uuid.uuid4(),
    "proposed_at": "2026-11-25T09:00:00Z",
    "decided_at": "2026-11-25T09:00:00Z",
    "executed_at": "2026-11-25T09:00:00Z",
    "prev_hash": "",
    "hash": "h1",
}
REFUSED = (asyncpg.InsufficientPrivilegeError, asyncpg.exceptions.RaiseError)


@pytest.fixture
async def migrated(settings: CommonSettings) -> str:
    await migrate_all(settings, roles=True, passwords={})
    return settings.database_url


async def test_the_audit_role_appends_and_reads_and_can_do_nothing_else(migrated: str) -> None:
    audit = await asyncpg.connect(role_dsn(migrated, "audit"))
    try:
        columns = ", ".join(ROW)
        values = ", ".join(f"${i + 1}" for i in range(len(ROW)))
        args = [
            v
            if k not in {"proposed_at", "decided_at", "executed_at"}
            else __import__("datetime").datetime.fromisoformat(v)
            for k, v in ROW.items()
        ]
        await audit.execute(f"INSERT INTO audit_entries ({columns}) VALUES ({values})", *args)
        assert await audit.fetchval("SELECT count(*) FROM audit_entries") == 1

        for statement in (
            "UPDATE audit_entries SET new_value = '\"EVIL\"'",
            "DELETE FROM audit_entries",
            "TRUNCATE audit_entries",
            "ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only",
            "ALTER TABLE audit_entries DISABLE TRIGGER ALL",
            "DROP TRIGGER audit_entries_append_only ON audit_entries",
            "ALTER TABLE audit_entries DROP COLUMN hash",
            "DROP TABLE audit_entries",
            "UPDATE audit_decisions SET outcome = 'approved'",
            "DELETE FROM changegate_migrations",
            "CREATE TABLE mine (x int)",
            "SELECT * FROM review_queue",
            "SET session_replication_role = replica",  # would silence triggers: superuser only
        ):
            with pytest.raises(REFUSED):
                await audit.execute(statement)
        assert await audit.fetchval("SELECT new_value FROM audit_entries") == '"CTO"'
        attributes = await audit.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        )
        assert attributes is not None
        assert tuple(attributes) == (False, False, False, False)
        owner = await audit.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_entries'")
        assert owner != "changegate_audit"
    finally:
        await audit.close()


@pytest.mark.parametrize("service", ["detector", "policy", "review-api", "executor", "ingest"])
async def test_no_other_role_can_write_the_log_or_read_anothers_tables(migrated: str, service: str) -> None:
    conn = await asyncpg.connect(role_dsn(migrated, service))
    try:
        with pytest.raises(REFUSED):
            await conn.execute("INSERT INTO audit_decisions (decision_id) VALUES (gen_random_uuid())")
        with pytest.raises(REFUSED):
            await conn.execute("SELECT * FROM audit_entries")
        others = {s: r for s, r in ROLES.items() if s != service and r.table_prefixes}
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if any(r["tablename"].startswith(o.table_prefixes) for o in others.values())
        ]
        assert tables
        for table in tables:
            with pytest.raises(REFUSED):
                await conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1')
        # What every consumer needs: its claims and its outbox.
        await conn.execute(
            "INSERT INTO changegate_processed_events (consumer, event_id) VALUES ($1, gen_random_uuid())",
            service,
        )
        await conn.execute(
            "INSERT INTO changegate_outbox (service, topic, value) VALUES ($1, 't', '\\x00')", service
        )
    finally:
        await conn.close()


async def test_migrate_is_idempotent_and_a_service_role_can_check_the_schema(
    migrated: str, settings: CommonSettings
) -> None:
    applied, granted = await migrate_all(settings, roles=True, passwords={})
    assert all(versions == [] for versions in applied.values())
    assert "changegate_audit" in granted
    assert "audit_entries: SELECT, INSERT" in granted["changegate_audit"]
