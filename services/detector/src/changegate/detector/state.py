"""Record state in PostgreSQL: what the detector knows of each record.

Each property keeps the time its value was true at the CRM (``property_times``: a webhook's event
time, an imported snapshot's last-modified time, an execution's time): a value replaces only one
observed earlier. So the webhooks of a record and an import of it (``load_snapshot``) can arrive in
any order and the newest value stays; a record that went away is not brought back by anything
older than its going."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.db import DbConn

# Fold records in, each with the time its values were true: a property is taken only if no newer
# value of it is known; a deleted record comes back only with something newer than its deletion.
_FOLD = """
INSERT INTO detector_records AS r (object_type, record_id, properties, property_times, seen_ms)
SELECT $1, v.record_id, v.properties,
       coalesce((SELECT jsonb_object_agg(k, v.at_ms) FROM jsonb_object_keys(v.properties) k), '{}'),
       v.at_ms
FROM unnest($2::text[], $3::jsonb[], $4::bigint[]) AS v(record_id, properties, at_ms)
ON CONFLICT (object_type, record_id) DO UPDATE SET
    properties = r.properties || coalesce((
        SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(EXCLUDED.properties) e
        WHERE coalesce((r.property_times ->> e.key)::bigint, 0) <= EXCLUDED.seen_ms), '{}'),
    property_times = r.property_times || coalesce((
        SELECT jsonb_object_agg(e.key, EXCLUDED.seen_ms) FROM jsonb_each(EXCLUDED.properties) e
        WHERE coalesce((r.property_times ->> e.key)::bigint, 0) <= EXCLUDED.seen_ms), '{}'),
    deleted = r.deleted AND coalesce(r.gone_ms, 0) > EXCLUDED.seen_ms,
    seen_ms = greatest(r.seen_ms, EXCLUDED.seen_ms),
    updated_at = now()
RETURNING r.record_id, r.properties, r.deleted
"""


def event_ms(event: CrmEvent) -> int:
    """When the event happened at its source (when it carries no time: now)."""
    return to_ms(event.occurred_at) if event.occurred_at is not None else int(time.time() * 1000)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def known_properties(conn: DbConn, event: CrmEvent) -> dict[str, Any]:
    props: dict[str, Any] | None = await conn.fetchval(
        "SELECT properties FROM detector_records WHERE object_type = $1 AND record_id = $2 AND NOT deleted",
        event.object_type.value,
        event.record_id,
    )
    return props or {}


async def known_properties_many(
    conn: DbConn, records: Sequence[tuple[ObjectType, str]]
) -> dict[tuple[ObjectType, str], dict[str, Any]]:
    """``known_properties`` of many records in one statement ({} for one not known)."""
    rows = await conn.fetch(
        "SELECT r.object_type, r.record_id, r.properties FROM detector_records r"
        " JOIN unnest($1::text[], $2::text[]) AS k(object_type, record_id)"
        " ON r.object_type = k.object_type AND r.record_id = k.record_id WHERE NOT r.deleted",
        [ot.value for ot, _ in records],
        [rid for _, rid in records],
    )
    found = {(ObjectType(r["object_type"]), r["record_id"]): r["properties"] for r in rows}
    return {key: found.get(key) or {} for key in records}


async def record_properties(conn: DbConn, object_type: ObjectType, record_id: str) -> dict[str, Any]:
    props: dict[str, Any] | None = await conn.fetchval(
        "SELECT properties FROM detector_records WHERE object_type = $1 AND record_id = $2 AND NOT deleted",
        object_type.value,
        record_id,
    )
    return props or {}


async def apply_record_event(conn: DbConn, event: CrmEvent) -> dict[str, Any]:
    """Fold a record lifecycle event (created, changed, merged, deleted) into the known state; the
    record's properties afterwards ({} for one that went away)."""
    if event.kind in (CrmEventKind.RECORD_CREATED, CrmEventKind.PROPERTY_CHANGED):
        row = await conn.fetchrow(
            _FOLD, event.object_type.value, [event.record_id], [event.properties], [event_ms(event)]
        )
        assert row is not None
        return {} if row["deleted"] else dict(row["properties"])
    if event.kind in (CrmEventKind.RECORD_DELETED, CrmEventKind.RECORD_MERGED):
        gone = [event.record_id] if event.kind is CrmEventKind.RECORD_DELETED else event.merged_record_ids
        await mark_gone(conn, event.object_type, gone, event_ms(event))
    return {}


async def load_snapshot(
    conn: DbConn, object_type: ObjectType, records: Sequence[tuple[str, dict[str, Any], int]]
) -> None:
    """Records read from the CRM (``changegate crm import``): (id, properties, when the CRM last
    changed the record, in ms) folded into the known state without proposing anything, each value
    only where nothing newer is known. (The caller tells the detector replicas, through the
    changelog, in the same transaction.)"""
    if not records:
        return
    await conn.execute(
        _FOLD,
        object_type.value,
        [r[0] for r in records],
        [r[1] for r in records],
        [r[2] for r in records],
    )


async def mark_gone(
    conn: DbConn, object_type: ObjectType, record_ids: list[str], at_ms: int | None = None
) -> None:
    """Records deleted or merged away leave the known state (something newer brings them back)."""
    await conn.execute(
        "UPDATE detector_records SET deleted = true, updated_at = now(),"
        " gone_ms = greatest(coalesce(gone_ms, 0), $3)"
        " WHERE object_type = $1 AND record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
        int(time.time() * 1000) if at_ms is None else at_ms,
    )


async def apply_executed(
    conn: DbConn, writes: list[tuple[ObjectType, str, dict[str, Any], datetime]]
) -> dict[tuple[ObjectType, str], dict[str, Any]]:
    """What changegate itself wrote to records — (object type, record, values, executed at), in the
    order they were written — folded into the known state, unless the detector learnt of a record
    after its first write here (a later event knows better); the values written keep the time of
    the last write as when they were true. Each record's properties afterwards, for the records
    that changed."""
    folded: dict[tuple[ObjectType, str], tuple[dict[str, Any], datetime, datetime]] = {}
    for object_type, record_id, values, executed_at in writes:
        before, first, last = folded.get((object_type, record_id), ({}, executed_at, executed_at))
        folded[(object_type, record_id)] = (
            {**before, **values},
            min(first, executed_at),
            max(last, executed_at),
        )
    rows = await conn.fetch(
        "UPDATE detector_records AS r SET properties = r.properties || v.values, updated_at = now(),"
        " property_times = r.property_times || coalesce("
        "(SELECT jsonb_object_agg(k, v.at_ms) FROM jsonb_object_keys(v.values) k), '{}')"
        " FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::bigint[])"
        " AS v(object_type, record_id, values, executed_at, at_ms)"
        " WHERE r.object_type = v.object_type AND r.record_id = v.record_id AND NOT r.deleted"
        " AND r.updated_at <= v.executed_at RETURNING r.object_type, r.record_id, r.properties",
        [k[0].value for k in folded],
        [k[1] for k in folded],
        [v[0] for v in folded.values()],
        [v[1] for v in folded.values()],
        [to_ms(v[2]) for v in folded.values()],
    )
    return {(ObjectType(r["object_type"]), r["record_id"]): r["properties"] for r in rows}
