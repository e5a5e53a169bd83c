"""Owner reassignment: territory, deactivated-owner and round-robin rules."""

from __future__ import annotations

from collections import Counter
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
from changegate.detector.config import OwnerConfig, Territory
from changegate.detector.owner import (
    DETECTOR,
    OwnerReason,
    OwnerResult,
    OwnerRule,
    propose_for_deactivated_owner,
    propose_owner,
    propose_round_robin,
    propose_territory_owner,
    round_robin_owner,
    territory_for,
)
from pydantic import ValidationError

EventFactory = Callable[..., CrmEvent]

CONFIG = OwnerConfig(
    territories=[
        Territory(country="US", owner="owner-us"),
        Territory(country="US", state="CA", owner="owner-west"),
        Territory(country="DE", owner="owner-de"),
        Territory(country="Brazil", owner="owner-br"),
    ],
    round_robin=["owner-a", "owner-b", "owner-c"],
    state_aliases={"California": "CA"},
)


@pytest.fixture
def record_event(make_crm_event: EventFactory) -> EventFactory:
    def build(
        properties: dict[str, Any], kind: CrmEventKind = CrmEventKind.RECORD_CREATED, **kw: Any
    ) -> CrmEvent:
        fields: dict[str, Any] = {
            "source_system": "hubspot",
            "source_event_id": "hs-evt-9001",
            "kind": kind,
            "properties": properties,
            "confidence": None,
        }
        fields.update(kw)
        return make_crm_event(**fields)

    return build


def _proposed(result: OwnerResult) -> Proposal:
    assert result.reason is OwnerReason.PROPOSED
    assert result.proposal is not None
    return result.proposal


def _skipped(result: OwnerResult, reason: OwnerReason) -> None:
    assert result.proposal is None
    assert result.reason is reason
    assert result.consumed_round_robin is False


# --- territory ------------------------------------------------------------------------------------


def test_territory_reassigns_a_record_owned_by_someone_else(record_event: EventFactory) -> None:
    record = {"country": "United States", "state": "CA", "hubspot_owner_id": "owner-17"}
    proposal = _proposed(propose_territory_owner(record_event(record), record, CONFIG))

    assert proposal.kind is ProposalKind.OWNER_REASSIGNMENT
    assert proposal.object_type is ObjectType.CONTACT
    assert proposal.record_id == "hs-contact-1001"
    assert proposal.changes == [
        FieldChange(field="hubspot_owner_id", previous="owner-17", proposed="owner-west")
    ]
    assert (
        proposal.rationale == "territory rule: US/CA belongs to owner-west; the record is owned by owner-17"
    )
    assert proposal.confidence == 0.9
    assert proposal.source.trigger is Trigger.RULE
    assert proposal.source.detector == DETECTOR == "owner"
    assert proposal.source.detector_version == DETECTOR_VERSION
    assert proposal.source.system == "hubspot"
    assert proposal.source.event_id == "hs-evt-9001"
    assert proposal.proposal_id == Proposal.make_id(
        "owner", "hs-contact-1001", proposal.changes, "hs-evt-9001"
    )
    assert proposal.evidence == {
        "rule": "territory",
        "record_country": "United States",
        "record_state": "CA",
        "territory": {"country": "US", "state": "CA", "owner": "owner-west"},
        "current_owner": "owner-17",
        "occasion": "created",
        # taking a created record from the owner it was created with: a cell of its own
        "confidence_basis": {
            "cells": [{"cell": "owner|territory|owned|created", "field": "hubspot_owner_id"}],
            "prior": 0.9,
            "prior_from": "configured",
        },
    }


def test_territory_assigns_an_unowned_record(record_event: EventFactory) -> None:
    record = {"country": "Germany"}
    proposal = _proposed(propose_territory_owner(record_event(record), record, CONFIG))
    assert proposal.changes == [FieldChange(field="hubspot_owner_id", previous=None, proposed="owner-de")]
    assert proposal.rationale == "territory rule: DE belongs to owner-de; the record has no owner"


@pytest.mark.parametrize(
    ("country", "state", "owner"),
    [
        ("US", "CA", "owner-west"),  # state row wins over the country row listed before it
        ("us", "ca", "owner-west"),
        ("United States", "California", "owner-west"),  # country and state aliases
        ("USA", " california ", "owner-west"),
        ("U.S.A.", "NY", "owner-us"),  # other states fall back to the country row
        ("United  States  of America", None, "owner-us"),  # whitespace collapsed
        ("Deutschland", "Bayern", "owner-de"),
        ("brazil", "", "owner-br"),  # an unaliased name compares case-insensitively
    ],
)
def test_territory_matching(country: str, state: str | None, owner: str) -> None:
    territory = territory_for({"country": country, "state": state}, CONFIG)
    assert territory is not None
    assert territory.owner == owner


@pytest.mark.parametrize("country", [None, "", "France", "Atlantis"])
def test_no_territory(record_event: EventFactory, country: str | None) -> None:
    record = {"country": country, "hubspot_owner_id": "owner-17"}
    assert territory_for(record, CONFIG) is None
    _skipped(propose_territory_owner(record_event(record), record, CONFIG), OwnerReason.NO_TERRITORY)


def test_first_of_equally_specific_rows_wins() -> None:
    config = OwnerConfig(
        territories=[Territory(country="DE", owner="first"), Territory(country="germany", owner="second")]
    )
    territory = territory_for({"country": "DE"}, config)
    assert territory is not None
    assert territory.owner == "first"


def test_territory_owner_already_owns_the_record(record_event: EventFactory) -> None:
    record = {"country": "DE", "hubspot_owner_id": "owner-de"}
    _skipped(propose_territory_owner(record_event(record), record, CONFIG), OwnerReason.NOOP)


def test_numeric_owner_ids_compare_as_strings(record_event: EventFactory) -> None:
    config = OwnerConfig(territories=[Territory(country="DE", owner="23")])
    record = {"country": "DE", "hubspot_owner_id": 23}
    _skipped(propose_territory_owner(record_event(record), record, config), OwnerReason.NOOP)


@pytest.mark.parametrize(
    ("kind", "changed", "applies"),
    [
        (CrmEventKind.RECORD_CREATED, {"firstname": "Ada"}, True),
        (CrmEventKind.PROPERTY_CHANGED, {"country": "DE"}, True),
        (CrmEventKind.PROPERTY_CHANGED, {"state": "CA"}, True),
        (CrmEventKind.PROPERTY_CHANGED, {"hubspot_owner_id": ""}, True),  # owner cleared
        (CrmEventKind.PROPERTY_CHANGED, {"hubspot_owner_id": None}, True),
        (CrmEventKind.PROPERTY_CHANGED, {"hubspot_owner_id": "owner-17"}, False),  # a manual override
        (CrmEventKind.PROPERTY_CHANGED, {"jobtitle": "CTO"}, False),  # unrelated edit
        (CrmEventKind.ENRICHMENT_RESULT, {"country": "DE"}, False),
        (CrmEventKind.RECORD_DELETED, {}, False),
    ],
)
def test_when_the_territory_rule_fires(
    record_event: EventFactory, kind: CrmEventKind, changed: dict[str, Any], applies: bool
) -> None:
    record = {"country": "DE", "hubspot_owner_id": "owner-17"}
    result = propose_territory_owner(record_event(changed, kind=kind), record, CONFIG)
    if applies:
        assert _proposed(result).changes[0].proposed == "owner-de"
    else:
        _skipped(result, OwnerReason.NOT_APPLICABLE)


def test_custom_property_names(record_event: EventFactory) -> None:
    config = OwnerConfig(
        owner_field="OwnerId",
        country_field="MailingCountry",
        state_field="MailingState",
        territories=[Territory(country="CA", state="QC", owner="005-qc")],
    )
    record = {"MailingCountry": "Canada", "MailingState": "qc", "OwnerId": "005-x"}
    event = record_event({"MailingCountry": "Canada"}, kind=CrmEventKind.PROPERTY_CHANGED)
    proposal = _proposed(propose_territory_owner(event, record, config))
    assert proposal.changes == [FieldChange(field="OwnerId", previous="005-x", proposed="005-qc")]


# --- round-robin ----------------------------------------------------------------------------------


def test_round_robin_assigns_the_next_owner(record_event: EventFactory) -> None:
    record: dict[str, Any] = {"country": "France"}
    result = propose_round_robin(record_event(record), record, CONFIG, next_index=4)
    proposal = _proposed(result)
    assert result.consumed_round_robin is True
    assert proposal.changes == [FieldChange(field="hubspot_owner_id", previous=None, proposed="owner-b")]
    assert proposal.confidence == 0.6
    assert proposal.rationale == (
        "round-robin rule: the record has no owner and no territory matches; "
        "owner-b is next in the rotation (slot 2 of 3)"
    )
    assert proposal.evidence["rule"] == OwnerRule.ROUND_ROBIN.value
    assert proposal.evidence["next_index"] == 4
    assert proposal.evidence["slot"] == 1
    assert proposal.evidence["rotation"] == ["owner-a", "owner-b", "owner-c"]


def test_round_robin_distributes_evenly(record_event: EventFactory) -> None:
    picks = Counter[str]()
    for index in range(300):
        record: dict[str, Any] = {"hubspot_owner_id": ""}
        proposal = _proposed(propose_round_robin(record_event(record), record, CONFIG, index))
        picks[str(proposal.changes[0].proposed)] += 1
    assert picks == {"owner-a": 100, "owner-b": 100, "owner-c": 100}
    assert [round_robin_owner(CONFIG.round_robin, i) for i in range(7)] == [
        "owner-a",
        "owner-b",
        "owner-c",
        "owner-a",
        "owner-b",
        "owner-c",
        "owner-a",
    ]


def test_round_robin_weights_by_repetition() -> None:
    rotation = ["big", "big", "small"]
    picks = Counter(round_robin_owner(rotation, i) for i in range(30))
    assert picks == {"big": 20, "small": 10}


def test_round_robin_skips_owned_records_and_needs_a_rotation(record_event: EventFactory) -> None:
    owned = {"hubspot_owner_id": "owner-17"}
    _skipped(propose_round_robin(record_event(owned), owned, CONFIG, 0), OwnerReason.ALREADY_OWNED)
    unowned: dict[str, Any] = {}
    _skipped(propose_round_robin(record_event(unowned), unowned, OwnerConfig(), 0), OwnerReason.NO_ROTATION)


def test_round_robin_ids_are_deterministic_per_pick(record_event: EventFactory) -> None:
    record: dict[str, Any] = {}
    event = record_event(record)
    first = _proposed(propose_round_robin(event, record, CONFIG, 0))
    again = _proposed(propose_round_robin(event, record, CONFIG, 0))
    other = _proposed(propose_round_robin(event, record, CONFIG, 1))
    assert first.proposal_id == again.proposal_id
    assert first.proposal_id != other.proposal_id


# --- combined -------------------------------------------------------------------------------------


def test_propose_owner_prefers_territory_over_round_robin(record_event: EventFactory) -> None:
    record = {"country": "DE"}
    result = propose_owner(record_event(record), record, CONFIG, next_index=0)
    assert _proposed(result).changes[0].proposed == "owner-de"
    assert result.consumed_round_robin is False


def test_propose_owner_falls_back_to_round_robin_for_unowned_records(record_event: EventFactory) -> None:
    record = {"country": "France"}
    result = propose_owner(record_event(record), record, CONFIG, next_index=2)
    assert _proposed(result).changes[0].proposed == "owner-c"
    assert result.consumed_round_robin is True


def test_propose_owner_without_territory_or_index(record_event: EventFactory) -> None:
    owned = {"country": "France", "hubspot_owner_id": "owner-17"}
    _skipped(propose_owner(record_event(owned), owned, CONFIG, next_index=0), OwnerReason.NO_TERRITORY)
    unowned = {"country": "France"}
    _skipped(propose_owner(record_event(unowned), unowned, CONFIG), OwnerReason.NO_ROTATION)


def test_propose_owner_passes_through_territory_skips(record_event: EventFactory) -> None:
    record = {"country": "DE", "hubspot_owner_id": "owner-de"}
    _skipped(propose_owner(record_event(record), record, CONFIG, next_index=0), OwnerReason.NOOP)
    event = record_event({"jobtitle": "CTO"}, kind=CrmEventKind.PROPERTY_CHANGED)
    _skipped(propose_owner(event, {"country": "France"}, CONFIG, next_index=0), OwnerReason.NOT_APPLICABLE)


# --- deactivated owner ----------------------------------------------------------------------------


def _deactivated(
    record: dict[str, Any], config: OwnerConfig = CONFIG, next_index: int | None = 0
) -> OwnerResult:
    return propose_for_deactivated_owner(
        "owner-17",
        ObjectType.COMPANY,
        "hs-company-77",
        record,
        config,
        source_system="hubspot",
        source_event_id="owner-deactivated:owner-17",
        next_index=next_index,
    )


def test_deactivated_owner_records_go_to_their_territory() -> None:
    result = _deactivated({"country": "US", "state": "CA", "hubspot_owner_id": "owner-17"})
    proposal = _proposed(result)
    assert result.consumed_round_robin is False
    assert proposal.object_type is ObjectType.COMPANY
    assert proposal.record_id == "hs-company-77"
    assert proposal.kind is ProposalKind.OWNER_REASSIGNMENT
    assert proposal.source.trigger is Trigger.RULE
    assert proposal.source.event_id == "owner-deactivated:owner-17"
    assert proposal.changes == [
        FieldChange(field="hubspot_owner_id", previous="owner-17", proposed="owner-west")
    ]
    assert proposal.confidence == 0.9
    assert proposal.rationale == "owner owner-17 was deactivated; territory rule: US/CA belongs to owner-west"
    assert proposal.evidence["rule"] == "deactivated_owner_territory"
    assert proposal.evidence["deactivated_owner"] == "owner-17"


def test_deactivated_owner_without_territory_goes_to_the_fallback() -> None:
    config = CONFIG.model_copy(update={"fallback_owner": "owner-manager"})
    proposal = _proposed(_deactivated({"country": "France", "hubspot_owner_id": "owner-17"}, config))
    assert proposal.changes[0].proposed == "owner-manager"
    assert proposal.confidence == 0.7
    assert proposal.rationale == (
        "owner owner-17 was deactivated and no territory matches the record; "
        "owner-manager is the configured fallback owner"
    )
    assert proposal.evidence["rule"] == "deactivated_owner_fallback"


def test_deactivated_owner_without_fallback_goes_round_robin() -> None:
    result = _deactivated({"country": "France", "hubspot_owner_id": "owner-17"}, next_index=5)
    proposal = _proposed(result)
    assert result.consumed_round_robin is True
    assert proposal.changes[0].proposed == "owner-c"
    assert proposal.rationale == (
        "owner owner-17 was deactivated and no territory matches the record; "
        "owner-c is next in the rotation (slot 3 of 3)"
    )
    assert proposal.evidence["rule"] == "deactivated_owner_round_robin"


def test_deactivated_owner_is_never_chosen_again() -> None:
    config = OwnerConfig(
        territories=[Territory(country="DE", owner="owner-17")],
        round_robin=["owner-17", "owner-a", "owner-17", "owner-b"],
        fallback_owner="owner-17",
    )
    record = {"country": "DE", "hubspot_owner_id": "owner-17"}
    picks = [_proposed(_deactivated(record, config, i)).changes[0].proposed for i in range(4)]
    assert picks == ["owner-a", "owner-b", "owner-a", "owner-b"]
    proposal = _proposed(_deactivated(record, config, 0))
    assert proposal.rationale == (
        "owner owner-17 was deactivated and the territory DE belongs to the deactivated owner; "
        "owner-a is next in the rotation (slot 1 of 2)"
    )
    assert proposal.evidence["rotation"] == ["owner-a", "owner-b"]


def test_deactivated_owner_with_nowhere_to_go() -> None:
    record = {"country": "France", "hubspot_owner_id": "owner-17"}
    _skipped(_deactivated(record, OwnerConfig()), OwnerReason.NO_ROTATION)
    _skipped(_deactivated(record, CONFIG, next_index=None), OwnerReason.NO_ROTATION)
    only_self = OwnerConfig(round_robin=["owner-17"])
    _skipped(_deactivated(record, only_self), OwnerReason.NO_ROTATION)


def test_record_no_longer_owned_by_the_deactivated_owner() -> None:
    for owner in ("owner-18", None, ""):
        _skipped(
            _deactivated({"country": "DE", "hubspot_owner_id": owner}), OwnerReason.NOT_OWNED_BY_DEACTIVATED
        )


def test_deactivation_proposals_differ_per_record() -> None:
    def pid(record_id: str) -> Any:
        result = propose_for_deactivated_owner(
            "owner-17",
            ObjectType.CONTACT,
            record_id,
            {"country": "DE", "hubspot_owner_id": "owner-17"},
            CONFIG,
            source_system="hubspot",
            source_event_id="deact-1",
        )
        return _proposed(result).proposal_id

    assert pid("a") == pid("a")
    assert pid("a") != pid("b")


# --- configuration --------------------------------------------------------------------------------


def test_config_defaults_propose_nothing(record_event: EventFactory) -> None:
    config = OwnerConfig()
    assert config.owner_field == "hubspot_owner_id"
    assert config.country_field == "country"
    assert config.state_field == "state"
    assert config.territories == []
    assert config.round_robin == []
    assert config.fallback_owner is None
    assert (config.territory_confidence, config.fallback_confidence, config.round_robin_confidence) == (
        0.9,
        0.7,
        0.6,
    )
    assert config.country_aliases["united states"] == "us"
    owned = {"country": "US", "hubspot_owner_id": "owner-17"}
    _skipped(propose_owner(record_event(owned), owned, config, next_index=0), OwnerReason.NO_TERRITORY)
    unowned = {"country": "US"}
    _skipped(propose_owner(record_event(unowned), unowned, config, next_index=0), OwnerReason.NO_ROTATION)


def test_config_normalises_aliases_and_reads_json() -> None:
    config = OwnerConfig.model_validate_json(
        '{"territories": [{"country": "CH", "owner": "o-ch"}],'
        ' "country_aliases": {"  Schweiz ": "CH", "Suisse": "ch"}, "round_robin": ["x", "y"]}'
    )
    assert config.country_aliases == {"schweiz": "ch", "suisse": "ch"}
    territory = territory_for({"country": "SCHWEIZ"}, config)
    assert territory is not None
    assert territory.owner == "o-ch"
    assert OwnerConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    "payload",
    [
        {"territorys": []},
        {"territories": [{"country": "DE"}]},
        {"territories": [{"country": "DE", "owner": "o", "region": "x"}]},
        {"round_robin": ["a", " "]},
        {"territory_confidence": 1.2},
    ],
)
def test_config_refuses_bad_values(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OwnerConfig.model_validate(payload)
