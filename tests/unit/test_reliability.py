"""Confidence from evidence: the prior a detector gives, corrected by how reviewers decided
proposals alike (the reliability table), and what a proposal says about it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from changegate.core.contracts import Decider, Decision, DecisionOutcome, FieldChange, Proposal, ProposalKind
from changegate.detector import reliability
from changegate.detector.reliability import (
    NO_TABLE,
    Cell,
    CellCounts,
    PriorFrom,
    ReliabilityError,
    ReliabilityTable,
    band,
    basis,
    calibrate,
    cell,
    learn,
    observations,
)
from changegate.detector.settings import DetectorSettings
from pydantic import ValidationError
from scipy.special import betaincinv

JOBTITLE = "enrichment|contact|clay|jobtitle|fill|claim-0.9-0.95"
CITY = "enrichment|contact|clay|city|fill|claim-0.9-0.95"


def _proposal(make_proposal: Callable[..., Proposal], cells: list[Cell], prior: float = 0.93) -> Proposal:
    changes = [
        FieldChange(field=c.field or "jobtitle", previous=None, proposed=f"v-{c.field}") for c in cells
    ]
    return make_proposal(
        changes=changes,
        confidence=prior,
        rationale="clay enrichment fills empty jobtitle",
        evidence={
            "fills_empty": [c.field for c in cells],
            BASIS: basis(cells, prior, PriorFrom.SOURCE_CLAIM),
        },
    )


BASIS = reliability.BASIS


# -- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("Clay", "clay"),
        ("  ZeroBounce ", "zerobounce"),
        ("a|b c", "a_b_c"),  # never a separator inside a part
        (None, "-"),
        ("", "-"),
        ("x" * 100, "x" * 48),
        (0.5, "0.5"),
        ("fit-v3", "fit-v3"),
    ],
)
def test_a_key_part_is_bounded_and_has_no_separator(value: object, key: str) -> None:
    assert reliability.part(value) == key


def test_a_cell_joins_its_parts() -> None:
    assert cell("verification", "ZeroBounce", "valid") == "verification|zerobounce|valid"


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (0.0, "0-0.5"),
        (0.2, "0-0.5"),
        (0.5, "0.5-0.8"),
        (0.899, "0.8-0.9"),
        (0.9, "0.9-0.95"),
        (0.95, "0.95-1"),
        (1.0, "0.95-1"),
    ],
)
def test_bands(value: float, label: str) -> None:
    assert band(value, reliability.CLAIM_EDGES) == label


# -- calibration -----------------------------------------------------------------------------------


def test_without_decisions_the_confidence_is_the_prior_and_says_so(
    make_proposal: Callable[..., Proposal],
) -> None:
    calibrated = calibrate(_proposal(make_proposal, [Cell(JOBTITLE, "jobtitle")]), NO_TABLE)
    assert calibrated.confidence == 0.93
    assert calibrated.rationale == (
        "clay enrichment fills empty jobtitle (confidence 0.93: the source's own claim 0.93, "
        "not yet measured against reviewers' decisions)"
    )
    said = calibrated.evidence[BASIS]
    assert (said["method"], said["table"], said["prior_from"]) == ("prior", "none", "source_claim")
    assert said["cells"] == [
        {"cell": JOBTITLE, "field": "jobtitle", "approved": 0, "corrected": 0, "reliability": 0.93}
    ]


def test_reviewers_decisions_move_the_confidence_from_the_prior_to_their_rate(
    make_proposal: Callable[..., Proposal],
) -> None:
    table = ReliabilityTable(
        version="t1",
        prior_weight=20,
        prior_cap=None,
        cells={JOBTITLE: CellCounts(approved=412, corrected=13)},
    )
    calibrated = calibrate(_proposal(make_proposal, [Cell(JOBTITLE, "jobtitle")]), table)
    assert calibrated.confidence == round((20 * 0.93 + 412) / (20 + 425), 4) == 0.9676
    assert calibrated.rationale.endswith(
        "(confidence 0.97: reviewers approved 412 of 425 proposals alike unchanged "
        "(starting from the source's own claim 0.93); trusted at 0.952, the 95% lower credible bound"
        " of 425 reviewer outcomes)"
    )
    said = calibrated.evidence[BASIS]
    assert (said["method"], said["table"], said["prior_weight"]) == ("reviewer_outcomes", "t1", 20)
    # the bound: the beta posterior's 5% quantile, rounded down (a bound never rounds up)
    exact = betaincinv(20 * 0.93 + 412, 20 * 0.07 + 13, 0.05)
    assert said["lower_bound"] == math.floor(exact * 10_000) / 10_000 == 0.9527
    assert said["level"] == 0.95
    # rejected cells pull it down, whatever the source claims
    low = ReliabilityTable(
        version="t2", prior_cap=None, cells={JOBTITLE: CellCounts(approved=60, corrected=40)}
    )
    assert calibrate(_proposal(make_proposal, [Cell(JOBTITLE, "jobtitle")]), low).confidence == round(
        (20 * 0.93 + 60) / 120, 4
    )


def test_a_table_counts_no_prior_above_its_cap(make_proposal: Callable[..., Proposal]) -> None:
    """A configured 1.0 is not evidence: with a table, only reviewers' decisions take a cell above
    the cap (one correction among 135 keeps it under 0.99; 180 clean approvals reach it)."""
    event_cell = "lifecycle|defined_event|forms|form_submission|newsletter_signup"
    p = make_proposal(
        ProposalKind.LIFECYCLE_TRANSITION,
        confidence=1.0,
        rationale="form submission newsletter_signup sets the unset stage to subscriber",
        evidence={BASIS: basis([Cell(event_cell, "lifecyclestage")], 1.0, PriorFrom.CONFIGURED)},
    )
    assert calibrate(p, NO_TABLE).confidence == 1.0  # no table: the prior as configured
    unmeasured = calibrate(p, ReliabilityTable(version="t"))
    assert unmeasured.confidence == 0.9
    assert unmeasured.rationale.endswith(
        "(confidence 0.90: a configured value 1.00, counted as at most 0.90 until reviewers have decided"
        " proposals alike; trusted at 0.773, its 95% lower credible bound before any reviewer outcome)"
    )
    assert unmeasured.evidence[BASIS]["prior_cap"] == 0.9
    one_wrong = ReliabilityTable(version="t", cells={event_cell: CellCounts(approved=134, corrected=1)})
    assert calibrate(p, one_wrong).confidence == round((20 * 0.9 + 134) / 155, 4) < 0.99
    clean = ReliabilityTable(version="t", cells={event_cell: CellCounts(approved=180)})
    assert calibrate(p, clean).confidence == 0.99
    assert "(starting from a configured value 1.00, counted as at most 0.90)" in calibrate(p, clean).rationale


def test_a_mean_high_by_luck_is_not_trusted_until_the_evidence_carries_it(
    make_proposal: Callable[..., Proposal],
) -> None:
    """102 of 102 approved: the mean clears 0.98, but so would a cell right 93% of the time once in
    some 1,600 tries; its 95% lower bound does not clear 0.98 until some 220 approvals alike."""
    p = _proposal(make_proposal, [Cell(CITY, "city")])
    lucky = calibrate(p, ReliabilityTable(version="t", cells={CITY: CellCounts(approved=102)}))
    assert lucky.confidence == round((20 * 0.9 + 102) / 122, 4) >= 0.98
    assert 0.95 < lucky.evidence[BASIS]["lower_bound"] < 0.98
    assert 0.93**102 < 0.001
    enough = calibrate(p, ReliabilityTable(version="t", cells={CITY: CellCounts(approved=220)}))
    assert (
        enough.evidence[BASIS]["lower_bound"]
        >= 0.98
        > calibrate(p, ReliabilityTable(version="t", cells={CITY: CellCounts(approved=200)})).evidence[BASIS][
            "lower_bound"
        ]
    )
    assert enough.rationale.endswith("the 95% lower credible bound of 220 reviewer outcomes)")
    # a stricter level asks for more evidence; the confidence (the mean) is the same
    strict = calibrate(p, ReliabilityTable(version="t", level=0.99, cells={CITY: CellCounts(approved=220)}))
    assert strict.confidence == enough.confidence
    assert strict.evidence[BASIS]["lower_bound"] < enough.evidence[BASIS]["lower_bound"]
    assert "the 99% lower credible bound" in strict.rationale


def test_without_a_table_no_bound_is_stated(make_proposal: Callable[..., Proposal]) -> None:
    said = calibrate(_proposal(make_proposal, [Cell(JOBTITLE, "jobtitle")]), NO_TABLE).evidence[BASIS]
    assert "lower_bound" not in said
    assert all("lower_bound" not in c for c in said["cells"])


def test_a_bound_of_several_cells_holds_for_all_at_once(make_proposal: Callable[..., Proposal]) -> None:
    """Each cell's bound at half the tail (Bonferroni), multiplied; never above the confidence."""
    cells = [Cell(CITY, "city"), Cell(JOBTITLE, "jobtitle")]
    table = ReliabilityTable(
        version="t", cells={CITY: CellCounts(approved=300), JOBTITLE: CellCounts(approved=500, corrected=2)}
    )
    said = calibrate(_proposal(make_proposal, cells, prior=0.81), table).evidence[BASIS]
    city = betaincinv(20 * 0.9 + 300, 20 * 0.1, 0.025)
    jobtitle = betaincinv(20 * 0.9 + 500, 20 * 0.1 + 2, 0.025)
    assert said["lower_bound"] == math.floor(city * jobtitle * 10_000) / 10_000
    assert [c["lower_bound"] for c in said["cells"]] == [round(city, 4), round(jobtitle, 4)]


def test_a_level_outside_its_range_is_refused() -> None:
    for level in (0.4, 1.0):
        with pytest.raises(ValidationError):
            ReliabilityTable(version="t", level=level)


def test_several_values_multiply_and_start_from_an_equal_share_of_the_prior(
    make_proposal: Callable[..., Proposal],
) -> None:
    cells = [Cell(CITY, "city"), Cell(JOBTITLE, "jobtitle")]
    assert calibrate(_proposal(make_proposal, cells, prior=0.81), NO_TABLE).confidence == 0.81
    table = ReliabilityTable(version="t", cells={CITY: CellCounts(approved=80)})
    calibrated = calibrate(_proposal(make_proposal, cells, prior=0.81), table)
    assert calibrated.confidence == round((20 * 0.9 + 80) / 100 * 0.9, 4)
    assert "reviewers approved alike unchanged: city 80 of 80, jobtitle 0 of 0" in calibrated.rationale


def test_calibration_happens_once_and_leaves_other_proposals_alone(
    make_proposal: Callable[..., Proposal],
) -> None:
    once = calibrate(_proposal(make_proposal, [Cell(JOBTITLE, "jobtitle")]), NO_TABLE)
    assert calibrate(once, ReliabilityTable(version="t", cells={JOBTITLE: CellCounts(approved=9)})) == once
    plain = make_proposal()
    assert calibrate(plain, NO_TABLE) == plain


# -- learning --------------------------------------------------------------------------------------


def _decided(
    make_decision: Callable[..., Decision],
    proposal: Proposal,
    outcome: DecisionOutcome,
    final: list[FieldChange] | None = None,
    human: bool = True,
) -> Decision:
    decider = Decider(kind="human", identity="alice@example.com") if human else None
    extra: dict[str, Any] = {"decided_by": decider} if decider else {}
    if final is not None:
        extra["final_changes"] = final
    return make_decision(proposal, outcome, **extra)


def test_what_a_decision_says_about_each_cell(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    p = _proposal(make_proposal, [Cell(CITY, "city"), Cell(JOBTITLE, "jobtitle")])
    assert observations(_decided(make_decision, p, DecisionOutcome.APPROVED)) == [
        (CITY, True),
        (JOBTITLE, True),
    ]
    assert observations(_decided(make_decision, p, DecisionOutcome.REJECTED)) == [
        (CITY, False),
        (JOBTITLE, False),
    ]
    edited = [p.changes[0], p.changes[1].model_copy(update={"proposed": "Head of Sales"})]
    modified = _decided(make_decision, p, DecisionOutcome.APPROVED_WITH_CHANGES, final=edited)
    assert observations(modified) == [(CITY, True), (JOBTITLE, False)]  # only the edited value was wrong
    # no human judged these
    assert observations(_decided(make_decision, p, DecisionOutcome.AUTO_APPROVED, human=False)) == []
    assert observations(_decided(make_decision, p, DecisionOutcome.EXPIRED)) == []
    assert observations(_decided(make_decision, make_proposal(), DecisionOutcome.APPROVED)) == []


def test_a_merge_approved_with_other_survivor_values_was_still_one_entity(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    key = "dedup|contact|p-0.95-0.99"
    merge = make_proposal(
        ProposalKind.MERGE, evidence={BASIS: basis([Cell(key)], 0.97, PriorFrom.MATCH_MODEL)}, confidence=0.97
    )
    edited = [merge.changes[0].model_copy(update={"proposed": "hs-contact-9"})]
    assert observations(
        _decided(make_decision, merge, DecisionOutcome.APPROVED_WITH_CHANGES, final=edited)
    ) == [(key, True)]
    assert observations(_decided(make_decision, merge, DecisionOutcome.REJECTED)) == [(key, False)]


def test_learning_counts_per_cell() -> None:
    table = learn(
        [(CITY, True), (CITY, True), (JOBTITLE, False), (CITY, False)], version="v", learned_from="test"
    )
    assert table.cells == {
        CITY: CellCounts(approved=2, corrected=1),
        JOBTITLE: CellCounts(approved=0, corrected=1),
    }
    assert (table.version, table.prior_weight) == ("v", reliability.DEFAULT_PRIOR_WEIGHT)
    # cells the database counted make the same table as the observations they count
    counted = {JOBTITLE: CellCounts(corrected=1), CITY: CellCounts(approved=2, corrected=1)}
    assert learn(counted, version="v", learned_from="test") == table


# -- the file --------------------------------------------------------------------------------------


def test_a_table_round_trips_through_its_file(tmp_path: Path) -> None:
    table = learn([(CITY, True)], version="2026-12-01", learned_from="review-api, 30 days")
    path = tmp_path / "reliability.json"
    path.write_text(table.model_dump_json())
    assert reliability.load(path) == table
    assert reliability.load(None) is NO_TABLE


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("not json", "not a reliability table"),
        (json.dumps({"version": "v", "cells": {"x": {"approved": -1}}}), "cells.x.approved"),
        (json.dumps({"version": "v", "typo": 1}), "typo"),
        (json.dumps({"version": "v", "prior_weight": 0}), "prior_weight"),
    ],
)
def test_an_unusable_file_is_refused_naming_it(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "reliability.json"
    path.write_text(content)
    with pytest.raises(ReliabilityError, match=says) as caught:
        reliability.load(path)
    assert str(path) in str(caught.value)


def test_the_detector_refuses_to_start_with_an_unusable_table(tmp_path: Path) -> None:
    path = tmp_path / "reliability.json"
    path.write_text('{"version": ""}')
    with pytest.raises(ValidationError, match="not a reliability table"):
        DetectorSettings(reliability_file=path)
