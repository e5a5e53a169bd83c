"""Owner reassignment: territory, deactivated owner and round-robin rules (trigger ``rule``).

Rules, all pure functions over a record's properties and ``OwnerConfig``:

* **territory** (``propose_territory_owner``): the record's country (and state) maps to a territory
  owner different from its current owner. Evaluated when a record is created, when an event changes
  its country or state, or when an event clears its owner — not on every other property change, so a
  deliberate manual override of the owner is not re-proposed on each unrelated edit.
* **round-robin** (``propose_round_robin``): an unowned record with no territory gets
  ``round_robin[next_index % len(round_robin)]``. The caller owns the counter (PostgreSQL, same
  transaction as the processed-event row) and advances it only when ``consumed_round_robin`` is true.
* **deactivated owner** (``propose_for_deactivated_owner``): each record of a deactivated owner
  goes to its territory owner, else ``fallback_owner``, else the round-robin rotation (without the
  deactivated owner in it).

``propose_owner`` combines territory and round-robin for one record event. Each call returns an
``OwnerResult`` whose ``reason`` says what happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.contracts.base import PropertyValue, is_empty
from changegate.detector import reliability
from changegate.detector.config import OwnerConfig, Territory
from changegate.detector.proposals import build_proposal

DETECTOR = "owner"


class OwnerRule(StrEnum):
    TERRITORY = "territory"
    DEACTIVATED_TERRITORY = "deactivated_owner_territory"
    DEACTIVATED_FALLBACK = "deactivated_owner_fallback"
    DEACTIVATED_ROUND_ROBIN = "deactivated_owner_round_robin"
    ROUND_ROBIN = "round_robin"


class OwnerReason(StrEnum):
    """Why an owner rule did or did not propose (a low-cardinality metric label)."""

    PROPOSED = "proposed"
    NOT_APPLICABLE = "not_applicable"  # event kind / changed properties do not trigger the rule
    NO_TERRITORY = "no_territory"  # no territory matches the record's country / state
    ALREADY_OWNED = "already_owned"  # round-robin only assigns unowned records
    NO_ROTATION = "no_rotation"  # round-robin needed but none configured (or no next_index given)
    NOOP = "noop"  # the chosen owner already owns the record
    NOT_OWNED_BY_DEACTIVATED = "not_owned_by_deactivated"  # record already moved on


@dataclass(frozen=True, slots=True)
class OwnerResult:
    proposal: Proposal | None
    reason: OwnerReason
    consumed_round_robin: bool = False  # the caller advances its round-robin counter only when true


# ---------------------------------------------------------------------------------------------------
# Territories


def territory_for(properties: Mapping[str, Any], config: OwnerConfig) -> Territory | None:
    """The territory of a record: a row matching country and state wins over a country-only row."""
    country = _key(properties.get(config.country_field), config.country_aliases)
    if not country:
        return None
    state = _key(properties.get(config.state_field), config.state_aliases)
    country_only: Territory | None = None
    for row in config.territories:
        if _key(row.country, config.country_aliases) != country:
            continue
        if row.state is None:
            country_only = country_only or row
        elif state and _key(row.state, config.state_aliases) == state:
            return row
    return country_only


def propose_territory_owner(event: CrmEvent, record: Mapping[str, Any], config: OwnerConfig) -> OwnerResult:
    """Territory rule for one record event; ``record`` is the record's properties *after* the event."""
    if not _territory_relevant(event, config):
        return OwnerResult(None, OwnerReason.NOT_APPLICABLE)
    territory = territory_for(record, config)
    if territory is None:
        return OwnerResult(None, OwnerReason.NO_TERRITORY)
    current = record.get(config.owner_field)
    if _same_owner(current, territory.owner):
        return OwnerResult(None, OwnerReason.NOOP)
    where = _where(territory)
    owned = "has no owner" if is_empty(current) else f"is owned by {current}"
    rationale = f"territory rule: {where} belongs to {territory.owner}; the record {owned}"
    evidence = {
        "rule": OwnerRule.TERRITORY.value,
        "record_country": record.get(config.country_field),
        "record_state": record.get(config.state_field),
        "territory": territory.model_dump(mode="json"),
        "current_owner": current,
    }
    return OwnerResult(
        _proposal(
            event.object_type,
            event.record_id,
            event.source_system,
            event.source_event_id,
            config,
            current,
            territory.owner,
            config.territory_confidence,
            rationale,
            evidence,
            _occasion(event, config),
        ),
        OwnerReason.PROPOSED,
    )


# ---------------------------------------------------------------------------------------------------
# Round-robin


def round_robin_owner(rotation: list[str], next_index: int) -> str:
    """``rotation[next_index % len(rotation)]``; the rotation must not be empty."""
    return rotation[next_index % len(rotation)]


def propose_round_robin(
    event: CrmEvent, record: Mapping[str, Any], config: OwnerConfig, next_index: int
) -> OwnerResult:
    """Assign an unowned record the next owner of the rotation; ``record`` is its state after the event."""
    current = record.get(config.owner_field)
    if not is_empty(current):
        return OwnerResult(None, OwnerReason.ALREADY_OWNED)
    if not config.round_robin:
        return OwnerResult(None, OwnerReason.NO_ROTATION)
    owner = round_robin_owner(config.round_robin, next_index)
    slot = next_index % len(config.round_robin)
    rationale = (
        f"round-robin rule: the record has no owner and no territory matches; "
        f"{owner} is next in the rotation (slot {slot + 1} of {len(config.round_robin)})"
    )
    evidence = {
        "rule": OwnerRule.ROUND_ROBIN.value,
        "rotation": list(config.round_robin),
        "next_index": next_index,
        "slot": slot,
        "record_country": record.get(config.country_field),
        "record_state": record.get(config.state_field),
        "current_owner": current,
    }
    proposal = _proposal(
        event.object_type,
        event.record_id,
        event.source_system,
        event.source_event_id,
        config,
        current,
        owner,
        config.round_robin_confidence,
        rationale,
        evidence,
        _occasion(event, config),
    )
    return OwnerResult(proposal, OwnerReason.PROPOSED, consumed_round_robin=True)


def propose_owner(
    event: CrmEvent, record: Mapping[str, Any], config: OwnerConfig, next_index: int | None = None
) -> OwnerResult:
    """Territory first; an unowned record without territory then goes round-robin (when next_index given).

    ``record`` is the record's properties after the event is applied. Record events only
    (record_created, property_changed); see the module docstring for when the rules fire.
    """
    territorial = propose_territory_owner(event, record, config)
    if territorial.reason is not OwnerReason.NO_TERRITORY:
        return territorial
    if not is_empty(record.get(config.owner_field)):
        return territorial
    if next_index is None:
        return OwnerResult(None, OwnerReason.NO_ROTATION)
    return propose_round_robin(event, record, config, next_index)


# ---------------------------------------------------------------------------------------------------
# Deactivated owner


def propose_for_deactivated_owner(
    deactivated_owner_id: str,
    object_type: ObjectType,
    record_id: str,
    record: Mapping[str, Any],
    config: OwnerConfig,
    *,
    source_system: str,
    source_event_id: str,
    next_index: int | None = None,
) -> OwnerResult:
    """Reassign one record of a deactivated owner: territory owner, else fallback_owner, else round-robin.

    The caller fans the deactivation out over the records the owner holds (from its record state),
    passing the deactivation's source system and event id; the proposal id differs per record.
    The deactivated owner is never chosen: a territory naming them is skipped and they are taken
    out of the rotation.
    """
    current = record.get(config.owner_field)
    if not _same_owner(current, deactivated_owner_id):
        return OwnerResult(None, OwnerReason.NOT_OWNED_BY_DEACTIVATED)
    consumed = False
    territory = territory_for(record, config)
    evidence: dict[str, Any] = {
        "deactivated_owner": deactivated_owner_id,
        "record_country": record.get(config.country_field),
        "record_state": record.get(config.state_field),
        "current_owner": current,
        "territory": territory.model_dump(mode="json") if territory else None,
    }
    lead = f"owner {deactivated_owner_id} was deactivated"
    if territory is not None and not _same_owner(territory.owner, deactivated_owner_id):
        owner, confidence = territory.owner, config.territory_confidence
        evidence["rule"] = OwnerRule.DEACTIVATED_TERRITORY.value
        rationale = f"{lead}; territory rule: {_where(territory)} belongs to {owner}"
    else:
        no_territory = (
            "no territory matches the record"
            if territory is None
            else f"the territory {_where(territory)} belongs to the deactivated owner"
        )
        rotation = [o for o in config.round_robin if not _same_owner(o, deactivated_owner_id)]
        if config.fallback_owner is not None and not _same_owner(config.fallback_owner, deactivated_owner_id):
            owner, confidence = config.fallback_owner, config.fallback_confidence
            evidence["rule"] = OwnerRule.DEACTIVATED_FALLBACK.value
            rationale = f"{lead} and {no_territory}; {owner} is the configured fallback owner"
        elif rotation and next_index is not None:
            owner, confidence = round_robin_owner(rotation, next_index), config.round_robin_confidence
            slot = next_index % len(rotation)
            evidence.update(
                rule=OwnerRule.DEACTIVATED_ROUND_ROBIN.value,
                rotation=rotation,
                next_index=next_index,
                slot=slot,
            )
            rationale = (
                f"{lead} and {no_territory}; "
                f"{owner} is next in the rotation (slot {slot + 1} of {len(rotation)})"
            )
            consumed = True
        else:
            return OwnerResult(None, OwnerReason.NO_ROTATION)
    proposal = _proposal(
        object_type,
        record_id,
        source_system,
        source_event_id,
        config,
        current,
        owner,
        confidence,
        rationale,
        evidence,
        "deactivated",
    )
    return OwnerResult(proposal, OwnerReason.PROPOSED, consumed_round_robin=consumed)


# ---------------------------------------------------------------------------------------------------
# Helpers


def _territory_relevant(event: CrmEvent, config: OwnerConfig) -> bool:
    if event.kind is CrmEventKind.RECORD_CREATED:
        return True
    if event.kind is not CrmEventKind.PROPERTY_CHANGED:
        return False
    props = event.properties
    if config.country_field in props or config.state_field in props:
        return True
    return config.owner_field in props and is_empty(props[config.owner_field])


def _proposal(
    object_type: ObjectType,
    record_id: str,
    source_system: str,
    source_event_id: str,
    config: OwnerConfig,
    current: PropertyValue,
    owner: str,
    confidence: float,
    rationale: str,
    evidence: dict[str, Any],
    occasion: str,
) -> Proposal:
    """``occasion``: what made the rule fire (created, location_changed, owner_cleared,
    deactivated): with the rule and whether the record had an owner, the cell its confidence is
    measured in (taking an owned record from its owner is often a deliberate account decision)."""
    changes = [FieldChange(field=config.owner_field, previous=current, proposed=owner)]
    key = reliability.cell(DETECTOR, evidence["rule"], "unowned" if is_empty(current) else "owned", occasion)
    evidence = {
        **evidence,
        "occasion": occasion,
        reliability.BASIS: reliability.basis(
            [reliability.Cell(key, config.owner_field)], confidence, reliability.PriorFrom.CONFIGURED
        ),
    }
    return build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.OWNER_REASSIGNMENT,
        object_type=object_type,
        record_id=record_id,
        changes=changes,
        system=source_system,
        source_event_id=source_event_id,
        trigger=Trigger.RULE,
        confidence=confidence,
        rationale=rationale,
        evidence=evidence,
    )


def _occasion(event: CrmEvent, config: OwnerConfig) -> str:
    if event.kind is CrmEventKind.RECORD_CREATED:
        return "created"
    props = event.properties
    return (
        "location_changed"
        if config.country_field in props or config.state_field in props
        else "owner_cleared"
    )


def _key(value: PropertyValue, aliases: Mapping[str, str]) -> str:
    """Case- and whitespace-insensitive comparison key, through the alias table."""
    if is_empty(value):
        return ""
    text = " ".join(str(value).split()).casefold()
    return aliases.get(text, text)  # OwnerConfig normalises the alias tables the same way


def _same_owner(a: PropertyValue, b: PropertyValue) -> bool:
    """Owner ids compare as strings: HubSpot sends them as strings, some exports as numbers."""
    return not is_empty(a) and not is_empty(b) and str(a).strip() == str(b).strip()


def _where(territory: Territory) -> str:
    return f"{territory.country}/{territory.state}" if territory.state else territory.country
