"""Email verification: ZeroBounce, NeverBounce and Kickbox results become canonical email-status proposals."""

from __future__ import annotations

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
from changegate.detector.config import CANONICAL_EMAIL_STATUSES, VerificationConfig
from changegate.detector.verification import (
    DETECTOR,
    KICKBOX,
    NEVERBOUNCE,
    ZEROBOUNCE,
    EmailStatus,
    VerificationReason,
    VerificationResult,
    map_status,
    propose_verification,
    verifier_of,
)
from pydantic import ValidationError

EventFactory = Callable[..., CrmEvent]
CONFIG = VerificationConfig()
KNOWN = {"email": "Ada.Lovelace@Example.com", "email_status": None}


@pytest.fixture
def result_event(make_crm_event: EventFactory) -> EventFactory:
    def build(verifier: str, properties: dict[str, Any], **overrides: Any) -> CrmEvent:
        fields: dict[str, Any] = {
            "source_system": verifier,
            "source_event_id": f"{verifier}-batch-3:row-12",
            "kind": CrmEventKind.VERIFICATION_RESULT,
            "properties": {"email": "ada.lovelace@example.com", **properties},
            "confidence": None,
        }
        fields.update(overrides)
        return make_crm_event(**fields)

    return build


def _proposed(result: VerificationResult) -> Proposal:
    assert result.reason is VerificationReason.PROPOSED
    assert result.proposal is not None
    return result.proposal


def _skipped(result: VerificationResult, reason: VerificationReason) -> None:
    assert result.proposal is None
    assert result.reason is reason


# --- every vocabulary entry -----------------------------------------------------------------------

ZEROBOUNCE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"status": "valid"}, "valid"),
    ({"status": "invalid", "sub_status": "mailbox_not_found"}, "invalid"),
    ({"status": "catch-all"}, "catch_all"),
    ({"status": "unknown", "sub_status": "greylisted"}, "unknown"),
    ({"status": "spamtrap"}, "invalid"),
    ({"status": "abuse"}, "risky"),
    ({"status": "do_not_mail", "sub_status": "role_based"}, "risky"),
    ({"status": "do_not_mail", "sub_status": "toxic"}, "risky"),
    ({"status": "do_not_mail"}, "risky"),
    ({"status": "do_not_mail", "sub_status": "disposable"}, "disposable"),
    ({"status": "Catch-All"}, "catch_all"),  # case and separator insensitive
    ({"status": " VALID "}, "valid"),
    ({"status": "valid", "sub_status": "alias_address"}, "valid"),
]
NEVERBOUNCE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"result": "valid"}, "valid"),
    ({"result": "invalid"}, "invalid"),
    ({"result": "disposable"}, "disposable"),
    ({"result": "catchall"}, "catch_all"),
    ({"result": "unknown"}, "unknown"),
    ({"result": 0}, "valid"),  # numeric result codes of bulk exports
    ({"result": 1}, "invalid"),
    ({"result": 2}, "disposable"),
    ({"result": "3"}, "catch_all"),
    ({"result": 4.0}, "unknown"),
    ({"status": "CatchAll"}, "catch_all"),
]
KICKBOX_CASES: list[tuple[dict[str, Any], str]] = [
    ({"result": "deliverable"}, "valid"),
    ({"result": "undeliverable", "reason": "rejected_email"}, "invalid"),
    ({"result": "risky", "reason": "low_quality"}, "risky"),
    ({"result": "unknown", "reason": "timeout"}, "unknown"),
    ({"result": "risky", "accept_all": True}, "catch_all"),
    ({"result": "deliverable", "disposable": True}, "disposable"),
    ({"result": "risky", "disposable": "true", "accept_all": True}, "disposable"),  # disposable first
    ({"result": "undeliverable", "disposable": True}, "invalid"),  # undeliverable wins over flags
    ({"result": "deliverable", "accept_all": False, "disposable": False}, "valid"),
    ({"result": "risky", "accept_all": "false"}, "risky"),
]


@pytest.mark.parametrize(
    ("verifier", "properties", "canonical"),
    [("zerobounce", p, c) for p, c in ZEROBOUNCE_CASES]
    + [("neverbounce", p, c) for p, c in NEVERBOUNCE_CASES]
    + [("kickbox", p, c) for p, c in KICKBOX_CASES],
)
def test_vocabulary_mapping(
    result_event: EventFactory, verifier: str, properties: dict[str, Any], canonical: str
) -> None:
    proposal = _proposed(propose_verification(result_event(verifier, properties), KNOWN, CONFIG))
    assert proposal.changes == [FieldChange(field="email_status", previous=None, proposed=canonical)]
    assert proposal.evidence["canonical_status"] == canonical
    assert proposal.evidence["verifier"] == verifier
    assert proposal.evidence["recognised"] is True


def test_every_table_entry_is_exercised() -> None:
    """The cases above cover every key of every vocabulary table (a new key needs a new case)."""
    seen_zb = {str(p["status"]).strip().lower().replace("-", "_") for p, _ in ZEROBOUNCE_CASES}
    seen_nb = {
        str(p.get("result", p.get("status"))).strip().lower().removesuffix(".0") for p, _ in NEVERBOUNCE_CASES
    }
    seen_kb = {str(p["result"]) for p, _ in KICKBOX_CASES}
    assert set(ZEROBOUNCE) <= seen_zb
    assert set(NEVERBOUNCE) <= seen_nb
    assert set(KICKBOX) <= seen_kb


def test_tables_only_produce_canonical_statuses() -> None:
    for table in (ZEROBOUNCE, NEVERBOUNCE, KICKBOX):
        assert {s.value for s in table.values()} <= CANONICAL_EMAIL_STATUSES
    assert {s.value for s in EmailStatus} == CANONICAL_EMAIL_STATUSES


@pytest.mark.parametrize("status", sorted(CANONICAL_EMAIL_STATUSES))
def test_generic_verifier_speaks_the_canonical_vocabulary(result_event: EventFactory, status: str) -> None:
    proposal = _proposed(propose_verification(result_event("verifier", {"status": status}), KNOWN, CONFIG))
    assert proposal.changes[0].proposed == status
    assert proposal.evidence["verifier"] == "generic"


def test_verifier_named_in_a_property(result_event: EventFactory) -> None:
    event = result_event("verifier", {"verifier": "Kickbox", "result": "deliverable"})
    assert verifier_of(event) == "kickbox"
    assert _proposed(propose_verification(event, KNOWN, CONFIG)).changes[0].proposed == "valid"
    assert verifier_of(result_event("ZeroBounce", {"status": "valid"})) == "zerobounce"
    assert verifier_of(result_event("clay", {"verifier": "acme-verify", "status": "valid"})) == "generic"


# --- unrecognised values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verifier", "raw"),
    [("zerobounce", "mystery"), ("neverbounce", 7), ("kickbox", "sendable"), ("verifier", "ok")],
)
def test_unrecognised_status_maps_to_unknown_with_raw_in_evidence(
    result_event: EventFactory, verifier: str, raw: Any
) -> None:
    proposal = _proposed(propose_verification(result_event(verifier, {"status": raw}), KNOWN, CONFIG))
    assert proposal.changes[0].proposed == "unknown"
    assert proposal.evidence["raw_status"] == raw
    assert proposal.evidence["recognised"] is False
    assert proposal.evidence["canonical_status"] == "unknown"
    assert proposal.confidence == 0.5


def test_unrecognised_status_rationale(result_event: EventFactory) -> None:
    proposal = _proposed(propose_verification(result_event("kickbox", {"result": "sendable"}), KNOWN, CONFIG))
    assert proposal.rationale == (
        "kickbox returned the unrecognised status 'sendable' for the record's current email "
        "(unrecognised status 'sendable' → unknown); email_status: unset → unknown"
    )


# --- the proposal ---------------------------------------------------------------------------------


def test_zerobounce_catch_all_proposal(result_event: EventFactory) -> None:
    event = result_event("zerobounce", {"status": "catch-all", "sub_status": ""})
    known = {"email": "ada.lovelace@example.com", "email_status": "valid"}

    proposal = _proposed(propose_verification(event, known, CONFIG))

    assert proposal.kind is ProposalKind.EMAIL_VERIFICATION
    assert proposal.object_type is ObjectType.CONTACT
    assert proposal.record_id == "hs-contact-1001"
    assert proposal.changes == [FieldChange(field="email_status", previous="valid", proposed="catch_all")]
    assert proposal.confidence == 0.7
    assert proposal.source.system == "zerobounce"
    assert proposal.source.event_id == "zerobounce-batch-3:row-12"
    assert proposal.source.detector == DETECTOR == "verification"
    assert proposal.source.detector_version == DETECTOR_VERSION
    assert proposal.source.trigger is Trigger.VERIFICATION
    assert proposal.proposal_id == Proposal.make_id(
        "verification", "hs-contact-1001", proposal.changes, "zerobounce-batch-3:row-12"
    )
    assert proposal.rationale == (
        "zerobounce verified the record's current email as catch-all (status catch_all → catch_all); "
        "email_status: valid → catch_all"
    )
    assert proposal.evidence == {
        "verifier": "zerobounce",
        "email": "ada.lovelace@example.com",
        "raw_status": "catch-all",
        "raw_sub_status": "",
        "flags": {},
        "reason": None,
        "canonical_status": "catch_all",
        "recognised": True,
        "mapping_basis": "status catch_all",
        "source_confidence": None,
        "confidence_basis": {
            "cells": [{"cell": "verification|zerobounce|catch_all", "field": "email_status"}],
            "prior": 0.7,
            "prior_from": "configured",
        },
    }


def test_zerobounce_sub_status_rationale(result_event: EventFactory) -> None:
    event = result_event("zerobounce", {"status": "do_not_mail", "sub_status": "disposable"})
    proposal = _proposed(propose_verification(event, KNOWN, CONFIG))
    assert proposal.rationale == (
        "zerobounce verified the record's current email as do_not_mail/disposable "
        "(status do_not_mail + sub_status disposable → disposable); "
        "email_status: unset → disposable"
    )


def test_kickbox_flags_in_evidence(result_event: EventFactory) -> None:
    event = result_event(
        "kickbox", {"result": "risky", "reason": "low_deliverability", "accept_all": True, "role": False}
    )
    proposal = _proposed(propose_verification(event, KNOWN, CONFIG))
    assert proposal.evidence["flags"] == {"accept_all": True, "role": False}
    assert proposal.evidence["reason"] == "low_deliverability"
    assert proposal.evidence["mapping_basis"] == "flag accept_all"


def test_same_result_twice_has_the_same_id(result_event: EventFactory) -> None:
    event = result_event("neverbounce", {"result": "valid"})
    first = _proposed(propose_verification(event, KNOWN, CONFIG))
    again = _proposed(propose_verification(event, KNOWN, CONFIG))
    assert first.proposal_id == again.proposal_id


def test_source_confidence_is_evidence_not_confidence(result_event: EventFactory) -> None:
    event = result_event("kickbox", {"result": "deliverable"}, confidence=0.42)
    proposal = _proposed(propose_verification(event, KNOWN, CONFIG))
    assert proposal.confidence == 0.95
    assert proposal.evidence["source_confidence"] == 0.42


# --- stale, no-op and skipped results -------------------------------------------------------------


def test_result_for_another_address_is_stale(result_event: EventFactory) -> None:
    event = result_event("zerobounce", {"email": "ada@old-employer.com", "status": "invalid"})
    _skipped(propose_verification(event, KNOWN, CONFIG), VerificationReason.STALE)


@pytest.mark.parametrize(
    "email", ["ADA.LOVELACE@EXAMPLE.COM", " ada.lovelace@example.com ", "Ada.Lovelace@Example.com"]
)
def test_email_comparison_ignores_case_and_spaces(result_event: EventFactory, email: str) -> None:
    event = result_event("zerobounce", {"email": email, "status": "valid"})
    assert propose_verification(event, KNOWN, CONFIG).reason is VerificationReason.PROPOSED


def test_record_without_known_email(result_event: EventFactory) -> None:
    event = result_event("zerobounce", {"status": "valid"})
    _skipped(propose_verification(event, {}, CONFIG), VerificationReason.RECORD_EMAIL_UNKNOWN)
    _skipped(propose_verification(event, {"email": ""}, CONFIG), VerificationReason.RECORD_EMAIL_UNKNOWN)


def test_result_without_email_or_status(result_event: EventFactory) -> None:
    no_email = result_event("zerobounce", {"email": None, "status": "valid"})
    _skipped(propose_verification(no_email, KNOWN, CONFIG), VerificationReason.MISSING_EMAIL)
    _skipped(
        propose_verification(result_event("zerobounce", {}), KNOWN, CONFIG), VerificationReason.MISSING_STATUS
    )
    blank = result_event("kickbox", {"result": " "})
    _skipped(propose_verification(blank, KNOWN, CONFIG), VerificationReason.MISSING_STATUS)


def test_other_event_kinds(make_crm_event: EventFactory) -> None:
    _skipped(propose_verification(make_crm_event(), KNOWN, CONFIG), VerificationReason.NOT_VERIFICATION)


@pytest.mark.parametrize("previous", ["valid", "VALID", " valid "])
def test_unchanged_status_is_a_noop(result_event: EventFactory, previous: str) -> None:
    event = result_event("kickbox", {"result": "deliverable"})
    known = {**KNOWN, "email_status": previous}
    _skipped(propose_verification(event, known, CONFIG), VerificationReason.NOOP)


def test_neverbounce_catchall_noop_against_canonical_previous(result_event: EventFactory) -> None:
    event = result_event("neverbounce", {"result": "catchall"})
    _skipped(
        propose_verification(event, {**KNOWN, "email_status": "catch_all"}, CONFIG), VerificationReason.NOOP
    )


@pytest.mark.parametrize("previous", ["valid", "invalid", "disposable"])
def test_unknown_does_not_downgrade_a_definite_status(result_event: EventFactory, previous: str) -> None:
    event = result_event("zerobounce", {"status": "unknown", "sub_status": "timeout_exceeded"})
    known = {**KNOWN, "email_status": previous}
    _skipped(propose_verification(event, known, CONFIG), VerificationReason.INCONCLUSIVE)
    allowed = VerificationConfig(unknown_replaces_known=True)
    assert _proposed(propose_verification(event, known, allowed)).changes[0].previous == previous


@pytest.mark.parametrize("previous", [None, "risky", "catch_all", "pending"])
def test_unknown_replaces_an_indefinite_status(result_event: EventFactory, previous: str | None) -> None:
    event = result_event("zerobounce", {"status": "unknown"})
    proposal = _proposed(propose_verification(event, {**KNOWN, "email_status": previous}, CONFIG))
    assert proposal.changes == [FieldChange(field="email_status", previous=previous, proposed="unknown")]


def test_definite_result_replaces_any_status(result_event: EventFactory) -> None:
    event = result_event("neverbounce", {"result": "invalid"})
    proposal = _proposed(propose_verification(event, {**KNOWN, "email_status": "valid"}, CONFIG))
    assert proposal.changes == [FieldChange(field="email_status", previous="valid", proposed="invalid")]


# --- confidence and configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "confidence"),
    [
        ("valid", 0.95),
        ("invalid", 0.95),
        ("disposable", 0.95),
        ("catch_all", 0.7),
        ("risky", 0.7),
        ("unknown", 0.5),
    ],
)
def test_default_confidence_per_status(result_event: EventFactory, status: str, confidence: float) -> None:
    proposal = _proposed(propose_verification(result_event("verifier", {"status": status}), KNOWN, CONFIG))
    assert proposal.confidence == confidence


def test_per_verifier_confidence_override(result_event: EventFactory) -> None:
    config = VerificationConfig.model_validate_json(
        '{"status_confidence": {"risky": 0.6}, "verifier_confidence": {"kickbox": {"valid": 0.99}}}'
    )
    assert config.status_confidence["valid"] == 0.95  # statuses left out keep their default
    kickbox = result_event("kickbox", {"result": "deliverable"})
    zerobounce = result_event("zerobounce", {"status": "valid"})
    risky = result_event("kickbox", {"result": "risky"})
    assert _proposed(propose_verification(kickbox, KNOWN, config)).confidence == 0.99
    assert _proposed(propose_verification(zerobounce, KNOWN, config)).confidence == 0.95
    assert _proposed(propose_verification(risky, KNOWN, config)).confidence == 0.6
    assert VerificationConfig.model_validate_json(config.model_dump_json()) == config


def test_custom_fields(result_event: EventFactory) -> None:
    config = VerificationConfig(email_field="Email", status_field="Email_Status__c")
    event = result_event("neverbounce", {"result": "valid"})
    proposal = _proposed(propose_verification(event, {"Email": "ada.lovelace@example.com"}, config))
    assert proposal.changes == [FieldChange(field="Email_Status__c", previous=None, proposed="valid")]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"status_confidence": {"deliverable": 0.9}}, "'deliverable' is not a canonical email status"),
        ({"status_confidence": {"valid": 1.5}}, "confidence 1.5 is outside [0, 1]"),
        ({"verifier_confidence": {"kickbox": {"valid": -0.1}}}, "confidence -0.1 is outside [0, 1]"),
        ({"status_field": "email_status", "typo": 1}, "Extra inputs are not permitted"),
    ],
)
def test_config_refuses_bad_values(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        VerificationConfig.model_validate(payload)
    assert message in str(caught.value)


def test_config_defaults() -> None:
    assert CONFIG.email_field == "email"
    assert CONFIG.status_field == "email_status"
    assert CONFIG.verifier_confidence == {}
    assert CONFIG.unknown_replaces_known is False
    assert CONFIG.confidence_for("neverbounce", "catch_all") == 0.7
    assert map_status("neverbounce", "catchall", {}).status is EmailStatus.CATCH_ALL
