"""Duplicate detection over the in-process blocking index, clusters, and merge proposals."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.contracts.base import is_empty
from changegate.core.db import DbConn
from changegate.detector.matching import survivorship
from changegate.detector.matching.clusters import Pair, PairScores, ScoredPair, decide, pair
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.index import BlockingIndex
from changegate.detector.matching.normalize import Features, cached_features, features
from changegate.detector.matching.scoring import Score
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


async def leave_clusters(conn: DbConn, object_type: ObjectType, record_ids: list[str]) -> None:
    """Merged and deleted records leave their cluster (the cluster keeps its id)."""
    await conn.execute(
        "DELETE FROM detector_clusters WHERE object_type = $1 AND record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
    )


CLUSTER_NAMESPACE = uuid.UUID("0c1a55e2-9d3b-4f7e-8a61-2b4c6d8e0f13")
# What a reviewer compares, member by member, in a merge proposal's evidence.
REVIEW_FIELDS = (
    "firstname",
    "lastname",
    "name",
    "email",
    "phone",
    "mobilephone",
    "company",
    "domain",
    "website",
    "address",
    "city",
    "zip",
    "state",
    "country",
    "date_of_birth",
    "jobtitle",
)


def new_cluster_id(object_type: ObjectType, record_ids: Iterable[str]) -> uuid.UUID:
    """A new cluster is named after its smallest record id, so a replay names it the same."""
    return uuid.uuid5(CLUSTER_NAMESPACE, f"{object_type.value}|{min(record_ids, key=lambda r: (len(r), r))}")


async def cluster_groups(
    conn: DbConn, object_type: ObjectType, record_ids: list[str]
) -> dict[uuid.UUID, list[str]]:
    """The clusters of ``record_ids``, each with all its members."""
    rows = await conn.fetch(
        "SELECT c2.cluster_id, c2.record_id FROM detector_clusters c1 JOIN detector_clusters c2"
        " ON c2.cluster_id = c1.cluster_id AND c2.object_type = c1.object_type"
        " WHERE c1.object_type = $1 AND c1.record_id = ANY($2::text[])",
        object_type.value,
        record_ids,
    )
    groups: dict[uuid.UUID, list[str]] = {}
    for r in rows:
        groups.setdefault(r["cluster_id"], []).append(r["record_id"])
    return groups


async def neighbourhood(
    conn: DbConn, object_type: ObjectType, record_ids: list[str]
) -> tuple[dict[uuid.UUID, list[str]], set[Pair]]:
    """In one round trip: the clusters of ``record_ids`` with all their members, and the pairs
    among all those records that a reviewer said are different entities (a rejected merge)."""
    rows = await conn.fetch(
        "WITH members AS ("
        " SELECT c2.cluster_id, c2.record_id FROM detector_clusters c1 JOIN detector_clusters c2"
        " ON c2.cluster_id = c1.cluster_id AND c2.object_type = c1.object_type"
        " WHERE c1.object_type = $1 AND c1.record_id = ANY($2::text[])),"
        " universe AS (SELECT record_id FROM members UNION SELECT unnest($2::text[]))"
        " SELECT cluster_id::text AS x, record_id AS y, false AS apart FROM members"
        " UNION ALL SELECT a, b, true FROM detector_distinct_pairs WHERE object_type = $1"
        " AND a IN (SELECT record_id FROM universe) AND b IN (SELECT record_id FROM universe)",
        object_type.value,
        record_ids,
    )
    groups: dict[uuid.UUID, list[str]] = {}
    distinct: set[Pair] = set()
    for r in rows:
        if r["apart"]:
            distinct.add(pair(r["x"], r["y"]))
        else:
            groups.setdefault(uuid.UUID(r["x"]), []).append(r["y"])
    return groups, distinct


async def record_distinct(conn: DbConn, merge: Proposal) -> list[str]:
    """A rejected merge: every pair it named is two different entities, for good. The clusters
    holding its records are dissolved (no cluster may hold two of them; the others cluster again
    as events come); the records of those clusters are returned."""
    members = sorted({merge.record_id, *merge.other_record_ids})
    pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
    await conn.executemany(
        "INSERT INTO detector_distinct_pairs (object_type, a, b, proposal_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING",
        [(merge.object_type.value, a, b, merge.proposal_id) for a, b in pairs],
    )
    clusters = await cluster_groups(conn, merge.object_type, members)
    dissolved = sorted({rid for ids in clusters.values() for rid in ids})
    await leave_clusters(conn, merge.object_type, dissolved)
    return dissolved


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


async def _properties(
    conn: DbConn, object_type: ObjectType, record_ids: list[str]
) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT record_id, properties FROM detector_records"
        " WHERE object_type = $1 AND record_id = ANY($2::text[]) AND NOT deleted",
        object_type.value,
        record_ids,
    )
    return {r["record_id"]: r["properties"] for r in rows}


@dataclass
class Clustering:
    """What an event did to the clusters: merge proposals to raise, and records whose open merge
    proposals no longer hold (the record left its cluster and nothing re-proposes the rest)."""

    proposals: list[Proposal] = field(default_factory=list)
    retire: list[str] = field(default_factory=list)


async def cluster_record(
    conn: DbConn,
    finder: DuplicateFinder,
    indexes: Indexes,
    event: CrmEvent,
    record: dict[str, Any],
    model: dict[str, str],
    max_candidates: int,
) -> Clustering:
    """Re-index the record under its current keys, then decide its cluster (``clusters.decide``)
    from the candidates scoring at least the floor and the clusters they belong to; propose the
    merge of the cluster it is in, and of the one it left when it no longer fits there."""
    object_type, record_id = event.object_type, event.record_id
    index = indexes.of(object_type)
    mine = cached_features(object_type.value, record, indexes.region)
    candidates = index.candidates(mine, exclude=record_id)
    index.put(record_id, mine)
    CANDIDATES.observe(len(candidates))
    found = finder.matches(mine, candidates, at_least=finder.floor)[:max_candidates]
    if not found and event.kind is CrmEventKind.RECORD_CREATED:
        return Clustering()  # a new record matching nothing: in no cluster, none to leave
    groups_by_id, distinct = await neighbourhood(conn, object_type, [record_id, *(m.other_id for m in found)])
    own = next((cid for cid, ids in groups_by_id.items() if record_id in ids), None)
    if not found and own is None:
        return Clustering()
    features_of: dict[str, Features] = {record_id: mine}
    groups: dict[str, dict[str, Features]] = {}
    in_cluster = set()
    for cid, ids in groups_by_id.items():
        members = {}
        for rid in ids:
            f = index.features(rid)
            if rid != record_id and f is not None:
                members[rid] = features_of[rid] = f
        groups[str(cid)] = members
        in_cluster.update(ids)
    lone = {
        m.other_id: f for m in found if m.other_id not in in_cluster and (f := index.features(m.other_id))
    }
    for rid, f in lone.items():
        groups[f"record:{rid}"] = {rid: f}
        features_of[rid] = f
    scores = PairScores(finder, (ScoredPair(record_id, m.other_id, m) for m in found))
    decision = decide(finder, record_id, mine, groups, distinct, scores)
    direct = {pair(record_id, m.other_id) for m in found}
    out = Clustering()
    stays = own is not None and str(own) in decision.joined
    if own is not None and not stays:
        await leave_clusters(conn, object_type, [record_id])
        rest = [rid for rid in groups_by_id[own] if rid != record_id and rid in features_of]
        if len(rest) >= 2:
            props = await _properties(conn, object_type, rest)
            if len(props) >= 2:
                out.proposals.append(
                    propose_merge(
                        event,
                        own,
                        props,
                        finder,
                        model,
                        scores=scores,
                        direct=direct,
                        region=indexes.region,
                        after=f"{record_id} left at {event.source_event_id}",
                    )
                )
        else:
            await leave_clusters(conn, object_type, rest)
            out.retire.append(record_id)
    if decision.members:
        absorbed = [uuid.UUID(k) for k in decision.joined if not k.startswith("record:")]
        cluster_id = own if stays and own is not None else (absorbed[0] if absorbed else None)
        if cluster_id is None:
            cluster_id = new_cluster_id(object_type, decision.members)
        await join_cluster(conn, object_type, cluster_id, list(decision.members), absorbed)
        props = await _properties(conn, object_type, list(decision.members))
        props[record_id] = record
        if len(props) >= 2:
            out.proposals.append(
                propose_merge(
                    event,
                    cluster_id,
                    props,
                    finder,
                    model,
                    scores=scores,
                    direct=direct,
                    pooled=decision.pooled,
                    region=indexes.region,
                )
            )
    return out


def _pair_evidence(p: ScoredPair, direct: set[Pair]) -> dict[str, Any]:
    m = p.match
    return {
        "records": [p.a, p.b],
        "probability": round(m.probability, 4),
        "score": round(m.score.total, 3),
        "fields": {
            f: {"level": lvl, "weight": round(m.score.weights.get(f, 0.0), 3)}
            for f, lvl in sorted(m.levels.items())
        },
        "flags": list(m.flags),
        "notes": list(m.score.notes),
        "found_by": "blocking" if pair(p.a, p.b) in direct else "cluster",
    }


def _agreement(p: ScoredPair) -> tuple[list[str], list[str]]:
    """The fields the pair agrees on and those it disagrees on, by their weight in the model."""
    raw = p.match.score.raw
    agree = sorted(f for f, w in raw.items() if w > 0)
    disagree = sorted(f for f, w in raw.items() if w < 0)
    return agree, disagree


def _side_by_side(members: dict[str, dict[str, Any]], order: list[str]) -> dict[str, dict[str, Any]]:
    return {
        rid: {f: members[rid][f] for f in REVIEW_FIELDS if not is_empty(members[rid].get(f))} for rid in order
    }


def propose_merge(
    event: CrmEvent,
    cluster_id: uuid.UUID,
    members: dict[str, dict[str, Any]],
    finder: DuplicateFinder,
    model: dict[str, str],
    *,
    scores: PairScores | None = None,
    direct: set[Pair] | None = None,
    pooled: Score | None = None,
    region: str = "US",
    after: str = "",
) -> Proposal:
    """One merge proposal for a cluster: the survivor and every record merged into it. Its
    confidence and rationale are those of the cluster's weakest internal pair (every pair is
    scored; ``scores`` holds those scored already, ``direct`` the pairs the event's blocking
    found), so a reviewer reading only the rationale never sees a stronger claim than the weakest
    evidence between two of the records to be merged. ``pooled``: the event record's evidence
    against the cluster it joined. ``after``: what makes this proposal new although its cluster
    and members were proposed before (a member left since: that earlier proposal was retired)."""
    scores = scores or PairScores(finder)
    direct = direct or set()
    choice = survivorship.choose_cluster(members)
    survivor_props = members[choice.survivor]
    changes = [
        FieldChange(field=name, previous=survivor_props.get(name), proposed=value)
        for name, value in choice.fills.items()
    ]
    merged_before = survivor_props.get(MERGED_IDS_FIELD)
    merged_ids = ";".join(x for x in [str(merged_before or ""), *choice.merged] if x)
    changes.append(FieldChange(field=MERGED_IDS_FIELD, previous=merged_before, proposed=merged_ids))
    pairs = scores.within(
        {rid: cached_features(event.object_type.value, props, region) for rid, props in members.items()}
    )
    weakest = pairs[0]
    agree, disagree = _agreement(weakest)
    flags = sorted({f for p in pairs for f in p.match.flags})
    merged = ", ".join(choice.merged)
    head = (
        f"{merged} looks like a duplicate of {choice.survivor}"
        if len(choice.merged) == 1
        else f"{merged} look like duplicates of {choice.survivor}"
    )
    strength = (
        f"match probability {weakest.probability:.3f}"
        if len(pairs) == 1
        else f"weakest of the {len(pairs)} pairs in the cluster, each scored directly:"
        f" {weakest.a} and {weakest.b} at match probability {weakest.probability:.3f}"
    )
    rationale = (
        f"{head} ({strength}; agree on {', '.join(agree) or 'nothing'};"
        f" disagree on {', '.join(disagree) or 'nothing'}"
        + "".join(f"; {note}" for note in weakest.match.score.notes)
        + f"); {choice.survivor} survives as the {choice.rules[choice.merged[0]].replace('_', ' ')} record"
    )
    if flags:
        rationale += f"; risk: {', '.join(flags)}"
    order = [choice.survivor, *choice.merged]
    cluster: dict[str, Any] = {
        "size": len(members),
        "pairs": len(pairs),
        "pairs_scored": len(pairs),
        "floor": finder.floor,
        "review_threshold": finder.threshold,
    }
    if pooled is not None:
        cluster |= {
            "joined_by": event.record_id,
            "pooled_probability": round(pooled.probability, 4),
            "pooled_fields": {f: round(w, 3) for f, w in sorted(pooled.weights.items())},
        }
    return build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.MERGE,
        object_type=event.object_type,
        record_id=choice.survivor,
        changes=changes,
        system=event.source_system,
        source_event_id=event.source_event_id,
        trigger=Trigger.SIMILARITY,
        confidence=round(weakest.probability, 4),
        rationale=rationale,
        evidence={
            "cluster_id": str(cluster_id),
            "model": model,
            # The weakest pair: the claim the proposal makes is no stronger than this.
            "score": round(weakest.match.score.total, 3),
            "fields": _pair_evidence(weakest, direct)["fields"],
            "flags": flags,
            "weakest_pair": _pair_evidence(weakest, direct),
            "pairs": [_pair_evidence(p, direct) for p in pairs],
            "cluster": cluster,
            "members": _side_by_side(members, order),
            "survivorship": {
                "rule": choice.rules[choice.merged[0]],
                "rules": choice.rules,
                "survivor": choice.survivor,
                "merged": list(choice.merged),
                "fills": choice.fills,
                "conflicts": choice.conflicts,
            },
        },
        id_key=f"cluster:{cluster_id}|{'|'.join(sorted(members))}" + (f"|after:{after}" if after else ""),
        other_record_ids=list(choice.merged),
    )
