"""Least privilege on the real PostgreSQL: after `changegate migrate`, each service's role touches
only its own tables and its own rows of the shared ones; the audit role can append to and read the
log, and nothing else — it cannot alter, delete, truncate, or switch off the triggers that keep the
log append-only. Each attack of issue 16 on the database is tried as each role."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from changegate.cli.migrate import migrate_all
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token, revoke_token
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
        this_month = f"{datetime.now(UTC):%Y_%m}"
        # It makes the log's next months (through the owner's function), and reads the archives.
        assert await audit.fetchval("SELECT audit_add_partitions(12)") == 12 - 3
        assert await audit.fetchval("SELECT count(*) FROM audit_archives") == 0

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
            "INSERT INTO audit_archives (month, rows, file_sha256, manifest, detached_as)"
            " VALUES ('2026-01-01', 0, '', '{}', '')",  # would move where verification starts
            "SELECT audit_add_partition(now() - interval '1 year')",  # only the owner's function may
            f"ALTER TABLE audit_entries DETACH PARTITION audit_entries_{this_month}",
            f"DROP TABLE audit_entries_{this_month}",
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


SERVICES = sorted(ROLES)
# Each service's own consumer name for its idempotency claims (a service's name, or it and a dash).
CONSUMER = {s: s if s != "audit" else "audit-executions" for s in SERVICES}


@pytest.mark.parametrize("service", [s for s in SERVICES if s != "audit"])
async def test_no_other_role_can_write_the_log_or_read_anothers_tables(migrated: str, service: str) -> None:
    conn = await asyncpg.connect(role_dsn(migrated, service))
    try:
        with pytest.raises(REFUSED):
            await conn.execute("INSERT INTO audit_decisions (decision_id) VALUES (gen_random_uuid())")
        with pytest.raises(REFUSED):
            await conn.execute("SELECT * FROM audit_entries")
        with pytest.raises(REFUSED):
            await conn.execute("SELECT audit_add_partitions(1)")
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
    finally:
        await conn.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_a_role_claims_reads_and_deletes_only_its_own_rows(migrated: str, service: str) -> None:
    """No role can mark another service's events as processed (attack: the policy role claiming
    ('audit-executions', <execution id>) so that audit skips an applied change), read its claims,
    or read, add or delete its outbox rows."""
    owner = await asyncpg.connect(migrated)
    conn = await asyncpg.connect(role_dsn(migrated, service))
    try:
        event = uuid.uuid4()
        for other in SERVICES:
            await owner.execute(
                "INSERT INTO changegate_processed_events (consumer, event_id) VALUES ($1, $2)",
                CONSUMER[other],
                event,
            )
            await owner.execute(
                "INSERT INTO changegate_outbox (service, topic, value) VALUES ($1, 't', '\\x00')", other
            )
        # Its own: claimed, seen, relayed, deleted.
        mine = uuid.uuid4()
        claimed = await conn.fetchval(
            "INSERT INTO changegate_processed_events (consumer, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            CONSUMER[service],
            mine,
        )
        assert claimed == 1
        await conn.execute(
            "INSERT INTO changegate_outbox (service, topic, value) VALUES ($1, 't', '\\x01')", service
        )
        seen = await conn.fetch("SELECT DISTINCT consumer FROM changegate_processed_events")
        assert [r["consumer"] for r in seen] == [CONSUMER[service]]
        assert {r["service"] for r in await conn.fetch("SELECT service FROM changegate_outbox")} == {service}

        for other in (s for s in SERVICES if s != service):
            for consumer in (CONSUMER[other], other, f"{other}-x"):
                with pytest.raises(REFUSED):  # a claim in another's name
                    await conn.execute(
                        "INSERT INTO changegate_processed_events (consumer, event_id) VALUES ($1, $2)",
                        consumer,
                        uuid.uuid4(),
                    )
            with pytest.raises(REFUSED):  # a message another service's relay would publish
                await conn.execute(
                    "INSERT INTO changegate_outbox (service, topic, value) VALUES ($1, 't', '\\x02')", other
                )
            with pytest.raises(REFUSED):
                await conn.execute(
                    "INSERT INTO changegate_outbox_failed (id, service, topic, value, created_at, error)"
                    " VALUES (-1, $1, 't', '\\x02', now(), 'x')",
                    other,
                )
        # Deleting everything deletes its own rows only.
        await conn.execute("DELETE FROM changegate_outbox")
        left = await owner.fetch("SELECT service FROM changegate_outbox")
        assert sorted(r["service"] for r in left) == sorted(s for s in SERVICES if s != service)
        assert await owner.fetchval(
            "SELECT count(*) FROM changegate_processed_events WHERE event_id = $1", event
        ) == len(SERVICES)
        with pytest.raises(REFUSED):  # claims are never deleted by a service
            await conn.execute("DELETE FROM changegate_processed_events")
    finally:
        await conn.close()
        await owner.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_no_role_can_take_over_an_api_token(migrated: str, service: str) -> None:
    """Attack: as a service's role, make a revoked token an admin's again, with a secret of one's
    own. Only the owner (`changegate tokens`) writes tokens; API services record last use only."""
    owner = await asyncpg.connect(migrated)
    conn = await asyncpg.connect(role_dsn(migrated, service))
    try:
        token_id, _ = await create_token(owner, "victim@example.com", Role.VIEWER, created_by="test")
        assert await revoke_token(owner, token_id)
        before = await owner.fetchrow("SELECT * FROM changegate_api_tokens WHERE id = $1", token_id)
        for statement in (
            "UPDATE changegate_api_tokens SET role = 'admin' WHERE id = $1",
            "UPDATE changegate_api_tokens SET revoked_at = NULL, expires_at = NULL WHERE id = $1",
            "UPDATE changegate_api_tokens SET secret_hash = '\\x00' WHERE id = $1",
            "UPDATE changegate_api_tokens SET last_used_at = now() WHERE id = $1",
            "DELETE FROM changegate_api_tokens WHERE id = $1",
            "INSERT INTO changegate_api_tokens (id, name, role, secret_hash, created_by)"
            " VALUES ($1 || 'x', 'me', 'admin', '\\x00', 'me')",
        ):
            with pytest.raises(REFUSED):
                await conn.execute(statement, token_id)
        api = ROLES[service].api
        if api:
            assert await conn.fetchval(
                "SELECT revoked_at IS NOT NULL FROM changegate_api_tokens WHERE id = $1", token_id
            )
            await conn.execute("SELECT changegate_token_used($1)", token_id)
        else:
            with pytest.raises(REFUSED):
                await conn.execute("SELECT 1 FROM changegate_api_tokens")
            with pytest.raises(REFUSED):
                await conn.execute("SELECT changegate_token_used($1)", token_id)
        after = await owner.fetchrow("SELECT * FROM changegate_api_tokens WHERE id = $1", token_id)
        assert after is not None
        assert before is not None
        assert {k: v for k, v in after.items() if k != "last_used_at"} == {
            k: v for k, v in before.items() if k != "last_used_at"
        }
        assert (after["last_used_at"] is not None) is api
    finally:
        await conn.close()
        await owner.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_only_the_policy_role_records_policy_versions(migrated: str, service: str) -> None:
    conn = await asyncpg.connect(role_dsn(migrated, service))
    insert = (
        "INSERT INTO changegate_policy_versions (policy_hash, version, source, content)"
        " VALUES (repeat('b', 64), 'evil', 'x', 'rules: []')"
    )
    try:
        if service == "policy":
            await conn.execute(insert)
        else:
            with pytest.raises(REFUSED):
                await conn.execute(insert)
        for statement in (
            "UPDATE changegate_policy_versions SET version = 'x'",
            "DELETE FROM changegate_policy_versions",
        ):
            with pytest.raises(REFUSED):
                await conn.execute(statement)
        if service in {"policy", "executor", "audit"}:
            await conn.fetch("SELECT * FROM changegate_policy_versions")
        else:
            with pytest.raises(REFUSED):
                await conn.fetch("SELECT * FROM changegate_policy_versions")
    finally:
        await conn.close()


async def test_ingest_has_no_database_role(settings: CommonSettings) -> None:
    """Ingest has no database: no role is made for it, and one an earlier version made is left
    without login or grants."""
    await migrate_all(settings, roles=True, passwords={})
    owner = await asyncpg.connect(settings.database_url)
    try:
        # What an earlier version left: an ingest role that may update API tokens.
        if not await owner.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'changegate_ingest'"):
            await owner.execute("CREATE ROLE changegate_ingest")
        await owner.execute("ALTER ROLE changegate_ingest LOGIN")
        await owner.execute("GRANT SELECT, UPDATE ON changegate_api_tokens TO changegate_ingest")
        await migrate_all(settings, roles=True, passwords={})
        assert "ingest" not in ROLES
        role = await owner.fetchrow("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'changegate_ingest'")
        assert role is not None
        assert role["rolcanlogin"] is False
        grants = await owner.fetchval(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'changegate_ingest'"
        )
        assert grants == 0
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(
                role_dsn(settings.database_url, "audit").replace("changegate_audit", "changegate_ingest")
            )
    finally:
        await owner.close()


async def test_migrate_is_idempotent_and_a_service_role_can_check_the_schema(
    migrated: str, settings: CommonSettings
) -> None:
    applied, granted = await migrate_all(settings, roles=True, passwords={})
    assert all(versions == [] for versions in applied.values())
    assert "changegate_audit" in granted
    assert "audit_entries: SELECT, INSERT" in granted["changegate_audit"]
