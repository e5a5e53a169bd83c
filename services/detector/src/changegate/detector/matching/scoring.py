"""Fellegi-Sunter scoring with a trained model (``model.py``). Each comparison's level weighs
log2(m / u) bits, adjusted by the term frequency of the shared value where the level says so; a
pair's score is the sum (a comparison without a level adds 0), and its match probability is the
logistic of the score plus the prior log-odds that two random records match. Because u comes
from random pairs and the prior is that of random pairs, the probability holds for any pair,
blocked or not (blocking is a function of the levels)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from changegate.detector.matching.model import MatchModel, TermFrequencies
from changegate.detector.matching.normalize import Features


@dataclass(frozen=True)
class Score:
    total: float
    probability: float
    weights: dict[str, float]


@dataclass(frozen=True)
class _TfLevel:
    column: str
    weight: float
    log2_u: float
    table: TermFrequencies


def probability(total: float, prior_log_odds: float) -> float:
    """Logistic in base 2, safe for very large or very small scores: the power taken is never
    above 1, so it can only underflow (to 0.0, quietly), never overflow."""
    x = float(total + prior_log_odds)
    if x >= 0:
        return 1.0 / (1.0 + math.pow(2.0, -x))
    e = math.pow(2.0, x)
    return e / (1.0 + e)


class Scorer:
    def __init__(self, model: MatchModel) -> None:
        self.model = model
        self.weights: dict[str, dict[str, float]] = {}
        self.tf: dict[str, dict[str, _TfLevel]] = {}
        for comparison in model.comparisons:
            name = comparison.output_column_name
            self.weights[name] = {}
            for level in comparison.comparison_levels:
                label = level.label_for_charts
                self.weights[name][label] = math.log2(level.m_probability / level.u_probability)
                column = level.tf_adjustment_column
                if column is not None and level.tf_adjustment_weight > 0:
                    self.tf.setdefault(name, {})[label] = _TfLevel(
                        column,
                        level.tf_adjustment_weight,
                        math.log2(level.u_probability),
                        model.term_frequencies[column],
                    )
        p = model.probability_two_random_records_match
        self.prior_log_odds = math.log2(p / (1 - p))

    def tf_adjustment(self, comparison: str, level: str, a: Features, b: Features) -> float:
        """Bits added to a level's weight for the values the two records hold (0 without TF)."""
        tf = self.tf.get(comparison, {}).get(level)
        if tf is None:
            return 0.0
        va, vb = getattr(a, tf.column), getattr(b, tf.column)
        if not va and not vb:
            return 0.0
        share = max(tf.table.of(va) if va else 0.0, tf.table.of(vb) if vb else 0.0)
        return tf.weight * (tf.log2_u - math.log2(share))

    def score(self, levels: dict[str, str], a: Features | None = None, b: Features | None = None) -> Score:
        """``a`` and ``b`` give the values for term-frequency adjustments (none without them)."""
        weights: dict[str, float] = {}
        for name, level in levels.items():
            known = self.weights.get(name)
            if known is None:
                continue
            # A level the model does not know (not seen in training) is no evidence either way.
            weight = known.get(level, 0.0)
            if a is not None and b is not None and name in self.tf and level in known:
                weight += self.tf_adjustment(name, level, a, b)
            weights[name] = weight
        total = sum(weights.values())
        return Score(total, probability(total, self.prior_log_odds), weights)
