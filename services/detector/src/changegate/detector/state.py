"""Record state in PostgreSQL: what the detector knows of each record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.db import DbConn


async def known_properties(conn: DbConn, event: CrmEvent) -> dict[str, Any]:
    props: dict[str, Any] | None = await conn.fetchval(
        "SELECT properties FROM detector_records WHERE object_type = $1 AND record_id = $2 AND NOT deleted",
        event.object_type.value,
        event.record_id,
    )
    return props or {}


async def record_properties(conn: DbConn, object_type: ObjectType, record_id: str) -> dict[str, Any]:
    props: dict[str, Any] | None = await conn.fetchval(
        "SELECT properties FROM detector_records WHERE object_type = $1 AND record_id = $2 AND NOT deleted",
        object_type.value,
        record_id,
    )
    return props or {}


async def apply_record_event(conn: DbConn, event: CrmEvent) -> None:
    """Fold a record lifecycle event (created, changed, merged, deleted) into the known state."""
    if event.kind in (CrmEventKind.RECORD_CREATED, CrmEventKind.PROPERTY_CHANGED):
        await conn.execute(
            "INSERT INTO detector_records (object_type, record_id, properties) VALUES ($1, $2, $3)"
            " ON CONFLICT (object_type, record_id) DO UPDATE SET"
            " properties = detector_records.properties || EXCLUDED.properties,"
            " deleted = false, updated_at = now()",
            event.object_type.value,
            event.record_id,
            event.properties,
        )
    elif event.kind in (CrmEventKind.RECORD_DELETED, CrmEventKind.RECORD_MERGED):
        gone = [event.record_id] if event.kind is CrmEventKind.RECORD_DELETED else event.merged_record_ids
        await mark_gone(conn, event.object_type, gone)


async def mark_gone(conn: DbConn, object_type: ObjectType, record_ids: list[str]) -> None:
    """Records deleted or merged away leave the known state (a later creation brings them back)."""
    await conn.execute(
        "UPDATE detector_records SET deleted = true, updated_at = now()"
        " WHERE object_type = $1 AND record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
    )


async def apply_executed(
    conn: DbConn, writes: list[tuple[ObjectType, str, dict[str, Any], datetime]]
) -> dict[tuple[ObjectType, str], dict[str, Any]]:
    """What changegate itself wrote to records — (object type, record, values, executed at), in the
    order they were written — folded into the known state, unless the detector learnt of a record
    after its first write here (a later event knows better). Each record's properties afterwards,
    for the records that changed."""
    folded: dict[tuple[ObjectType, str], tuple[dict[str, Any], datetime]] = {}
    for object_type, record_id, values, executed_at in writes:
        before, first = folded.get((object_type, record_id), ({}, executed_at))
        folded[(object_type, record_id)] = ({**before, **values}, min(first, executed_at))
    rows = await conn.fetch(
        "UPDATE detector_records AS r SET properties = r.properties || v.values, updated_at = now()"
        " FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])"
        " AS v(object_type, record_id, values, executed_at)"
        " WHERE r.object_type = v.object_type AND r.record_id = v.record_id AND NOT r.deleted"
        " AND r.updated_at <= v.executed_at RETURNING r.object_type, r.record_id, r.properties",
        [k[0].value for k in folded],
        [k[1] for k in folded],
        [v[0] for v in folded.values()],
        [v[1] for v in folded.values()],
    )
    return {(ObjectType(r["object_type"]), r["record_id"]): r["properties"] for r in rows}
