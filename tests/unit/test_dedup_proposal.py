"""Merge proposals built from a duplicate match (pure: no broker, no database)."""

from __future__ import annotations

import uuid
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
from changegate.detector.dedup import DETECTOR, MERGED_IDS_FIELD, propose_merge
from changegate.detector.matching.engine import DuplicateFinder, Match
from changegate.detector.matching.normalize import features
from changegate.detector.matching.scoring import Scorer

BOB: dict[str, Any] = {
    "firstname": "Bob",
    "lastname": "Smith",
    "email": "BOB.SMITH@ACME.COM",
    "phone": "(415) 555-2671",
    "company": "Acme Inc.",
    "city": "San Francisco",
    "zip": "94105",
    "createdate": "2024-05-02T09:00:00Z",
    "lastmodifieddate": "2025-01-10T12:00:00Z",
    "hs_object_id": "2002",
}
ROBERT: dict[str, Any] = {
    "firstname": "Robert",
    "lastname": "Smith",
    "email": "bob.smith@acme.com",
    "phone": "+1 415-555-2671",
    "company": "ACME",
    "jobtitle": "",
    "address": "100 Main St",
    "city": "San Francisco",
    "zip": "94105",
    "state": "CA",
    "createdate": "2021-03-15T08:00:00Z",
    "lastmodifieddate": "2023-07-01T12:00:00Z",
    "hs_object_id": "1001",
}
# Robert's record (1001) has 9 non-empty business fields, Bob's (2002) 7; FILLS brings Bob's to 9 too,
# so then the older record, 1001, survives and takes Bob's job title and mobile phone.
FILLS: dict[str, Any] = {"jobtitle": "CTO", "mobilephone": "+1 650 555 0101"}

EventFactory = Callable[..., CrmEvent]


def _match(record: dict[str, Any], other_id: str, other: dict[str, Any]) -> Match:
    return DuplicateFinder().compare(features("contact", record), other_id, features("contact", other))


def _event(make_crm_event: EventFactory, record_id: str, props: dict[str, Any], event_id: str) -> CrmEvent:
    return make_crm_event(
        source_system="hubspot",
        source_event_id=event_id,
        record_id=record_id,
        kind=CrmEventKind.PROPERTY_CHANGED,
        properties=props,
    )


def _propose(
    make_crm_event: EventFactory, record_id: str, props: dict[str, Any], other_id: str, other: dict[str, Any]
) -> Proposal:
    event = _event(make_crm_event, record_id, props, f"hubspot:{record_id}:evt")
    return propose_merge(event, props, _match(props, other_id, other), other)


@pytest.fixture
def bob() -> dict[str, Any]:
    return {**BOB, **FILLS}


def test_survivor_merged_and_kind(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    proposal = _propose(make_crm_event, "2002", bob, "1001", ROBERT)
    assert proposal.kind is ProposalKind.MERGE
    assert proposal.object_type is ObjectType.CONTACT
    assert proposal.record_id == "1001"
    assert proposal.other_record_ids == ["2002"]
    assert proposal.source.detector == DETECTOR == "dedup"
    assert proposal.source.detector_version == DETECTOR_VERSION
    assert proposal.source.trigger is Trigger.SIMILARITY
    assert (proposal.source.system, proposal.source.event_id) == ("hubspot", "hubspot:2002:evt")


def test_changes_fill_the_survivor_and_record_the_merged_id(
    make_crm_event: EventFactory, bob: dict[str, Any]
) -> None:
    proposal = _propose(make_crm_event, "2002", bob, "1001", ROBERT)
    assert proposal.changes == [
        FieldChange(field="jobtitle", previous="", proposed="CTO"),  # the survivor's own empty value
        FieldChange(field="mobilephone", previous=None, proposed="+1 650 555 0101"),
        FieldChange(field=MERGED_IDS_FIELD, previous=None, proposed="2002"),
    ]


def test_previously_merged_ids_are_kept(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    robert = {**ROBERT, MERGED_IDS_FIELD: "555;777"}
    proposal = _propose(make_crm_event, "2002", bob, "1001", robert)
    assert proposal.changes[-1] == FieldChange(
        field=MERGED_IDS_FIELD, previous="555;777", proposed="555;777;2002"
    )
    # the merged record's own merged ids are not the survivor's
    proposal = _propose(make_crm_event, "2002", {**bob, MERGED_IDS_FIELD: "9"}, "1001", ROBERT)
    assert proposal.changes[-1] == FieldChange(field=MERGED_IDS_FIELD, previous=None, proposed="2002")


def test_the_survivor_can_be_the_triggering_record(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    proposal = _propose(make_crm_event, "1001", ROBERT, "2002", bob)
    assert (proposal.record_id, proposal.other_record_ids) == ("1001", ["2002"])
    assert [c.field for c in proposal.changes] == ["jobtitle", "mobilephone", MERGED_IDS_FIELD]
    assert proposal.changes[0].previous == ""


@pytest.mark.parametrize(
    ("a_extra", "b_extra"),
    [
        ({"jobtitle": "CTO", "mobilephone": "+1 650 555 0101"}, {}),  # most complete
        ({}, {}),  # oldest
        ({"createdate": None}, {}),  # most recent activity
        (
            {"createdate": None, "lastmodifieddate": None},
            {"createdate": None, "lastmodifieddate": None},
        ),  # id
    ],
)
def test_the_proposal_id_does_not_depend_on_which_record_triggered_it(
    make_crm_event: EventFactory, a_extra: dict[str, Any], b_extra: dict[str, Any]
) -> None:
    a, b = {**BOB, **a_extra}, {**ROBERT, **b_extra}
    from_a = _propose(make_crm_event, "2002", a, "1001", b)
    from_b = _propose(make_crm_event, "1001", b, "2002", a)
    assert from_a.proposal_id == from_b.proposal_id
    assert (from_a.record_id, from_a.other_record_ids) == (from_b.record_id, from_b.other_record_ids)
    assert from_a.changes == from_b.changes
    assert from_a.evidence["survivorship"] == from_b.evidence["survivorship"]
    # and it is the same on a re-detection from another event
    again = propose_merge(_event(make_crm_event, "2002", a, "hubspot:2002:later"), a, _match(a, "1001", b), b)
    assert again.proposal_id == from_a.proposal_id


def test_the_proposal_id_is_pinned(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    proposal = _propose(make_crm_event, "2002", bob, "1001", ROBERT)
    assert proposal.proposal_id == Proposal.make_id("dedup", "pair:1001|2002", [], "")
    assert isinstance(proposal.proposal_id, uuid.UUID)


def test_another_pair_gives_another_id_but_other_fills_do_not(
    make_crm_event: EventFactory, bob: dict[str, Any]
) -> None:
    base = _propose(make_crm_event, "2002", bob, "1001", ROBERT).proposal_id
    assert _propose(make_crm_event, "2003", bob, "1001", ROBERT).proposal_id != base
    # The same pair found again after an edit is the same proposal: no second review item.
    assert _propose(make_crm_event, "2002", {**bob, "jobtitle": "CEO"}, "1001", ROBERT).proposal_id == base


def test_evidence(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    match = _match(bob, "1001", ROBERT)
    proposal = propose_merge(_event(make_crm_event, "2002", bob, "e"), bob, match, ROBERT)
    assert proposal.confidence == round(match.probability, 4) == 1.0
    evidence = proposal.evidence
    assert evidence["score"] == round(match.score.total, 3)
    assert evidence["score"] > 15
    weights = Scorer().weights
    expected_levels = {
        "address": "partial",  # Bob's record has no street
        "email": "exact",
        "name": "similar",
        "organisation": "exact",
        "phone": "exact_same_name",
    }
    assert evidence["fields"] == {
        f: {"level": lvl, "weight": round(weights[f][lvl], 3)} for f, lvl in expected_levels.items()
    }
    assert list(evidence["fields"]) == sorted(evidence["fields"])
    assert evidence["flags"] == []
    assert evidence["survivorship"] == {
        "rule": "oldest",
        "survivor": "1001",
        "merged": "2002",
        "fills": {"jobtitle": "CTO", "mobilephone": "+1 650 555 0101"},
        "conflicts": {
            "company": {"kept": "ACME", "dropped": "Acme Inc."},
            "email": {"kept": "bob.smith@acme.com", "dropped": "BOB.SMITH@ACME.COM"},
            "firstname": {"kept": "Robert", "dropped": "Bob"},
            "phone": {"kept": "+1 415-555-2671", "dropped": "(415) 555-2671"},
        },
    }


def test_rationale(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    proposal = _propose(make_crm_event, "2002", bob, "1001", ROBERT)
    assert proposal.rationale == (
        "2002 looks like a duplicate of 1001 (match probability 1.000; agree on email, name, organisation, "
        "phone); 1001 survives as the oldest record"
    )


def test_rationale_mentions_the_risk_flags(make_crm_event: EventFactory) -> None:
    personal = {**ROBERT, "email": "bob.smith@outlook.com", "createdate": "2025-01-01T00:00:00Z"}
    match = _match(BOB, "3003", personal)
    assert match.flags == ("different_email_domains",)
    proposal = propose_merge(_event(make_crm_event, "2002", BOB, "e"), BOB, match, personal)
    assert proposal.rationale.endswith("; risk: different_email_domains")
    assert "agree on name, organisation, phone" in proposal.rationale  # the mailbox name alone weighs < 0
    assert "3003 survives as the most complete record" in proposal.rationale
    assert proposal.evidence["flags"] == ["different_email_domains"]
    assert proposal.evidence["fields"]["email"]["level"] == "partial_same_name"


def test_disagreeing_fields_are_not_listed_as_agreeing(make_crm_event: EventFactory) -> None:
    other = {**ROBERT, "phone": "+1 212 555 0100"}
    proposal = _propose(make_crm_event, "2002", BOB, "1001", other)
    weight = round(Scorer().weights["phone"]["disagree"], 3)
    assert proposal.evidence["fields"]["phone"] == {"level": "disagree", "weight": weight}
    assert "agree on email, name, organisation)" in proposal.rationale
