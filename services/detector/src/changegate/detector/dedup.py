"""Duplicate detection over the PostgreSQL blocking index, and merge proposals."""

from __future__ import annotations

from typing import Any

import asyncpg
from changegate.core.contracts import (
    CrmEvent,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.db import DbConn
from changegate.detector.matching import survivorship
from changegate.detector.matching.blocking import blocking_keys
from changegate.detector.matching.engine import DuplicateFinder, Match
from changegate.detector.matching.normalize import cached_features, features
from changegate.detector.proposals import build_proposal
from prometheus_client import Gauge, Histogram

DETECTOR = "dedup"
CANDIDATES_PER_KEY = 50
MERGED_IDS_FIELD = "hs_merged_object_ids"

CANDIDATES = Histogram(
    "changegate_detector_candidates_per_event",
    "Records compared with per record event",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200),
)
INDEX_KEYS = Gauge("changegate_detector_index_keys", "Blocking keys in the duplicate index (estimate)")
INDEX_RECORDS = Gauge("changegate_detector_index_records", "Records the detector knows (estimate)")


async def refresh_index_size(pool: asyncpg.Pool) -> None:
    """PostgreSQL's own row estimates: exact counts would scan millions of rows."""
    rows = await pool.fetch(
        "SELECT relname, reltuples FROM pg_class WHERE relname IN ('detector_blocking', 'detector_records')"
    )
    sizes = {r["relname"]: max(0.0, float(r["reltuples"])) for r in rows}
    INDEX_KEYS.set(sizes.get("detector_blocking", 0))
    INDEX_RECORDS.set(sizes.get("detector_records", 0))


async def unindex(conn: DbConn, object_type: ObjectType, record_ids: list[str]) -> None:
    """Merged and deleted records leave the index."""
    await conn.execute(
        "DELETE FROM detector_blocking WHERE object_type = $1 AND record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
    )


async def find_duplicates(
    conn: DbConn, finder: DuplicateFinder, event: CrmEvent, props: dict[str, Any], region: str
) -> list[tuple[Match, dict[str, Any]]]:
    """Re-index the record under its current keys, and return its likely duplicates."""
    f = features(event.object_type.value, props, region)
    keys = sorted(blocking_keys(f))
    await unindex(conn, event.object_type, [event.record_id])
    # Two plain index lookups rather than one join: the planner's choice for a join follows table
    # statistics, which lag behind a fast-growing index (it then scanned every record per event).
    ids = await conn.fetchval(
        "SELECT array_agg(DISTINCT c.record_id) FROM unnest($1::text[]) AS k(key)"
        " CROSS JOIN LATERAL (SELECT b.record_id FROM detector_blocking b WHERE b.key = k.key"
        "   AND b.record_id <> $2 LIMIT $3) c",
        keys,
        event.record_id,
        CANDIDATES_PER_KEY,
    )
    rows = (
        await conn.fetch(
            "SELECT record_id, properties FROM detector_records"
            " WHERE object_type = $1 AND record_id = ANY($2::text[]) AND NOT deleted",
            event.object_type.value,
            ids,
        )
        if ids
        else []
    )
    if keys:
        await conn.copy_records_to_table(
            "detector_blocking",
            columns=("key", "object_type", "record_id"),
            records=[(k, event.object_type.value, event.record_id) for k in keys],
        )
    CANDIDATES.observe(len(rows))
    others = {r["record_id"]: r["properties"] for r in rows}
    found = finder.matches(
        f, ((rid, cached_features(event.object_type.value, p, region)) for rid, p in others.items())
    )
    return [(m, others[m.other_id]) for m in found]


def propose_merge(event: CrmEvent, props: dict[str, Any], match: Match, other: dict[str, Any]) -> Proposal:
    choice = survivorship.choose(event.record_id, props, match.other_id, other)
    survivor_props = props if choice.survivor == event.record_id else other
    changes = [
        FieldChange(field=name, previous=survivor_props.get(name), proposed=value)
        for name, value in choice.fills.items()
    ]
    merged_before = survivor_props.get(MERGED_IDS_FIELD)
    merged_ids = ";".join(x for x in [str(merged_before or ""), choice.merged] if x)
    changes.append(FieldChange(field=MERGED_IDS_FIELD, previous=merged_before, proposed=merged_ids))
    pair = "|".join(sorted((event.record_id, match.other_id)))
    agreed = [f for f, w in match.score.weights.items() if w > 0]
    rationale = (
        f"{choice.merged} looks like a duplicate of {choice.survivor} (match probability "
        f"{match.probability:.3f}; agree on {', '.join(sorted(agreed)) or 'nothing'}); "
        f"{choice.survivor} survives as the {choice.rule.replace('_', ' ')} record"
    )
    if match.flags:
        rationale += f"; risk: {', '.join(match.flags)}"
    return build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.MERGE,
        object_type=event.object_type,
        record_id=choice.survivor,
        changes=changes,
        system=event.source_system,
        source_event_id=event.source_event_id,
        trigger=Trigger.SIMILARITY,
        confidence=round(match.probability, 4),
        rationale=rationale,
        evidence={
            "score": round(match.score.total, 3),
            "fields": {
                f: {"level": lvl, "weight": round(match.score.weights.get(f, 0.0), 3)}
                for f, lvl in sorted(match.levels.items())
            },
            "flags": list(match.flags),
            "survivorship": {
                "rule": choice.rule,
                "survivor": choice.survivor,
                "merged": choice.merged,
                "fills": choice.fills,
                "conflicts": {k: {"kept": v[0], "dropped": v[1]} for k, v in choice.conflicts.items()},
            },
        },
        id_key=f"pair:{pair}",
        other_record_ids=[choice.merged],
    )
