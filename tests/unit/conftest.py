"""Builders of realistic contract payloads for the unit tests, exposed as fixtures.

tests/ has no packages, so test modules cannot import a shared helper module; fixtures returning
the builder functions give every test module the same payloads instead."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    FieldChange,
    FieldWrite,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)

PROPOSED_AT = datetime(2026, 11, 24, 9, 30, 0, 123456, tzinfo=UTC)
DECIDED_AT = datetime(2026, 11, 24, 9, 30, 5, tzinfo=UTC)
EXECUTED_AT = datetime(2026, 11, 24, 9, 30, 7, tzinfo=UTC)
POLICY_HASH = "a" * 64


def build_crm_event(**overrides: Any) -> CrmEvent:
    fields: dict[str, Any] = {
        "source_system": "clay",
        "source_event_id": "clay-run-42:row-7",
        "object_type": ObjectType.CONTACT,
        "record_id": "hs-contact-1001",
        "kind": CrmEventKind.ENRICHMENT_RESULT,
        "properties": {"jobtitle": "VP Sales", "company_size": 250},
        "confidence": 0.93,
        "occurred_at": datetime(2026, 11, 24, 9, 29, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return CrmEvent(**fields)


def build_proposal(
    kind: ProposalKind = ProposalKind.FIELD_UPDATE,
    changes: list[FieldChange] | None = None,
    trigger: Trigger = Trigger.ENRICHMENT,
    **overrides: Any,
) -> Proposal:
    """A proposal of ``kind`` with a plausible change for that kind, unless ``changes`` is given."""
    default_changes = {
        ProposalKind.FIELD_UPDATE: [FieldChange(field="jobtitle", previous=None, proposed="VP Sales")],
        ProposalKind.MERGE: [FieldChange(field="merged_into", previous=None, proposed="hs-contact-1001")],
        ProposalKind.LIFECYCLE_TRANSITION: [
            FieldChange(field="lifecyclestage", previous="lead", proposed="marketingqualifiedlead")
        ],
        ProposalKind.OWNER_REASSIGNMENT: [
            FieldChange(field="hubspot_owner_id", previous="owner-17", proposed="owner-23")
        ],
        ProposalKind.EMAIL_VERIFICATION: [FieldChange(field="email_status", previous=None, proposed="valid")],
    }
    chosen = changes if changes is not None else default_changes[kind]
    source = ProposalSource(
        system="clay",
        event_id="clay-run-42:row-7",
        detector="enrichment",
        detector_version="0.1.0",
        trigger=trigger,
    )
    fields: dict[str, Any] = {
        "proposal_id": Proposal.make_id("enrichment", "hs-contact-1001", chosen, "clay-run-42:row-7"),
        "kind": kind,
        "object_type": ObjectType.CONTACT,
        "record_id": "hs-contact-1001",
        "other_record_ids": ["hs-contact-2002"] if kind is ProposalKind.MERGE else [],
        "changes": chosen,
        "source": source,
        "confidence": 0.9,
        "rationale": "clay enrichment fills empty jobtitle (confidence 0.90)",
        "evidence": {"fills_empty": ["jobtitle"], "overwrites": [], "score": {"name": 0.97}},
        "proposed_at": PROPOSED_AT,
    }
    fields.update(overrides)
    return Proposal(**fields)


def build_policy_decider(rule_id: str = "enrichment-fill-empty") -> Decider:
    return Decider(
        kind="policy",
        identity="policy:2026-11-24.1",
        policy_version="2026-11-24.1",
        policy_hash=POLICY_HASH,
        rule_id=rule_id,
    )


def build_human_decider(identity: str = "alice@example.com") -> Decider:
    return Decider(kind="human", identity=identity)


def build_decision(
    proposal: Proposal | None = None,
    outcome: DecisionOutcome = DecisionOutcome.AUTO_APPROVED,
    decided_by: Decider | None = None,
    **overrides: Any,
) -> Decision:
    p = proposal or build_proposal()
    fields: dict[str, Any] = {
        "decision_id": Decision.policy_decision_id(p.proposal_id, POLICY_HASH),
        "proposal": p,
        "outcome": outcome,
        "decided_by": decided_by or build_policy_decider(),
        "decided_at": DECIDED_AT,
        "explanation": "auto-applied: rule enrichment-fill-empty, confidence 0.90 ≥ 0.85",
        "final_changes": list(p.changes) if outcome.executes else [],
    }
    fields.update(overrides)
    return Decision(**fields)


def build_execution(
    decision: Decision | None = None,
    status: ExecutionStatus = ExecutionStatus.APPLIED,
    **overrides: Any,
) -> Execution:
    d = decision or build_decision()
    fields: dict[str, Any] = {
        "execution_id": Execution.make_id(d.decision_id),
        "decision": d,
        "status": status,
        "writes": [
            FieldWrite(field=c.field, expected=c.previous, overwritten=c.previous, new=c.proposed)
            for c in d.final_changes
        ],
        "crm_target": "sandbox",
        "crm_response_ids": ["sandbox:hs-contact-1001:v4"],
        "attempts": 1,
        "executed_at": EXECUTED_AT,
    }
    fields.update(overrides)
    return Execution(**fields)


@pytest.fixture
def make_crm_event() -> Callable[..., CrmEvent]:
    return build_crm_event


@pytest.fixture
def make_proposal() -> Callable[..., Proposal]:
    return build_proposal


@pytest.fixture
def make_decision() -> Callable[..., Decision]:
    return build_decision


@pytest.fixture
def make_execution() -> Callable[..., Execution]:
    return build_execution


@pytest.fixture
def policy_decider() -> Decider:
    return build_policy_decider()


@pytest.fixture
def human_decider() -> Decider:
    return build_human_decider()
