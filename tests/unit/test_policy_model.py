"""The policy model, criterion by criterion: each condition on both sides of what it accepts, the
explanation `policy explain` gives for every mismatch, and the checks a policy file must pass.

``matches`` (the hot path) and ``mismatches`` (the explanation) implement every criterion twice;
each case below asserts both, so neither can drift from the other."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from changegate.core.contracts import FieldChange, ObjectType, Proposal, ProposalKind, ProposalSource, Trigger
from changegate.policy.model import Action, Condition, PolicyDocument, ReviewOptions, Rule, evidence_flags
from pydantic import ValidationError

MakeProposal = Callable[..., Proposal]

FILL = FieldChange(field="jobtitle", previous=None, proposed="VP Sales")
FILL_CITY = FieldChange(field="city", previous="", proposed="Berlin")
OVERWRITE = FieldChange(field="jobtitle", previous="Sales", proposed="VP Sales")
REVENUE = FieldChange(field="annualrevenue", previous=None, proposed=5_000_000)


def _source(system: str = "clay", trigger: Trigger = Trigger.ENRICHMENT) -> ProposalSource:
    return ProposalSource(
        system=system, event_id="e-1", detector="enrichment", detector_version="0.1.0", trigger=trigger
    )


# (condition, proposal overrides, the one mismatch reason or None for a match)
CASES: list[tuple[dict[str, Any], dict[str, Any], str | None]] = [
    ({}, {}, None),
    # kind
    ({"kind": ["field_update"]}, {}, None),
    (
        {"kind": ["merge", "owner_reassignment"]},
        {},
        "kind field_update not in ['merge', 'owner_reassignment']",
    ),
    # object type: a contact rule never fires for companies
    ({"object_type": ["contact"]}, {}, None),
    (
        {"object_type": ["contact"]},
        {"object_type": ObjectType.COMPANY},
        "object_type company not in ['contact']",
    ),
    # source system: an "auto-apply for clay" rule never fires for another source
    ({"source_system": ["clay"]}, {}, None),
    ({"source_system": ["clay"]}, {"source": _source("zoominfo")}, "source_system zoominfo not in ['clay']"),
    # trigger
    ({"trigger": ["enrichment"]}, {}, None),
    (
        {"trigger": ["enrichment", "rule"]},
        {"source": _source(trigger=Trigger.AI_SCORE)},
        "trigger ai_score not in ['enrichment', 'rule']",
    ),
    # fields: every changed field must be listed
    ({"fields": ["jobtitle", "city"]}, {"changes": [FILL, FILL_CITY]}, None),
    ({"fields": ["jobtitle", "city"]}, {"changes": [FILL]}, None),
    (
        {"fields": ["jobtitle", "city"]},
        {"changes": [FILL, REVENUE]},
        "changes fields outside ['jobtitle', 'city']: ['annualrevenue']",
    ),
    (
        {"fields": ["jobtitle", "city"]},
        {"changes": [REVENUE]},
        "changes fields outside ['jobtitle', 'city']: ['annualrevenue']",
    ),
    # previous_empty
    ({"previous_empty": True}, {"changes": [FILL, FILL_CITY]}, None),
    ({"previous_empty": True}, {"changes": [FILL_CITY, OVERWRITE]}, "a previous value is not empty"),
    ({"previous_empty": False}, {"changes": [FILL_CITY, OVERWRITE]}, None),
    ({"previous_empty": False}, {"changes": [FILL, FILL_CITY]}, "every previous value is empty"),
    # confidence bounds are inclusive
    ({"min_confidence": 0.85}, {"confidence": 0.85}, None),
    ({"min_confidence": 0.85}, {"confidence": 0.84}, "confidence 0.84 < 0.85"),
    ({"max_confidence": 0.5}, {"confidence": 0.5}, None),
    ({"max_confidence": 0.5}, {"confidence": 0.51}, "confidence 0.51 > 0.50"),
    ({"min_confidence": 0.7, "max_confidence": 0.7}, {"confidence": 0.7}, None),
    ({"min_confidence": 0.7, "max_confidence": 0.7}, {"confidence": 0.71}, "confidence 0.71 > 0.70"),
    ({"min_confidence": 0.7, "max_confidence": 0.7}, {"confidence": 0.69}, "confidence 0.69 < 0.70"),
    # evidence flags
    ({"evidence_flags_any": ["a", "b"]}, {"evidence": {"flags": ["b", "c"]}}, None),
    ({"evidence_flags_any": ["a"]}, {"evidence": {"flags": ["c"]}}, "evidence raises none of ['a']"),
    ({"evidence_flags_any": ["a"]}, {"evidence": {}}, "evidence raises none of ['a']"),
    ({"evidence_flags_any": ["a"]}, {"evidence": {"flags": "a"}}, "evidence raises none of ['a']"),
    (
        {"evidence_flags_none": ["x", "y"]},
        {"evidence": {"flags": ["y", "z", "x"]}},
        "evidence raises ['x', 'y']",
    ),
    ({"evidence_flags_none": ["x"]}, {"evidence": {"flags": ["z"]}}, None),
    ({"evidence_flags_none": ["x"]}, {"evidence": {}}, None),
    ({"evidence_flags_any": ["a"], "evidence_flags_none": ["x"]}, {"evidence": {"flags": ["a"]}}, None),
    (
        {"evidence_flags_any": ["a"], "evidence_flags_none": ["x"]},
        {"evidence": {"flags": ["a", "x"]}},
        "evidence raises ['x']",
    ),
    # values: compared with their types
    ({"proposed_values": {"jobtitle": ["CTO", "VP Sales"]}}, {}, None),
    ({"proposed_values": {"jobtitle": ["CTO"]}}, {}, "proposed values not in {'jobtitle': ['CTO']}"),
    ({"proposed_values": {"city": ["Berlin"]}}, {}, "proposed values not in {'city': ['Berlin']}"),
    (
        {"proposed_values": {"jobtitle": ["VP Sales"], "city": ["Berlin"]}},
        {"changes": [FILL, FILL_CITY]},
        None,
    ),
    (
        {"proposed_values": {"jobtitle": ["VP Sales"], "city": ["Paris"]}},
        {"changes": [FILL, FILL_CITY]},
        "proposed values not in {'jobtitle': ['VP Sales'], 'city': ['Paris']}",
    ),
    (
        {"proposed_values": {"vip": [True]}},
        {"changes": [FieldChange(field="vip", previous=None, proposed=1)]},
        "proposed values not in {'vip': [True]}",
    ),
    ({"previous_values": {"jobtitle": [None]}}, {}, None),
    ({"previous_values": {"jobtitle": ["Sales"]}}, {"changes": [OVERWRITE]}, None),
    ({"previous_values": {"jobtitle": ["Sales"]}}, {}, "previous values not in {'jobtitle': ['Sales']}"),
    ({"previous_values": {"city": [""]}}, {}, "previous values not in {'city': ['']}"),
]


@pytest.mark.parametrize(("when", "overrides", "reason"), CASES)
def test_each_criterion_on_both_sides(
    make_proposal: MakeProposal, when: dict[str, Any], overrides: dict[str, Any], reason: str | None
) -> None:
    condition = Condition.model_validate(when)
    proposal = make_proposal(**overrides)
    assert condition.matches(proposal) is (reason is None)
    assert condition.mismatches(proposal) == ([] if reason is None else [reason])


def test_every_mismatch_is_explained_in_order(make_proposal: MakeProposal) -> None:
    condition = Condition.model_validate(
        {
            "kind": ["merge"],
            "object_type": ["company"],
            "source_system": ["hubspot"],
            "trigger": ["rule"],
            "fields": ["city"],
            "previous_empty": False,
            "min_confidence": 0.95,
            "evidence_flags_any": ["a"],
            "evidence_flags_none": ["x"],
            "proposed_values": {"jobtitle": ["CTO"]},
            "previous_values": {"jobtitle": ["Sales"]},
        }
    )
    proposal = make_proposal(confidence=0.9, evidence={"flags": ["x"]})
    assert not condition.matches(proposal)
    assert condition.mismatches(proposal) == [
        "kind field_update not in ['merge']",
        "object_type contact not in ['company']",
        "source_system clay not in ['hubspot']",
        "trigger enrichment not in ['rule']",
        "changes fields outside ['city']: ['jobtitle']",
        "every previous value is empty",
        "confidence 0.90 < 0.95",
        "evidence raises none of ['a']",
        "evidence raises ['x']",
        "proposed values not in {'jobtitle': ['CTO']}",
        "previous values not in {'jobtitle': ['Sales']}",
    ]


def test_max_confidence_is_explained_beside_a_passing_minimum(make_proposal: MakeProposal) -> None:
    condition = Condition(min_confidence=0.1, max_confidence=0.5)
    assert condition.mismatches(make_proposal(confidence=0.6)) == ["confidence 0.60 > 0.50"]


def test_evidence_flags_are_read_as_strings(make_proposal: MakeProposal) -> None:
    assert evidence_flags(make_proposal(evidence={"flags": ["a", 7]})) == {"a", "7"}
    assert evidence_flags(make_proposal(evidence={"flags": {"a": 1}})) == set()
    assert evidence_flags(make_proposal(evidence={})) == set()


@pytest.mark.parametrize("bound", ["min_confidence", "max_confidence"])
@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.5])
def test_confidence_bounds_accept_zero_to_one(bound: str, value: float) -> None:
    assert getattr(Condition.model_validate({bound: value}), bound) == value


@pytest.mark.parametrize("bound", ["min_confidence", "max_confidence"])
@pytest.mark.parametrize("value", [-0.01, 1.01, 2])
def test_confidence_bounds_outside_zero_to_one_are_refused(bound: str, value: float) -> None:
    with pytest.raises(ValidationError, match=bound):
        Condition.model_validate({bound: value})


def test_min_equal_to_max_is_allowed_and_min_above_max_is_refused() -> None:
    assert Condition(min_confidence=0.7, max_confidence=0.7).min_confidence == 0.7
    with pytest.raises(
        ValidationError, match="min_confidence is above max_confidence: the rule can never match"
    ):
        Condition(min_confidence=0.71, max_confidence=0.7)


def test_conditions_refuse_unknown_criteria_and_are_immutable() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Condition.model_validate({"colour": ["red"]})
    condition = Condition(kind=[ProposalKind.MERGE])
    with pytest.raises(ValidationError, match="frozen"):
        condition.kind = None  # type: ignore[misc]


# --- review options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        (" 14 d ", timedelta(days=14)),
        ("0m", timedelta(0)),
    ],
)
def test_expires_after_parses_days_hours_minutes(text: str, expected: timedelta) -> None:
    assert ReviewOptions.model_validate({"expires_after": text}).expires_after == expected


def test_expires_after_takes_seconds_and_refuses_other_text() -> None:
    assert ReviewOptions.model_validate({"expires_after": 90}).expires_after == timedelta(seconds=90)
    for text in ("12x", "h12", "twelve hours", "12hh", "1d2h"):
        with pytest.raises(ValidationError, match="expires_after"):
            ReviewOptions.model_validate({"expires_after": text})


def test_review_option_defaults_and_limits() -> None:
    options = ReviewOptions()
    assert (options.queue, options.priority, options.expires_after) == ("default", "normal", None)
    assert ReviewOptions(queue="q", priority="high").queue == "q"
    with pytest.raises(ValidationError, match="queue"):
        ReviewOptions(queue="")
    with pytest.raises(ValidationError, match="priority"):
        ReviewOptions.model_validate({"priority": "urgent"})


# --- rules and documents --------------------------------------------------------------------------


def test_a_rule_id_may_be_one_character_but_not_empty_or_odd() -> None:
    assert Rule(id="a", action=Action.REVIEW).id == "a"
    for bad in ("", "-a", "A", "a_b", "a b"):
        with pytest.raises(ValidationError, match="id"):
            Rule(id=bad, action=Action.REVIEW)


@pytest.mark.parametrize("kinds", [["merge"], ["owner_reassignment"], ["field_update", "merge"], None])
def test_auto_apply_of_a_human_only_kind_is_refused(kinds: list[str] | None) -> None:
    when = {} if kinds is None else {"kind": kinds}
    with pytest.raises(ValidationError, match="merges and owner reassignments always need a human reviewer"):
        Rule.model_validate({"id": "r", "when": when, "action": "auto_apply"})


def test_auto_apply_names_every_human_only_kind_it_would_cover() -> None:
    with pytest.raises(ValidationError, match="would auto-apply merge, owner_reassignment:"):
        Rule.model_validate({"id": "r", "action": "auto_apply"})


def test_auto_apply_of_safe_kinds_is_allowed() -> None:
    rule = Rule.model_validate(
        {"id": "r", "when": {"kind": ["field_update", "email_verification"]}, "action": "auto_apply"}
    )
    assert rule.action is Action.AUTO_APPLY
    assert rule.allow_high_risk is False


def test_a_reject_rule_needs_a_reason() -> None:
    with pytest.raises(ValidationError, match="a reject rule needs a reason"):
        Rule(id="r", action=Action.REJECT)
    with pytest.raises(ValidationError, match="a reject rule needs a reason"):
        Rule(id="r", action=Action.REJECT, reason="")
    assert Rule(id="r", action=Action.REJECT, reason="spam").reason == "spam"


@pytest.mark.parametrize("action", [Action.AUTO_APPLY, Action.REVIEW])
def test_a_reason_belongs_to_reject_rules_only(action: Action) -> None:
    with pytest.raises(ValidationError, match=r"Value error, a reason applies to reject rules only \["):
        Rule(id="r", when=Condition(kind=[ProposalKind.FIELD_UPDATE]), action=action, reason="because")


@pytest.mark.parametrize("action", [Action.AUTO_APPLY, Action.REJECT])
def test_review_options_belong_to_review_rules_only(action: Action) -> None:
    with pytest.raises(ValidationError, match="review options apply to review rules only"):
        Rule(
            id="r",
            when=Condition(kind=[ProposalKind.FIELD_UPDATE]),
            action=action,
            reason="spam" if action is Action.REJECT else None,
            review=ReviewOptions(),
        )
    assert Rule(id="r", action=Action.REVIEW, review=ReviewOptions(queue="q")).review == ReviewOptions(
        queue="q"
    )


def test_document_defaults() -> None:
    document = PolicyDocument(version="1", rules=[])
    assert document.default is Action.REVIEW
    assert document.default_review == ReviewOptions()
    assert document.high_risk_fields == []
    assert document.high_risk_evidence == ["different_email_domains"]


def test_document_needs_a_version() -> None:
    with pytest.raises(ValidationError, match="version"):
        PolicyDocument(version="", rules=[])


@pytest.mark.parametrize(
    ("default", "message"),
    [
        (
            Action.AUTO_APPLY,
            r"error, default action auto_apply is refused: unmatched proposals need review \[",
        ),
        (
            Action.REJECT,
            r"error, default action reject is refused: say which proposals to reject in a rule \[",
        ),
    ],
)
def test_a_default_other_than_review_is_refused(default: Action, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PolicyDocument(version="1", default=default, rules=[])


def test_duplicate_rule_ids_are_refused_by_name() -> None:
    rules = [Rule(id="a", action=Action.REVIEW), Rule(id="b", action=Action.REVIEW)]
    assert len(PolicyDocument(version="1", rules=rules).rules) == 2
    with pytest.raises(ValidationError, match="rule 'a': duplicate rule id"):
        PolicyDocument(version="1", rules=[*rules, Rule(id="a", action=Action.REVIEW)])


@pytest.mark.parametrize(
    "when",
    [
        {"kind": ["field_update"], "fields": ["jobtitle", "email"]},
        {"kind": ["field_update"], "proposed_values": {"email": ["x@y.example"]}},
        {"kind": ["field_update"], "previous_values": {"hubspot_owner_id": ["owner-1"]}},
    ],
)
def test_an_auto_apply_rule_naming_a_human_only_field_is_refused(when: dict[str, object]) -> None:
    with pytest.raises(
        ValidationError, match=r"would auto-apply (email|hubspot_owner_id): a human-only field"
    ):
        Rule.model_validate({"id": "r", "when": when, "action": "auto_apply"})
    # Reviewing or rejecting them is fine.
    assert Rule.model_validate({"id": "r", "when": when, "action": "review"}).action is Action.REVIEW


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            {"kind": ["field_update"]},
            r"let field updates auto-apply Email, email, hs_additional_emails \(human-only",
        ),
        ({}, "would auto-apply merge, owner_reassignment"),
        ({"kind": ["lifecycle_transition"]}, r"limit the rule's trigger to \[defined_event\]"),
        (
            {"kind": ["lifecycle_transition"], "trigger": ["defined_event", "ai_score"]},
            r"allow_high_risk auto-applies lifecyclestage only when triggered by a defined_event",
        ),
        (
            {"kind": ["lifecycle_transition", "email_verification"], "trigger": ["ai_score"]},
            "lifecyclestage only when triggered",
        ),
    ],
)
def test_allow_high_risk_beyond_the_permitted_exception_is_refused(
    when: dict[str, object], message: str
) -> None:
    rule = {"id": "r", "when": when, "action": "auto_apply", "allow_high_risk": True}
    with pytest.raises(ValidationError, match=message):
        Rule.model_validate(rule)


@pytest.mark.parametrize(
    "when",
    [
        {"kind": ["lifecycle_transition"], "trigger": ["defined_event"]},
        {"kind": ["email_verification"]},
        {"kind": ["field_update"], "fields": ["phone"]},
        {"kind": ["field_update", "lifecycle_transition"], "fields": ["phone"], "trigger": ["defined_event"]},
    ],
)
def test_allow_high_risk_within_the_permitted_exception_is_accepted(when: dict[str, object]) -> None:
    rule = Rule.model_validate({"id": "r", "when": when, "action": "auto_apply", "allow_high_risk": True})
    assert rule.allow_high_risk is True
    # Without auto_apply there is nothing to allow: a review rule may say it.
    assert (
        Rule.model_validate({"id": "r", "action": "review", "allow_high_risk": True}).action is Action.REVIEW
    )


def test_the_lifecycle_exception_names_every_lifecycle_stage_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from changegate.core import field_risk

    monkeypatch.setenv("CHANGEGATE_CRM_FIELDS", '{"stage__c": "lifecycle_stage"}')
    field_risk.table.cache_clear()
    try:
        rule = {"id": "r", "when": {"kind": ["lifecycle_transition"]}, "action": "auto_apply"}
        with pytest.raises(
            ValidationError, match=r"auto-applies lifecyclestage, stage__c only when triggered"
        ):
            Rule.model_validate({**rule, "allow_high_risk": True})
    finally:
        field_risk.table.cache_clear()
