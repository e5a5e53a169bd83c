"""PostgreSQL: the asyncpg pool, the versioned migration runner and the idempotent-consumer check."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import uuid
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from changegate.core.logging import get_logger
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = get_logger(__name__)

# A connection, whether acquired from a pool or opened directly; Queryable also admits the pool.
DbConn = asyncpg.Connection | PoolConnectionProxy
Queryable = DbConn | asyncpg.Pool
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATIONS_LOCK = 0x6367_6D69  # advisory lock id: concurrent replicas migrate one at a time


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + json.dumps(value).encode()  # jsonb's binary format: a version byte, then text


def _jsonb_decode(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary codecs, so COPY (binary) can write json/jsonb columns too.
    await conn.set_type_codec(
        "json",
        encoder=lambda v: json.dumps(v).encode(),
        decoder=json.loads,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


async def create_pool(dsn: str, *, max_size: int = 10, wait_seconds: float = 30) -> asyncpg.Pool:
    """A pool whose connections speak JSON for json/jsonb; waits for the database to come up."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, asyncpg.CannotConnectNowError)),
        wait=wait_exponential(multiplier=0.1, max=2),
        stop=stop_after_delay(wait_seconds),
        reraise=True,
    ):
        with attempt:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, init=_init_connection
            )
    return pool


def _load_migrations(package: str) -> list[tuple[int, str, str]]:
    found = []
    for entry in importlib.resources.files(package).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


async def pending_migrations(conn: DbConn, component: str, package: str) -> list[str]:
    """The migration files of ``package`` not yet applied for ``component`` (read-only: a
    service's own role may ask). An applied file whose content changed is an error."""
    if await conn.fetchval("SELECT to_regclass('changegate_migrations')") is None:
        return [f"{v:04d}_{n}.sql" for v, n, _ in _load_migrations(package)]
    rows = await conn.fetch(
        "SELECT version, checksum FROM changegate_migrations WHERE component = $1", component
    )
    done = {r["version"]: r["checksum"] for r in rows}
    pending = []
    for version, name, sql in _load_migrations(package):
        if version not in done:
            pending.append(f"{version:04d}_{name}.sql")
        elif done[version] != hashlib.sha256(sql.encode()).hexdigest():
            raise RuntimeError(f"migration {component}/{version:04d}_{name}.sql changed after it was applied")
    return pending


async def migrate(pool: asyncpg.Pool, component: str, package: str) -> list[int]:
    """Apply the numbered ``NNNN_name.sql`` files of ``package`` not yet applied for ``component``.

    Each file runs in its own transaction together with its bookkeeping row. An applied file whose
    content changed is an error: migrations are append-only. With nothing to apply, nothing is
    written (so a service's least-privileged role may call it)."""
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        if not await pending_migrations(conn, component, package):
            return applied_now
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATIONS_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS changegate_migrations (
                       component text NOT NULL, version int NOT NULL, name text NOT NULL,
                       checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            rows = await conn.fetch(
                "SELECT version, checksum FROM changegate_migrations WHERE component = $1",
                component,
            )
            done = {r["version"]: r["checksum"] for r in rows}
            for version, name, sql in _load_migrations(package):
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        raise RuntimeError(
                            f"migration {component}/{version:04d}_{name}.sql changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO changegate_migrations (component, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        component,
                        version,
                        name,
                        checksum,
                    )
                applied_now.append(version)
                log.info("migration applied", component=component, version=version, name=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATIONS_LOCK)
    return applied_now


async def migrate_core(pool: asyncpg.Pool) -> None:
    await migrate(pool, "core", "changegate.core.migrations")


async def claim_event(conn: DbConn, consumer: str, event_id: uuid.UUID) -> bool:
    """Record that ``consumer`` processed ``event_id``; False if it already had.

    Call inside the transaction that writes the event's effects."""
    row: Any = await conn.fetchval(
        "INSERT INTO changegate_processed_events (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        event_id,
    )
    return row is not None


async def claim_events(conn: DbConn, consumer: str, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """``claim_event`` for many events in one statement: the ids ``consumer`` had not processed
    (each once, however often it is in ``event_ids``)."""
    rows = await conn.fetch(
        "INSERT INTO changegate_processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[])"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        event_ids,
    )
    return {r["event_id"] for r in rows}
