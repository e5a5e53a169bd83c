"""Policy features beyond routing the defaults: high-risk guards, evidence and value conditions,
review options, shadowed-rule warnings, precise load errors, and what each route emits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from changegate.core.contracts import (
    Decision,
    DecisionOutcome,
    FieldChange,
    Proposal,
    ProposalKind,
    ReviewRequest,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.core.topics import Topic
from changegate.policy.engine import Action, Policy, PolicyError
from changegate.policy.router import output_for

MakeProposal = Callable[..., Proposal]
PROPOSED_AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def _policy(body: str) -> Policy:
    return Policy.parse(f"version: t-1\n{body}".encode(), "p.yaml")


AUTO_ALL_FIELD_UPDATES = """
rules:
  - id: auto
    when: {kind: [field_update]}
    action: auto_apply
"""


def test_auto_apply_of_a_human_only_field_goes_to_review(make_proposal: MakeProposal) -> None:
    p = make_proposal(changes=[FieldChange(field="email", previous="a@x.example", proposed="b@x.example")])
    route = _policy(AUTO_ALL_FIELD_UPDATES).evaluate(p)
    assert (route.action, route.rule_id) == (Action.REVIEW, "high-risk-field")
    assert route.explanation == (
        "sent to review: rule auto would auto-apply, but email is a human-only field (email)"
    )


def test_erasing_a_value_goes_to_review_whatever_the_rule(make_proposal: MakeProposal) -> None:
    p = make_proposal(changes=[FieldChange(field="jobtitle", previous="Engineer", proposed=None)])
    route = _policy(AUTO_ALL_FIELD_UPDATES).evaluate(p)
    assert (route.action, route.rule_id) == (Action.REVIEW, "high-risk-field")
    assert route.explanation.endswith("but jobtitle would be erased")


def test_a_kind_carrying_anothers_fields_is_never_auto_applied(make_proposal: MakeProposal) -> None:
    """The attack of the issue: a 'lifecycle transition' on a defined event that changes the owner and
    the email. Whatever rule matches it (the default's lifecycle rule), it goes to a human."""
    changes = [
        FieldChange(field="hubspot_owner_id", previous="owner-a", proposed="owner-evil"),
        FieldChange(field="email", previous="a@x.example", proposed="attacker@evil.example"),
    ]
    p = make_proposal(
        kind=ProposalKind.LIFECYCLE_TRANSITION, trigger=Trigger.DEFINED_EVENT, changes=changes, confidence=1.0
    )
    route = Policy.load().evaluate(p)
    assert (route.action, route.rule_id) == (Action.REVIEW, "fields-not-of-kind")
    assert (
        "a lifecycle_transition may not change hubspot_owner_id (owner), email (email)" in route.explanation
    )


def test_high_risk_evidence_goes_to_review(make_proposal: MakeProposal) -> None:
    p = make_proposal(evidence={"flags": ["different_email_domains"]})
    route = _policy(AUTO_ALL_FIELD_UPDATES).evaluate(p)
    assert (route.action, route.rule_id) == (Action.REVIEW, "high-risk-evidence")
    assert "different_email_domains" in route.explanation


def test_allow_high_risk_lets_a_rule_auto_apply_the_documents_own_fields(make_proposal: MakeProposal) -> None:
    body = AUTO_ALL_FIELD_UPDATES.replace("{kind: [field_update]}", "{kind: [field_update], fields: [phone]}")
    phone = make_proposal(changes=[FieldChange(field="phone", previous=None, proposed="+1 555")])
    assert _policy("high_risk_fields: [phone]\n" + body).evaluate(phone).rule_id == "high-risk-field"
    allowed = body.replace("action: auto_apply", "action: auto_apply\n    allow_high_risk: true")
    assert _policy("high_risk_fields: [phone]\n" + allowed).evaluate(phone).action is Action.AUTO_APPLY


def test_allow_high_risk_that_would_reach_a_human_only_field_is_refused_at_load() -> None:
    allowed = AUTO_ALL_FIELD_UPDATES.replace(
        "action: auto_apply", "action: auto_apply\n    allow_high_risk: true"
    )
    with pytest.raises(PolicyError, match=r"p\.yaml:4: rule 'auto': allow_high_risk would let field updates"):
        _policy(allowed)


def test_high_risk_lists_are_configurable(make_proposal: MakeProposal) -> None:
    policy = _policy("high_risk_fields: [jobtitle]\n" + AUTO_ALL_FIELD_UPDATES)
    assert policy.evaluate(make_proposal()).rule_id == "high-risk-field"
    email = make_proposal(changes=[FieldChange(field="email", previous=None, proposed="b@x.example")])
    assert policy.evaluate(email).rule_id == "high-risk-field"  # human-only whatever the list
    other = make_proposal(changes=[FieldChange(field="phone", previous=None, proposed="+1 555")])
    assert policy.evaluate(other).action is Action.AUTO_APPLY


def test_default_lifecycle_rule_auto_applies_despite_the_high_risk_stage_field(
    make_proposal: MakeProposal,
) -> None:
    p = make_proposal(kind=ProposalKind.LIFECYCLE_TRANSITION, trigger=Trigger.DEFINED_EVENT, confidence=0.99)
    route = Policy.load().evaluate(p)
    assert (route.action, route.rule_id) == (Action.AUTO_APPLY, "lifecycle-defined-event")


def test_evidence_flag_conditions(make_proposal: MakeProposal) -> None:
    policy = _policy("""
rules:
  - id: risky
    when: {evidence_flags_any: [different_email_domains, free_mail]}
    action: reject
    reason: too risky
  - id: clean
    when: {evidence_flags_none: [different_email_domains]}
    action: review
""")
    assert policy.evaluate(make_proposal(evidence={"flags": ["free_mail"]})).rule_id == "risky"
    assert policy.evaluate(make_proposal(evidence={})).rule_id == "clean"
    assert policy.evaluate(make_proposal(evidence={"flags": "not-a-list"})).rule_id == "clean"


def test_value_conditions_compare_types_too(make_proposal: MakeProposal) -> None:
    policy = _policy("""
rules:
  - id: from-lead
    when: {previous_values: {lifecyclestage: [lead]}, proposed_values: {hs_flag: [true]}}
    action: review
""")
    both = [
        FieldChange(field="lifecyclestage", previous="lead", proposed="customer"),
        FieldChange(field="hs_flag", previous=None, proposed=True),
    ]
    one = [both[0], FieldChange(field="hs_flag", previous=None, proposed=1)]
    assert policy.evaluate(make_proposal(changes=both)).rule_id == "from-lead"
    assert policy.evaluate(make_proposal(changes=one)).rule_id == "default"  # 1 is not true


def test_review_options_reach_the_route(make_proposal: MakeProposal) -> None:
    policy = _policy("""
default_review: {queue: general, expires_after: 30m}
rules:
  - id: to-ops
    when: {kind: [field_update]}
    action: review
    review: {queue: ops, priority: high, expires_after: 7d}
""")
    route = policy.evaluate(make_proposal())
    assert route.review is not None
    assert (route.review.queue, route.review.priority) == ("ops", "high")
    assert route.expires_at(PROPOSED_AT) == PROPOSED_AT + timedelta(days=7)
    default = policy.evaluate(make_proposal(kind=ProposalKind.MERGE))
    assert default.review is not None
    assert (default.rule_id, default.review.queue) == ("default", "general")
    assert default.expires_at(PROPOSED_AT) == PROPOSED_AT + timedelta(minutes=30)


def test_a_route_without_expiry_never_expires(make_proposal: MakeProposal) -> None:
    policy = _policy("""
rules:
  - id: no-expiry
    when: {kind: [field_update]}
    action: review
  - id: spam
    when: {kind: [merge]}
    action: reject
    reason: spam
""")
    route = policy.evaluate(make_proposal())
    assert route.review is not None
    assert route.review.expires_after is None
    assert route.expires_at(PROPOSED_AT) is None
    rejected = policy.evaluate(make_proposal(kind=ProposalKind.MERGE))
    assert (rejected.action, rejected.review) == (Action.REJECT, None)
    assert rejected.expires_at(PROPOSED_AT) is None


def test_an_upper_confidence_bound_is_explained(make_proposal: MakeProposal) -> None:
    policy = _policy("""
rules:
  - id: unsure
    when: {kind: [field_update], max_confidence: 0.5}
    action: review
""")
    route = policy.evaluate(make_proposal(confidence=0.4))
    assert route.explanation == "sent to review: rule unsure, confidence 0.40 ≤ 0.50"


def test_routes_and_policies_are_immutable_values(make_proposal: MakeProposal) -> None:
    policy = _policy(AUTO_ALL_FIELD_UPDATES)
    route = policy.evaluate(make_proposal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.action = Action.REJECT  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.source = "elsewhere"  # type: ignore[misc]
    same = _policy(AUTO_ALL_FIELD_UPDATES)
    policy.decider("auto")  # a cache: not part of what a policy is
    assert policy == same
    assert "_deciders" not in repr(policy)
    assert policy.decider("auto") is policy.decider("auto")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rules:\n  - id: a\n    action: reject\n", "p.yaml:3: rule 'a': a reject rule needs a reason"),
        (
            "rules:\n  - id: a\n"
            "    action: auto_apply\n    when: {kind: [field_update]}\n    review: {queue: q}\n",
            "p.yaml:3: rule 'a': review options apply to review rules only",
        ),
        ("default: reject\nrules: []\n", "p.yaml:1: default action reject is refused"),
        (
            "rules:\n  - id: a\n"
            "    when:\n      min_confidence: 0.9\n      max_confidence: 0.5\n    action: review\n",
            "p.yaml:5: rule 'a': when: min_confidence is above max_confidence",
        ),
        (
            "rules:\n  - id: a\n"
            "    when: {kind: [field_update]}\n    action: review\n    review: {expires_after: soon}\n",
            "p.yaml:6: rule 'a': review.expires_after: Input should be a valid timedelta",
        ),
    ],
)
def test_load_errors_name_file_line_and_rule(body: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        _policy(body)
    assert str(info.value).startswith(message), str(info.value)


def test_every_error_of_a_file_is_reported_with_its_line() -> None:
    with pytest.raises(PolicyError) as info:
        _policy(
            "rules:\n  - id: a\n    action: maybe\n  - id: b\n    when: {confidence: 1}\n    action: review\n"
        )
    lines = str(info.value).splitlines()
    assert lines[0].startswith("p.yaml:4: rule 'a': action: Input should be")
    assert lines[1] == "p.yaml:6: rule 'b': when.confidence: Extra inputs are not permitted"


def test_shadowed_rules_are_warned_about() -> None:
    policy = _policy("""
rules:
  - id: broad
    when: {kind: [field_update, email_verification]}
    action: review
  - id: narrow
    when: {kind: [field_update], min_confidence: 0.9}
    action: auto_apply
  - id: other-kind
    when: {kind: [merge]}
    action: review
  - id: confident
    when: {min_confidence: 0.5}
    action: review
  - id: more-confident
    when: {min_confidence: 0.8, source_system: [clay]}
    action: review
""")
    assert policy.warnings == [
        "rule 'narrow' can never match: rule 'broad' before it matches every proposal it would",
        "rule 'more-confident' can never match: rule 'confident' before it matches every proposal it would",
    ]


def test_an_evidence_floor_narrows_a_rule_as_a_threshold_does() -> None:
    policy = _policy("""
rules:
  - id: floor
    when: {kind: [field_update], min_confidence_bound: 0.9}
    action: review
  - id: higher-floor
    when: {kind: [field_update], min_confidence_bound: 0.95}
    action: review
  - id: lower-floor
    when: {kind: [field_update], min_confidence_bound: 0.5}
    action: review
  - id: no-floor
    when: {kind: [field_update]}
    action: review
""")
    assert policy.warnings == [
        "rule 'higher-floor' can never match: rule 'floor' before it matches every proposal it would",
    ]


def test_the_default_policy_has_no_shadowed_rules() -> None:
    assert Policy.load().warnings == []


def test_auto_apply_emits_a_decision_with_policy_identity(make_proposal: MakeProposal) -> None:
    policy = Policy.load()
    proposal = make_proposal(confidence=0.993)
    topic, decision = output_for(policy, proposal, policy.evaluate(proposal))
    assert topic is Topic.DECISIONS
    assert isinstance(decision, Decision)
    assert decision.outcome is DecisionOutcome.AUTO_APPROVED
    assert decision.decision_id == Decision.policy_decision_id(proposal.proposal_id, policy.content_hash)
    assert (decision.decided_by.rule_id, decision.decided_by.policy_hash) == (
        "enrichment-fill-empty",
        policy.content_hash,
    )
    assert decision.final_changes == proposal.changes
    assert decision.explanation == "auto-applied: rule enrichment-fill-empty, confidence 0.99 ≥ 0.98"


def test_review_emits_a_review_request(make_proposal: MakeProposal) -> None:
    policy = Policy.load()
    proposal = make_proposal(kind=ProposalKind.MERGE)
    topic, request = output_for(policy, proposal, policy.evaluate(proposal))
    assert topic is Topic.PROPOSALS_PENDING
    assert isinstance(request, ReviewRequest)
    assert (request.queue, request.priority, request.routed_by.rule_id) == (
        "dedup",
        "normal",
        "merge-always-review",
    )
    assert request.expires_at is not None
    assert timedelta(days=14) - timedelta(minutes=1) < request.expires_at - utcnow() <= timedelta(days=14)


def test_reject_emits_a_rejection_without_changes(make_proposal: MakeProposal) -> None:
    policy = _policy(
        "rules:\n  - id: no-clay\n"
        "    when: {source_system: [clay]}\n    action: reject\n    reason: clay is paused\n"
    )
    proposal = make_proposal()
    topic, decision = output_for(policy, proposal, policy.evaluate(proposal))
    assert topic is Topic.DECISIONS
    assert isinstance(decision, Decision)
    assert decision.outcome is DecisionOutcome.REJECTED
    assert decision.final_changes == []
    assert decision.explanation == "rejected: rule no-clay (clay is paused)"
