"""Enrichment write-back (Clay and other enrichment sources): one field-update proposal per result."""

from __future__ import annotations

from typing import Any

from changegate.core import field_risk
from changegate.core.contracts import (
    CrmEvent,
    FieldChange,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.contracts.base import PropertyValue, is_empty
from changegate.detector.proposals import build_proposal

DETECTOR = "enrichment"


def propose_enrichment(
    event: CrmEvent, known: dict[str, Any], default_confidence: dict[str, float]
) -> Proposal | None:
    """Compare an enrichment result with the record as known; None when nothing would change.
    Fields another kind owns (an owner, a lifecycle stage, an email status) are never a field
    update's: they are left out (and named in the evidence), not proposed under the wrong kind."""
    table = field_risk.table()
    changes, skipped = [], []
    for f, v in sorted(event.properties.items()):
        if is_empty(v) or _same(known.get(f), v):
            continue
        change = FieldChange(field=f, previous=known.get(f), proposed=v)
        if table.kind_refusal(ProposalKind.FIELD_UPDATE, [change]):
            skipped.append(f)
        else:
            changes.append(change)
    if not changes:
        return None
    confidence = (
        event.confidence
        if event.confidence is not None
        else default_confidence.get(event.source_system, default_confidence.get("default", 0.5))
    )
    fills = [c.field for c in changes if c.fills_empty]
    overwrites = [c.field for c in changes if not c.fills_empty]
    parts = []
    if fills:
        parts.append(f"fills empty {', '.join(fills)}")
    if overwrites:
        parts.append(f"overwrites {', '.join(overwrites)}")
    rationale = f"{event.source_system} enrichment {' and '.join(parts)} (confidence {confidence:.2f})"
    return build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.FIELD_UPDATE,
        object_type=event.object_type,
        record_id=event.record_id,
        changes=changes,
        system=event.source_system,
        source_event_id=event.source_event_id,
        trigger=Trigger.ENRICHMENT,
        confidence=confidence,
        rationale=rationale,
        evidence={
            "fills_empty": fills,
            "overwrites": overwrites,
            "confidence_source": "source" if event.confidence is not None else "default",
            **({"not_proposed": skipped} if skipped else {}),
        },
    )


def _same(a: PropertyValue, b: PropertyValue) -> bool:
    return (is_empty(a) and is_empty(b)) or a == b
