"""Fellegi-Sunter scoring. For each field and agreement level, m = P(level | same entity) and
u = P(level | different entities); the level's weight is log2(m / u). A pair's score is the sum of
its fields' weights (missing fields add 0), and its match probability is the logistic of the score
plus the prior log-odds that a candidate pair (one that shares a blocking key) is a match.

The defaults below were fitted by ``bench/detector_quality.py --fit --seed 1`` on the labelled
synthetic population (20,000 people), floored so that no level is a hard veto, with disagreement
never counting for a match; they are configuration (CHANGEGATE_MATCH_WEIGHTS), not code. Refit
them on labelled pairs from your own CRM (e.g. past merges) before trusting auto-review volumes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

# field -> level -> (m, u)
DEFAULT_MU: dict[str, dict[str, tuple[float, float]]] = {
    "address": {"disagree": (0.1417, 0.6877), "exact": (0.8179, 0.1444), "partial": (0.04049, 0.1679)},
    "email": {
        "disagree": (0.2309, 0.9314),
        "exact": (0.6397, 0.002),
        "partial": (0.002, 0.002),
        "partial_same_name": (0.02339, 0.06133),
        "similar": (0.1056, 0.006519),
    },
    "name": {
        "partial": (0.02, 0.005),
        "disagree": (0.0624, 0.4106),
        "exact": (0.7032, 0.586),
        "similar": (0.2344, 0.003366),
    },
    "organisation": {"disagree": (0.1417, 0.7468), "exact": (0.8582, 0.2532), "similar": (0.002, 0.002)},
    "phone": {
        "disagree": (0.1369, 0.9569),
        "exact": (0.05858, 0.04303),
        "exact_same_name": (0.7882, 0.002),
        "partial": (0.01628, 0.002),
    },
}


class MatchWeights(BaseModel):
    """Configurable Fellegi-Sunter parameters of the duplicate finder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mu: dict[str, dict[str, tuple[float, float]]] = Field(
        default_factory=lambda: DEFAULT_MU, description="field -> level -> (m, u) probabilities"
    )
    prior: float = Field(0.0432, gt=0, lt=1, description="P(match) of a pair that shares a blocking key")
    review_threshold: float = Field(
        0.8, gt=0, lt=1, description="match probability from which a merge is proposed"
    )


@dataclass(frozen=True)
class Score:
    total: float
    probability: float
    weights: dict[str, float]


class Scorer:
    def __init__(self, config: MatchWeights | None = None) -> None:
        self.config = config or MatchWeights()
        self.weights = {
            f: {lvl: math.log2(m / u) for lvl, (m, u) in levels.items()}
            for f, levels in self.config.mu.items()
        }
        self.prior_log_odds = math.log2(self.config.prior / (1 - self.config.prior))

    def score(self, levels: dict[str, str]) -> Score:
        # A level the weights do not know (not seen when they were fitted) is no evidence either way.
        weights = {f: self.weights[f].get(lvl, 0.0) for f, lvl in levels.items() if f in self.weights}
        total = sum(weights.values())
        return Score(total, 1 / (1 + 2 ** -(total + self.prior_log_odds)), weights)
