"""Cluster decisions: a record joins a cluster on its evidence against the cluster as a whole,
never through a chain of links.

A record that arrives (or changes) is compared with its blocking candidates; those scoring at
least the cluster floor bring in their clusters (or themselves, alone). A cluster is joined only
if

- the record's **pooled** evidence against it - per comparison the best level any member reaches
  (``Scorer.pooled``) - clears the review threshold: one member may have lost the email and another
  the address, the person is still there;
- **every pair** of the record with a member scores at least the floor: a record that disagrees
  with any member (another first name, another date of birth) stays out, however strongly it
  matches the others;
- no pair was **rejected** by a reviewer as different entities.

The record may bridge several clusters (it is the missing link between two halves of one person's
records): the best-scoring one is joined first, each further one only if every pair across it and
the cluster so far clears the floor and none was rejected, and the cluster stays within
``MAX_CLUSTER_SIZE``. Everything here is pure: the detector (``dedup.py``) and the quality
benchmark run the same decisions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from changegate.detector.matching.engine import DuplicateFinder, Match
from changegate.detector.matching.normalize import Features
from changegate.detector.matching.scoring import Score

Pair = frozenset[str]
# A merge of more records than this is not proposed by growing one cluster: past it, something
# other than duplication (a shared mailbox, a test record copied many times) is the likelier story.
MAX_CLUSTER_SIZE = 10


def pair(a: str, b: str) -> Pair:
    return frozenset((a, b))


@dataclass(frozen=True)
class ScoredPair:
    """Two records and their comparison (``match.other_id`` is ``b``)."""

    a: str
    b: str
    match: Match

    @property
    def probability(self) -> float:
        return self.match.probability


@dataclass
class Decision:
    """Where a record belongs after an event: ``members`` (itself included; empty when it joins
    nobody), the groups it joined, best first, with its pooled score against the first, every pair
    scored on the way, and why each other candidate group was left out."""

    members: tuple[str, ...] = ()
    joined: tuple[str, ...] = ()
    pooled: Score | None = None
    scored: dict[Pair, ScoredPair] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


class PairScores:
    """Pairs scored once each, whichever way round they are asked for."""

    def __init__(self, finder: DuplicateFinder, known: Iterable[ScoredPair] = ()) -> None:
        self.finder = finder
        self.scored: dict[Pair, ScoredPair] = {pair(p.a, p.b): p for p in known}

    def get(self, a: str, fa: Features, b: str, fb: Features) -> ScoredPair:
        key = pair(a, b)
        found = self.scored.get(key)
        if found is None:
            found = self.scored[key] = ScoredPair(a, b, self.finder.compare(fa, b, fb))
        return found

    def within(self, members: Mapping[str, Features]) -> list[ScoredPair]:
        """Every pair of ``members``, weakest first."""
        ids = sorted(members, key=lambda r: (len(r), r))
        pairs = [self.get(a, members[a], b, members[b]) for i, a in enumerate(ids) for b in ids[i + 1 :]]
        return sorted(pairs, key=lambda p: (p.probability, p.a, p.b))


def decide(
    finder: DuplicateFinder,
    record_id: str,
    record: Features,
    groups: Mapping[str, Mapping[str, Features]],
    distinct: set[Pair],
    scores: PairScores | None = None,
    max_size: int = MAX_CLUSTER_SIZE,
) -> Decision:
    """The cluster ``record_id`` belongs to, from the candidate ``groups`` (group key -> members
    other than the record: an existing cluster, or a lone candidate) and the pairs reviewers
    rejected (``distinct``)."""
    scores = scores or PairScores(finder)
    refused: dict[str, str] = {}
    options: list[tuple[float, str, Score]] = []
    for key, members in groups.items():
        if not members:
            continue
        rejected = sorted(m for m in members if pair(record_id, m) in distinct)
        if rejected:
            refused[key] = f"a reviewer rejected a merge with {', '.join(rejected)}"
            continue
        links = [scores.get(record_id, record, m, f) for m, f in members.items()]
        weakest = min(links, key=lambda p: p.probability)
        if weakest.probability < finder.floor:
            refused[key] = f"{weakest.b} scores {weakest.probability:.3f}, below the floor {finder.floor}"
            continue
        pooled = finder.scorer.pooled((p.match.levels, p.match.score.raw) for p in links)
        if pooled.probability < finder.threshold:
            refused[key] = f"evidence against the cluster {pooled.probability:.3f}, below the threshold"
            continue
        options.append((pooled.total, key, pooled))
    options.sort(key=lambda o: (-o[0], o[1]))
    cluster: dict[str, Features] = {record_id: record}
    joined: list[str] = []
    for _, key, _ in options:
        members = groups[key]
        if len(cluster) + len(members) > max_size:
            refused[key] = f"the cluster would hold more than {max_size} records"
            continue
        problem = _across(scores, cluster, members, record_id, distinct, finder.floor)
        if problem:
            refused[key] = problem
            continue
        cluster.update(members)
        joined.append(key)
    if not joined:
        return Decision(scored=scores.scored, refused=refused)
    pooled = next(score for _, key, score in options if key == joined[0])
    ordered = tuple(sorted(cluster, key=lambda r: (len(r), r)))
    return Decision(ordered, tuple(joined), pooled, scores.scored, refused)


def _across(
    scores: PairScores,
    cluster: Mapping[str, Features],
    members: Mapping[str, Features],
    record_id: str,
    distinct: set[Pair],
    floor: float,
) -> str:
    """Why ``members`` cannot join ``cluster`` ('' if they can): a rejected pair or a pair below
    the floor across the two (the record's own pairs are checked already)."""
    for m, fm in members.items():
        for c, fc in cluster.items():
            if c == record_id:
                continue
            if pair(m, c) in distinct:
                return f"a reviewer rejected a merge of {m} with {c}"
            scored = scores.get(c, fc, m, fm)
            if scored.probability < floor:
                return f"{m} and {c} score {scored.probability:.3f}, below the floor {floor}"
    return ""
