"""Lifecycle transitions: defined events and scores propose forward stage moves, never backwards ones."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.detector import DETECTOR_VERSION
from changegate.detector.config import HUBSPOT_STAGE_ORDER, DefinedEvent, LifecycleConfig
from changegate.detector.lifecycle import (
    DETECTOR,
    LifecycleReason,
    LifecycleResult,
    match_defined_event,
    propose_lifecycle,
)
from pydantic import ValidationError

EventFactory = Callable[..., CrmEvent]


@pytest.fixture
def lifecycle_event(make_crm_event: EventFactory) -> EventFactory:
    def build(properties: dict[str, Any], **overrides: Any) -> CrmEvent:
        fields: dict[str, Any] = {
            "source_system": "forms",
            "source_event_id": "form-sub-881",
            "kind": CrmEventKind.LIFECYCLE_EVENT,
            "properties": properties,
            "confidence": None,
        }
        fields.update(overrides)
        return make_crm_event(**fields)

    return build


@pytest.fixture
def score_event(make_crm_event: EventFactory) -> EventFactory:
    def build(score: Any, model: str | None = "fit-v3", **overrides: Any) -> CrmEvent:
        properties: dict[str, Any] = {"score": score}
        if model is not None:
            properties["model"] = model
        fields: dict[str, Any] = {
            "source_system": "scoring",
            "source_event_id": "score-run-5:hs-contact-1001",
            "kind": CrmEventKind.SCORE,
            "properties": properties,
            "confidence": None,
        }
        fields.update(overrides)
        return make_crm_event(**fields)

    return build


def _proposed(result: LifecycleResult) -> Proposal:
    assert result.reason is LifecycleReason.PROPOSED
    assert result.proposal is not None
    return result.proposal


def _skipped(result: LifecycleResult, reason: LifecycleReason) -> None:
    assert result.proposal is None
    assert result.reason is reason


CONFIG = LifecycleConfig()


# --- defined events -------------------------------------------------------------------------------


def test_demo_request_moves_lead_to_mql(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": "form_submission", "form_type": "demo_request"})

    proposal = _proposed(propose_lifecycle(event, {"lifecyclestage": "lead"}, CONFIG))

    assert proposal.kind is ProposalKind.LIFECYCLE_TRANSITION
    assert proposal.object_type is ObjectType.CONTACT
    assert proposal.record_id == "hs-contact-1001"
    assert proposal.changes == [
        FieldChange(field="lifecyclestage", previous="lead", proposed="marketingqualifiedlead")
    ]
    assert proposal.confidence == 1.0
    assert proposal.rationale == "form submission demo_request moves lead → marketingqualifiedlead"
    assert proposal.source.system == "forms"
    assert proposal.source.event_id == "form-sub-881"
    assert proposal.source.detector == DETECTOR == "lifecycle"
    assert proposal.source.detector_version == DETECTOR_VERSION
    assert proposal.source.trigger is Trigger.DEFINED_EVENT
    assert proposal.proposal_id == Proposal.make_id(
        "lifecycle", "hs-contact-1001", proposal.changes, "form-sub-881"
    )
    assert proposal.evidence == {
        "event": {"event": "form_submission", "form_type": "demo_request"},
        "matched_rule": {
            "event": "form_submission",
            "form_type": "demo_request",
            "stage": "marketingqualifiedlead",
            "confidence": None,
        },
        "stage_order": list(HUBSPOT_STAGE_ORDER),
        "from_stage": "lead",
        "from_index": 1,
        "to_stage": "marketingqualifiedlead",
        "to_index": 2,
        "direction": "forward",
        "allow_backwards": False,
        # measured per (trigger, source, event, form type), starting from the configured 1.0
        "confidence_basis": {
            "cells": [
                {
                    "cell": "lifecycle|defined_event|forms|form_submission|demo_request",
                    "field": "lifecyclestage",
                }
            ],
            "prior": 1.0,
            "prior_from": "configured",
        },
    }


def test_redetection_gives_the_same_proposal_id(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": "meeting_booked"})
    first = _proposed(propose_lifecycle(event, {"lifecyclestage": "lead"}, CONFIG))
    again = _proposed(propose_lifecycle(event, {"lifecyclestage": "lead"}, CONFIG))
    other = _proposed(
        propose_lifecycle(lifecycle_event({"event": "meeting_booked"}, source_event_id="x"), {}, CONFIG)
    )
    assert first.proposal_id == again.proposal_id
    assert first.proposal_id != other.proposal_id


@pytest.mark.parametrize(
    ("properties", "stage"),
    [
        ({"event": "form_submission", "form_type": "newsletter_signup"}, "subscriber"),
        ({"event": "form_submission", "form_type": "content_download"}, "lead"),
        ({"event": "form_submission", "form_type": "contact_us"}, "lead"),
        ({"event": "form_submission", "form_type": "demo_request"}, "marketingqualifiedlead"),
        ({"event": "form_submission", "form_type": "pricing_request"}, "marketingqualifiedlead"),
        ({"event": "meeting_booked"}, "salesqualifiedlead"),
        ({"event": "deal_created"}, "opportunity"),
        ({"event": "deal_closed_won"}, "customer"),
    ],
)
def test_default_defined_event_table(
    lifecycle_event: EventFactory, properties: dict[str, Any], stage: str
) -> None:
    proposal = _proposed(propose_lifecycle(lifecycle_event(properties), {}, CONFIG))
    assert proposal.changes == [FieldChange(field="lifecyclestage", previous=None, proposed=stage)]
    assert proposal.source.trigger is Trigger.DEFINED_EVENT


def test_meeting_booked_rationale_from_empty_stage(lifecycle_event: EventFactory) -> None:
    proposal = _proposed(propose_lifecycle(lifecycle_event({"event": "meeting_booked"}), {}, CONFIG))
    assert proposal.rationale == "meeting booked sets the unset stage to salesqualifiedlead"
    assert proposal.evidence["direction"] == "from_empty"
    assert proposal.evidence["from_index"] is None


def test_empty_string_stage_counts_as_unset(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": "deal_created"})
    proposal = _proposed(propose_lifecycle(event, {"lifecyclestage": "  "}, CONFIG))
    assert proposal.changes[0].previous == "  "
    assert proposal.evidence["direction"] == "from_empty"


def test_event_names_and_form_types_match_case_insensitively(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": " Form_Submission ", "form_type": "DEMO_REQUEST"})
    proposal = _proposed(propose_lifecycle(event, {"lifecyclestage": "lead"}, CONFIG))
    assert proposal.changes[0].proposed == "marketingqualifiedlead"


def test_unknown_form_type_without_generic_row_is_skipped(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": "form_submission", "form_type": "job_application"})
    _skipped(propose_lifecycle(event, {"lifecyclestage": "lead"}, CONFIG), LifecycleReason.UNKNOWN_EVENT)
    _skipped(
        propose_lifecycle(lifecycle_event({"event": "webinar_attended"}), {}, CONFIG),
        LifecycleReason.UNKNOWN_EVENT,
    )


def test_missing_event_name(lifecycle_event: EventFactory) -> None:
    _skipped(propose_lifecycle(lifecycle_event({}), {}, CONFIG), LifecycleReason.MISSING_EVENT_NAME)
    _skipped(
        propose_lifecycle(lifecycle_event({"event": ""}), {}, CONFIG), LifecycleReason.MISSING_EVENT_NAME
    )


def test_other_event_kinds_are_not_lifecycle(make_crm_event: EventFactory) -> None:
    _skipped(propose_lifecycle(make_crm_event(), {}, CONFIG), LifecycleReason.NOT_LIFECYCLE)


def test_form_type_row_wins_over_generic_row_whatever_the_order(lifecycle_event: EventFactory) -> None:
    config = LifecycleConfig(
        defined_events=[
            DefinedEvent(event="form_submission", stage="lead"),
            DefinedEvent(event="form_submission", form_type="demo_request", stage="salesqualifiedlead"),
        ]
    )
    demo = lifecycle_event({"event": "form_submission", "form_type": "demo_request"})
    other = lifecycle_event({"event": "form_submission", "form_type": "newsletter"}, source_event_id="f2")
    no_type = lifecycle_event({"event": "form_submission"}, source_event_id="f3")

    assert _proposed(propose_lifecycle(demo, {}, config)).changes[0].proposed == "salesqualifiedlead"
    generic = _proposed(propose_lifecycle(other, {}, config))
    assert generic.changes[0].proposed == "lead"
    # the matched row names no form type, so the rationale does not claim one
    assert generic.rationale == "form submission sets the unset stage to lead"
    assert _proposed(propose_lifecycle(no_type, {}, config)).changes[0].proposed == "lead"


def test_match_defined_event_first_generic_row_wins() -> None:
    config = LifecycleConfig(
        defined_events=[
            DefinedEvent(event="meeting_booked", stage="salesqualifiedlead"),
            DefinedEvent(event="meeting_booked", stage="opportunity"),
        ]
    )
    row = match_defined_event({"event": "meeting_booked"}, config)
    assert row is not None
    assert row.stage == "salesqualifiedlead"
    assert match_defined_event({"event": None}, config) is None


def test_row_confidence_and_default_confidence(lifecycle_event: EventFactory) -> None:
    config = LifecycleConfig(
        defined_event_confidence=0.9,
        defined_events=[
            DefinedEvent(event="meeting_booked", stage="salesqualifiedlead", confidence=0.75),
            DefinedEvent(event="deal_created", stage="opportunity"),
        ],
    )
    meeting = _proposed(propose_lifecycle(lifecycle_event({"event": "meeting_booked"}), {}, config))
    deal = _proposed(propose_lifecycle(lifecycle_event({"event": "deal_created"}), {}, config))
    assert meeting.confidence == 0.75
    assert deal.confidence == 0.9


# --- direction ------------------------------------------------------------------------------------


def test_backwards_move_is_never_proposed_by_default(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": "form_submission", "form_type": "demo_request"})
    _skipped(propose_lifecycle(event, {"lifecyclestage": "customer"}, CONFIG), LifecycleReason.BACKWARDS)


def test_backwards_move_when_configured_says_so(lifecycle_event: EventFactory) -> None:
    config = LifecycleConfig(allow_backwards=True)
    event = lifecycle_event({"event": "form_submission", "form_type": "demo_request"})
    proposal = _proposed(propose_lifecycle(event, {"lifecyclestage": "customer"}, config))
    assert proposal.changes == [
        FieldChange(field="lifecyclestage", previous="customer", proposed="marketingqualifiedlead")
    ]
    assert proposal.rationale == (
        "form submission demo_request moves customer → marketingqualifiedlead"
        " (a backwards move, allowed by configuration)"
    )
    assert proposal.evidence["direction"] == "backwards"
    assert proposal.evidence["allow_backwards"] is True


@pytest.mark.parametrize("allow_backwards", [False, True])
def test_same_stage_is_never_proposed(lifecycle_event: EventFactory, allow_backwards: bool) -> None:
    config = LifecycleConfig(allow_backwards=allow_backwards)
    event = lifecycle_event({"event": "meeting_booked"})
    for current in ("salesqualifiedlead", "SalesQualifiedLead", " salesqualifiedlead "):
        _skipped(propose_lifecycle(event, {"lifecyclestage": current}, config), LifecycleReason.NOOP)


STAGES = list(HUBSPOT_STAGE_ORDER)


@pytest.mark.parametrize("current", STAGES)
@pytest.mark.parametrize("target", STAGES)
def test_every_pair_of_stages_moves_only_forward(
    lifecycle_event: EventFactory, current: str, target: str
) -> None:
    config = LifecycleConfig(defined_events=[DefinedEvent(event="probe", stage=target)])
    result = propose_lifecycle(lifecycle_event({"event": "probe"}), {"lifecyclestage": current}, config)
    if STAGES.index(target) > STAGES.index(current):
        assert _proposed(result).evidence["direction"] == "forward"
    elif target == current:
        _skipped(result, LifecycleReason.NOOP)
    else:
        _skipped(result, LifecycleReason.BACKWARDS)


def test_current_stage_outside_the_order(lifecycle_event: EventFactory) -> None:
    event = lifecycle_event({"event": "meeting_booked"})
    known = {"lifecyclestage": "1234567"}  # a custom stage id
    _skipped(propose_lifecycle(event, known, CONFIG), LifecycleReason.UNORDERED_CURRENT_STAGE)

    proposal = _proposed(propose_lifecycle(event, known, LifecycleConfig(allow_backwards=True)))
    assert proposal.evidence["direction"] == "unordered"
    assert proposal.rationale == (
        "meeting booked moves 1234567 → salesqualifiedlead"
        " (stage 1234567 is not in the stage order; allowed by configuration)"
    )


def test_custom_stage_order_and_field(lifecycle_event: EventFactory) -> None:
    config = LifecycleConfig(
        stage_field="stage__c",
        stage_order=["prospect", "engaged", "won"],
        defined_events=[DefinedEvent(event="meeting_booked", stage="engaged")],
        score_stage="won",
    )
    event = lifecycle_event({"event": "meeting_booked"})
    proposal = _proposed(propose_lifecycle(event, {"stage__c": "prospect"}, config))
    assert proposal.changes == [FieldChange(field="stage__c", previous="prospect", proposed="engaged")]
    _skipped(propose_lifecycle(event, {"stage__c": "won"}, config), LifecycleReason.BACKWARDS)
    # the default field is not read under a custom one
    assert _proposed(propose_lifecycle(event, {"lifecyclestage": "won"}, config)).changes[0].previous is None


# --- scores ---------------------------------------------------------------------------------------


def test_high_score_proposes_sql_with_the_score_as_confidence(score_event: EventFactory) -> None:
    proposal = _proposed(
        propose_lifecycle(score_event(0.91), {"lifecyclestage": "marketingqualifiedlead"}, CONFIG)
    )
    assert proposal.kind is ProposalKind.LIFECYCLE_TRANSITION
    assert proposal.changes == [
        FieldChange(field="lifecyclestage", previous="marketingqualifiedlead", proposed="salesqualifiedlead")
    ]
    assert proposal.confidence == 0.91
    assert proposal.source.trigger is Trigger.AI_SCORE
    assert proposal.source.system == "scoring"
    assert proposal.rationale == (
        "fit-v3 score 0.91 ≥ threshold 0.80 moves marketingqualifiedlead → salesqualifiedlead"
    )
    assert proposal.evidence["score"] == 0.91
    assert proposal.evidence["model"] == "fit-v3"
    assert proposal.evidence["threshold"] == 0.8
    assert proposal.evidence["from_index"] == 2
    assert proposal.evidence["to_index"] == 3


def test_score_without_model_name(score_event: EventFactory) -> None:
    proposal = _proposed(propose_lifecycle(score_event(0.85, model=None), {}, CONFIG))
    assert proposal.rationale == "score 0.85 ≥ threshold 0.80 sets the unset stage to salesqualifiedlead"


def test_score_at_threshold_proposes_and_below_does_not(score_event: EventFactory) -> None:
    assert propose_lifecycle(score_event(0.8), {}, CONFIG).reason is LifecycleReason.PROPOSED
    _skipped(propose_lifecycle(score_event(0.7999), {}, CONFIG), LifecycleReason.BELOW_THRESHOLD)
    _skipped(
        propose_lifecycle(score_event(0.85), {}, LifecycleConfig(score_threshold=0.9)),
        LifecycleReason.BELOW_THRESHOLD,
    )


def test_numeric_string_score_is_read(score_event: EventFactory) -> None:
    assert _proposed(propose_lifecycle(score_event("0.95"), {}, CONFIG)).confidence == 0.95
    assert _proposed(propose_lifecycle(score_event(1), {}, CONFIG)).confidence == 1.0


@pytest.mark.parametrize("score", [None, "high", 1.5, -0.1, True, "nan", "inf", ""])
def test_invalid_scores_are_skipped(score_event: EventFactory, score: Any) -> None:
    _skipped(propose_lifecycle(score_event(score), {}, CONFIG), LifecycleReason.INVALID_SCORE)


def test_score_never_moves_backwards(score_event: EventFactory) -> None:
    _skipped(
        propose_lifecycle(score_event(0.99), {"lifecyclestage": "customer"}, CONFIG),
        LifecycleReason.BACKWARDS,
    )
    _skipped(
        propose_lifecycle(score_event(0.99), {"lifecyclestage": "salesqualifiedlead"}, CONFIG),
        LifecycleReason.NOOP,
    )


def test_score_sources_restrict_trusted_systems(score_event: EventFactory) -> None:
    config = LifecycleConfig(score_sources=["Scoring", "madkudu"])
    assert propose_lifecycle(score_event(0.9), {}, config).reason is LifecycleReason.PROPOSED
    assert (
        propose_lifecycle(score_event(0.9, source_system="madkudu"), {}, config).reason
        is LifecycleReason.PROPOSED
    )
    _skipped(
        propose_lifecycle(score_event(0.9, source_system="clay"), {}, config),
        LifecycleReason.UNTRUSTED_SCORE_SOURCE,
    )


def test_configured_score_stage(score_event: EventFactory) -> None:
    config = LifecycleConfig(score_stage="marketingqualifiedlead", score_threshold=0.6)
    proposal = _proposed(propose_lifecycle(score_event(0.65), {"lifecyclestage": "lead"}, config))
    assert proposal.changes[0].proposed == "marketingqualifiedlead"


# --- configuration --------------------------------------------------------------------------------


def test_config_defaults() -> None:
    assert CONFIG.stage_field == "lifecyclestage"
    assert CONFIG.stage_order == list(HUBSPOT_STAGE_ORDER)
    assert CONFIG.defined_event_confidence == 1.0
    assert CONFIG.score_threshold == 0.8
    assert CONFIG.score_stage == "salesqualifiedlead"
    assert CONFIG.score_sources == []
    assert CONFIG.allow_backwards is False


def test_config_reads_json_and_round_trips() -> None:
    config = LifecycleConfig.model_validate_json(
        '{"score_threshold": 0.9, "defined_events": [{"event": "deal_created", "stage": "opportunity"}]}'
    )
    assert config.score_threshold == 0.9
    assert config.defined_events == [DefinedEvent(event="deal_created", stage="opportunity")]
    assert LifecycleConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"score_stage": "champion"}, "score_stage: stage 'champion' is not in stage_order"),
        (
            {"defined_events": [{"event": "x", "stage": "champion"}]},
            "defined_events[0] (x): stage 'champion' is not in stage_order",
        ),
        ({"stage_order": ["lead", "Lead"]}, "stage_order lists a stage twice"),
        ({"score_treshold": 0.5}, "Extra inputs are not permitted"),
        ({"score_threshold": 1.5}, "less than or equal to 1"),
    ],
)
def test_config_refuses_bad_values(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        LifecycleConfig.model_validate(payload)
