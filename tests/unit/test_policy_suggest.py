"""Suggestions from reviewers' decisions: evidence per rule and band, a candidate file the loader
accepts, and the guardrails refusing what would auto-apply a merge."""

from __future__ import annotations

import pytest
from changegate.policy.engine import Action, Policy
from changegate.policy.suggest import Decided, band, by_band, candidate, suggest


def _decided(rule: str, kind: str, n: int, confidence: float, outcome: str = "approved") -> list[Decided]:
    return [Decided(rule, kind, confidence, outcome, 60.0 * (i + 1)) for i in range(n)]


@pytest.mark.parametrize(
    ("confidence", "label"),
    [(0.0, "0-0.8"), (0.79, "0-0.8"), (0.93, "0.93-0.95"), (0.99, "0.99-1"), (1.0, "0.99-1")],
)
def test_bands(confidence: float, label: str) -> None:
    assert band(confidence) == label


def test_outcomes_per_rule_and_band_with_the_time_to_decide() -> None:
    decided = [
        *_decided("enrichment-review", "field_update", 3, 0.94),
        *_decided("enrichment-review", "field_update", 1, 0.94, "approved_with_changes"),
        *_decided("enrichment-review", "field_update", 1, 0.5, "rejected"),
    ]
    table = by_band(decided)
    high = table[("enrichment-review", "0.93-0.95")]
    assert (high.approved, high.modified, high.rejected, high.median_seconds) == (
        3,
        1,
        0,
        90.0,
    )  # 60, 120, 180 s and 60 s
    low = table[("enrichment-review", "0-0.8")]
    assert (low.approved, low.rejected) == (0, 1)


def test_the_lowest_clean_threshold_with_enough_decisions_is_suggested_with_its_evidence() -> None:
    policy = Policy.load()
    decided = [
        *_decided("enrichment-review", "field_update", 412, 0.94),
        *_decided("enrichment-review", "field_update", 30, 0.91, "rejected"),
        *_decided("enrichment-review", "field_update", 99, 0.99),  # adds to 0.93's support
        *_decided("lifecycle-ai-score-review", "lifecycle_transition", 99, 0.97),  # too few
    ]
    [s] = suggest(policy, decided, days=30)
    assert (s.rule, s.threshold, s.approved, s.rejected, s.modified) == ("enrichment-review", 0.93, 511, 0, 0)
    assert s.evidence == (
        "rule enrichment-review: 511 of 511 approved unchanged at or above 0.93 in 30 days; 0 rejected,"
        " 0 modified — consider auto-apply at or above 0.93"
    )
    text, checked = candidate(policy, [s], "cand-1")
    assert checked == [s]
    written = Policy.parse(text.encode(), "cand")
    assert written.version == "cand-1"
    rule = next(r for r in written.document.rules if r.id == "enrichment-review-suggested-auto")
    assert (rule.action, rule.when.min_confidence) == (Action.AUTO_APPLY, 0.93)
    # The shipped policy gates its auto-applies on the evidence floor: the suggestion keeps it.
    floors = [r.when.min_confidence_bound for r in policy.document.rules if r.action is Action.AUTO_APPLY]
    assert rule.when.min_confidence_bound == max(f for f in floors if f is not None) == 0.98
    ids = [r.id for r in written.document.rules]
    assert ids.index("enrichment-review-suggested-auto") == ids.index("enrichment-review") - 1


def test_a_corrected_one_above_every_threshold_suggests_nothing_unless_allowed() -> None:
    policy = Policy.load()
    decided = [
        *_decided("enrichment-review", "field_update", 200, 0.995),
        *_decided("enrichment-review", "field_update", 1, 0.999, "approved_with_changes"),
    ]
    assert suggest(policy, decided, days=30) == []
    [s] = suggest(policy, decided, days=30, max_corrected=1)
    assert (s.threshold, s.modified) == (0.99, 1)  # where the decisions are, not below


def test_a_suggestion_to_auto_apply_merges_is_refused_by_the_guardrails_and_left_out() -> None:
    policy = Policy.load()
    decided = [
        *_decided("merge-always-review", "merge", 400, 0.999),
        *_decided("enrichment-review", "field_update", 150, 0.97),
    ]
    found = suggest(policy, decided, days=30)
    assert [s.rule for s in found] == ["enrichment-review", "merge-always-review"]
    text, checked = candidate(policy, found, "cand-2")
    merge = next(s for s in checked if s.rule == "merge-always-review")
    assert merge.refused is not None
    assert "would auto-apply merge" in merge.refused
    assert next(s for s in checked if s.rule == "enrichment-review").refused is None
    written = Policy.parse(text.encode(), "cand")
    assert "merge-always-review-suggested-auto" not in {r.id for r in written.document.rules}
    assert "enrichment-review-suggested-auto" in {r.id for r in written.document.rules}


def test_what_the_default_route_sent_to_review_is_suggested_per_kind_after_every_rule() -> None:
    policy = Policy.parse(
        b"""version: p-1
default: review
rules:
  - id: merge-always-review
    when: {kind: [merge]}
    action: review
  - id: fill-review
    when: {kind: [field_update], previous_empty: true}
    action: review
""",
        "p",
    )
    decided = [
        *_decided("default", "field_update", 150, 0.96),  # overwrites: no rule matched them
        *_decided("default", "owner_reassignment", 300, 0.99),
        *_decided("default", "lifecycle_transition", 150, 0.97, "rejected"),
    ]
    table = by_band(decided)
    assert table[("default (field_update)", "0.95-0.97")].approved == 150
    found = suggest(policy, decided, days=30)
    assert [(s.rule, s.kind, s.threshold) for s in found] == [
        ("default", "field_update", 0.95),
        ("default", "owner_reassignment", 0.99),
    ]
    assert found[0].evidence.startswith("the default route for field_update: 150 of 150 approved unchanged")
    text, checked = candidate(policy, found, "cand-3")
    owner = next(s for s in checked if s.kind == "owner_reassignment")
    assert owner.refused is not None
    assert "would auto-apply owner_reassignment" in owner.refused
    written = Policy.parse(text.encode(), "cand")
    last = written.document.rules[-1]
    assert (last.id, last.action, last.when.kind, last.when.min_confidence) == (
        "default-field-update-suggested-auto",
        Action.AUTO_APPLY,
        ["field_update"],
        0.95,
    )
    assert [r.id for r in written.document.rules[:-1]] == ["merge-always-review", "fill-review"]
    assert last.when.min_confidence_bound is None  # this policy gates nothing on the floor


def test_a_suggested_rule_keeps_the_policy_s_evidence_floor_and_a_stricter_one_of_its_own() -> None:
    policy = Policy.parse(
        b"""version: p-2
default: review
rules:
  - id: verified-auto
    when: {kind: [email_verification], min_confidence: 0.99, min_confidence_bound: 0.97}
    action: auto_apply
  - id: fill-review
    when: {kind: [field_update], previous_empty: true, min_confidence_bound: 0.99}
    action: review
""",
        "p",
    )
    decided = [
        *_decided("fill-review", "field_update", 150, 0.96),
        *_decided("default", "lifecycle_transition", 150, 0.97),
    ]
    text, checked = candidate(policy, suggest(policy, decided, days=30), "cand-4")
    assert [s.refused for s in checked] == [None, None]
    rules = {r.id: r for r in Policy.parse(text.encode(), "cand").document.rules}
    assert rules["fill-review-suggested-auto"].when.min_confidence_bound == 0.99  # its own, stricter
    assert rules["default-lifecycle-transition-suggested-auto"].when.min_confidence_bound == 0.97
