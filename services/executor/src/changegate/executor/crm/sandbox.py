"""The sandbox CRM: contacts, companies and owners in the executor's PostgreSQL, the embedded
default target. Writes are compare-and-set under a row lock (a conditional write, like
Salesforce's); a merge redirects each loser to the survivor, and reads of a merged-away id resolve
to the survivor, as in HubSpot."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import asyncpg
from changegate.core.contracts import FieldChange, FieldWrite, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.core.db import DbConn, Queryable
from changegate.executor.crm.metrics import measured
from changegate.executor.crm.port import (
    BatchWriter,
    BeforeWriteMany,
    Capabilities,
    CrmUnavailableError,
    MergeResult,
    OwnerStatus,
    RecordNotFoundError,
    RecordPage,
    RecordState,
    SnapshotRecord,
    WriteItem,
    WriteOutcome,
    WriteResult,
    WriteStatus,
)
from changegate.executor.crm.values import same

TARGET = "sandbox"
MERGED_IDS_FIELD = "hs_merged_object_ids"
_MAX_REDIRECTS = 16
# PostgreSQL not answering is this CRM being down, as a timeout or a 503 is HubSpot's.
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
)
P = ParamSpec("P")
R = TypeVar("R")


def _reachable(call: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """The sandbox's database away is the CRM unavailable (retried, the breaker opens), not a
    failure of the change."""

    @functools.wraps(call)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise CrmUnavailableError(f"the sandbox CRM's database: {type(exc).__name__}: {exc}") from exc

    return guarded


class SandboxCrm(BatchWriter):
    target = TARGET
    capabilities = Capabilities(
        conditional_write=True, max_batch=1000, max_merge_records=100, merge_gives_new_id=False, owners=True
    )

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @measured("read")
    @_reachable
    async def read(
        self, object_type: ObjectType, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        out = {}
        async with self.pool.acquire() as conn:
            for record_id in record_ids:
                found = await _resolve(conn, object_type, record_id, lock=False)
                if found is not None:
                    rid, props = found
                    out[record_id] = RecordState(rid, {f: props.get(f) for f in fields})
        return out

    @measured("write_many")
    @_reachable
    async def write_many(
        self, object_type: ObjectType, items: Sequence[WriteItem], before_write: BeforeWriteMany | None = None
    ) -> list[WriteOutcome]:
        """Every record locked (in id order, so concurrent batches cannot deadlock), each item
        compared against the record as the items before it left it, the writes in one statement."""
        outcomes: list[WriteOutcome | None] = [None] * len(items)
        async with self.pool.acquire() as conn, conn.transaction():
            found = await _resolve_many(conn, object_type, [i.record_id for i in items])
            held: dict[str, dict[str, Any]] = {rid: dict(props) for rid, props in found.values()}
            written: dict[str, dict[str, Any]] = {}
            observed: dict[int, dict[str, PropertyValue]] = {}
            for n, item in enumerate(items):
                if item.record_id not in found:
                    outcomes[n] = RecordNotFoundError(
                        f"{object_type.value} {item.record_id} is not in the sandbox CRM"
                    )
                    continue
                rid = found[item.record_id][0]
                result = _compare(item.changes, held[rid])
                if result.status is WriteStatus.APPLIED:
                    observed[n] = result.current
                    new = {c.field: c.proposed for c in item.changes}
                    held[rid].update(new)
                    written.setdefault(rid, {}).update(new)
                outcomes[n] = result
            if before_write is not None and observed:
                await before_write(observed)
            versions = {}
            if written:
                rows = await conn.fetch(
                    "UPDATE sandbox_crm_records AS r SET properties = r.properties || v.props,"
                    " version = r.version + 1, updated_at = now()"
                    " FROM unnest($2::text[], $3::jsonb[]) AS v(record_id, props)"
                    " WHERE r.object_type = $1 AND r.record_id = v.record_id"
                    " RETURNING r.record_id, r.version",
                    object_type.value,
                    list(written),
                    list(written.values()),
                )
                versions = {r["record_id"]: r["version"] for r in rows}
        for n in observed:
            planned = outcomes[n]
            assert isinstance(planned, WriteResult)
            rid = found[items[n].record_id][0]
            outcomes[n] = WriteResult(
                WriteStatus.APPLIED,
                planned.writes,
                planned.current,
                response_ids=[f"{object_type.value}/{rid}@v{versions[rid]}"],
            )
        return [o for o in outcomes if o is not None]

    @measured("merge")
    @_reachable
    async def merge(self, object_type: ObjectType, survivor: str, losers: Sequence[str]) -> MergeResult:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await _resolve(conn, object_type, survivor, lock=True)
            if found is None:
                raise RecordNotFoundError(f"{object_type.value} {survivor} is not in the sandbox CRM")
            sid, props = found
            merged = [x for x in str(props.get(MERGED_IDS_FIELD) or "").split(";") if x]
            for loser in losers:
                target = await _resolve(conn, object_type, loser, lock=True)
                if target is None:
                    raise RecordNotFoundError(f"{object_type.value} {loser} is not in the sandbox CRM")
                if target[0] == sid:
                    continue  # merged into the survivor already
                await conn.execute(
                    "UPDATE sandbox_crm_records SET merged_into = $3, version = version + 1,"
                    " updated_at = now() WHERE object_type = $1 AND record_id = $2",
                    object_type.value,
                    target[0],
                    sid,
                )
                merged.append(target[0])
            await conn.execute(
                "UPDATE sandbox_crm_records SET properties = properties || $3::jsonb, version = version + 1,"
                " updated_at = now() WHERE object_type = $1 AND record_id = $2",
                object_type.value,
                sid,
                {MERGED_IDS_FIELD: ";".join(merged)},
            )
        return MergeResult(sid, [f"{object_type.value}/{sid}"])

    @measured("owner_status")
    @_reachable
    async def owner_status(self, owner_id: str) -> OwnerStatus:
        archived = await self.pool.fetchval(
            "SELECT archived FROM sandbox_crm_owners WHERE owner_id = $1", owner_id
        )
        if archived is None:
            return OwnerStatus.UNKNOWN
        return OwnerStatus.ARCHIVED if archived else OwnerStatus.ACTIVE

    @_reachable
    async def list_page(
        self, object_type: ObjectType, fields: Sequence[str], after: str | None, limit: int
    ) -> RecordPage:
        """In id order; records merged away are not listed (they live on in their survivor)."""
        rows = await self.pool.fetch(
            "SELECT record_id, properties, updated_at FROM sandbox_crm_records"
            " WHERE object_type = $1 AND merged_into IS NULL AND record_id > $2"
            " ORDER BY record_id LIMIT $3",
            object_type.value,
            after or "",
            limit + 1,
        )
        records = [
            SnapshotRecord(r["record_id"], {f: r["properties"].get(f) for f in fields}, r["updated_at"])
            for r in rows[:limit]
        ]
        return RecordPage(records, records[-1].record_id if len(rows) > limit else None)

    @_reachable
    async def count(self, object_type: ObjectType) -> int | None:
        found: int = await self.pool.fetchval(
            "SELECT count(*) FROM sandbox_crm_records WHERE object_type = $1 AND merged_into IS NULL",
            object_type.value,
        )
        return found

    async def close(self) -> None:
        return None


async def _resolve(
    conn: DbConn, object_type: ObjectType, record_id: str, *, lock: bool
) -> tuple[str, dict[str, Any]] | None:
    """Follow merge redirects to the record that holds the data now."""
    rid = record_id
    for _ in range(_MAX_REDIRECTS):
        row = await conn.fetchrow(
            "SELECT properties, merged_into FROM sandbox_crm_records"
            " WHERE object_type = $1 AND record_id = $2" + (" FOR UPDATE" if lock else ""),
            object_type.value,
            rid,
        )
        if row is None:
            return None
        if row["merged_into"] is None:
            props: dict[str, Any] = row["properties"]
            return rid, props
        rid = row["merged_into"]
    raise RuntimeError(f"{object_type.value} {record_id}: merge redirects loop")


def _compare(changes: Sequence[FieldChange], props: dict[str, Any]) -> WriteResult:
    """Compare-and-set on a record's values: APPLIED here means 'to write'."""
    current = {c.field: props.get(c.field) for c in changes}
    writes = [
        FieldWrite(field=c.field, expected=c.previous, overwritten=current[c.field], new=c.proposed)
        for c in changes
    ]
    if all(same(c.field, current[c.field], c.proposed) for c in changes):
        return WriteResult(WriteStatus.NOOP, writes, current)
    conflicts = [c.field for c in changes if not same(c.field, current[c.field], c.previous)]
    if conflicts:
        return WriteResult(WriteStatus.CONFLICT, writes, current, conflicts)
    return WriteResult(WriteStatus.APPLIED, writes, current)


async def _resolve_many(
    conn: DbConn, object_type: ObjectType, record_ids: Sequence[str]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each asked-for id that exists -> (the id holding its data now, its properties), locked."""
    rows = await conn.fetch(
        "SELECT record_id, properties, merged_into FROM sandbox_crm_records"
        " WHERE object_type = $1 AND record_id = ANY($2::text[]) ORDER BY record_id FOR UPDATE",
        object_type.value,
        sorted(set(record_ids)),
    )
    direct = {r["record_id"]: r for r in rows}
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for record_id in record_ids:
        row = direct.get(record_id)
        if row is None:
            continue
        if row["merged_into"] is None:
            out[record_id] = (record_id, row["properties"])
        elif (followed := await _resolve(conn, object_type, record_id, lock=True)) is not None:
            out[record_id] = followed  # merged away: rare, followed one hop at a time
    return out


# Seeding and inspection, for the demo feed and tests.


async def upsert_record(
    conn: Queryable, object_type: ObjectType, record_id: str, properties: dict[str, PropertyValue]
) -> None:
    """Create or update a record (the demo feed and tests seed the sandbox with it)."""
    await conn.execute(
        "INSERT INTO sandbox_crm_records (object_type, record_id, properties) VALUES ($1, $2, $3)"
        " ON CONFLICT (object_type, record_id) DO UPDATE SET"
        " properties = sandbox_crm_records.properties || EXCLUDED.properties,"
        " version = sandbox_crm_records.version + 1, updated_at = now()",
        object_type.value,
        record_id,
        properties,
    )


async def get_record(conn: Queryable, object_type: ObjectType, record_id: str) -> dict[str, Any] | None:
    """A record's properties by its own id (merged-away records keep theirs; see ``merged_into``)."""
    props: dict[str, Any] | None = await conn.fetchval(
        "SELECT properties FROM sandbox_crm_records WHERE object_type = $1 AND record_id = $2",
        object_type.value,
        record_id,
    )
    return props


async def merged_into(conn: Queryable, object_type: ObjectType, record_id: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT merged_into FROM sandbox_crm_records WHERE object_type = $1 AND record_id = $2",
        object_type.value,
        record_id,
    )
    return value


async def upsert_owner(
    conn: Queryable, owner_id: str, email: str | None = None, archived: bool = False
) -> None:
    await conn.execute(
        "INSERT INTO sandbox_crm_owners (owner_id, email, archived) VALUES ($1, $2, $3)"
        " ON CONFLICT (owner_id) DO UPDATE SET email = EXCLUDED.email, archived = EXCLUDED.archived",
        owner_id,
        email,
        archived,
    )
