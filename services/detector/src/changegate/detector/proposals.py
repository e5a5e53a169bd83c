"""Building a proposal the same way in every detector: deterministic id, source, timestamp."""

from __future__ import annotations

from typing import Any

from changegate.core.contracts import (
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.detector import DETECTOR_VERSION


def build_proposal(
    *,
    detector: str,
    kind: ProposalKind,
    object_type: ObjectType,
    record_id: str,
    changes: list[FieldChange],
    system: str,
    source_event_id: str,
    trigger: Trigger,
    confidence: float,
    rationale: str,
    evidence: dict[str, Any],
    id_key: str | None = None,
    other_record_ids: list[str] | None = None,
) -> Proposal:
    """``id_key``, when given, is the whole identity of the finding: the same duplicate pair found
    again from another event, with other survivorship details, is the same proposal."""
    proposal_id = (
        Proposal.make_id(detector, id_key, [], "")
        if id_key
        else Proposal.make_id(detector, record_id, changes, source_event_id)
    )
    return Proposal(
        proposal_id=proposal_id,
        kind=kind,
        object_type=object_type,
        record_id=record_id,
        other_record_ids=other_record_ids or [],
        changes=changes,
        source=ProposalSource(
            system=system,
            event_id=source_event_id,
            detector=detector,
            detector_version=DETECTOR_VERSION,
            trigger=trigger,
        ),
        confidence=confidence,
        rationale=rationale,
        evidence=evidence,
        proposed_at=utcnow(),
    )
