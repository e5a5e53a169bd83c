"""The sandbox CRM adapter: a PostgreSQL-backed CRM with compare-and-set writes.

Because it lives in the executor's database, the write, the execution event (outbox) and the
processed-decision record commit in one transaction: a decision is applied exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from changegate.core.contracts import FieldChange, FieldWrite, ObjectType
from changegate.core.contracts.base import PropertyValue, is_empty
from changegate.core.db import DbConn, Queryable

TARGET = "sandbox"


@dataclass(frozen=True)
class CasResult:
    applied: bool
    writes: list[FieldWrite]
    current: dict[str, PropertyValue]
    conflicts: list[str]
    version: int | None


def _same(a: PropertyValue, b: PropertyValue) -> bool:
    return (is_empty(a) and is_empty(b)) or a == b


async def compare_and_set(
    conn: DbConn, object_type: ObjectType, record_id: str, changes: list[FieldChange]
) -> CasResult | None:
    """Write ``changes`` only if every field still holds its ``previous`` value. None: no record."""
    row = await conn.fetchrow(
        "SELECT properties, version FROM sandbox_crm_records"
        " WHERE object_type = $1 AND record_id = $2 FOR UPDATE",
        object_type.value,
        record_id,
    )
    if row is None:
        return None
    props: dict[str, Any] = row["properties"]
    current = {c.field: props.get(c.field) for c in changes}
    conflicts = [c.field for c in changes if not _same(current[c.field], c.previous)]
    writes = [
        FieldWrite(field=c.field, expected=c.previous, overwritten=current[c.field], new=c.proposed)
        for c in changes
    ]
    if conflicts:
        return CasResult(False, writes, current, conflicts, row["version"])
    version: int = await conn.fetchval(
        "UPDATE sandbox_crm_records SET properties = properties || $3::jsonb,"
        " version = version + 1, updated_at = now()"
        " WHERE object_type = $1 AND record_id = $2 RETURNING version",
        object_type.value,
        record_id,
        {c.field: c.proposed for c in changes},
    )
    return CasResult(True, writes, current, [], version)


async def upsert_record(
    conn: Queryable,
    object_type: ObjectType,
    record_id: str,
    properties: dict[str, PropertyValue],
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
    props: dict[str, Any] | None = await conn.fetchval(
        "SELECT properties FROM sandbox_crm_records WHERE object_type = $1 AND record_id = $2",
        object_type.value,
        record_id,
    )
    return props
