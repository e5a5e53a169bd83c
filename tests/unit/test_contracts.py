"""The envelope on the wire, the event-type registry with its upcasters, and contract validators."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from changegate.core import canonical
from changegate.core.contracts import (
    AuditCheckpoint,
    AuditEntry,
    AuditMode,
    CrmEvent,
    Decider,
    Decision,
    DecisionOutcome,
    Envelope,
    Execution,
    FieldChange,
    ObjectType,
    Producer,
    Proposal,
    RecordChange,
    ReviewRequest,
)
from changegate.core.contracts import envelope as envelope_module
from changegate.core.contracts.envelope import (
    EVENT_TYPES,
    EventType,
    RawPayload,
    UnknownEventError,
    make_envelope,
)
from changegate.core.serde import decode, encode
from changegate.core.topics import TOPICS, Topic, TopicNames
from pydantic import BaseModel, ValidationError

OCCURRED_AT = datetime(2026, 11, 24, 9, 31, 0, tzinfo=UTC)


def _audit_entry() -> AuditEntry:
    return AuditEntry(
        seq=7,
        object_type=ObjectType.CONTACT,
        record_id="hs-contact-1001",
        field="jobtitle",
        previous_value=None,
        new_value="VP Sales",
        source_system="clay",
        source_event_id="clay-run-42:row-7",
        detector="enrichment@0.1.0",
        confidence=0.9,
        mode=AuditMode.AUTO_APPLIED,
        approver="policy:2026-11-24.1",
        policy_version="2026-11-24.1",
        policy_hash="a" * 64,
        rule_id="enrichment-fill-empty",
        proposal_id=uuid.UUID("11111111-1111-4111-8111-111111111111"),
        decision_id=uuid.UUID("22222222-2222-4222-8222-222222222222"),
        execution_id=uuid.UUID("33333333-3333-4333-8333-333333333333"),
        proposed_at=datetime(2026, 11, 24, 9, 30, tzinfo=UTC),
        decided_at=datetime(2026, 11, 24, 9, 30, 5, tzinfo=UTC),
        executed_at=datetime(2026, 11, 24, 9, 30, 7, tzinfo=UTC),
        prev_hash="b" * 64,
        hash="c" * 64,
    )


def _payloads(
    make_crm_event: Callable[..., CrmEvent],
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
) -> dict[str, BaseModel]:
    return {
        "crm_event": make_crm_event(),
        "proposal": make_proposal(),
        "decision": make_decision(),
        "execution": make_execution(),
        "audit_entry": _audit_entry(),
        "audit_checkpoint": AuditCheckpoint(
            seq=7, hash="c" * 64, previous_seq=0, signed_at=datetime(2026, 11, 24, 9, 31, tzinfo=UTC)
        ),
        "review_request": ReviewRequest(
            proposal=make_proposal(),
            queue="dedup",
            priority="high",
            expires_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
            routed_by=make_decision().decided_by,
            explanation="sent to review: rule merge-always-review",
        ),
        "record_change": RecordChange(
            object_type=ObjectType.CONTACT,
            record_id="hs-contact-1001",
            writer="3f9a0c1d2e4b5a69",
            seen=41,
            searched=True,
            source_system="hubspot",
            source_event_id="hs-1001-created",
        ),
    }


def _wire(envelope: Envelope[Any]) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(encode(envelope))
    return raw


def _proposal_wire(make_proposal: Callable[..., Proposal], **changes: Any) -> dict[str, Any]:
    proposal = make_proposal()
    raw = _wire(make_envelope(proposal, service="detector", correlation_id=proposal.proposal_id))
    raw.update(changes)
    return raw


# --- round trip -----------------------------------------------------------------------------------


def test_every_registered_event_type_has_a_round_trip_case(
    make_crm_event: Callable[..., CrmEvent],
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
) -> None:
    payloads = _payloads(make_crm_event, make_proposal, make_decision, make_execution)
    assert set(payloads) == set(EVENT_TYPES)
    assert {type(p) for p in payloads.values()} == {et.model for et in EVENT_TYPES.values()}


@pytest.mark.parametrize(
    "event_type",
    ["crm_event", "proposal", "decision", "execution", "audit_entry", "review_request", "record_change"],
)
def test_envelope_round_trips_through_serde(
    event_type: str,
    make_crm_event: Callable[..., CrmEvent],
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
) -> None:
    payload = _payloads(make_crm_event, make_proposal, make_decision, make_execution)[event_type]
    correlation = uuid.UUID("44444444-4444-4444-8444-444444444444")
    sent = make_envelope(payload, service="detector", correlation_id=correlation, dedup_key="k-1")

    received = decode(encode(sent), expected={event_type})

    assert received == sent
    assert received.event_type == event_type
    assert received.schema_version == EVENT_TYPES[event_type].version
    assert received.correlation_id == correlation
    assert received.producer == Producer(service="detector")
    assert type(received.payload) is type(payload)
    assert received.payload == payload
    # deterministic event id from the dedup key: a replay is the same event
    again = make_envelope(payload, service="detector", correlation_id=correlation, dedup_key="k-1")
    assert again.event_id == sent.event_id
    assert make_envelope(payload, service="detector", dedup_key="k-2").event_id != sent.event_id


def test_round_trip_keeps_property_value_types(make_crm_event: Callable[..., CrmEvent]) -> None:
    props: dict[str, str | int | float | bool | None] = {
        "name": "Ada",
        "employees": 250,
        "score": 0.5,
        "opted_in": True,
        "fax": None,
    }
    event = make_crm_event(properties=props)
    received = decode(encode(make_envelope(event, service="ingest")))
    got = received.payload.properties
    assert got == props
    assert [type(v) for v in got.values()] == [str, int, float, bool, type(None)]


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**64])
def test_property_integer_beyond_json_interop_is_refused(
    make_crm_event: Callable[..., CrmEvent], value: int
) -> None:
    # RFC 8785 (which every signature and the audit hash use) has no integer beyond +-(2**53 - 1):
    # such a value is refused where it enters, not when a proposal carrying it is signed.
    with pytest.raises(ValidationError, match="the range RFC 8785 signs"):
        make_crm_event(properties={"employees": value})


def test_property_integer_at_the_interop_limit_signs(make_crm_event: Callable[..., CrmEvent]) -> None:
    event = make_crm_event(properties={"employees": 2**53 - 1, "debt": -(2**53 - 1)})
    assert canonical.dumps(event.model_dump(mode="json"))


def test_decoded_timestamps_are_utc() -> None:
    raw = {
        "event_id": str(uuid.uuid4()),
        "event_type": "crm_event",
        "schema_version": 1,
        "occurred_at": "2026-11-24T11:31:00+02:00",
        "producer": {"service": "ingest", "version": "0.1.0"},
        "payload": {
            "source_system": "hubspot",
            "source_event_id": "evt-1",
            "object_type": "contact",
            "record_id": "1",
            "kind": "property_changed",
        },
    }
    envelope = decode(json.dumps(raw).encode())
    assert envelope.occurred_at == OCCURRED_AT
    assert envelope.occurred_at == datetime(2026, 11, 24, 9, 31, tzinfo=UTC)


# --- decode errors --------------------------------------------------------------------------------


def test_decode_non_json_bytes() -> None:
    with pytest.raises(UnknownEventError, match=r"^not JSON: "):
        decode(b"{this is not json")


def test_decode_invalid_utf8() -> None:
    with pytest.raises(UnknownEventError, match=r"^not JSON: "):
        decode(b'{"event_type": "\xff\xfe"}')


def test_decode_tombstone() -> None:
    with pytest.raises(UnknownEventError, match=r"tombstone"):
        decode(None)


def test_decode_json_that_is_not_an_object() -> None:
    with pytest.raises(UnknownEventError, match=r"^message is not a JSON object$"):
        decode(b"[1, 2, 3]")


def test_decode_unknown_event_type(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal, event_type="proposal_v9000")
    with pytest.raises(UnknownEventError, match=r"^unknown event_type 'proposal_v9000'$"):
        decode(json.dumps(raw).encode())


def test_decode_missing_event_type(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal)
    del raw["event_type"]
    with pytest.raises(UnknownEventError, match=r"^unknown event_type None$"):
        decode(json.dumps(raw).encode())


def test_decode_event_type_not_expected_by_consumer(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal)
    with pytest.raises(UnknownEventError) as info:
        decode(json.dumps(raw).encode(), expected={"execution", "decision"})
    assert str(info.value) == "event_type 'proposal' not expected here (['decision', 'execution'])"


def test_decode_newer_schema_version_than_known(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal, schema_version=4)
    with pytest.raises(UnknownEventError, match=r"^proposal v4 is newer than v3$"):
        decode(json.dumps(raw).encode())


@pytest.mark.parametrize(
    "version",
    [
        0,
        -1,
        "1",
        None,
        1.0,
        True,  # bool is an int in Python: must still be refused
    ],
)
def test_decode_invalid_schema_version(make_proposal: Callable[..., Proposal], version: object) -> None:
    raw = _proposal_wire(make_proposal, schema_version=version)
    with pytest.raises(UnknownEventError, match=r"^invalid schema_version "):
        decode(json.dumps(raw).encode())


def test_decode_payload_not_an_object(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal, payload="a string")
    with pytest.raises(UnknownEventError, match=r"^payload is not a JSON object$"):
        decode(json.dumps(raw).encode())


def test_decode_invalid_payload_names_the_failing_field(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal)
    raw["payload"]["confidence"] = 1.5
    with pytest.raises(UnknownEventError) as info:
        decode(json.dumps(raw).encode())
    message = str(info.value)
    assert message.startswith("invalid proposal v3: confidence: ")
    assert "less than or equal to 1" in message


def test_decode_invalid_nested_payload_field_gives_its_path(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal)
    raw["payload"]["source"]["trigger"] = "gut_feeling"
    with pytest.raises(UnknownEventError, match=r"^invalid proposal v3: source\.trigger: "):
        decode(json.dumps(raw).encode())


def test_decode_unknown_payload_field_is_refused(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal)
    raw["payload"]["confidnce"] = 0.9
    with pytest.raises(UnknownEventError, match=r"^invalid proposal v3: confidnce: Extra inputs"):
        decode(json.dumps(raw).encode())


def test_decode_invalid_envelope_field_is_named(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal, event_id="not-a-uuid")
    with pytest.raises(UnknownEventError, match=r"^invalid proposal v3: event_id: "):
        decode(json.dumps(raw).encode())


def test_decode_naive_envelope_timestamp_is_refused(make_proposal: Callable[..., Proposal]) -> None:
    raw = _proposal_wire(make_proposal, occurred_at="2026-11-24T09:31:00")
    with pytest.raises(UnknownEventError, match=r"occurred_at: .*timezone"):
        decode(json.dumps(raw).encode())


def test_unknown_event_error_is_a_value_error() -> None:
    assert issubclass(UnknownEventError, ValueError)


# --- upcasting ------------------------------------------------------------------------------------


def _score_to_confidence(payload: RawPayload) -> RawPayload:
    """v1 of this test's proposal called the confidence ``score``, in percent."""
    upgraded = {k: v for k, v in payload.items() if k != "score"}
    upgraded["confidence"] = payload["score"] / 100
    return upgraded


def _v1_proposal_wire(make_proposal: Callable[..., Proposal]) -> tuple[Proposal, dict[str, Any]]:
    proposal = make_proposal(confidence=0.87)
    raw = _proposal_wire(make_proposal)
    raw["payload"] = {k: v for k, v in proposal.model_dump(mode="json").items() if k != "confidence"}
    raw["payload"]["score"] = 87
    raw["schema_version"] = 1
    return proposal, raw


def test_older_version_is_upcast_to_the_current_one(
    monkeypatch: pytest.MonkeyPatch, make_proposal: Callable[..., Proposal]
) -> None:
    registry = dict(EVENT_TYPES)
    registry["proposal"] = EventType("proposal", Proposal, 2, {1: _score_to_confidence})
    monkeypatch.setattr(envelope_module, "EVENT_TYPES", registry)
    proposal, raw = _v1_proposal_wire(make_proposal)

    envelope = decode(json.dumps(raw).encode(), expected={"proposal"})

    assert envelope.schema_version == 2
    assert isinstance(envelope.payload, Proposal)
    assert envelope.payload.confidence == pytest.approx(0.87)
    assert envelope.payload == proposal


def test_current_version_is_not_upcast(
    monkeypatch: pytest.MonkeyPatch, make_proposal: Callable[..., Proposal]
) -> None:
    calls: list[RawPayload] = []

    def spy(payload: RawPayload) -> RawPayload:
        calls.append(payload)
        return payload

    registry = dict(EVENT_TYPES)
    registry["proposal"] = EventType("proposal", Proposal, 2, {1: spy})
    monkeypatch.setattr(envelope_module, "EVENT_TYPES", registry)
    raw = _proposal_wire(make_proposal, schema_version=2)

    envelope = decode(json.dumps(raw).encode())

    assert calls == []
    assert envelope.payload == make_proposal()


def test_upcasters_chain_over_several_versions(
    monkeypatch: pytest.MonkeyPatch, make_proposal: Callable[..., Proposal]
) -> None:
    def v2_to_v3(payload: RawPayload) -> RawPayload:
        return {**payload, "rationale": payload["rationale"] + " [upcast from v2]"}

    registry = dict(EVENT_TYPES)
    registry["proposal"] = EventType("proposal", Proposal, 3, {1: _score_to_confidence, 2: v2_to_v3})
    monkeypatch.setattr(envelope_module, "EVENT_TYPES", registry)
    proposal, raw = _v1_proposal_wire(make_proposal)

    envelope = decode(json.dumps(raw).encode())

    assert envelope.schema_version == 3
    assert envelope.payload.confidence == pytest.approx(0.87)
    assert envelope.payload.rationale == proposal.rationale + " [upcast from v2]"


def test_missing_upcaster_is_an_unknown_event(
    monkeypatch: pytest.MonkeyPatch, make_proposal: Callable[..., Proposal]
) -> None:
    registry = dict(EVENT_TYPES)
    registry["proposal"] = EventType("proposal", Proposal, 3, {1: _score_to_confidence})
    monkeypatch.setattr(envelope_module, "EVENT_TYPES", registry)
    _, raw = _v1_proposal_wire(make_proposal)

    with pytest.raises(UnknownEventError, match=r"^proposal v2 has no upcaster to v3$"):
        decode(json.dumps(raw).encode())


def test_upcast_result_that_is_invalid_names_the_source_version(
    monkeypatch: pytest.MonkeyPatch, make_proposal: Callable[..., Proposal]
) -> None:
    registry = dict(EVENT_TYPES)
    registry["proposal"] = EventType("proposal", Proposal, 2, {1: lambda p: p})  # forgets the rename
    monkeypatch.setattr(envelope_module, "EVENT_TYPES", registry)
    _, raw = _v1_proposal_wire(make_proposal)

    with pytest.raises(UnknownEventError) as info:
        decode(json.dumps(raw).encode())
    message = str(info.value)
    assert message.startswith("invalid proposal v1: ")
    assert "confidence: Field required" in message
    assert "score: Extra inputs are not permitted" in message


# --- Decision validators --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [DecisionOutcome.AUTO_APPROVED, DecisionOutcome.APPROVED, DecisionOutcome.APPROVED_WITH_CHANGES],
)
def test_executable_outcome_needs_final_changes(
    make_decision: Callable[..., Decision], outcome: DecisionOutcome
) -> None:
    assert outcome.executes
    with pytest.raises(ValidationError, match=f"outcome {outcome} needs final_changes"):
        make_decision(outcome=outcome, final_changes=[])


@pytest.mark.parametrize(
    "outcome", [DecisionOutcome.REJECTED, DecisionOutcome.EXPIRED, DecisionOutcome.SUPERSEDED]
)
def test_non_executable_outcome_must_not_carry_changes(
    make_decision: Callable[..., Decision], human_decider: Decider, outcome: DecisionOutcome
) -> None:
    assert not outcome.executes
    changes = [FieldChange(field="jobtitle", previous=None, proposed="VP Sales")]
    with pytest.raises(ValidationError, match=f"outcome {outcome} must not carry final_changes"):
        make_decision(outcome=outcome, decided_by=human_decider, final_changes=changes)
    decision = make_decision(outcome=outcome, decided_by=human_decider)
    assert decision.final_changes == []


def test_executable_outcomes_are_exactly_the_approvals() -> None:
    assert {o for o in DecisionOutcome if o.executes} == {
        DecisionOutcome.AUTO_APPROVED,
        DecisionOutcome.APPROVED,
        DecisionOutcome.APPROVED_WITH_CHANGES,
    }


@pytest.mark.parametrize("missing", ["policy_version", "policy_hash", "rule_id"])
def test_policy_decider_names_version_hash_and_rule(missing: str) -> None:
    fields: dict[str, Any] = {
        "kind": "policy",
        "identity": "policy:2026-11-24.1",
        "policy_version": "2026-11-24.1",
        "policy_hash": "a" * 64,
        "rule_id": "enrichment-fill-empty",
    }
    Decider(**fields)  # complete: valid
    del fields[missing]
    with pytest.raises(ValidationError, match="a policy decision names the policy version, hash and rule id"):
        Decider(**fields)


def test_human_decider_needs_only_an_identity() -> None:
    decider = Decider(kind="human", identity="alice@example.com")
    assert (decider.policy_version, decider.policy_hash, decider.rule_id) == (None, None, None)
    with pytest.raises(ValidationError, match="identity"):
        Decider(kind="human", identity="")
    with pytest.raises(ValidationError, match="kind"):
        Decider.model_validate({"kind": "robot", "identity": "r2d2"})


def test_policy_decision_id_is_deterministic() -> None:
    pid = uuid.UUID("11111111-1111-4111-8111-111111111111")
    assert Decision.policy_decision_id(pid, "h1") == Decision.policy_decision_id(pid, "h1")
    assert Decision.policy_decision_id(pid, "h1") != Decision.policy_decision_id(pid, "h2")


def test_execution_id_is_one_per_decision() -> None:
    did = uuid.UUID("22222222-2222-4222-8222-222222222222")
    assert Execution.make_id(did) == Execution.make_id(did)
    assert Execution.make_id(did) != Execution.make_id(uuid.UUID("22222222-2222-4222-8222-222222222223"))


# --- timestamps -----------------------------------------------------------------------------------


def test_naive_timestamp_is_rejected(make_proposal: Callable[..., Proposal]) -> None:
    with pytest.raises(ValidationError, match="Input should have timezone info"):
        make_proposal(proposed_at=datetime(2026, 11, 24, 9, 30))


def test_naive_timestamp_string_is_rejected(make_crm_event: Callable[..., CrmEvent]) -> None:
    with pytest.raises(ValidationError, match="Input should have timezone info"):
        make_crm_event(occurred_at="2026-11-24T09:30:00")


def test_aware_timestamp_keeps_its_instant(make_proposal: Callable[..., Proposal]) -> None:
    paris = timezone(timedelta(hours=1))
    proposal = make_proposal(proposed_at=datetime(2026, 11, 24, 10, 30, tzinfo=paris))
    assert proposal.proposed_at == datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


# --- Proposal ---------------------------------------------------------------------------------------


def test_proposal_make_id_is_deterministic_and_order_independent() -> None:
    a = FieldChange(field="jobtitle", previous=None, proposed="VP Sales")
    b = FieldChange(field="company_size", previous=None, proposed=250)
    first = Proposal.make_id("enrichment", "hs-contact-1001", [a, b], "clay-run-42:row-7")
    assert first == Proposal.make_id("enrichment", "hs-contact-1001", [a, b], "clay-run-42:row-7")
    assert first == Proposal.make_id("enrichment", "hs-contact-1001", [b, a], "clay-run-42:row-7")
    assert first.version == 5


@pytest.mark.parametrize(
    ("detector", "record_id", "proposed", "source_event_id"),
    [
        ("enrichment", "hs-contact-1001", "VP Sales", "clay-run-42:row-8"),  # other source event
        ("enrichment", "hs-contact-1002", "VP Sales", "clay-run-42:row-7"),  # other record
        ("enrichment", "hs-contact-1001", "CTO", "clay-run-42:row-7"),  # other change
        ("lifecycle", "hs-contact-1001", "VP Sales", "clay-run-42:row-7"),  # other detector
    ],
)
def test_proposal_make_id_changes_with_each_input(
    detector: str, record_id: str, proposed: str, source_event_id: str
) -> None:
    base = Proposal.make_id(
        "enrichment",
        "hs-contact-1001",
        [FieldChange(field="jobtitle", previous=None, proposed="VP Sales")],
        "clay-run-42:row-7",
    )
    other = Proposal.make_id(
        detector,
        record_id,
        [FieldChange(field="jobtitle", previous=None, proposed=proposed)],
        source_event_id,
    )
    assert other != base


@pytest.mark.parametrize("confidence", [0.0, 0.5, 1.0])
def test_confidence_within_bounds_is_accepted(
    make_proposal: Callable[..., Proposal], confidence: float
) -> None:
    assert make_proposal(confidence=confidence).confidence == confidence


@pytest.mark.parametrize("confidence", [-0.01, 1.01, 2.0])
def test_confidence_out_of_bounds_is_rejected(
    make_proposal: Callable[..., Proposal], make_crm_event: Callable[..., CrmEvent], confidence: float
) -> None:
    with pytest.raises(ValidationError, match="confidence"):
        make_proposal(confidence=confidence)
    with pytest.raises(ValidationError, match="confidence"):
        make_crm_event(confidence=confidence)


def test_proposal_needs_at_least_one_change(make_proposal: Callable[..., Proposal]) -> None:
    with pytest.raises(ValidationError, match="changes"):
        make_proposal(changes=[])


def test_contracts_are_frozen_and_strict(make_proposal: Callable[..., Proposal]) -> None:
    proposal = make_proposal()
    with pytest.raises(ValidationError, match="frozen"):
        proposal.confidence = 0.1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FieldChange(field="x", previous=None, proposed="y", note="typo")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("previous", "fills"), [(None, True), ("", True), ("   ", True), ("Sales", False), (0, False)]
)
def test_field_change_fills_empty(previous: str | int | None, fills: bool) -> None:
    assert FieldChange(field="jobtitle", previous=previous, proposed="VP Sales").fills_empty is fills


# --- topics ---------------------------------------------------------------------------------------


def test_every_topic_carries_a_registered_event_type() -> None:
    assert set(TOPICS) == set(Topic)
    assert {spec.event_type for spec in TOPICS.values()} <= set(EVENT_TYPES)


def test_topic_names_carry_the_prefix_and_dead_letter_suffix() -> None:
    names = TopicNames("acme.")
    assert names(Topic.PROPOSALS_PENDING) == "acme.proposals.pending"
    assert names.dlq(Topic.DECISIONS) == "acme.decisions.dlq"
    assert len(names.all()) == 2 * len(Topic)
    assert "acme.crm.events.dlq" in names.all()


@pytest.mark.parametrize("event_type", ["crm_event", "proposal", "review_request", "decision", "execution"])
def test_a_v1_message_of_the_types_that_gained_optional_fields_is_read_as_the_current_version(
    event_type: str,
    make_crm_event: Callable[..., CrmEvent],
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
) -> None:
    payload = _payloads(make_crm_event, make_proposal, make_decision, make_execution)[event_type]
    raw = _wire(make_envelope(payload, service="old-producer"))
    for old in range(1, EVENT_TYPES[event_type].version):
        raw["schema_version"] = old
        envelope = decode(json.dumps(raw).encode(), expected={event_type})
        assert envelope.schema_version == EVENT_TYPES[event_type].version
        assert envelope.payload == payload
