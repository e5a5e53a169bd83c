"""What a detector's confidence rests on, said in every proposal.

Each detector gives its proposal a *prior* — what the source claims (an enrichment source's own
confidence), the score itself (an AI score), the match model's probability (a merge) or a
configured value (a verifier status, a defined event, a territory rule) — and names the *cells*
its claim belongs to: proposals alike, e.g. ``enrichment|contact|clay|jobtitle|fill|claim-0.95-0.99``
or ``verification|zerobounce|valid``. A cell's key is built from the proposal's evidence only.

The reliability table (``changegate detector calibrate``, learnt from reviewers' decisions; the
detector reads it at start from ``CHANGEGATE_RELIABILITY_FILE``) counts per cell how many proposals
reviewers approved unchanged and how many they rejected or corrected. A cell's reliability is the
posterior mean of a beta distribution centred on the prior with ``prior_weight`` pseudo-decisions:
``(k·prior + approved) / (k + approved + corrected)`` — the prior until reviewers have decided
proposals alike, then ever closer to the rate they approved. A table counts no prior as more than
``prior_cap`` (0.9): a claimed or configured 1.0 is not evidence, so only reviewers' decisions
take a cell above it — some 180 decisions alike without a correction to reach 0.99, more with one.
A proposal of several cells (an enrichment result filling several fields) is right only if each
value is: its confidence is the
product (the cells taken as independent), each cell starting from an equal share of the prior
(``prior ** (1/n)``), so that before any decision the confidence is the prior itself.

The mean is what the confidence says (calibrated: of proposals at 0.9, nine in ten are right),
but a mean learnt from few decisions can be high by luck: 102 of 102 approved is what a cell right
93% of the time shows once in some 1,600 tries. So the proposal also states how far the evidence
carries: ``lower_bound``, the posterior's lower credible bound at the table's ``level`` (0.95: the
cell is right at least this often with 95% probability) — for a proposal of several cells, the
product of each cell's bound at ``(1 - level) / n`` (Bonferroni: all hold at once with at least
``level``). The policy's ``min_confidence_bound`` gates auto-applies on it (an evidence floor);
the confidence itself stays the mean, so it stays calibrated. Without a table nothing is measured
and no bound is stated (the policy then holds a proposal to its confidence).

``evidence.confidence_basis`` says which: ``method`` ``prior`` (not yet measured) or
``reviewer_outcomes``, the prior and where it came from, the table's version, each cell's
counts and the bound; the rationale says it in words. By default the table is an artefact a person
deploys (a confidence crossing a policy threshold is a decision someone made); a team may opt in to
the running detector adding the human decisions it records (``learning.py``,
``CHANGEGATE_RELIABILITY_LEARN_SECONDS``), and each proposal then names the table it used."""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from changegate.core.contracts import Decision, DecisionOutcome, Proposal
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.special import betaincinv

BASIS = "confidence_basis"  # the evidence key
DEFAULT_PRIOR_WEIGHT = 20.0
DEFAULT_PRIOR_CAP = 0.9
# The credible level of the bound the policy gates on: the conventional 95%, i.e. a cell is
# trusted to be right at least as often as its bound says with 95% probability (see
# bench/automation_safety.py for how the tuning part checks the choice).
DEFAULT_LEVEL = 0.95
# Band edges: an enrichment source's claimed confidence, an AI score, a match probability.
CLAIM_EDGES = (0.5, 0.8, 0.9, 0.95)
SCORE_EDGES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
MATCH_EDGES = (0.5, 0.9, 0.95, 0.99, 0.999)
_UNSAFE = re.compile(r"[^a-z0-9_.@+\-]+")
_PART_MAX = 48


class PriorFrom(StrEnum):
    SOURCE_CLAIM = "source_claim"
    CONFIGURED = "configured"
    SCORE = "score"
    MATCH_MODEL = "match_model"


PRIOR_WORDS = {
    PriorFrom.SOURCE_CLAIM: "the source's own claim",
    PriorFrom.CONFIGURED: "a configured value",
    PriorFrom.SCORE: "the score itself",
    PriorFrom.MATCH_MODEL: "the match model's probability",
}


def part(value: object) -> str:
    """One component of a cell key: bounded, lower case, no separators (sources name things
    freely; a key must stay a key)."""
    text = _UNSAFE.sub("_", str(value).strip().casefold()) if value not in (None, "") else ""
    return text[:_PART_MAX] or "-"


def cell(*parts: object) -> str:
    return "|".join(part(p) for p in parts)


def band(value: float, edges: Sequence[float]) -> str:
    """``0.9-0.95`` for 0.92 with edges (…, 0.9, 0.95, …); ``0-0.5`` below the first edge,
    ``0.999-1`` from the last."""
    for low, high in itertools.pairwise((0.0, *edges, 1.0)):
        if value < high:
            return f"{low:g}-{high:g}"
    return f"{edges[-1]:g}-1"


@dataclass(frozen=True)
class Cell:
    key: str
    field: str | None = None  # None: the proposal as a whole (a merge's "one entity")


def basis(cells: Iterable[Cell], prior: float, prior_from: PriorFrom) -> dict[str, Any]:
    """What a detector writes into ``evidence.confidence_basis`` before calibration."""
    return {
        "cells": [{"cell": c.key, "field": c.field} for c in cells],
        "prior": round(prior, 4),
        "prior_from": prior_from.value,
    }


class CellCounts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    approved: int = Field(0, ge=0, description="approved unchanged")
    corrected: int = Field(0, ge=0, description="rejected, or approved with this value changed")

    @property
    def decided(self) -> int:
        return self.approved + self.corrected


class ReliabilityTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=200)
    learned_from: str = Field("", max_length=2000, description="which decisions, from where, since when")
    learned_at: datetime | None = None
    prior_weight: float = Field(
        DEFAULT_PRIOR_WEIGHT, gt=0, le=10_000, description="pseudo-decisions the prior counts as"
    )
    prior_cap: float | None = Field(
        DEFAULT_PRIOR_CAP,
        gt=0,
        le=1,
        description="the most a prior counts as: above it, only reviewers' decisions take a cell"
        " (a claimed or configured 1.0 is no evidence); null: priors as they are",
    )
    level: float = Field(
        DEFAULT_LEVEL,
        ge=0.5,
        lt=1,
        description="credible level of each proposal's lower bound on its reliability (the evidence"
        " floor the policy's min_confidence_bound gates on)",
    )
    cells: dict[str, CellCounts] = Field(default_factory=dict)

    def start(self, prior: float) -> float:
        return prior if self.prior_cap is None else min(prior, self.prior_cap)

    def posterior(self, key: str, prior: float) -> tuple[float, float, CellCounts]:
        """The cell's beta posterior: (alpha, beta, counts), the prior as ``prior_weight``
        pseudo-decisions."""
        counts = self.cells.get(key, CellCounts())
        start, k = self.start(prior), self.prior_weight
        return k * start + counts.approved, k * (1 - start) + counts.corrected, counts

    def reliability(self, key: str, prior: float) -> tuple[float, CellCounts]:
        alpha, beta, counts = self.posterior(key, prior)
        return alpha / (alpha + beta), counts

    def lower_bound(self, key: str, prior: float, tail: float) -> float:
        """The cell's reliability exceeds this with probability ``1 - tail`` (its posterior's
        ``tail`` quantile)."""
        alpha, beta, _ = self.posterior(key, prior)
        return _beta_quantile(alpha, beta, tail)


@functools.lru_cache(maxsize=65_536)
def _beta_quantile(alpha: float, beta: float, q: float) -> float:
    if beta <= 0:  # nothing against the cell, not even in its prior: a point mass at 1
        return 1.0
    if alpha <= 0:
        return 0.0
    return float(betaincinv(alpha, beta, q))


# Without a table nothing is measured and nothing capped: every confidence is its prior.
NO_TABLE = ReliabilityTable(
    version="none", learned_from="no reliability table: every confidence is its prior", prior_cap=None
)


class ReliabilityError(ValueError):
    """A reliability file that cannot be used, with the reason."""


def load(path: Path | None) -> ReliabilityTable:
    if path is None:
        return NO_TABLE
    try:
        return ReliabilityTable.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ReliabilityError(f"{path}: cannot read the reliability table: {exc.strerror}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ReliabilityError(f"{path}: not a reliability table ({problems})") from exc


def calibrate(proposal: Proposal, table: ReliabilityTable) -> Proposal:
    """The proposal with its confidence from the table and its basis said: in the evidence and at
    the end of the rationale. A proposal without a basis (none of ours) is left as it is."""
    raw = proposal.evidence.get(BASIS)
    if not isinstance(raw, dict) or "method" in raw or not raw.get("cells"):
        return proposal
    prior = float(raw["prior"])
    prior_from = PriorFrom(raw["prior_from"])
    # The prior is the claim about the proposal as a whole: spread evenly over its cells, so that
    # without reviewers' decisions the confidence is the prior itself.
    share = prior ** (1 / len(raw["cells"]))
    tail = (1 - table.level) / len(raw["cells"])  # Bonferroni: every cell's bound holds at once
    bounded = table is not NO_TABLE  # without a table nothing is measured: no bound to state
    confidence = bound = 1.0
    cells = []
    for entry in raw["cells"]:
        value, counts = table.reliability(entry["cell"], share)
        confidence *= value
        cells.append({**entry, "approved": counts.approved, "corrected": counts.corrected,
                      "reliability": round(value, 4)})  # fmt: skip
        if bounded:
            low = table.lower_bound(entry["cell"], share, tail)
            bound *= low
            cells[-1]["lower_bound"] = round(low, 4)
    confidence = round(min(1.0, max(0.0, confidence)), 4)
    measured = any(c["approved"] or c["corrected"] for c in cells)
    said = {
        **raw,
        "method": "reviewer_outcomes" if measured else "prior",
        "prior_weight": table.prior_weight,
        "prior_cap": table.prior_cap,
        "table": table.version,
        "cells": cells,
    }
    if bounded:
        # floor, not round: a bound rounded up could clear a threshold the evidence does not
        said |= {"lower_bound": math.floor(min(bound, confidence) * 10_000) / 10_000, "level": table.level}
    capped = table.start(share) < share
    words = _words(confidence, cells, prior, prior_from, measured, table.prior_cap if capped else None)
    if "lower_bound" in said:
        outcomes = sum(c["approved"] + c["corrected"] for c in cells)
        shown = math.floor(said["lower_bound"] * 1000) / 1000  # shown rounded down too
        words += f"; trusted at {shown:.3f}, " + (
            f"the {table.level:.0%} lower credible bound of {outcomes:,} reviewer outcomes"
            if outcomes
            else f"its {table.level:.0%} lower credible bound before any reviewer outcome"
        )
    rationale = f"{proposal.rationale} ({words})"
    return proposal.model_copy(
        update={
            "confidence": confidence,
            "rationale": rationale,
            "evidence": {**proposal.evidence, BASIS: said},
        }
    )


def _words(
    confidence: float,
    cells: list[dict[str, Any]],
    prior: float,
    prior_from: PriorFrom,
    measured: bool,
    cap: float | None,
) -> str:
    start = f"{PRIOR_WORDS[prior_from]} {prior:.2f}"
    if cap is not None:
        start += f", counted as at most {cap:.2f}"
    if not measured and cap is not None:
        return f"confidence {confidence:.2f}: {start} until reviewers have decided proposals alike"
    if not measured:
        return f"confidence {confidence:.2f}: {start}, not yet measured against reviewers' decisions"
    if len(cells) == 1:
        c = cells[0]
        return (
            f"confidence {confidence:.2f}: reviewers approved {c['approved']} of "
            f"{c['approved'] + c['corrected']} proposals alike unchanged (starting from {start})"
        )
    each = ", ".join(
        f"{c['field'] or 'the proposal'} {c['approved']} of {c['approved'] + c['corrected']}" for c in cells
    )
    return f"confidence {confidence:.2f}: reviewers approved alike unchanged: {each} (starting from {start})"


# -- learning ------------------------------------------------------------------------------------

HUMAN_OUTCOMES = frozenset(
    {DecisionOutcome.APPROVED, DecisionOutcome.APPROVED_WITH_CHANGES, DecisionOutcome.REJECTED}
)


def observations(decision: Decision) -> list[tuple[str, bool]]:
    """(cell, the claim held) for each cell of a human decision's proposal; nothing for a decision
    no human made (auto-applied, expired, superseded) or a proposal without cells. A rejection
    refutes every cell; an approval with changes refutes the cells of the fields it changed (and a
    whole-proposal cell, e.g. a merge's, holds: the records were one entity)."""
    raw = decision.proposal.evidence.get(BASIS)
    if (
        decision.decided_by.kind != "human"
        or decision.outcome not in HUMAN_OUTCOMES
        or not isinstance(raw, dict)
    ):
        return []
    entries = [e for e in raw.get("cells") or [] if isinstance(e, dict) and isinstance(e.get("cell"), str)]
    if decision.outcome is DecisionOutcome.REJECTED:
        return [(e["cell"], False) for e in entries]
    proposed = {c.field: c.proposed for c in decision.proposal.changes}
    final = {c.field: c.proposed for c in decision.final_changes}
    changed = {f for f in proposed.keys() | final.keys() if proposed.get(f) != final.get(f)}
    return [(e["cell"], e.get("field") not in changed) for e in entries]


def learn(
    observed: Iterable[tuple[str, bool]] | Mapping[str, CellCounts],
    *,
    version: str,
    learned_from: str,
    learned_at: datetime | None = None,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    prior_cap: float | None = DEFAULT_PRIOR_CAP,
    level: float = DEFAULT_LEVEL,
) -> ReliabilityTable:
    """The table of ``observed``: (cell, the claim held) per decision and cell, or cells already
    counted (by the database: ``learning.counts``)."""
    if isinstance(observed, Mapping):
        cells = dict(observed)
    else:
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for key, held in observed:
            counts[key][0 if held else 1] += 1
        cells = {k: CellCounts(approved=a, corrected=c) for k, (a, c) in counts.items()}
    return ReliabilityTable(
        version=version,
        learned_from=learned_from,
        learned_at=learned_at,
        prior_weight=prior_weight,
        prior_cap=prior_cap,
        level=level,
        cells=dict(sorted(cells.items())),
    )
