"""Lifecycle-stage transitions: a defined event or a high score proposes a later stage.

Two inputs, one rule about direction:

* a ``lifecycle_event`` (``{"event": "form_submission", "form_type": "demo_request"}``,
  ``{"event": "meeting_booked"}``, ``{"event": "deal_created"}``, …) is looked up in
  ``LifecycleConfig.defined_events``; the row's stage is proposed with trigger ``defined_event``;
* a ``score`` event (``{"score": 0.91, "model": "fit-v3"}``) at or above ``score_threshold`` proposes
  ``score_stage`` with trigger ``ai_score`` and the score as confidence.

Stages are ordered (``stage_order``, HubSpot's by default). A move to the current stage is never
proposed; a move to an earlier stage, or away from a stage missing from the order, only with
``allow_backwards``. Every call returns a ``LifecycleResult`` whose ``reason`` says what happened, so
the caller can count skipped events by reason without parsing logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    FieldChange,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.contracts.base import PropertyValue, is_empty
from changegate.detector import reliability
from changegate.detector.config import DefinedEvent, LifecycleConfig
from changegate.detector.proposals import build_proposal

DETECTOR = "lifecycle"


class LifecycleReason(StrEnum):
    """Why a lifecycle event did or did not become a proposal (a low-cardinality metric label)."""

    PROPOSED = "proposed"
    NOT_LIFECYCLE = "not_lifecycle"  # neither a lifecycle_event nor a score
    MISSING_EVENT_NAME = "missing_event_name"  # lifecycle_event without an `event` property
    UNKNOWN_EVENT = "unknown_event"  # no defined-event row matches
    UNTRUSTED_SCORE_SOURCE = "untrusted_score_source"  # score from a source not in score_sources
    INVALID_SCORE = "invalid_score"  # missing, non-numeric or outside [0, 1]
    BELOW_THRESHOLD = "below_threshold"
    NOOP = "noop"  # the record is already at the target stage
    BACKWARDS = "backwards"  # the target is earlier than the current stage
    UNORDERED_CURRENT_STAGE = "unordered_current_stage"  # current stage not in stage_order


@dataclass(frozen=True, slots=True)
class LifecycleResult:
    proposal: Proposal | None
    reason: LifecycleReason


def propose_lifecycle(event: CrmEvent, known: Mapping[str, Any], config: LifecycleConfig) -> LifecycleResult:
    """A lifecycle_event or score event, compared with the record as known, as a stage proposal."""
    if event.kind is CrmEventKind.LIFECYCLE_EVENT:
        return _from_defined_event(event, known, config)
    if event.kind is CrmEventKind.SCORE:
        return _from_score(event, known, config)
    return LifecycleResult(None, LifecycleReason.NOT_LIFECYCLE)


def match_defined_event(
    properties: Mapping[str, PropertyValue], config: LifecycleConfig
) -> DefinedEvent | None:
    """The defined-event row for these event properties: a row naming the form type wins, then order."""
    name = _norm(properties.get("event"))
    if not name:
        return None
    form_type = _norm(properties.get("form_type"))
    generic: DefinedEvent | None = None
    for row in config.defined_events:
        if _norm(row.event) != name:
            continue
        if row.form_type is None:
            generic = generic or row
        elif _norm(row.form_type) == form_type:
            return row
    return generic


def _from_defined_event(
    event: CrmEvent, known: Mapping[str, Any], config: LifecycleConfig
) -> LifecycleResult:
    if not _norm(event.properties.get("event")):
        return LifecycleResult(None, LifecycleReason.MISSING_EVENT_NAME)
    row = match_defined_event(event.properties, config)
    if row is None:
        return LifecycleResult(None, LifecycleReason.UNKNOWN_EVENT)
    what = str(event.properties["event"]).strip().replace("_", " ")
    form_type = event.properties.get("form_type")
    if row.form_type is not None and not is_empty(form_type):
        what = f"{what} {str(form_type).strip()}"
    confidence = row.confidence if row.confidence is not None else config.defined_event_confidence
    facts: dict[str, Any] = {
        "event": dict(event.properties),
        "matched_rule": row.model_dump(mode="json"),
    }
    key = reliability.cell(
        DETECTOR, Trigger.DEFINED_EVENT.value, event.source_system, row.event, row.form_type or "-"
    )
    facts[reliability.BASIS] = reliability.basis(
        [reliability.Cell(key, config.stage_field)], confidence, reliability.PriorFrom.CONFIGURED
    )
    return _propose(event, known, config, row.stage, Trigger.DEFINED_EVENT, confidence, what, facts)


def _from_score(event: CrmEvent, known: Mapping[str, Any], config: LifecycleConfig) -> LifecycleResult:
    trusted = {s.casefold() for s in config.score_sources}
    if trusted and event.source_system.casefold() not in trusted:
        return LifecycleResult(None, LifecycleReason.UNTRUSTED_SCORE_SOURCE)
    raw = event.properties.get("score")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return LifecycleResult(None, LifecycleReason.INVALID_SCORE)
    try:
        score = float(raw)
    except ValueError:
        return LifecycleResult(None, LifecycleReason.INVALID_SCORE)
    if not math.isfinite(score) or not 0 <= score <= 1:
        return LifecycleResult(None, LifecycleReason.INVALID_SCORE)
    if score < config.score_threshold:
        return LifecycleResult(None, LifecycleReason.BELOW_THRESHOLD)
    model = event.properties.get("model")
    what = f"score {score:.2f} ≥ threshold {config.score_threshold:.2f}"
    if not is_empty(model):
        what = f"{model} {what}"
    facts: dict[str, Any] = {
        "event": dict(event.properties),
        "score": score,
        "model": model,
        "threshold": config.score_threshold,
    }
    key = reliability.cell(
        DETECTOR,
        Trigger.AI_SCORE.value,
        event.source_system,
        model,
        "score-" + reliability.band(score, reliability.SCORE_EDGES),
    )
    facts[reliability.BASIS] = reliability.basis(
        [reliability.Cell(key, config.stage_field)], score, reliability.PriorFrom.SCORE
    )
    return _propose(event, known, config, config.score_stage, Trigger.AI_SCORE, score, what, facts)


def _propose(
    event: CrmEvent,
    known: Mapping[str, Any],
    config: LifecycleConfig,
    target: str,
    trigger: Trigger,
    confidence: float,
    what: str,
    facts: dict[str, Any],
) -> LifecycleResult:
    order = [s.casefold() for s in config.stage_order]
    current: PropertyValue = known.get(config.stage_field)
    to_index = order.index(target.casefold())
    from_index: int | None = None
    if is_empty(current):
        direction = "from_empty"
    else:
        current_key = str(current).strip().casefold()
        if current_key == target.casefold():
            return LifecycleResult(None, LifecycleReason.NOOP)
        if current_key not in order:
            if not config.allow_backwards:
                return LifecycleResult(None, LifecycleReason.UNORDERED_CURRENT_STAGE)
            direction = "unordered"
        else:
            from_index = order.index(current_key)
            if to_index < from_index and not config.allow_backwards:
                return LifecycleResult(None, LifecycleReason.BACKWARDS)
            direction = "forward" if to_index > from_index else "backwards"

    if direction == "from_empty":
        rationale = f"{what} sets the unset stage to {target}"
    else:
        rationale = f"{what} moves {current} → {target}"
    if direction == "backwards":
        rationale += " (a backwards move, allowed by configuration)"
    elif direction == "unordered":
        rationale += f" (stage {current} is not in the stage order; allowed by configuration)"

    changes = [FieldChange(field=config.stage_field, previous=current, proposed=target)]
    evidence = {
        **facts,
        "stage_order": list(config.stage_order),
        "from_stage": current,
        "from_index": from_index,
        "to_stage": target,
        "to_index": to_index,
        "direction": direction,
        "allow_backwards": config.allow_backwards,
    }
    proposal = build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.LIFECYCLE_TRANSITION,
        object_type=event.object_type,
        record_id=event.record_id,
        changes=changes,
        system=event.source_system,
        source_event_id=event.source_event_id,
        trigger=trigger,
        confidence=confidence,
        rationale=rationale,
        evidence=evidence,
    )
    return LifecycleResult(proposal, LifecycleReason.PROPOSED)


def _norm(value: PropertyValue) -> str:
    return "" if is_empty(value) else str(value).strip().casefold()
