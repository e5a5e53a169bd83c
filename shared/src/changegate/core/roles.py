"""Least privilege in PostgreSQL: migrations run as the owner (`changegate migrate`); each service
runs as its own login role that may touch only its own tables, in only the ways it needs. The audit
role may INSERT and SELECT the log, read its archives, and make its next months' partitions through
the owner's function ``audit_add_partitions`` — nothing else: not being the owner, it cannot ALTER
the table, DISABLE its triggers, TRUNCATE, DELETE or detach a month.

The shared tables are shared by rows: row-level security (core migration 0006) keeps each role to
its own idempotency claims and outbox rows. API tokens are written by the owner only; the services
that authenticate them read them and record a token's last use through ``changegate_token_used``.
Ingest has no role: it has no database."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg
from changegate.core.db import DbConn
from changegate.core.logging import get_logger

log = get_logger(__name__)

READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
# Every consumer: the idempotent-consumer claims, its outbox, and reading the migration state.
CORE = {
    "changegate_processed_events": ("SELECT", "INSERT"),
    "changegate_outbox": ("SELECT", "INSERT", "DELETE"),
    "changegate_outbox_failed": ("SELECT", "INSERT"),
    "changegate_migrations": ("SELECT",),
}
# Services with an API: authenticate tokens; their last use only through this function.
TOKENS = {"changegate_api_tokens": ("SELECT",)}
TOKEN_USED = "changegate_token_used(text)"
# Tables of one service that others read: the policy versions the executor and audit check.
SHARED: dict[str, dict[str, tuple[str, ...]]] = {
    "changegate_policy_versions": {
        "policy": ("SELECT", "INSERT"),
        "executor": ("SELECT",),
        "audit": ("SELECT",),
    },
}
# Roles earlier versions made that no service runs as any more: left without login or grants.
RETIRED = ("changegate_ingest",)


@dataclass(frozen=True)
class ServiceRole:
    service: str
    table_prefixes: tuple[str, ...]  # the service's own tables
    privileges: tuple[str, ...] = READ_WRITE
    api: bool = False
    read_only: tuple[str, ...] = ()  # own tables it may only read
    functions: tuple[str, ...] = ()  # functions it may call (SECURITY DEFINER ones: the owner's powers)

    @property
    def name(self) -> str:
        return f"changegate_{self.service.replace('-', '_')}"


ROLES = {
    r.service: r
    for r in (
        ServiceRole("detector", ("detector_",)),
        ServiceRole("policy", ("policy_",), api=True),
        ServiceRole("review-api", ("review_",), api=True),
        ServiceRole("executor", ("executor_", "sandbox_crm_")),
        ServiceRole(
            "audit",
            ("audit_",),
            privileges=("SELECT", "INSERT"),
            api=True,
            read_only=("audit_archives",),  # written by `changegate audit archive`, as the owner
            functions=("audit_add_partitions(integer)",),  # the log's next months
        ),
    )
}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def ensure_roles(conn: DbConn, passwords: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Create (or update) each service's login role and grant exactly its privileges, revoking
    anything else it had on our tables. Run as the owner after the migrations. Returns the grants."""
    passwords = passwords or {}
    database = await conn.fetchval("SELECT current_database()")
    # Partitions get no grants of their own: reached through their table, its grants apply.
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    tables = [r["relname"] for r in rows]
    # Each serial column's sequence and the table it belongs to.
    sequences = {
        r["seq"]: r["tbl"]
        for r in await conn.fetch(
            "SELECT s.relname AS seq, t.relname AS tbl FROM pg_class s"
            " JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')"
            " JOIN pg_class t ON t.oid = d.refobjid"
            " JOIN pg_namespace n ON n.oid = s.relnamespace AND n.nspname = 'public'"
            " WHERE s.relkind = 'S'"
        )
    }
    # Nobody but the owner creates objects in the schema (PostgreSQL < 15 let PUBLIC do it).
    await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    granted: dict[str, list[str]] = {}
    async with conn.transaction():
        for role in ROLES.values():
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role.name)
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateObjectError):  # another database's migrate won
                    async with conn.transaction():
                        await conn.execute(f"CREATE ROLE {_ident(role.name)} LOGIN")
            password = passwords.get(role.service)
            await conn.execute(
                f"ALTER ROLE {_ident(role.name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                + (f" PASSWORD {_literal(password)}" if password else "")
            )
            await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role.name)}")
            await conn.execute(f"GRANT USAGE ON SCHEMA public TO {_ident(role.name)}")
            await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {_ident(role.name)}")
            await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {_ident(role.name)}")
            wanted: dict[str, tuple[str, ...]] = {**CORE, **(TOKENS if role.api else {})}
            wanted |= {
                table: grants[role.service] for table, grants in SHARED.items() if role.service in grants
            }
            for table in tables:
                if role.table_prefixes and table.startswith(role.table_prefixes):
                    wanted[table] = ("SELECT",) if table in role.read_only else role.privileges
            grants = []
            for table, privileges in sorted(wanted.items()):
                if table in tables:
                    what = ", ".join(privileges)
                    await conn.execute(f"GRANT {what} ON {_ident(table)} TO {_ident(role.name)}")
                    grants.append(f"{table}: {', '.join(privileges)}")
            for sequence, owner_table in sequences.items():  # serial ids of tables it inserts into
                if "INSERT" in wanted.get(owner_table, ()):
                    await conn.execute(f"GRANT USAGE ON SEQUENCE {_ident(sequence)} TO {_ident(role.name)}")
            if await conn.fetchval("SELECT to_regprocedure($1)", TOKEN_USED) is not None:
                grant = "GRANT {} TO {}" if role.api else "REVOKE {} FROM {}"
                await conn.execute(grant.format(f"EXECUTE ON FUNCTION {TOKEN_USED}", _ident(role.name)))
                if role.api:
                    grants.append(f"{TOKEN_USED}: EXECUTE")
            for function in role.functions:
                if await conn.fetchval("SELECT to_regprocedure($1)", function) is not None:
                    await conn.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {_ident(role.name)}")
                    grants.append(f"{function}: EXECUTE")
            granted[role.name] = grants
            log.info("role granted", role=role.name, grants=grants)
        for name in RETIRED:
            await _retire(conn, name, database)
    return granted


async def _retire(conn: DbConn, name: str, database: str) -> None:
    """A role no service runs as any more keeps nothing: no login, no grant on our objects."""
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        return
    role = _ident(name)
    await conn.execute(f"ALTER ROLE {role} NOLOGIN")
    await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
    await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
    await conn.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {role}")
    await conn.execute(f"REVOKE ALL ON SCHEMA public FROM {role}")
    await conn.execute(f"REVOKE ALL ON DATABASE {_ident(database)} FROM {role}")
    log.info("retired role left without login or grants", role=name)


def role_dsn(owner_dsn: str, service: str, password: str | None = None) -> str:
    """The owner's DSN with the service's role as user (same host, port, database, options)."""
    scheme, _, rest = owner_dsn.partition("://")
    _, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    secret = f":{password}" if password else ":"
    return f"{scheme}://{ROLES[service].name}{secret}@{hostpart}"
