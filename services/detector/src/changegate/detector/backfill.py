"""Loading a CRM's existing records into the detector (`changegate crm import`), without proposing.

The CRM is read a page at a time through its adapter (the executor's: HubSpot's list endpoint with
its ``after`` cursor, 100 a page). Each page is folded into the detector's state
(``state.load_snapshot``: a value only where nothing newer is known, so a webhook that arrived
during the import keeps its value) together with the cursor after it, in one transaction: an
import stopped anywhere — Ctrl-C, a crash, the CRM down for longer than its retries — resumes at
the first page not loaded, and no record is loaded twice. The next page is read while the last one
is written.

Every detector replica indexes what is loaded: each page's records go on the detector's changelog
(``changelog.py``, through its outbox) in the page's transaction, as a change no search saw; a
running replica re-reads them from the database as it reads the changelog, and one that starts
later rebuilds its index from the database, which holds them already."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import ObjectType
from changegate.core.topics import TopicNames
from changegate.detector import state
from changegate.detector.changelog import SERVICE, Changed, change_messages

PAGES_AHEAD = 2  # pages read ahead of the one being written


class ImportRunningError(Exception):
    """Another import of the same object type from the same CRM holds the checkpoint."""


class Snapshot(Protocol):
    @property
    def record_id(self) -> str: ...
    @property
    def properties(self) -> dict[str, Any]: ...
    @property
    def updated_at(self) -> datetime: ...


class Page(Protocol):
    @property
    def records(self) -> Sequence[Snapshot]: ...
    @property
    def after(self) -> str | None: ...


class Source(Protocol):
    """What an import reads: the executor's CRM adapter satisfies it."""

    async def list_page(
        self, object_type: ObjectType, fields: Sequence[str], after: str | None, limit: int
    ) -> Page: ...

    async def count(self, object_type: ObjectType) -> int | None: ...


@dataclass(frozen=True)
class Checkpoint:
    source: str
    object_type: ObjectType
    after: str | None
    loaded: int
    pages: int
    total: int | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


async def checkpoint(pool: asyncpg.Pool, source: str, object_type: ObjectType) -> Checkpoint | None:
    row = await pool.fetchrow(
        "SELECT after, loaded, pages, total, started_at, finished_at FROM detector_imports"
        " WHERE source = $1 AND object_type = $2",
        source,
        object_type.value,
    )
    if row is None:
        return None
    return Checkpoint(
        source,
        object_type,
        row["after"],
        row["loaded"],
        row["pages"],
        row["total"],
        row["started_at"],
        row["finished_at"],
    )


async def begin(
    pool: asyncpg.Pool, source: str, object_type: ObjectType, total: int | None, restart: bool
) -> Checkpoint:
    """The import to carry on: the unfinished one, or a new one (``restart``: anew in any case)."""
    found = await checkpoint(pool, source, object_type)
    if found is not None and not found.finished and not restart:
        return found
    await pool.execute(
        "INSERT INTO detector_imports (source, object_type, total) VALUES ($1, $2, $3)"
        " ON CONFLICT (source, object_type) DO UPDATE SET after = NULL, loaded = 0, pages = 0,"
        " total = EXCLUDED.total, started_at = now(), updated_at = now(), finished_at = NULL",
        source,
        object_type.value,
        total,
    )
    started = await checkpoint(pool, source, object_type)
    assert started is not None
    return started


async def run(
    pool: asyncpg.Pool,
    crm: Source,
    source: str,
    object_type: ObjectType,
    fields: Sequence[str],
    *,
    names: TopicNames,
    page_size: int = 100,
    restart: bool = False,
    on_page: Callable[[Checkpoint], None] = lambda _: None,
) -> Checkpoint:
    """Load every record of ``object_type`` from ``crm`` (``source`` names it in the checkpoint),
    from where the last import of it stopped; ``names``: the detector's topics (its changelog);
    ``on_page`` after each page is committed."""
    async with pool.acquire() as holder:
        # One import per CRM and object type at a time: the lock lives as long as this connection.
        key = f"changegate import {source} {object_type.value}"
        if not await holder.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            raise ImportRunningError(f"an import of {object_type.value}s from {source} is running already")
        try:
            loader = _Loader(pool, names, source, object_type)
            return await _run(loader, crm, fields, page_size, restart, on_page)
        finally:
            await holder.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def _run(
    loader: _Loader,
    crm: Source,
    fields: Sequence[str],
    page_size: int,
    restart: bool,
    on_page: Callable[[Checkpoint], None],
) -> Checkpoint:
    pool, source, object_type = loader.pool, loader.source, loader.object_type
    total = await crm.count(object_type)
    at = await begin(pool, source, object_type, total, restart)
    if at.finished:
        return at
    pages: asyncio.Queue[Page] = asyncio.Queue(PAGES_AHEAD)

    async def read(after: str | None) -> None:
        while True:
            page = await crm.list_page(object_type, fields, after, page_size)
            await pages.put(page)
            if page.after is None:
                return
            after = page.after

    reader = asyncio.create_task(read(at.after), name="import-reader")
    try:
        while not at.finished:
            at = await loader.write(at, await _next(pages, reader))
            on_page(at)
        return at
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _next(pages: asyncio.Queue[Page], reader: asyncio.Task[None]) -> Page:
    """The next page read; if the reader failed instead, its error."""
    getting = asyncio.ensure_future(pages.get())
    while not getting.done():
        await asyncio.wait([getting, reader], return_when=asyncio.FIRST_COMPLETED)
        if not getting.done() and reader.done():
            if reader.exception() is not None:
                getting.cancel()
                reader.result()
            await getting  # it ended after queueing its last page
    return getting.result()


@dataclass(frozen=True)
class _Loader:
    pool: asyncpg.Pool
    names: TopicNames
    source: str
    object_type: ObjectType
    writer: str = field(default_factory=lambda: f"import-{uuid.uuid4().hex[:12]}")  # this run

    async def write(self, at: Checkpoint, page: Page) -> Checkpoint:
        """A page's records, their changelog messages and the cursor after it, in one transaction;
        the last page (no cursor after it) finishes the import in that same transaction."""
        object_type = self.object_type
        records = [(r.record_id, r.properties, state.to_ms(r.updated_at)) for r in page.records]
        loaded = f"import:{object_type.value}:{page.after or 'last'}"
        changed = [Changed(object_type, r[0], False, self.source, loaded) for r in records]
        async with self.pool.acquire() as conn, conn.transaction():
            await state.load_snapshot(conn, object_type, records)
            await outbox.enqueue_many(conn, SERVICE, change_messages(self.names, changed, self.writer, 0))
            row = await conn.fetchrow(
                "UPDATE detector_imports SET after = $3, loaded = loaded + $4, pages = pages + 1,"
                " updated_at = now(), finished_at = CASE WHEN $3::text IS NULL THEN now() END"
                " WHERE source = $1 AND object_type = $2 RETURNING loaded, pages, finished_at",
                at.source,
                object_type.value,
                page.after,
                len(records),
            )
        assert row is not None
        return Checkpoint(
            at.source,
            object_type,
            page.after,
            row["loaded"],
            row["pages"],
            at.total,
            at.started_at,
            row["finished_at"],
        )
