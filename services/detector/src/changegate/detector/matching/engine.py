"""The duplicate finder: compare a record with its blocking candidates, keep the likely matches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from changegate.detector.matching.compare import compare_values
from changegate.detector.matching.model import MatchModel, load_model
from changegate.detector.matching.normalize import Features
from changegate.detector.matching.scoring import Score, Scorer


@dataclass(frozen=True)
class Match:
    other_id: str
    levels: dict[str, str]
    score: Score
    flags: tuple[str, ...]

    @property
    def probability(self) -> float:
        return self.score.probability


def risk_flags(a: Features, b: Features) -> tuple[str, ...]:
    flags = []
    if a.email_domain and b.email_domain and a.email_domain != b.email_domain:
        flags.append("different_email_domains")
    if a.company and b.company and a.company != b.company:
        flags.append("different_companies")
    return tuple(flags)


DEFAULT_REVIEW_THRESHOLD = 0.9
# No pair inside a proposed cluster may score below this: records that disagree are never joined
# through others, however strong each link of the chain.
DEFAULT_CLUSTER_FLOOR = 0.5


class DuplicateFinder:
    def __init__(
        self,
        model: MatchModel | None = None,
        threshold: float = DEFAULT_REVIEW_THRESHOLD,
        floor: float = DEFAULT_CLUSTER_FLOOR,
    ) -> None:
        if not 0 < floor <= threshold < 1:
            raise ValueError(f"need 0 < cluster floor ({floor}) <= review threshold ({threshold}) < 1")
        self.scorer = Scorer(model or load_model())
        self.model = self.scorer.model  # levels in order (``enforce_order``): what is scored
        self.threshold = threshold
        self.floor = floor

    def compare(self, a: Features, other_id: str, b: Features) -> Match:
        levels, values = compare_values(a, b)
        return Match(other_id, levels, self.scorer.score(levels, values=values), risk_flags(a, b))

    def matches(
        self, record: Features, candidates: Iterable[tuple[str, Features]], at_least: float | None = None
    ) -> list[Match]:
        """Candidates at or above ``at_least`` (default: the review threshold), most likely first."""
        bar = self.threshold if at_least is None else at_least
        found = []
        for other_id, other in candidates:
            levels, values = compare_values(record, other)
            score = self.scorer.score(levels, values=values)
            if score.probability >= bar:  # risk flags only for what may be proposed
                found.append(Match(other_id, levels, score, risk_flags(record, other)))
        return sorted(found, key=lambda m: -m.score.total)
