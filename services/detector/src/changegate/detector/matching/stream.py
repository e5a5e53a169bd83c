"""Clusters of records that arrive one by one, decided as the detector decides them on a stream —
in memory, for a whole base at once (`changegate detector scan`).

Each record is looked up in the blocking index among the records before it, its candidates scoring
at least the floor (the ``max_candidates`` best) bring in their clusters or come alone, and
``clusters.decide`` places it; the clusters it joins become one. That is what ``dedup.cluster_record``
does with a new record against PostgreSQL, so a scan of a base finds the clusters a detector that
had seen the same records arrive in the same order holds (a test runs both)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from changegate.detector.matching.clusters import Decision, Pair, PairScores, ScoredPair, decide, pair
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.index import BlockingIndex
from changegate.detector.matching.normalize import Features


class ClusterStream:
    """Records added in arrival order; ``clusters()`` the clusters so far (two records or more)."""

    def __init__(
        self,
        finder: DuplicateFinder,
        index: BlockingIndex,
        distinct: set[Pair] | None = None,
        max_candidates: int = 20,
    ) -> None:
        self.finder, self.index = finder, index
        self.distinct = distinct or set()
        self.max_candidates = max_candidates
        self.cluster_of: dict[str, int] = {}
        self.members: dict[int, set[str]] = {}
        self.scored: dict[Pair, ScoredPair] = {}  # the pairs scored on the way (evidence reuses them)
        self.direct: set[Pair] = set()  # the pairs blocking brought together
        self._keys = itertools.count(1)

    def add(self, record_id: str, record: Features) -> Decision | None:
        """Place a record that arrives; its decision (None: no candidate at the floor)."""
        candidates = self.index.candidates(record, exclude=record_id)
        self.index.put(record_id, record)
        found = self.finder.matches(record, candidates, at_least=self.finder.floor)[: self.max_candidates]
        if not found:
            return None
        groups: dict[str, dict[str, Features]] = {}
        for match in found:
            key = self.cluster_of.get(match.other_id)
            if key is None:
                features = self.index.features(match.other_id)
                if features is not None:
                    groups[f"record:{match.other_id}"] = {match.other_id: features}
            elif str(key) not in groups:
                groups[str(key)] = {
                    rid: f
                    for rid in self.members[key]
                    if rid != record_id and (f := self.index.features(rid)) is not None
                }
        self.direct.update(pair(record_id, m.other_id) for m in found)
        scores = PairScores(self.finder, (ScoredPair(record_id, m.other_id, m) for m in found))
        decision = decide(self.finder, record_id, record, groups, self.distinct, scores)
        self.scored.update(decision.scored)
        if decision.members:
            absorbed = [int(k) for k in decision.joined if not k.startswith("record:")]
            key = absorbed[0] if absorbed else next(self._keys)
            for other in absorbed[1:]:
                self.members.pop(other, None)
            self.members[key] = set(decision.members)
            for rid in decision.members:
                self.cluster_of[rid] = key
        return decision

    def clusters(self) -> Iterator[set[str]]:
        return (members for members in self.members.values() if len(members) > 1)
