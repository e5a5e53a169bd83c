"""Duplicate detection over the PostgreSQL blocking index, and merge proposals."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
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


async def leave_clusters(conn: DbConn, object_type: ObjectType, record_ids: list[str]) -> None:
    """Merged and deleted records leave their cluster (the cluster keeps its id)."""
    await conn.execute(
        "DELETE FROM detector_clusters WHERE object_type = $1 AND record_id = ANY($2::text[])",
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


CLUSTER_NAMESPACE = uuid.UUID("0c1a55e2-9d3b-4f7e-8a61-2b4c6d8e0f13")


@dataclass(frozen=True)
class Link:
    """A scored pair inside a cluster: ``a`` is the record the event was about."""

    a: str
    b: str
    match: Match
    direct: bool  # found by this event's blocking; otherwise a member of the cluster already


def new_cluster_id(object_type: ObjectType, record_ids: Iterable[str]) -> uuid.UUID:
    """A new cluster is named after its smallest record id, so a replay names it the same."""
    return uuid.uuid5(CLUSTER_NAMESPACE, f"{object_type.value}|{min(record_ids, key=lambda r: (len(r), r))}")


async def clusters_of(conn: DbConn, object_type: ObjectType, record_ids: list[str]) -> dict[str, uuid.UUID]:
    rows = await conn.fetch(
        "SELECT record_id, cluster_id FROM detector_clusters"
        " WHERE object_type = $1 AND record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
    )
    return {r["record_id"]: r["cluster_id"] for r in rows}


async def cluster_members(
    conn: DbConn, object_type: ObjectType, cluster_ids: list[uuid.UUID]
) -> dict[str, dict[str, Any]]:
    """Members of the clusters (not deleted or merged away), with their properties."""
    rows = await conn.fetch(
        "SELECT c.record_id, r.properties FROM detector_clusters c JOIN detector_records r"
        " ON r.object_type = c.object_type AND r.record_id = c.record_id"
        " WHERE c.object_type = $1 AND c.cluster_id = ANY($2::uuid[]) AND NOT r.deleted",
        object_type.value,
        cluster_ids,
    )
    return {r["record_id"]: r["properties"] for r in rows}


def choose_cluster_id(
    object_type: ObjectType, record_id: str, matched: list[str], known: dict[str, uuid.UUID]
) -> uuid.UUID:
    """The cluster keeps its id as records join: the event record's own cluster, else that of its
    best match that has one; a new id only when none of them is in a cluster yet."""
    for rid in [record_id, *matched]:
        if rid in known:
            return known[rid]
    return new_cluster_id(object_type, [record_id, *matched])


async def join_cluster(
    conn: DbConn,
    object_type: ObjectType,
    cluster_id: uuid.UUID,
    members: list[str],
    absorbed: list[uuid.UUID],
) -> None:
    """Put ``members`` in the cluster; clusters the event linked to it are absorbed (renamed)."""
    others = [c for c in absorbed if c != cluster_id]
    if others:
        await conn.execute(
            "UPDATE detector_clusters SET cluster_id = $1"
            " WHERE object_type = $2 AND cluster_id = ANY($3::uuid[])",
            cluster_id,
            object_type.value,
            others,
        )
    await conn.executemany(
        "INSERT INTO detector_clusters (object_type, record_id, cluster_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (object_type, record_id) DO UPDATE SET cluster_id = EXCLUDED.cluster_id",
        [(object_type.value, rid, cluster_id) for rid in members],
    )


def _pair_evidence(link: Link) -> dict[str, Any]:
    m = link.match
    return {
        "records": [link.a, link.b],
        "probability": round(m.probability, 4),
        "score": round(m.score.total, 3),
        "fields": {
            f: {"level": lvl, "weight": round(m.score.weights.get(f, 0.0), 3)}
            for f, lvl in sorted(m.levels.items())
        },
        "flags": list(m.flags),
        "found_by": "blocking" if link.direct else "cluster",
    }


def propose_merge(
    event: CrmEvent,
    cluster_id: uuid.UUID,
    members: dict[str, dict[str, Any]],
    links: list[Link],
    model: dict[str, str],
) -> Proposal:
    """One merge proposal for a cluster: the survivor and every record merged into it, with the
    evidence of each scored pair. ``links`` are best first; the first is the event's best match."""
    choice = survivorship.choose_cluster(members)
    survivor_props = members[choice.survivor]
    changes = [
        FieldChange(field=name, previous=survivor_props.get(name), proposed=value)
        for name, value in choice.fills.items()
    ]
    merged_before = survivor_props.get(MERGED_IDS_FIELD)
    merged_ids = ";".join(x for x in [str(merged_before or ""), *choice.merged] if x)
    changes.append(FieldChange(field=MERGED_IDS_FIELD, previous=merged_before, proposed=merged_ids))
    best = links[0].match
    direct = [lk.match.probability for lk in links if lk.direct]
    confidence = min(direct) if direct else best.probability
    flags = sorted({f for lk in links for f in lk.match.flags})
    agreed = [f for f, w in best.score.weights.items() if w > 0]
    merged = ", ".join(choice.merged)
    rationale = (
        (f"{merged} looks like a duplicate of " if len(choice.merged) == 1 else f"{merged} look like duplicates of ")
        + f"{choice.survivor} (match probability {confidence:.3f}"
        f"{'' if len(links) == 1 else ' at the weakest direct link'}; best pair agrees on "
        f"{', '.join(sorted(agreed)) or 'nothing'}); {choice.survivor} survives as the "
        f"{choice.rules[choice.merged[0]].replace('_', ' ')} record"
    )
    if flags:
        rationale += f"; risk: {', '.join(flags)}"
    return build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.MERGE,
        object_type=event.object_type,
        record_id=choice.survivor,
        changes=changes,
        system=event.source_system,
        source_event_id=event.source_event_id,
        trigger=Trigger.SIMILARITY,
        confidence=round(confidence, 4),
        rationale=rationale,
        evidence={
            "cluster_id": str(cluster_id),
            "model": model,
            # The event's best pair, as before clusters: what a reviewer reads first.
            "score": round(best.score.total, 3),
            "fields": _pair_evidence(links[0])["fields"],
            "flags": flags,
            "pairs": [_pair_evidence(lk) for lk in links],
            "survivorship": {
                "rule": choice.rules[choice.merged[0]],
                "rules": choice.rules,
                "survivor": choice.survivor,
                "merged": list(choice.merged),
                "fills": choice.fills,
                "conflicts": choice.conflicts,
            },
        },
        id_key=f"cluster:{cluster_id}|{'|'.join(sorted(members))}",
        other_record_ids=list(choice.merged),
    )
