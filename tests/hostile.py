"""A corpus of hostile messages, for every event type: what anyone who can reach the broker might
publish. The unit tests feed it through each service's decode path; the e2e test publishes it to
every topic of a running stack. Each item says the dead-letter reason it must get."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    RecordChange,
    ReviewRequest,
    Trigger,
)
from changegate.core.contracts.envelope import make_envelope
from changegate.core.serde import encode
from changegate.core.signing import SigningKey
from pydantic import BaseModel

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Hostile:
    name: str
    value: bytes | None
    reason: str  # the dead-letter reason it must get


def good_payload(
    event_type: str, record_id: str | None = None, keys: dict[str, str] | None = None
) -> BaseModel:
    """A valid, harmless payload of ``event_type``: each consumer processes it and moves on. With
    ``keys`` (signer -> CHANGEGATE_SIGNING_KEY), every payload but a CRM event is signed as it must
    be for a stack that verifies them."""
    rid = record_id or f"good-{uuid.uuid4().hex[:8]}"
    if event_type == "record_change":  # a record no detector knows: read again, found absent
        return RecordChange(
            object_type=ObjectType.CONTACT,
            record_id=rid,
            writer="corpus",
            seen=0,
            searched=False,
            source_system="corpus",
            source_event_id=f"corpus-{rid}",
        )
    if event_type == "crm_event":
        return CrmEvent(
            source_system="hubspot",
            source_event_id=f"hs-{rid}",
            object_type=ObjectType.CONTACT,
            record_id=rid,
            kind=CrmEventKind.RECORD_CREATED,
            properties={"firstname": "Good", "jobtitle": "Engineer"},
        )
    changes = [FieldChange(field="jobtitle", previous="Engineer", proposed="Staff Engineer")]
    proposal = Proposal(
        proposal_id=Proposal.make_id("corpus", rid, changes, f"src-{rid}"),
        kind=ProposalKind.FIELD_UPDATE,
        object_type=ObjectType.CONTACT,
        record_id=rid,
        changes=changes,
        source=ProposalSource(
            system="clay",
            event_id=f"src-{rid}",
            detector="corpus",
            detector_version="1",
            trigger=Trigger.RULE,
        ),
        confidence=0.5,
        rationale="a harmless proposal that needs review",
        proposed_at=NOW,
    )
    if keys:
        proposal = SigningKey.parse(keys["detector"], "detector").sign(proposal)
    if event_type == "proposal":
        return proposal
    if event_type == "review_request":
        routed_by = Decider(
            kind="policy",
            identity="policy:corpus",
            policy_version="corpus",
            policy_hash="0" * 64,
            rule_id="c",
        )
        request = ReviewRequest(proposal=proposal, routed_by=routed_by, explanation="corpus")
        return SigningKey.parse(keys["policy"], "policy").sign(request) if keys else request
    # A rejection: nothing executes, every consumer of decisions just records or skips it.
    decision = Decision(
        decision_id=uuid.uuid5(uuid.NAMESPACE_URL, f"corpus/{rid}"),
        proposal=proposal,
        outcome=DecisionOutcome.REJECTED,
        decided_by=Decider(kind="human", identity="corpus@example.com"),
        decided_at=NOW,
        explanation="rejected by the corpus",
    )
    if keys:
        decision = SigningKey.parse(keys["review-api"], "review-api").sign(decision)
    if event_type == "decision":
        return decision
    assert event_type == "execution", event_type
    execution = Execution(
        execution_id=Execution.make_id(decision.decision_id),
        decision=decision,
        status=ExecutionStatus.FAILED,
        crm_target="sandbox",
        error="corpus",
        executed_at=NOW,
    )
    return SigningKey.parse(keys["executor"], "executor").sign(execution) if keys else execution


def good_message(event_type: str, record_id: str | None = None, keys: dict[str, str] | None = None) -> bytes:
    return encode(make_envelope(good_payload(event_type, record_id, keys), service="corpus"))


def _wire(event_type: str) -> dict[str, Any]:
    wire: dict[str, Any] = json.loads(good_message(event_type))
    return wire


def _mutated(event_type: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    wire = _wire(event_type)
    change(wire)
    return json.dumps(wire).encode()


def _string_slot(wire: dict[str, Any]) -> dict[str, Any]:
    """A dict inside the payload where an arbitrary string value is at home."""
    payload = wire["payload"]
    if "properties" in payload:
        return dict(payload["properties"])
    proposal = payload.get("proposal") or payload.get("decision", {}).get("proposal") or payload
    return dict(proposal.get("evidence", {}))


def _with_value(event_type: str, value: Any) -> bytes:
    def change(wire: dict[str, Any]) -> None:
        slot = _string_slot(wire)
        slot["hostile"] = value
        payload = wire["payload"]
        if "properties" in payload:
            payload["properties"] = slot
        else:
            target = payload.get("proposal") or payload.get("decision", {}).get("proposal") or payload
            target["evidence"] = slot

    return _mutated(event_type, change)


def _raw_value(event_type: str, token: bytes) -> bytes:
    """Like _with_value, but with a raw JSON token no encoder would write (NaN, a bad escape)."""
    marker = "__HOSTILE__"
    return _with_value(event_type, marker).replace(f'"{marker}"'.encode(), token)


def corpus(event_type: str) -> list[Hostile]:
    """The hostile messages for a topic of ``event_type``."""
    valid = good_message(event_type)
    other = "proposal" if event_type != "proposal" else "crm_event"
    items = [
        Hostile("deep_array", b"[" * 2000 + b"]" * 2000, "undecodable"),
        Hostile("deep_object", b'{"a":' * 2000 + b"1" + b"}" * 2000, "undecodable"),
        Hostile("deep_inside_payload", _with_value(event_type, _nested(100)), "undecodable"),
        Hostile("oversized", _with_value(event_type, "x" * 1_200_000), "too_large"),
        Hostile("huge_string", _with_value(event_type, "x" * 70_000), "undecodable"),
        Hostile("nul_in_string", _with_value(event_type, "a\x00b"), "undecodable"),
        Hostile("invalid_utf8", _raw_value(event_type, b'"\xff\xfe"'), "undecodable"),
        Hostile("lone_surrogate", _raw_value(event_type, b'"\\ud800"'), "undecodable"),
        Hostile("nan", _raw_value(event_type, b"NaN"), "undecodable"),
        Hostile("infinity", _raw_value(event_type, b"Infinity"), "undecodable"),
        Hostile("overflowing_float", _raw_value(event_type, b"1e999"), "undecodable"),
        Hostile("huge_integer", _raw_value(event_type, b"1" + b"0" * 5000), "undecodable"),
        Hostile(
            "duplicate_keys", valid[:-1] + b', "event_type": "' + event_type.encode() + b'"}', "undecodable"
        ),
        Hostile("truncated", valid[: len(valid) // 2], "undecodable"),
        Hostile("empty", b"", "undecodable"),
        Hostile("tombstone", None, "undecodable"),
        Hostile("scalar", b"42", "undecodable"),
        Hostile("null", b"null", "undecodable"),
        Hostile("array", b"[]", "undecodable"),
        Hostile(
            "unknown_version", _mutated(event_type, lambda w: w.update(schema_version=99)), "undecodable"
        ),
        Hostile(
            "version_as_string", _mutated(event_type, lambda w: w.update(schema_version="1")), "undecodable"
        ),
        Hostile(
            "wrong_type", _mutated(event_type, lambda w: w.update(payload=[w["payload"]])), "undecodable"
        ),
        Hostile("missing_payload", _mutated(event_type, lambda w: w.pop("payload")), "undecodable"),
        Hostile("unknown_field", _mutated(event_type, lambda w: w.update(extra=True)), "undecodable"),
        Hostile("other_event_type", good_message(other), "undecodable"),
    ]
    if event_type == "crm_event":
        items.append(
            Hostile(
                "too_many_properties",
                _mutated(
                    event_type, lambda w: w["payload"].update(properties={f"p{i}": i for i in range(1001)})
                ),
                "undecodable",
            )
        )
    return items


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


EVENT_TYPES = ("crm_event", "proposal", "review_request", "decision", "execution", "record_change")
