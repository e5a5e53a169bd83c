"""The duplicate finder's model file: Fellegi-Sunter parameters in Splink's vocabulary.

A model lists *comparisons*, each with *comparison levels* carrying ``m_probability`` (share of
true duplicate pairs at that level) and ``u_probability`` (share of random pairs at it),
optionally a ``tf_adjustment_column`` whose value frequencies (``term_frequencies``) adjust the
level's weight, and ``probability_two_random_records_match``, the prior. ``changegate detector
train`` estimates it from a CRM snapshot without labels; the detector loads it
(CHANGEGATE_MATCH_MODEL) and names its version and hash in every merge proposal.

TF semantics are Splink's with ``disable_tf_exact_match_detection``: a level with a TF column
gets ``tf_adjustment_weight * (log2(u_level) - log2(tf(v)))`` bits on top of ``log2(m / u)``,
where v is the value the level compared and tf(v) the share of records holding it. A value the
table does not list takes its share from the column's public ``reference`` (``reference.py``),
and a value found in neither gets no adjustment: unseen is not the same as rare.

Within a comparison a level never weighs less than a level it is stronger than (``order``): a
fit that says otherwise - EM converging on an odd split - is pooled to the weight of both levels
together (``enforce_order``), at training and again when a model is loaded."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

from changegate.detector.matching.compare import COMPARISONS
from changegate.detector.matching.reference import Reference, shares
from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT: Literal["changegate-match-model/1"] = "changegate-match-model/1"
DEFAULT_MODEL = "default_model.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComparisonLevel(_Frozen):
    label_for_charts: str = Field(min_length=1, description="the level, as compare.py names it")
    m_probability: float = Field(gt=0, le=1)
    u_probability: float = Field(gt=0, le=1)
    tf_adjustment_column: str | None = None
    tf_adjustment_weight: float = Field(1.0, ge=0, le=1)
    # Splink's other TF semantics (an exact-match level inferred from the column) are not
    # implemented: a model asking for them would be scored wrongly, so it is refused.
    disable_tf_exact_match_detection: Literal[True] = True


class Comparison(_Frozen):
    output_column_name: str = Field(min_length=1)
    comparison_levels: list[ComparisonLevel]


class TermFrequencies(_Frozen):
    """Share of records per value, for values held by at least two training records. A value not
    listed (held once, or new since training) takes its share from ``reference`` when that lists
    it, and otherwise has none: it is not taken to be rare."""

    values: dict[str, float] = Field(default_factory=dict)
    rare: float = Field(gt=0, le=1, description="share of a value held once in training (information only)")
    reference: Reference | None = Field(None, description="public frequencies for values not listed")

    def of(self, value: str) -> float | None:
        share = self.values.get(value)
        if share is None and self.reference is not None:
            share = shares(self.reference).get(value)
        return share


class MatchModel(_Frozen):
    format: Literal["changegate-match-model/1"] = FORMAT
    model_version: str = Field(min_length=1)
    link_type: Literal["dedupe_only"] = "dedupe_only"
    probability_two_random_records_match: float = Field(gt=0, lt=1)
    comparisons: list[Comparison]
    term_frequencies: dict[str, TermFrequencies] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="provenance: data, method, counts")

    @model_validator(mode="after")
    def _levels_are_known(self) -> Self:
        """A model for other levels than this detector computes would score nothing it names."""
        known = {c.name: set(c.levels) for c in COMPARISONS}
        for comparison in self.comparisons:
            name = comparison.output_column_name
            if name not in known:
                raise ValueError(f"comparison {name!r} is unknown to this detector (knows {sorted(known)})")
            for level in comparison.comparison_levels:
                if level.label_for_charts not in known[name]:
                    raise ValueError(f"{name}: level {level.label_for_charts!r} is unknown")
                column = level.tf_adjustment_column
                if column is not None and column not in self.term_frequencies:
                    raise ValueError(f"{name}.{level.label_for_charts}: no term frequencies for {column!r}")
        return self

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=1) + "\n")


def _in_order(
    levels: list[ComparisonLevel], dominance: Iterable[tuple[str, str]], weakest: str
) -> list[ComparisonLevel]:
    """Pool-adjacent-violators over a partial order: groups of levels whose ratio m/u breaks the
    order are merged (their m and u summed) until none does; each level then takes its group's
    ratio (m = u * ratio, so the group's total m is kept). ``weakest`` never counts for a match."""
    by_label = {lv.label_for_charts: lv for lv in levels}
    group = {label: label for label in by_label}

    def root(label: str) -> str:
        while group[label] != label:
            label = group[label]
        return label

    def ratio(top: str) -> float:
        members = [lv for lb, lv in by_label.items() if root(lb) == top]
        return sum(lv.m_probability for lv in members) / sum(lv.u_probability for lv in members)

    order = [(s, w) for s, w in dominance if s in by_label and w in by_label]
    changed = True
    while changed:
        changed = False
        for stronger, weaker in order:
            a, b = root(stronger), root(weaker)
            if a != b and ratio(a) < ratio(b):
                group[b] = a
                changed = True
    out = []
    for label, level in by_label.items():
        r = ratio(root(label))
        if label == weakest:
            r = min(r, 1.0)
        m = min(1.0, level.u_probability * r)
        out.append(
            level if math.isclose(m, level.m_probability) else level.model_copy(update={"m_probability": m})
        )
    return out


def enforce_order(model: MatchModel) -> MatchModel:
    """The model with every comparison's levels in order (``ComparisonSpec.order``): where a level
    weighs more than one it is stronger than, the two are pooled (m and u summed, the weight of
    both together given to each: pool-adjacent-violators over the order), and a disagreement level
    never counts for a match (its m at most its u)."""
    specs = {c.name: c for c in COMPARISONS}
    comparisons = []
    for comparison in model.comparisons:
        spec = specs[comparison.output_column_name]
        levels = _in_order(comparison.comparison_levels, spec.dominance, spec.levels[-1])
        comparisons.append(comparison.model_copy(update={"comparison_levels": levels}))
    return model.model_copy(update={"comparisons": comparisons})


def load_model(path: Path | None = None) -> MatchModel:
    """The model at ``path``, or the one shipped with the detector."""
    if path is None:
        text = resources.files("changegate.detector.matching").joinpath(DEFAULT_MODEL).read_text()
    else:
        text = Path(path).read_text()
    return MatchModel.model_validate_json(text)
