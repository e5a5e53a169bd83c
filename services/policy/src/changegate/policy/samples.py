"""A seedable mix of proposals of all five kinds: for simulations, tests and benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

from changegate.core.contracts import (
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.contracts.base import PropertyValue

_WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
_VERIFIER_RESULTS = ["valid", "valid", "valid", "risky", "catch_all", "unknown", "invalid", "disposable"]


def sample_proposals(count: int, seed: int = 1) -> Iterator[Proposal]:
    rng = random.Random(seed)
    for i in range(count):
        kind = rng.choices(list(ProposalKind), weights=[50, 5, 15, 10, 20], k=1)[0]
        record = f"sample-{seed}-{i}"
        trigger, system, changes = _shape(rng, kind)
        evidence: dict[str, object] = {}
        if kind is ProposalKind.MERGE and rng.random() < 0.3:
            evidence["flags"] = ["different_email_domains"]
        yield Proposal(
            proposal_id=Proposal.make_id("sample", record, changes, f"{system}-{i}"),
            kind=kind,
            object_type=ObjectType.COMPANY
            if kind is ProposalKind.MERGE and rng.random() < 0.3
            else ObjectType.CONTACT,
            record_id=record,
            other_record_ids=[f"{record}-dup"] if kind is ProposalKind.MERGE else [],
            changes=changes,
            source=ProposalSource(
                system=system,
                event_id=f"{system}-{i}",
                detector="sample",
                detector_version="1",
                trigger=trigger,
            ),
            confidence=round(rng.uniform(0.5, 1.0), 2),
            rationale=f"sample {kind.value}",
            evidence=evidence,
            proposed_at=_WHEN,
        )


def _shape(rng: random.Random, kind: ProposalKind) -> tuple[Trigger, str, list[FieldChange]]:
    def change(field: str, previous: PropertyValue, proposed: PropertyValue) -> list[FieldChange]:
        return [FieldChange(field=field, previous=previous, proposed=proposed)]

    if kind is ProposalKind.FIELD_UPDATE:
        previous = None if rng.random() < 0.6 else "Engineer"
        return Trigger.ENRICHMENT, "clay", change("jobtitle", previous, "VP Engineering")
    if kind is ProposalKind.MERGE:
        return Trigger.SIMILARITY, "changegate", change("merged_into", None, "survivor")
    if kind is ProposalKind.LIFECYCLE_TRANSITION:
        if rng.random() < 0.5:
            return Trigger.DEFINED_EVENT, "forms", change("lifecyclestage", "lead", "marketingqualifiedlead")
        return Trigger.AI_SCORE, "scoring", change("lifecyclestage", "lead", "salesqualifiedlead")
    if kind is ProposalKind.OWNER_REASSIGNMENT:
        return Trigger.RULE, "changegate", change("hubspot_owner_id", "owner-1", "owner-2")
    return Trigger.VERIFICATION, "zerobounce", change("email_status", None, rng.choice(_VERIFIER_RESULTS))
