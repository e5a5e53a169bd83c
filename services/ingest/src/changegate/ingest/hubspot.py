"""HubSpot webhooks: a batch of webhook events as CrmEvents (the request signature is checked
first, by ``signatures.verify_hubspot_v3``). The event
fields are those of HubSpot's Webhooks API: eventId, portalId, occurredAt, subscriptionType,
objectId, propertyName/propertyValue, changeSource/sourceId, primaryObjectId/mergedObjectIds/
newObjectId for merges, fromObjectId/toObjectId/associationType for association changes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyName, PropertyValue
from changegate.ingest.refusals import PayloadError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

SOURCE = "hubspot"
MAX_ID = 2**63 - 1
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_BATCH = 1000  # HubSpot sends at most 100 events a request; a margin, not an invitation
# HubSpot's contact property for the primary associated company.
PRIMARY_COMPANY_PROPERTY = "associatedcompanyid"


class HubSpotEvent(BaseModel):
    """One event of a webhook batch. Unknown fields are allowed (HubSpot adds some over time)."""

    # Strict: the document says integer and boolean, so 1.0 or 0 for them is refused, not coerced.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True, strict=True
    )

    event_id: int = Field(ge=0, le=MAX_ID)
    portal_id: int = Field(ge=0, le=MAX_ID)
    occurred_at: int = Field(ge=0, le=MAX_EPOCH_MS, description="milliseconds since the epoch")
    subscription_type: str = Field(min_length=1, max_length=100, description="e.g. contact.propertyChange")
    attempt_number: int | None = Field(None, ge=0, le=1000)
    object_id: int | None = Field(None, ge=0, le=MAX_ID)
    object_type_id: str | None = Field(
        None, max_length=50, description="generic webhooks (object.*): 0-1 contact, 0-2 company"
    )
    change_source: str | None = Field(None, max_length=200)
    source_id: str | None = Field(None, max_length=200, description="who made the change (user or app)")
    property_name: PropertyName | None = None
    property_value: PropertyValue = None
    primary_object_id: int | None = Field(None, ge=0, le=MAX_ID)
    merged_object_ids: list[int] | None = Field(None, max_length=MAX_BATCH)
    new_object_id: int | None = Field(None, ge=0, le=MAX_ID)
    association_type: str | None = Field(None, max_length=100, description="e.g. CONTACT_TO_COMPANY")
    from_object_id: int | None = Field(None, ge=0, le=MAX_ID)
    to_object_id: int | None = Field(None, ge=0, le=MAX_ID)
    association_removed: bool | None = None
    is_primary_association: bool | None = None


# Legacy subscription prefixes (contact.creation) and generic ones (object.creation + objectTypeId).
OBJECT_TYPES = {"contact": ObjectType.CONTACT, "company": ObjectType.COMPANY}
OBJECT_TYPE_IDS = {"0-1": ObjectType.CONTACT, "0-2": ObjectType.COMPANY}
ACTIONS = {
    "creation": CrmEventKind.RECORD_CREATED,
    # A restored record exists again: the detector un-deletes it and keeps what it knew of it.
    "restore": CrmEventKind.RECORD_CREATED,
    "propertyChange": CrmEventKind.PROPERTY_CHANGED,
    "deletion": CrmEventKind.RECORD_DELETED,
    "privacyDeletion": CrmEventKind.RECORD_DELETED,
    "merge": CrmEventKind.RECORD_MERGED,
    # Only a contact's primary company is kept (as HubSpot's associatedcompanyid property).
    "associationChange": CrmEventKind.PROPERTY_CHANGED,
}


@dataclass(frozen=True)
class Mapped:
    """What one request becomes: events to produce, each with its dedup key (the same HubSpot event
    always gives the same key), and the subscription types acknowledged without a CrmEvent."""

    events: list[tuple[CrmEvent, str]]
    ignored: list[str]


def parse_batch(payload: Any) -> list[HubSpotEvent]:
    """HubSpot posts a JSON array of events; each must carry the fields every event has."""
    if not isinstance(payload, list):
        raise PayloadError(["body"], "HubSpot sends a JSON array of events", "list_type")
    if not payload:
        raise PayloadError(["body"], "the batch holds no event", "too_short")
    if len(payload) > MAX_BATCH:
        raise PayloadError(["body"], f"{len(payload)} events, more than {MAX_BATCH}", "too_long")
    events = []
    for i, raw in enumerate(payload):
        try:
            events.append(HubSpotEvent.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PayloadError(["body", i, *first["loc"]], first["msg"], first["type"]) from exc
    return events


def to_crm_events(events: Sequence[HubSpotEvent], echo_source_ids: Collection[str]) -> Mapped:
    """Each event that concerns a contact or a company as a CrmEvent keyed by its record (for a
    merge: the record that remains). ``echo_source_ids``: the sourceId values of changegate's own
    app; its writes come back marked ``echo``."""
    mapped: list[tuple[CrmEvent, str]] = []
    ignored: list[str] = []
    for i, event in enumerate(events):
        found = _object_and_kind(event)
        if found is None:
            ignored.append(event.subscription_type)
            continue
        object_type, kind = found
        action = event.subscription_type.partition(".")[2]
        if action == "associationChange":
            association = _primary_company(event, object_type, i)
            if association is None:
                ignored.append(event.subscription_type)
                continue
            record_id, properties = association
        else:
            record_id, properties = _record_id(event, kind, i), _properties(event, kind, i)
        key = f"{event.portal_id}:{event.event_id}"
        try:
            crm_event = CrmEvent(
                source_system=SOURCE,
                source_event_id=key,
                object_type=object_type,
                record_id=str(record_id),
                kind=kind,
                properties=properties,
                merged_record_ids=_merged_ids(event, kind),
                occurred_at=datetime.fromtimestamp(event.occurred_at / 1000, UTC),
                requested_by=f"ingest:{SOURCE}",
                echo=event.source_id is not None and event.source_id in echo_source_ids,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PayloadError(["body", i, *first["loc"]], first["msg"], first["type"]) from exc
        mapped.append((crm_event, f"{SOURCE}|{key}"))
    return Mapped(mapped, ignored)


def _object_and_kind(event: HubSpotEvent) -> tuple[ObjectType, CrmEventKind] | None:
    prefix, _, action = event.subscription_type.partition(".")
    if prefix == "object":
        object_type = OBJECT_TYPE_IDS.get(event.object_type_id or "")
    else:
        object_type = OBJECT_TYPES.get(prefix)
    kind = ACTIONS.get(action)
    if object_type is None or kind is None:
        return None
    return object_type, kind


def _record_id(event: HubSpotEvent, kind: CrmEventKind, i: int) -> int:
    if kind is CrmEventKind.RECORD_MERGED:
        # The record that remains: a merge may create a new one (newObjectId), else the primary.
        survivor = event.new_object_id if event.new_object_id is not None else event.primary_object_id
        if survivor is None:
            raise _missing(i, "primaryObjectId", event)
        if not event.merged_object_ids:
            raise _missing(i, "mergedObjectIds", event)
        return survivor
    if event.object_id is None:
        raise _missing(i, "objectId", event)
    return event.object_id


def _merged_ids(event: HubSpotEvent, kind: CrmEventKind) -> list[str]:
    if kind is not CrmEventKind.RECORD_MERGED:
        return []
    gone = list(event.merged_object_ids or [])
    primary = event.primary_object_id
    if event.new_object_id is not None and primary is not None and primary != event.new_object_id:
        gone.append(primary)  # merged into a new record: the primary is gone too
    return [str(g) for g in dict.fromkeys(gone)]


def _properties(event: HubSpotEvent, kind: CrmEventKind, i: int) -> dict[str, PropertyValue]:
    if kind is not CrmEventKind.PROPERTY_CHANGED:
        return {}  # HubSpot's other events carry no property values
    if event.property_name is None:
        raise _missing(i, "propertyName", event)
    return {event.property_name: event.property_value}


def _primary_company(
    event: HubSpotEvent, object_type: ObjectType, i: int
) -> tuple[int, dict[str, PropertyValue]] | None:
    """A contact's primary company association, added or removed, as its associatedcompanyid; any
    other association (secondary, company-side, deals, …) is acknowledged and not produced."""
    if not (
        object_type is ObjectType.CONTACT
        and event.association_type == "CONTACT_TO_COMPANY"
        and event.is_primary_association
    ):
        return None
    contact, company = event.from_object_id, event.to_object_id
    if contact is None:
        raise _missing(i, "fromObjectId", event)
    if company is None:
        raise _missing(i, "toObjectId", event)
    return contact, {PRIMARY_COMPANY_PROPERTY: None if event.association_removed else str(company)}


def _missing(i: int, field: str, event: HubSpotEvent) -> PayloadError:
    return PayloadError(["body", i, field], f"a {event.subscription_type} event needs {field}", "missing")
