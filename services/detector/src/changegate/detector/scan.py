"""`changegate detector scan`: the duplicate clusters already in the records the detector knows (an
import loads them), found as a stream would have found them, reported first and proposed only on
the operator's word.

The base is read in the order its records were created in the CRM (``createdate``, then id; records
the detector learnt of without one — webhooks after the import — last) and streamed through the
detector's own cluster decisions (``matching/stream.py``), reviewers' rejected pairs included. Each
cluster becomes the merge proposal the detector would make of it (``dedup.propose_merge``: the
survivor, confidence and rationale of the weakest pair, every pair's evidence), with a status:

- ``new``: nothing open or decided names its records;
- ``open``: an open merge proposal names some of them (a streaming find, or an earlier scan's);
- ``decided``: this very proposal was decided before (rejected, expired, …).

Only ``new`` clusters are published, highest confidence first, at most ``limit`` a run: a first
scan never floods the review queue, and a scan never retires what is already open."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType, Proposal
from changegate.core.contracts.base import utcnow
from changegate.detector import dedup
from changegate.detector.handler import Detector
from changegate.detector.matching.clusters import PairScores, pair
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.index import BlockingIndex, pack, unpack
from changegate.detector.matching.model import load_model
from changegate.detector.matching.normalize import features
from changegate.detector.matching.stream import ClusterStream
from changegate.detector.settings import DetectorSettings

SOURCE = "changegate-scan"
NEW, OPEN, DECIDED = "new", "open", "decided"


@dataclass
class Found:
    """A cluster and the merge proposal the detector would make of it (unsigned)."""

    proposal: Proposal
    members: list[str]
    status: str = NEW

    @property
    def cluster_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.proposal.evidence["cluster_id"]))


def _arrival(record_id: str, props: dict[str, Any]) -> tuple[int, str, int, str]:
    """Creation order: by ``createdate`` (ISO-8601 UTC sorts as text), records without one after."""
    created = str(props.get("createdate") or "")
    return (0 if created else 1, created, len(record_id), record_id)


async def _base(
    pool: asyncpg.Pool, object_type: ObjectType, region: str, batch: int = 5000
) -> list[tuple[str, str]]:
    """Every live record as (id, packed features), in arrival order."""
    rows: list[tuple[tuple[int, str, int, str], str, str]] = []
    after = ""
    while True:
        page = await pool.fetch(
            "SELECT record_id, properties FROM detector_records WHERE object_type = $1 AND NOT deleted"
            " AND record_id > $2 ORDER BY record_id LIMIT $3",
            object_type.value,
            after,
            batch,
        )
        if not page:
            break
        for r in page:
            props = r["properties"]
            rows.append(
                (
                    _arrival(r["record_id"], props),
                    r["record_id"],
                    pack(features(object_type.value, props, region)),
                )
            )
        after = page[-1]["record_id"]
    rows.sort()
    return [(rid, packed) for _, rid, packed in rows]


async def find(
    pool: asyncpg.Pool,
    settings: DetectorSettings,
    object_type: ObjectType,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[Found]:
    """Every cluster of the base, highest confidence first."""
    finder = DuplicateFinder(
        load_model(settings.match_model), settings.match_review_threshold, settings.match_cluster_floor
    )
    model = {"version": finder.model.model_version, "sha256": finder.model.sha256}
    distinct = {
        pair(r["a"], r["b"])
        for r in await pool.fetch(
            "SELECT a, b FROM detector_distinct_pairs WHERE object_type = $1", object_type.value
        )
    }
    base = await _base(pool, object_type, settings.default_phone_region)
    stream = ClusterStream(finder, BlockingIndex(object_type.value), distinct, settings.max_merge_proposals)
    for done, (record_id, packed) in enumerate(base, 1):
        stream.add(record_id, unpack(object_type.value, packed))
        if done % 500 == 0 or done == len(base):
            progress(done, len(base))
    clusters = [sorted(members, key=lambda r: (len(r), r)) for members in stream.clusters()]
    props = await _properties(pool, object_type, [rid for members in clusters for rid in members])
    scores = PairScores(finder, stream.scored.values())
    source = CrmEvent(
        source_system=SOURCE,
        source_event_id=f"scan-{utcnow().isoformat(timespec='seconds')}",
        object_type=object_type,
        record_id="scan",
        kind=CrmEventKind.RECORD_CREATED,
    )
    found = [
        Found(
            dedup.propose_merge(
                source,
                dedup.new_cluster_id(object_type, members),
                {rid: props[rid] for rid in members},
                finder,
                model,
                scores=scores,
                direct=stream.direct,
                region=settings.default_phone_region,
            ),
            members,
        )
        for members in clusters
        if all(rid in props for rid in members)
    ]
    await _statuses(pool, object_type, found)
    return sorted(found, key=lambda f: (-f.proposal.confidence, f.members))


async def _properties(
    pool: asyncpg.Pool, object_type: ObjectType, ids: list[str]
) -> dict[str, dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT record_id, properties FROM detector_records"
        " WHERE object_type = $1 AND record_id = ANY($2::text[]) AND NOT deleted",
        object_type.value,
        ids,
    )
    return {r["record_id"]: r["properties"] for r in rows}


async def _statuses(pool: asyncpg.Pool, object_type: ObjectType, found: list[Found]) -> None:
    ids = [f.proposal.proposal_id for f in found]
    closed = {
        r["proposal_id"]
        for r in await pool.fetch(
            "SELECT proposal_id FROM detector_closed_proposals WHERE proposal_id = ANY($1::uuid[])", ids
        )
    }
    named = {
        rid
        for r in await pool.fetch(
            "SELECT members FROM detector_open_merges WHERE object_type = $1 AND members && $2::text[]",
            object_type.value,
            [rid for f in found for rid in f.members],
        )
        for rid in r["members"]
    }
    for f in found:
        if f.proposal.proposal_id in closed:
            f.status = DECIDED
        elif named.intersection(f.members):
            f.status = OPEN


async def publish(pool: asyncpg.Pool, detector: Detector, found: list[Found], limit: int) -> list[Proposal]:
    """The ``limit`` most confident new clusters proposed (in that order), each with its cluster
    recorded, in one transaction each; what a concurrent event made open or decided meanwhile is
    left alone."""
    sent: list[Proposal] = []
    for item in (f for f in found if f.status == NEW):
        if len(sent) >= limit:
            break
        object_type = item.proposal.object_type
        async with pool.acquire() as conn, conn.transaction():
            named = await conn.fetchval(
                "SELECT count(*) FROM detector_open_merges WHERE object_type = $1 AND members && $2::text[]",
                object_type.value,
                item.members,
            )
            if named:
                item.status = OPEN
                continue
            await dedup.leave_clusters(conn, object_type, item.members)
            await dedup.join_cluster(conn, object_type, item.cluster_id, item.members, [])
            emitted = await detector.emit(conn, [item.proposal])
        if emitted:
            sent += emitted
        else:
            item.status = DECIDED
    return sent


def rows(found: list[Found]) -> Iterator[dict[str, Any]]:
    """The report: a row a cluster, what a reviewer would see first."""
    for f in found:
        p = f.proposal
        weakest = p.evidence["weakest_pair"]
        yield {
            "cluster_id": str(f.cluster_id),
            "status": f.status,
            "confidence": p.confidence,
            "size": len(f.members),
            "survivor": p.record_id,
            "merged": list(p.other_record_ids),
            "weakest_pair": weakest["records"],
            "agree": sorted(k for k, v in weakest["fields"].items() if v["weight"] > 0),
            "disagree": sorted(k for k, v in weakest["fields"].items() if v["weight"] < 0),
            "flags": p.evidence.get("flags", []),
            "rationale": p.rationale,
            "proposal_id": str(p.proposal_id),
            "members": p.evidence["members"],
            "evidence": p.evidence,
        }
