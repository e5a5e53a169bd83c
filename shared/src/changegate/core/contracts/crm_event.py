"""CrmEvent: something happened in a CRM or in a pipeline beside it (Clay, a verifier, scoring)."""

from __future__ import annotations

from enum import StrEnum

from changegate.core.contracts.base import MAX_PROPERTIES, Contract, PropertyName, PropertyValue, UtcDatetime
from pydantic import Field


class ObjectType(StrEnum):
    CONTACT = "contact"
    COMPANY = "company"


class CrmEventKind(StrEnum):
    RECORD_CREATED = "record_created"
    PROPERTY_CHANGED = "property_changed"
    RECORD_MERGED = "record_merged"
    RECORD_DELETED = "record_deleted"
    ENRICHMENT_RESULT = "enrichment_result"
    VERIFICATION_RESULT = "verification_result"
    SCORE = "score"
    LIFECYCLE_EVENT = "lifecycle_event"
    OWNER_DEACTIVATED = "owner_deactivated"  # record_id: the owner; object_type: whose records to move


class CrmEvent(Contract):
    source_system: str = Field(
        description="hubspot, salesforce, clay, verifier, scoring, forms, …", min_length=1
    )
    source_event_id: str = Field(description="the source's own id of this event", min_length=1)
    object_type: ObjectType
    record_id: str = Field(min_length=1, description="CRM id of the record the event is about")
    kind: CrmEventKind
    properties: dict[PropertyName, PropertyValue] = Field(
        default_factory=dict,
        max_length=MAX_PROPERTIES,
        description="record properties (created/changed) or result values (enrichment, verification)",
    )
    merged_record_ids: list[str] = Field(
        default_factory=list, description="for record_merged: the ids merged into record_id"
    )
    confidence: float | None = Field(
        None, ge=0, le=1, description="the source's own confidence in its result, when it gives one"
    )
    occurred_at: UtcDatetime | None = Field(None, description="when it happened at the source")
    requested_by: str | None = Field(
        None,
        max_length=256,
        description="who caused the event, when known (the authenticated source or person); a reviewer "
        "may not approve a proposal they requested",
    )
    # Optional with a default, written only when true: every v2 consumer reads the events it always
    # did unchanged, so no version bump. One that predates the field dead-letters an echo (it forbids
    # unknown fields) rather than proposing from it — the safe side — until it is upgraded.
    echo: bool = Field(
        False,
        exclude_if=lambda echo: echo is False,
        description="true when the CRM reports a change changegate itself applied (its own app wrote it): "
        "consumers update what they know of the record and propose nothing from it",
    )
    # Like echo: optional, written only when true, so no version bump.
    redetect: bool = Field(
        False,
        exclude_if=lambda redetect: redetect is False,
        description="true on a copy `changegate replay` sent to detect again (after a model or detector "
        "upgrade): the detector re-examines the record against what it knows now and does not fold "
        "the event's properties into it (later events know better)",
    )
