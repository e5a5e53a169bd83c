"""The policy engine: the default policy routes the mission's five scenarios, guardrails refuse
unsafe policy files, and every route explains itself."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from changegate.core.contracts import FieldChange, Proposal, ProposalKind, Trigger
from changegate.policy.engine import DEFAULT_POLICY, Action, Policy, PolicyError


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load()


def _yaml(rules: str, *, version: str = "test-1", default: str = "review") -> bytes:
    return f"version: {version!r}\ndefault: {default}\nrules:\n{rules}".encode()


# --- the default policy: the mission's routing ---------------------------------------------------


def test_default_policy_is_the_packaged_file(policy: Policy) -> None:
    assert policy.source == str(DEFAULT_POLICY)
    assert policy.version == "2026-12-04.2"
    assert policy.content_hash == hashlib.sha256(DEFAULT_POLICY.read_bytes()).hexdigest()
    assert policy.content == DEFAULT_POLICY.read_text()  # what the policy service records
    assert policy.document.default is Action.REVIEW


@pytest.mark.parametrize("confidence", [0.98, 0.995, 1.0])
def test_confident_fill_of_empty_field_is_auto_applied(
    policy: Policy, make_proposal: Callable[..., Proposal], confidence: float
) -> None:
    proposal = make_proposal(
        changes=[
            FieldChange(field="jobtitle", previous=None, proposed="VP Sales"),
            FieldChange(field="city", previous="", proposed="Berlin"),
        ],
        confidence=confidence,
    )
    route = policy.evaluate(proposal)
    assert route.action is Action.AUTO_APPLY
    assert route.rule_id == "enrichment-fill-empty"


@pytest.mark.parametrize("confidence", [0.0, 0.5, 0.85, 0.9, 0.979])
def test_fill_below_threshold_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal], confidence: float
) -> None:
    route = policy.evaluate(make_proposal(confidence=confidence))
    assert route.action is Action.REVIEW
    assert route.rule_id == "enrichment-review"


def test_overwrite_of_non_empty_field_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    proposal = make_proposal(
        changes=[FieldChange(field="jobtitle", previous="Sales Manager", proposed="VP Sales")],
        confidence=0.99,
    )
    route = policy.evaluate(proposal)
    assert route.action is Action.REVIEW
    assert route.rule_id == "enrichment-review"


def test_mixed_fill_and_overwrite_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    proposal = make_proposal(
        changes=[
            FieldChange(field="city", previous=None, proposed="Berlin"),
            FieldChange(field="jobtitle", previous="Sales Manager", proposed="VP Sales"),
        ],
        confidence=0.99,
    )
    assert policy.evaluate(proposal).action is Action.REVIEW


@pytest.mark.parametrize("confidence", [0.5, 1.0])
def test_merge_always_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal], confidence: float
) -> None:
    route = policy.evaluate(
        make_proposal(kind=ProposalKind.MERGE, trigger=Trigger.SIMILARITY, confidence=confidence)
    )
    assert (route.action, route.rule_id) == (Action.REVIEW, "merge-always-review")


@pytest.mark.parametrize("confidence", [0.5, 1.0])
def test_owner_reassignment_always_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal], confidence: float
) -> None:
    route = policy.evaluate(
        make_proposal(kind=ProposalKind.OWNER_REASSIGNMENT, trigger=Trigger.RULE, confidence=confidence)
    )
    assert (route.action, route.rule_id) == (Action.REVIEW, "owner-always-review")


def test_lifecycle_from_defined_event_is_auto_applied(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    route = policy.evaluate(
        make_proposal(kind=ProposalKind.LIFECYCLE_TRANSITION, trigger=Trigger.DEFINED_EVENT, confidence=1.0)
    )
    assert (route.action, route.rule_id) == (Action.AUTO_APPLY, "lifecycle-defined-event")


def test_lifecycle_from_ai_score_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    route = policy.evaluate(
        make_proposal(kind=ProposalKind.LIFECYCLE_TRANSITION, trigger=Trigger.AI_SCORE, confidence=0.99)
    )
    assert (route.action, route.rule_id) == (Action.REVIEW, "lifecycle-ai-score-review")


@pytest.mark.parametrize(
    ("trigger", "confidence"),
    [(Trigger.RULE, 1.0), (Trigger.DEFINED_EVENT, 0.979), (Trigger.DEFINED_EVENT, 0.5)],
)
def test_lifecycle_from_another_trigger_or_a_doubtful_event_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal], trigger: Trigger, confidence: float
) -> None:
    route = policy.evaluate(
        make_proposal(kind=ProposalKind.LIFECYCLE_TRANSITION, trigger=trigger, confidence=confidence)
    )
    assert (route.action, route.rule_id) == (Action.REVIEW, "lifecycle-review")
    assert route.review is not None
    assert route.review.queue == "sales-ops"


def test_an_unmatched_proposal_falls_to_the_default(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    changes = [FieldChange(field="custom_stage", previous=None, proposed="x")]
    policy = Policy.parse(_yaml("  - id: only-merges\n    when: {kind: [merge]}\n    action: review\n"), "t")
    route = policy.evaluate(make_proposal(changes=changes))
    assert route.action is Action.REVIEW
    assert route.rule_id == "default"
    assert route.explanation == "sent to review: no rule matched (default review)"


def _email(make_proposal: Callable[..., Proposal], status: str) -> Proposal:
    return make_proposal(
        kind=ProposalKind.EMAIL_VERIFICATION,
        trigger=Trigger.VERIFICATION,
        changes=[FieldChange(field="email_status", previous=None, proposed=status)],
        confidence=0.99,
    )


def test_valid_email_status_is_auto_applied(policy: Policy, make_proposal: Callable[..., Proposal]) -> None:
    route = policy.evaluate(_email(make_proposal, "valid"))
    assert (route.action, route.rule_id) == (Action.AUTO_APPLY, "email-valid-auto")


def test_a_less_certain_valid_status_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    proposal = _email(make_proposal, "valid").model_copy(update={"confidence": 0.95})
    route = policy.evaluate(proposal)
    assert (route.action, route.rule_id) == (Action.REVIEW, "email-risky-review")


@pytest.mark.parametrize("status", ["risky", "catch_all", "invalid", "unknown"])
def test_unsafe_email_status_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal], status: str
) -> None:
    route = policy.evaluate(_email(make_proposal, status))
    assert (route.action, route.rule_id) == (Action.REVIEW, "email-risky-review")


def test_email_verification_without_a_status_change_goes_to_review(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    proposal = make_proposal(
        kind=ProposalKind.EMAIL_VERIFICATION,
        changes=[FieldChange(field="email_checked_at", previous=None, proposed="2026-11-24")],
    )
    assert policy.evaluate(proposal).rule_id == "email-risky-review"


# --- explanations ---------------------------------------------------------------------------------


def test_auto_apply_explanation_names_rule_and_confidence_comparison(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    route = policy.evaluate(make_proposal(confidence=0.993))
    assert route.explanation == "auto-applied: rule enrichment-fill-empty, confidence 0.99 ≥ 0.98"


def _with_bound(p: Proposal, bound: object) -> Proposal:
    basis = {"cells": [], "prior": 0.9, "prior_from": "source_claim", "lower_bound": bound, "level": 0.95}
    return p.model_copy(update={"evidence": {**p.evidence, "confidence_basis": basis}})


def test_auto_apply_needs_the_evidence_floor_not_only_the_mean(
    policy: Policy, make_proposal: Callable[..., Proposal]
) -> None:
    """A mean of 0.984 learnt from 102 decisions clears min_confidence, not min_confidence_bound:
    review; with evidence enough, auto-apply, and the explanation names the bound."""
    lucky = _with_bound(make_proposal(confidence=0.984), 0.961)
    route = policy.evaluate(lucky)
    assert (route.action, route.rule_id) == (Action.REVIEW, "enrichment-review")
    rule = next(r for r in policy.document.rules if r.id == "enrichment-fill-empty")
    assert rule.when.mismatches(lucky) == ["confidence's lower bound 0.961 < 0.980"]
    enough = policy.evaluate(_with_bound(make_proposal(confidence=0.99), 0.9812))
    assert enough.action is Action.AUTO_APPLY
    assert enough.explanation == (
        "auto-applied: rule enrichment-fill-empty, confidence 0.99 ≥ 0.98, lower bound 0.981 ≥ 0.98"
    )


@pytest.mark.parametrize("bound", [1.5, -0.1, "0.99", True, None, float("nan")])
def test_a_bound_that_is_not_a_probability_never_clears_the_floor(
    policy: Policy, make_proposal: Callable[..., Proposal], bound: object
) -> None:
    assert policy.evaluate(_with_bound(make_proposal(confidence=0.999), bound)).action is Action.REVIEW


def test_a_bound_above_the_confidence_counts_as_the_confidence(
    make_proposal: Callable[..., Proposal],
) -> None:
    floor_only = Policy.parse(
        _yaml(
            "  - id: a\n    when: {kind: [field_update], min_confidence_bound: 0.98}\n"
            "    action: auto_apply\n"
        ),
        "t",
    )
    assert floor_only.evaluate(_with_bound(make_proposal(confidence=0.97), 0.99)).action is Action.REVIEW
    # a proposal that states no bound (no reliability table) is held to its confidence
    assert floor_only.evaluate(make_proposal(confidence=0.99)).action is Action.AUTO_APPLY
    assert floor_only.evaluate(make_proposal(confidence=0.97)).action is Action.REVIEW


def test_review_explanation_names_the_rule(policy: Policy, make_proposal: Callable[..., Proposal]) -> None:
    route = policy.evaluate(make_proposal(kind=ProposalKind.MERGE))
    assert route.explanation == "sent to review: rule merge-always-review"


def test_reject_rule_rejects_with_its_reason(make_proposal: Callable[..., Proposal]) -> None:
    policy = Policy.parse(
        _yaml(
            "  - id: no-clay-overwrites\n"
            "    when: {source_system: [clay], previous_empty: false}\n"
            "    action: reject\n"
            "    reason: clay is not trusted to overwrite\n"
        ),
        "inline",
    )
    overwrite = make_proposal(changes=[FieldChange(field="jobtitle", previous="CEO", proposed="VP Sales")])
    route = policy.evaluate(overwrite)
    assert route.action is Action.REJECT
    assert route.rule_id == "no-clay-overwrites"
    assert route.explanation == "rejected: rule no-clay-overwrites (clay is not trusted to overwrite)"
    # a fill does not match the rule: default
    assert policy.evaluate(make_proposal()).rule_id == "default"


def test_first_matching_rule_wins(make_proposal: Callable[..., Proposal]) -> None:
    policy = Policy.parse(
        _yaml(
            "  - id: first\n    when: {kind: [field_update]}\n    action: reject\n    reason: not wanted\n"
            "  - id: second\n    when: {kind: [field_update]}\n    action: review\n"
        ),
        "inline",
    )
    assert policy.evaluate(make_proposal()).rule_id == "first"


def test_conditions_combine(make_proposal: Callable[..., Proposal]) -> None:
    policy = Policy.parse(
        _yaml(
            "  - id: clay-titles\n"
            "    when:\n"
            "      kind: [field_update]\n"
            "      source_system: [clay]\n"
            "      object_type: [contact]\n"
            "      fields: [jobtitle, city]\n"
            "      max_confidence: 0.95\n"
            "      min_confidence: 0.5\n"
            "    action: auto_apply\n"
        ),
        "inline",
    )
    assert policy.evaluate(make_proposal(confidence=0.9)).rule_id == "clay-titles"
    assert policy.evaluate(make_proposal(confidence=0.96)).rule_id == "default"
    assert policy.evaluate(make_proposal(confidence=0.4)).rule_id == "default"
    other_field = [FieldChange(field="phone", previous=None, proposed="+49 30 1234")]
    assert policy.evaluate(make_proposal(changes=other_field)).rule_id == "default"


# --- guardrails and load errors -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["merge", "owner_reassignment"])
def test_auto_applying_an_always_review_kind_is_refused(kind: str) -> None:
    raw = _yaml(
        f"  - id: yolo-{kind.replace('_', '-')}\n    when: {{kind: [{kind}]}}\n    action: auto_apply\n"
    )
    with pytest.raises(PolicyError) as info:
        Policy.parse(raw, "policies/yolo.yaml")
    message = str(info.value)
    assert message.startswith(f"policies/yolo.yaml:4: rule 'yolo-{kind.replace('_', '-')}': ")
    assert f"would auto-apply {kind}: merges and owner reassignments always need a human" in message


def test_auto_apply_rule_listing_merge_among_other_kinds_is_refused() -> None:
    raw = _yaml("  - id: sneaky\n    when: {kind: [field_update, merge]}\n    action: auto_apply\n")
    with pytest.raises(PolicyError, match=r"rule 'sneaky': would auto-apply merge"):
        Policy.parse(raw, "inline")


def test_auto_apply_rule_without_kind_filter_is_refused() -> None:
    raw = _yaml("  - id: everything-confident\n    when: {min_confidence: 0.99}\n    action: auto_apply\n")
    with pytest.raises(PolicyError) as info:
        Policy.parse(raw, "inline")
    assert "rule 'everything-confident': would auto-apply merge, owner_reassignment" in str(info.value)


def test_auto_apply_rule_without_any_condition_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"rule 'all': would auto-apply"):
        Policy.parse(_yaml("  - id: all\n    action: auto_apply\n"), "inline")


def test_review_and_reject_rules_may_cover_merges() -> None:
    policy = Policy.parse(
        _yaml(
            "  - id: merges-review\n    when: {kind: [merge]}\n    action: review\n"
            "  - id: nothing-else\n    action: reject\n    reason: out of scope\n"
        ),
        "inline",
    )
    assert [r.id for r in policy.document.rules] == ["merges-review", "nothing-else"]


def test_default_auto_apply_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"default action auto_apply is refused"):
        Policy.parse(_yaml("  []\n", default="auto_apply"), "inline")


def test_duplicate_rule_ids_are_refused() -> None:
    raw = _yaml(
        "  - id: twice\n    when: {kind: [merge]}\n    action: review\n"
        "  - id: twice\n    when: {kind: [owner_reassignment]}\n    action: review\n"
    )
    with pytest.raises(PolicyError, match=r"rule 'twice': duplicate rule id"):
        Policy.parse(raw, "inline")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: '1'\nrules: [\n  - id: x\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    assert str(info.value).startswith(f"{path}: not valid YAML: ")


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("version: '1'\nrules:\n  - id: x\n    when: {knd: [merge]}\n    action: review\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: rule 'x': when.knd: ")
    assert message.endswith("when.knd: Extra inputs are not permitted")


def test_unknown_top_level_key_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"^inline:2: defaults: Extra inputs"):
        Policy.parse(b"version: '1'\ndefaults: review\nrules: []\n", "inline")


def test_unknown_enum_value_is_refused() -> None:
    raw = _yaml("  - id: x\n    when: {kind: [merj]}\n    action: review\n")
    with pytest.raises(
        PolicyError, match=r"^inline:5: rule 'x': when\.kind\.0: Input should be 'field_update'"
    ):
        Policy.parse(raw, "inline")


def test_invalid_rule_id_is_refused() -> None:
    raw = _yaml("  - id: Not Valid\n    action: review\n")
    with pytest.raises(PolicyError, match=r"rule 'Not Valid': id: String should match pattern"):
        Policy.parse(raw, "inline")


def test_empty_document_is_refused_with_the_source() -> None:
    with pytest.raises(PolicyError, match=r"^empty\.yaml: a policy is a mapping"):
        Policy.parse(b"", "empty.yaml")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError, match=r"cannot read policy file") as info:
        Policy.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


# --- content hash ---------------------------------------------------------------------------------


def test_content_hash_follows_the_file_content(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    content = DEFAULT_POLICY.read_bytes()
    path.write_bytes(content)
    first = Policy.load(path)
    assert first.content_hash == Policy.load().content_hash
    assert first.content_hash == hashlib.sha256(content).hexdigest()

    path.write_bytes(content + b"# a comment is a change of the file too\n")
    second = Policy.load(path)
    assert second.content_hash != first.content_hash
    assert second.version == first.version

    path.write_bytes(content)
    assert Policy.load(path).content_hash == first.content_hash
