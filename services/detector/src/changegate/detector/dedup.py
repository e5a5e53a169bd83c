"""Duplicate detection over the in-process blocking index, clusters, and merge proposals."""

from __future__ import annotations

import time
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
from changegate.detector.matching.engine import DuplicateFinder, Match
from changegate.detector.matching.index import BlockingIndex
from changegate.detector.matching.normalize import cached_features, features
from changegate.detector.proposals import build_proposal
from prometheus_client import Gauge, Histogram

DETECTOR = "dedup"
MERGED_IDS_FIELD = "hs_merged_object_ids"

CANDIDATES = Histogram(
    "changegate_detector_candidates_per_event",
    "Records compared with per record event",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200),
)
INDEX_KEYS = Gauge("changegate_detector_index_postings", "Blocking-key postings in the in-process index")
INDEX_RECORDS = Gauge("changegate_detector_index_records", "Records in the in-process blocking index")
REBUILD_SECONDS = Gauge(
    "changegate_detector_index_rebuild_seconds", "Time the index took to rebuild at start"
)


class Indexes:
    """The in-process blocking index of each object type, derived from ``detector_records``."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.by_type: dict[str, BlockingIndex] = {}

    def of(self, object_type: ObjectType | str) -> BlockingIndex:
        name = object_type.value if isinstance(object_type, ObjectType) else object_type
        if name not in self.by_type:
            self.by_type[name] = BlockingIndex(name)
        return self.by_type[name]

    async def rebuild(self, pool: asyncpg.Pool, batch: int = 5000) -> int:
        """Every live record, read in batches by primary key (no long transaction)."""
        started = time.perf_counter()
        self.by_type.clear()
        count, after = 0, ("", "")
        while True:
            rows = await pool.fetch(
                "SELECT object_type, record_id, properties FROM detector_records"
                " WHERE NOT deleted AND (object_type, record_id) > ($1, $2)"
                " ORDER BY object_type, record_id LIMIT $3",
                after[0],
                after[1],
                batch,
            )
            if not rows:
                break
            for object_type in sorted({r["object_type"] for r in rows}):
                self.of(object_type).bulk_load(
                    (r["record_id"], features(object_type, r["properties"], self.region))
                    for r in rows
                    if r["object_type"] == object_type
                )
            count += len(rows)
            after = (rows[-1]["object_type"], rows[-1]["record_id"])
        REBUILD_SECONDS.set(time.perf_counter() - started)
        self.observe()
        return count

    def update(self, object_type: ObjectType, record_id: str, props: dict[str, Any]) -> None:
        """Re-index a record under its current keys (its properties changed)."""
        self.of(object_type).put(record_id, cached_features(object_type.value, props, self.region))

    def remove(self, object_type: ObjectType, record_ids: list[str]) -> None:
        """Merged and deleted records leave the index."""
        index = self.of(object_type)
        for record_id in record_ids:
            index.remove(record_id)

    def observe(self) -> None:
        INDEX_KEYS.set(sum(i.postings for i in self.by_type.values()))
        INDEX_RECORDS.set(sum(len(i) for i in self.by_type.values()))


async def find_duplicates(
    conn: DbConn, finder: DuplicateFinder, indexes: Indexes, event: CrmEvent, props: dict[str, Any]
) -> list[tuple[Match, dict[str, Any]]]:
    """Re-index the record under its current keys, and return its likely duplicates with their
    properties (read from PostgreSQL, for the few that match)."""
    index = indexes.of(event.object_type)
    f = cached_features(event.object_type.value, props, indexes.region)
    candidates = index.candidates(f, exclude=event.record_id)
    index.put(event.record_id, f)
    CANDIDATES.observe(len(candidates))
    found = finder.matches(f, candidates)
    if not found:
        return []
    rows = await conn.fetch(
        "SELECT record_id, properties FROM detector_records"
        " WHERE object_type = $1 AND record_id = ANY($2::text[]) AND NOT deleted",
        event.object_type.value,
        [m.other_id for m in found],
    )
    others = {r["record_id"]: r["properties"] for r in rows}
    return [(m, others[m.other_id]) for m in found if m.other_id in others]


async def leave_clusters(conn: DbConn, object_type: ObjectType, record_ids: list[str]) -> None:
    """Merged and deleted records leave their cluster (the cluster keeps its id)."""
    await conn.execute(
        "DELETE FROM detector_clusters WHERE object_type = $1 AND record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
    )


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
        (
            f"{merged} looks like a duplicate of "
            if len(choice.merged) == 1
            else f"{merged} look like duplicates of "
        )
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
