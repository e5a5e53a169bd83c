"""Fellegi-Sunter scoring with a trained model (``model.py``). Each comparison's level weighs
log2(m / u) bits, adjusted by the term frequency of the compared value where the level says so; a
pair's score is the sum (a comparison without a level adds 0), and its match probability is the
logistic of the score plus the prior log-odds that two random records match. Because u comes
from random pairs and the prior is that of random pairs, the probability holds for any pair,
blocked or not (blocking is a function of the levels).

Fellegi-Sunter assumes the comparisons independent given match or non-match. Look-alikes break
that: a household shares an address, a surname and a landline; a junior shares his father's name
and address. Two rules of structure hold whatever the fitted weights (``compare.CONFLICTS``):

- **a conflict voids what relatives and colleagues share**: when first names disagree, or dates
  of birth do, agreement on anything but a personal identifier (email; for a first-name conflict
  also the date of birth) is not counted: only the evidence against stays;
- **names alone are at most even odds**: the first and last name together weigh at most the prior's
  log-odds, so a pair agreeing on nothing but its names is never more likely a match than not,
  however rare the names; a match needs agreement on something besides them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from changegate.detector.matching.compare import NAME_COMPARISONS, compare_values, conflicts
from changegate.detector.matching.model import MatchModel, TermFrequencies, enforce_order
from changegate.detector.matching.normalize import Features


@dataclass(frozen=True)
class Score:
    total: float
    probability: float
    weights: dict[str, float]  # per comparison, as counted (after the rules of structure)
    raw: dict[str, float] = field(default_factory=dict)  # per comparison, as the model weighs it
    notes: tuple[str, ...] = ()  # the rules of structure that changed the sum, in words


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
        self.model = model = enforce_order(model)
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
        # Names alone at most even odds (see the module's docstring).
        self.name_bound = max(0.0, -self.prior_log_odds)

    def tf_adjustment(self, comparison: str, level: str, value: str) -> float:
        """Bits added to a level's weight for the value it compared (0 without TF, or for a value
        whose frequency is known neither to the model nor to its reference)."""
        tf = self.tf.get(comparison, {}).get(level)
        if tf is None or not value:
            return 0.0
        share = tf.table.of(value)
        if share is None:
            return 0.0
        return tf.weight * (tf.log2_u - math.log2(share))

    def level_weights(self, levels: dict[str, str], values: dict[str, str] | None = None) -> dict[str, float]:
        """The model's weight of each level (TF-adjusted where ``values`` name the compared value)."""
        weights: dict[str, float] = {}
        for name, level in levels.items():
            known = self.weights.get(name)
            if known is None:
                continue
            # A level the model does not know (not seen in training) is no evidence either way.
            weight = known.get(level, 0.0)
            if values is not None and name in self.tf and level in known:
                weight += self.tf_adjustment(name, level, values.get(name, ""))
            weights[name] = weight
        return weights

    def combine(self, levels: dict[str, str], raw: dict[str, float]) -> Score:
        """The pair's score from its levels and their weights, under the rules of structure."""
        counted = dict(raw)
        notes: list[str] = []
        for conflict in conflicts(levels):
            voided = sorted(name for name, weight in counted.items() if weight > 0)
            for name in voided:
                counted[name] = 0.0
            if voided:
                notes.append(
                    f"{conflict.why} and no {' or '.join(conflict.unless)} agrees: agreement on "
                    f"{', '.join(voided)} not counted (what relatives or colleagues share)"
                )
        names = sum(counted.get(name, 0.0) for name in NAME_COMPARISONS)
        if names > self.name_bound:
            positive = sum(counted[n] for n in NAME_COMPARISONS if counted.get(n, 0.0) > 0)
            for name in NAME_COMPARISONS:
                if counted.get(name, 0.0) > 0:
                    counted[name] -= (names - self.name_bound) * counted[name] / positive
            notes.append("names capped at even odds")
        total = sum(counted.values())
        return Score(total, probability(total, self.prior_log_odds), counted, raw, tuple(notes))

    def score(
        self,
        levels: dict[str, str],
        a: Features | None = None,
        b: Features | None = None,
        values: dict[str, str] | None = None,
    ) -> Score:
        """``values`` (or ``a`` and ``b``, from which they are read) give the compared values for
        term-frequency adjustments (none without them)."""
        if values is None and a is not None and b is not None:
            values = compare_values(a, b)[1]
        return self.combine(levels, self.level_weights(levels, values))

    def pooled(self, pairs: Iterable[tuple[dict[str, str], dict[str, float]]]) -> Score:
        """One record against a cluster: per comparison the best level any member reaches (by its
        weight), scored as one pair. Damage on different fields of different members (one lost the
        email, another the address) no longer hides the person they share."""
        levels: dict[str, str] = {}
        weights: dict[str, float] = {}
        for pair_levels, pair_weights in pairs:
            for name, level in pair_levels.items():
                weight = pair_weights.get(name, 0.0)
                if name not in levels or weight > weights[name]:
                    levels[name], weights[name] = level, weight
        return self.combine(levels, {n: w for n, w in weights.items() if n in self.weights})
