"""Enrichment write-back: an enrichment result compared with the known record becomes one proposal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from changegate.core.contracts import CrmEvent, FieldChange, ObjectType, Proposal, ProposalKind, Trigger
from changegate.detector import DETECTOR_VERSION
from changegate.detector.enrichment import DETECTOR, propose_enrichment

DEFAULTS = {"clay": 0.9, "default": 0.7}


def _propose(event: CrmEvent, known: dict[str, Any], defaults: dict[str, float] | None = None) -> Proposal:
    proposal = propose_enrichment(event, known, DEFAULTS if defaults is None else defaults)
    assert proposal is not None
    return proposal


def test_fill_and_overwrite_are_told_apart(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event(
        properties={"jobtitle": "VP Sales", "city": "Berlin", "company_size": 250}, confidence=0.93
    )
    known = {"jobtitle": "Sales Manager", "city": None, "company_size": ""}

    proposal = _propose(event, known)

    assert proposal.changes == [
        FieldChange(field="city", previous=None, proposed="Berlin"),
        FieldChange(field="company_size", previous="", proposed=250),
        FieldChange(field="jobtitle", previous="Sales Manager", proposed="VP Sales"),
    ]
    assert proposal.evidence == {
        "fills_empty": ["city", "company_size"],
        "overwrites": ["jobtitle"],
        "confidence_source": "source",
    }
    assert proposal.rationale == (
        "clay enrichment fills empty city, company_size and overwrites jobtitle (confidence 0.93)"
    )


def test_pure_fill(make_crm_event: Callable[..., CrmEvent]) -> None:
    proposal = _propose(make_crm_event(properties={"jobtitle": "VP Sales"}, confidence=0.93), {})
    assert proposal.changes == [FieldChange(field="jobtitle", previous=None, proposed="VP Sales")]
    assert proposal.evidence["fills_empty"] == ["jobtitle"]
    assert proposal.evidence["overwrites"] == []
    assert proposal.rationale == "clay enrichment fills empty jobtitle (confidence 0.93)"


def test_pure_overwrite(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event(properties={"jobtitle": "VP Sales"}, confidence=0.93)
    proposal = _propose(event, {"jobtitle": "CEO"})
    assert proposal.evidence["fills_empty"] == []
    assert proposal.evidence["overwrites"] == ["jobtitle"]
    assert proposal.rationale == "clay enrichment overwrites jobtitle (confidence 0.93)"


def test_the_proposal_describes_the_event(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event(
        object_type=ObjectType.COMPANY, record_id="hs-company-77", source_event_id="clay-run-9:row-1"
    )
    proposal = _propose(event, {})
    assert proposal.kind is ProposalKind.FIELD_UPDATE
    assert proposal.object_type is ObjectType.COMPANY
    assert proposal.record_id == "hs-company-77"
    assert proposal.other_record_ids == []
    assert proposal.source.system == "clay"
    assert proposal.source.event_id == "clay-run-9:row-1"
    assert proposal.source.detector == DETECTOR == "enrichment"
    assert proposal.source.detector_version == DETECTOR_VERSION
    assert proposal.source.trigger is Trigger.ENRICHMENT


def test_unchanged_fields_are_dropped(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event(properties={"jobtitle": "VP Sales", "city": "Berlin", "company_size": 250})
    proposal = _propose(event, {"jobtitle": "VP Sales", "city": "Paris", "company_size": 250})
    assert [c.field for c in proposal.changes] == ["city"]
    assert proposal.evidence["overwrites"] == ["city"]


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_empty_proposed_values_are_dropped(
    make_crm_event: Callable[..., CrmEvent], empty: str | None
) -> None:
    event = make_crm_event(properties={"jobtitle": empty, "city": "Berlin"})
    proposal = _propose(event, {"jobtitle": "CEO"})
    assert [c.field for c in proposal.changes] == ["city"]


def test_empty_value_never_erases_a_known_value(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event(properties={"jobtitle": ""})
    assert propose_enrichment(event, {"jobtitle": "CEO"}, DEFAULTS) is None


@pytest.mark.parametrize(
    ("properties", "known"),
    [
        ({}, {"jobtitle": "CEO"}),
        ({"jobtitle": "CEO"}, {"jobtitle": "CEO"}),
        ({"jobtitle": None, "city": ""}, {}),
        ({"company_size": 250, "city": "Berlin"}, {"company_size": 250, "city": "Berlin", "x": 1}),
    ],
)
def test_nothing_to_change_gives_none(
    make_crm_event: Callable[..., CrmEvent], properties: dict[str, Any], known: dict[str, Any]
) -> None:
    assert propose_enrichment(make_crm_event(properties=properties), known, DEFAULTS) is None


def test_source_confidence_is_used_when_given(make_crm_event: Callable[..., CrmEvent]) -> None:
    proposal = _propose(make_crm_event(confidence=0.42), {})
    assert proposal.confidence == 0.42
    assert proposal.evidence["confidence_source"] == "source"


def test_source_confidence_of_zero_is_still_the_source_s(make_crm_event: Callable[..., CrmEvent]) -> None:
    proposal = _propose(make_crm_event(confidence=0.0), {})
    assert proposal.confidence == 0.0
    assert proposal.evidence["confidence_source"] == "source"


def test_per_source_default_confidence(make_crm_event: Callable[..., CrmEvent]) -> None:
    proposal = _propose(make_crm_event(confidence=None), {})
    assert proposal.confidence == 0.9
    assert proposal.evidence["confidence_source"] == "default"
    assert proposal.rationale.endswith("(confidence 0.90)")


def test_default_key_when_the_source_has_no_default(make_crm_event: Callable[..., CrmEvent]) -> None:
    proposal = _propose(make_crm_event(source_system="apollo", confidence=None), {})
    assert proposal.confidence == 0.7
    assert proposal.evidence["confidence_source"] == "default"
    assert proposal.rationale.startswith("apollo enrichment ")


def test_fallback_when_no_default_is_configured(make_crm_event: Callable[..., CrmEvent]) -> None:
    proposal = _propose(make_crm_event(source_system="apollo", confidence=None), {}, defaults={})
    assert proposal.confidence == 0.5


def test_same_event_gives_the_same_proposal_id(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event()
    first = _propose(event, {})
    second = _propose(event, {})
    assert first.proposal_id == second.proposal_id
    assert first.proposal_id == Proposal.make_id(
        DETECTOR, event.record_id, first.changes, event.source_event_id
    )


def test_another_source_event_gives_another_proposal_id(make_crm_event: Callable[..., CrmEvent]) -> None:
    first = _propose(make_crm_event(source_event_id="clay-run-42:row-7"), {})
    second = _propose(make_crm_event(source_event_id="clay-run-43:row-7"), {})
    assert first.changes == second.changes
    assert first.proposal_id != second.proposal_id


def test_another_proposed_value_gives_another_proposal_id(make_crm_event: Callable[..., CrmEvent]) -> None:
    first = _propose(make_crm_event(properties={"jobtitle": "VP Sales"}), {})
    second = _propose(make_crm_event(properties={"jobtitle": "CTO"}), {})
    assert first.proposal_id != second.proposal_id


def test_fields_another_kind_owns_are_never_proposed_as_a_field_update(
    make_crm_event: Callable[..., CrmEvent],
) -> None:
    event = make_crm_event(
        properties={
            "jobtitle": "VP Sales",
            "hubspot_owner_id": "owner-evil",
            "lifecyclestage": "customer",
            "email_status": "valid",
            "email": "new@x.example",
        },
        confidence=0.93,
    )
    proposal = _propose(event, {})
    # The email is a field update's (a human-only one: it waits for a reviewer); the others are not.
    assert [c.field for c in proposal.changes] == ["email", "jobtitle"]
    assert proposal.evidence["not_proposed"] == ["email_status", "hubspot_owner_id", "lifecyclestage"]
    only_owned = make_crm_event(properties={"hubspot_owner_id": "owner-evil"}, confidence=0.93)
    assert propose_enrichment(only_owned, {}, DEFAULTS) is None
