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
from changegate.detector.dedup import DETECTOR, MERGED_IDS_FIELD, new_cluster_id, propose_merge
from changegate.detector.matching.clusters import PairScores, ScoredPair, pair
from changegate.detector.matching.engine import DuplicateFinder, Match
from changegate.detector.matching.normalize import features

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


MODEL = {"version": "test-model", "sha256": "0" * 64}


def _match(record: dict[str, Any], other_id: str, other: dict[str, Any]) -> Match:
    return DuplicateFinder().compare(features("contact", record), other_id, features("contact", other))


def _merge(event: CrmEvent, props: dict[str, Any], match: Match, other: dict[str, Any]) -> Proposal:
    """The proposal for a pair, as the handler builds it for a new two-record cluster."""
    cluster = new_cluster_id(ObjectType.CONTACT, [event.record_id, match.other_id])
    members = {event.record_id: props, match.other_id: other}
    found = ScoredPair(event.record_id, match.other_id, match)
    return propose_merge(
        event,
        cluster,
        members,
        DuplicateFinder(),
        MODEL,
        scores=PairScores(DuplicateFinder(), [found]),
        direct={pair(event.record_id, match.other_id)},
    )


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
    return _merge(event, props, _match(props, other_id, other), other)


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
    again = _merge(_event(make_crm_event, "2002", a, "hubspot:2002:later"), a, _match(a, "1001", b), b)
    assert again.proposal_id == from_a.proposal_id


def test_the_proposal_id_is_pinned(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    proposal = _propose(make_crm_event, "2002", bob, "1001", ROBERT)
    cluster = new_cluster_id(ObjectType.CONTACT, ["2002", "1001"])
    assert cluster == new_cluster_id(ObjectType.CONTACT, ["1001", "2002"])
    assert proposal.proposal_id == Proposal.make_id("dedup", f"cluster:{cluster}|1001|2002", [], "")
    assert proposal.evidence["cluster_id"] == str(cluster)
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
    proposal = _merge(_event(make_crm_event, "2002", bob, "e"), bob, match, ROBERT)
    assert proposal.confidence == round(match.probability, 4) > 0.99
    evidence = proposal.evidence
    assert evidence["model"] == MODEL
    assert evidence["score"] == round(match.score.total, 3)
    expected_levels = {
        "email": "exact",
        "first_name": "nickname",
        "last_name": "exact",
        "phone": "exact_same_name",
        "workplace": "company",  # Bob's record has no street
    }
    assert evidence["fields"] == {
        f: {"level": lvl, "weight": round(match.score.weights[f], 3)} for f, lvl in expected_levels.items()
    }
    assert list(evidence["fields"]) == sorted(evidence["fields"])
    assert evidence["flags"] == []
    assert evidence["pairs"] == [
        {
            "records": ["2002", "1001"],
            "probability": round(match.probability, 4),
            "score": evidence["score"],
            "fields": evidence["fields"],
            "flags": [],
            "notes": [],
            "found_by": "blocking",
        }
    ]
    assert evidence["weakest_pair"] == evidence["pairs"][0]
    assert evidence["cluster"]["size"] == 2
    assert evidence["cluster"]["pairs"] == evidence["cluster"]["pairs_scored"] == 1
    # side by side, survivor first: what a reviewer compares
    assert list(evidence["members"]) == ["1001", "2002"]
    assert evidence["members"]["2002"]["firstname"] == "Bob"
    assert evidence["members"]["1001"]["address"] == "100 Main St"
    assert "createdate" not in evidence["members"]["1001"]
    assert evidence["survivorship"] == {
        "rule": "oldest",
        "rules": {"2002": "oldest"},
        "survivor": "1001",
        "merged": ["2002"],
        "fills": {"jobtitle": "CTO", "mobilephone": "+1 650 555 0101"},
        "conflicts": {
            "company": {"kept": "ACME", "dropped": {"2002": "Acme Inc."}},
            "email": {"kept": "bob.smith@acme.com", "dropped": {"2002": "BOB.SMITH@ACME.COM"}},
            "firstname": {"kept": "Robert", "dropped": {"2002": "Bob"}},
            "phone": {"kept": "+1 415-555-2671", "dropped": {"2002": "(415) 555-2671"}},
        },
    }


def _agreed(match: Match) -> str:
    return ", ".join(sorted(f for f, w in match.score.raw.items() if w > 0))


def test_rationale(make_crm_event: EventFactory, bob: dict[str, Any]) -> None:
    proposal = _propose(make_crm_event, "2002", bob, "1001", ROBERT)
    match = _match(bob, "1001", ROBERT)
    assert proposal.rationale == (
        f"2002 looks like a duplicate of 1001 (match probability {match.probability:.3f}; "
        f"agree on {_agreed(match)}; disagree on nothing); 1001 survives as the oldest record"
    )


def test_rationale_mentions_the_risk_flags(make_crm_event: EventFactory) -> None:
    personal = {**ROBERT, "email": "bob.smith@outlook.com", "createdate": "2025-01-01T00:00:00Z"}
    match = _match(BOB, "3003", personal)
    assert match.flags == ("different_email_domains",)
    proposal = _merge(_event(make_crm_event, "2002", BOB, "e"), BOB, match, personal)
    assert proposal.rationale.endswith("; risk: different_email_domains")
    assert "3003 survives as the most complete record" in proposal.rationale
    assert proposal.evidence["flags"] == ["different_email_domains"]
    assert proposal.evidence["fields"]["email"]["level"] == "partial_same_name"


def test_disagreeing_fields_are_not_listed_as_agreeing(make_crm_event: EventFactory) -> None:
    other = {**ROBERT, "phone": "+1 212 555 0100"}
    proposal = _propose(make_crm_event, "2002", BOB, "1001", other)
    assert proposal.evidence["fields"]["phone"]["level"] == "disagree"
    assert proposal.evidence["fields"]["phone"]["weight"] <= 0
    agreed = proposal.rationale.split("; agree on ")[1].split(";")[0]
    disagreed = proposal.rationale.split("; disagree on ")[1].split(";")[0]
    assert "phone" not in agreed
    assert disagreed.startswith("phone")


def test_a_cluster_proposal_names_every_loser_with_evidence_per_pair(make_crm_event: EventFactory) -> None:
    third = {
        **BOB,
        "email": "bob.smith@outlook.com",
        "createdate": "2025-06-01T00:00:00Z",
        "hs_object_id": "3003",
    }
    event = _event(make_crm_event, "3003", third, "e3")
    finder = DuplicateFinder()
    direct = ScoredPair("3003", "1001", _match(third, "1001", ROBERT))
    cluster = new_cluster_id(ObjectType.CONTACT, ["1001", "2002"])
    members = {"3003": third, "1001": ROBERT, "2002": BOB}

    def propose(on: CrmEvent, records: dict[str, dict[str, Any]]) -> Proposal:
        scores = PairScores(finder, [direct])
        return propose_merge(
            on, cluster, records, finder, MODEL, scores=scores, direct={pair("3003", "1001")}
        )

    proposal = propose(event, members)
    assert proposal.record_id == "1001"
    assert proposal.other_record_ids == ["2002", "3003"]
    assert proposal.evidence["cluster_id"] == str(cluster)
    # every pair of the cluster is scored, the weakest first; the event's blocking found one of them
    pairs = proposal.evidence["pairs"]
    assert sorted(tuple(sorted(p["records"])) for p in pairs) == [
        ("1001", "2002"),
        ("1001", "3003"),
        ("2002", "3003"),
    ]
    assert [p["probability"] for p in pairs] == sorted(p["probability"] for p in pairs)
    assert [p["found_by"] for p in pairs].count("blocking") == 1
    assert proposal.evidence["cluster"]["pairs"] == proposal.evidence["cluster"]["pairs_scored"] == 3
    # its confidence is the weakest pair's, and so is the claim the rationale makes
    weakest = pairs[0]
    assert proposal.confidence == weakest["probability"]
    assert proposal.evidence["weakest_pair"] == weakest
    a, b = weakest["records"]
    assert f"{a} and {b} at match probability {weakest['probability']:.3f}" in proposal.rationale
    assert "weakest of the 3 pairs in the cluster, each scored directly" in proposal.rationale
    assert proposal.changes[-1] == FieldChange(field=MERGED_IDS_FIELD, previous=None, proposed="2002;3003")
    assert proposal.rationale.startswith("2002, 3003 look like duplicates of 1001")
    conflicts = proposal.evidence["survivorship"]["conflicts"]
    assert conflicts["email"] == {
        "kept": "bob.smith@acme.com",
        "dropped": {"2002": "BOB.SMITH@ACME.COM", "3003": "bob.smith@outlook.com"},
    }
    # the same cluster and members from another event: the same proposal
    assert propose(_event(make_crm_event, "3003", third, "e4"), members).proposal_id == proposal.proposal_id
    assert propose(event, {"3003": third, "1001": ROBERT}).proposal_id != proposal.proposal_id


def test_the_rationale_never_claims_more_than_the_weakest_pair(make_crm_event: EventFactory) -> None:
    """The misleading rationale: a cluster whose pairs include one at probability 0 must not read
    "0.997 at the weakest direct link". Built by hand here (the detector never proposes such a
    cluster: the floor keeps disagreeing records apart); the proposal says what its weakest pair is."""
    shafi = {"firstname": "Shafi", "lastname": "Turing", "phone": "+1 415 555 0134", "zip": "94107"}
    john = {**shafi, "firstname": "John", "email": "john.turing@acme.example"}
    john2 = {**john, "phone": "(415) 555-0134"}
    members = {"11": shafi, "12": john, "13": john2}
    event = _event(make_crm_event, "13", john2, "e")
    proposal = propose_merge(
        event, new_cluster_id(ObjectType.CONTACT, members), members, DuplicateFinder(), MODEL
    )
    weakest = proposal.evidence["weakest_pair"]
    assert "11" in weakest["records"]
    assert proposal.confidence == weakest["probability"] < 0.01
    assert f"at match probability {weakest['probability']:.3f}" in proposal.rationale
    assert "first_name" in proposal.rationale.split("disagree on ")[1]
    assert "first names disagree" in proposal.rationale
