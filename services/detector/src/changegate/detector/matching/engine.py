"""The duplicate finder: compare a record with its blocking candidates, keep the likely matches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from changegate.detector.matching.compare import compare
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


class DuplicateFinder:
    def __init__(self, model: MatchModel | None = None, threshold: float = DEFAULT_REVIEW_THRESHOLD) -> None:
        self.model = model or load_model()
        self.scorer = Scorer(self.model)
        self.threshold = threshold

    def compare(self, a: Features, other_id: str, b: Features) -> Match:
        levels = compare(a, b)
        return Match(other_id, levels, self.scorer.score(levels, a, b), risk_flags(a, b))

    def matches(self, record: Features, candidates: Iterable[tuple[str, Features]]) -> list[Match]:
        """Candidates at or above the review threshold, most likely first."""
        found = []
        for other_id, other in candidates:
            levels = compare(record, other)
            score = self.scorer.score(levels, record, other)
            if score.probability >= self.threshold:  # risk flags only for what is proposed
                found.append(Match(other_id, levels, score, risk_flags(record, other)))
        return sorted(found, key=lambda m: -m.score.total)
