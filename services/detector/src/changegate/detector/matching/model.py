"""The duplicate finder's model file: Fellegi-Sunter parameters in Splink's vocabulary.

A model lists *comparisons*, each with *comparison levels* carrying ``m_probability`` (share of
true duplicate pairs at that level) and ``u_probability`` (share of random pairs at it),
optionally a ``tf_adjustment_column`` whose value frequencies (``term_frequencies``) adjust the
level's weight, and ``probability_two_random_records_match``, the prior. ``changegate detector
train`` estimates it from a CRM snapshot without labels; the detector loads it
(CHANGEGATE_MATCH_MODEL) and names its version and hash in every merge proposal.

TF semantics are Splink's with ``disable_tf_exact_match_detection``: a level with a TF column
gets ``tf_adjustment_weight * (log2(u_level) - log2(max(tf(a), tf(b))))`` bits on top of
``log2(m / u)``, where tf(v) is the share of records holding v."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

from changegate.detector.matching.compare import COMPARISONS
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
    """Share of records per value, for values held by at least two records; a value not listed
    (held once, or new since training) counts as ``rare``."""

    values: dict[str, float] = Field(default_factory=dict)
    rare: float = Field(gt=0, le=1)

    def of(self, value: str) -> float:
        return self.values.get(value, self.rare)


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


def load_model(path: Path | None = None) -> MatchModel:
    """The model at ``path``, or the one shipped with the detector."""
    if path is None:
        text = resources.files("changegate.detector.matching").joinpath(DEFAULT_MODEL).read_text()
    else:
        text = Path(path).read_text()
    return MatchModel.model_validate_json(text)
