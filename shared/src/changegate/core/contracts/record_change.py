"""RecordChange: the detector's changelog — a record it knows changed (or is gone)."""

from __future__ import annotations

from changegate.core.contracts.base import Contract
from changegate.core.contracts.crm_event import ObjectType
from pydantic import Field


class RecordChange(Contract):
    """The detector wrote what it knows of a record (its PostgreSQL state): every detector replica
    reads the changelog in full, in order, and re-reads the record from the database, so each
    replica's in-process index holds what the others learnt. It carries no properties: a message
    on it can make a replica read a record again, never make it believe anything."""

    object_type: ObjectType
    record_id: str = Field(min_length=1, max_length=256)
    writer: str = Field(
        min_length=1, max_length=64, description="the detector replica (one run of a process) that wrote it"
    )
    seen: int = Field(
        ge=0,
        description="the changelog offset up to which the writer's index held other replicas' changes "
        "when it searched this record's duplicates",
    )
    searched: bool = Field(description="the writer searched the record's duplicates with this change")
    source_system: str = Field(min_length=1, max_length=256, description="of the event that changed it")
    source_event_id: str = Field(min_length=1, max_length=1024, description="of the event that changed it")
