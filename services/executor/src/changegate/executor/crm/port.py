"""The port every CRM adapter implements, and what it answers.

Reads resolve merged-away ids to their survivor; writes are compare-and-set (never over a value that
changed since the proposal); merges fold losers into a survivor (some CRMs give the result a new
id); owners are validated before they are assigned. An adapter declares what it can do, so the
executor can respect a CRM's limits (HubSpot: 100 inputs a batch; Salesforce: 3 records a merge and
a native conditional update)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from changegate.core.contracts import FieldChange, FieldWrite, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.core.errors import TransientError

# Called with the values the CRM holds, after the compare and before the write.
BeforeWrite = Callable[[dict[str, PropertyValue]], Awaitable[None]]
# The same for a batch: the values of each record about to be written, by its position in the batch.
BeforeWriteMany = Callable[[dict[int, dict[str, PropertyValue]]], Awaitable[None]]


@dataclass(frozen=True)
class Capabilities:
    conditional_write: bool  # the CRM itself refuses a stale write (else: read, compare, write, re-read)
    max_batch: int  # records per batch read or write
    max_merge_records: int  # records one merge call may fold together (survivor included)
    merge_gives_new_id: bool  # the merged record gets an id of its own that the old ids resolve to
    owners: bool  # owners can be validated


@dataclass(frozen=True)
class RecordState:
    """A record as the CRM holds it; ``record_id`` is where the asked-for id resolves to."""

    record_id: str
    properties: dict[str, PropertyValue]


class WriteStatus(StrEnum):
    APPLIED = "applied"
    CONFLICT = "conflict"  # a field no longer holds the proposal's previous value: nothing written
    NOOP = "noop"  # every field already holds the proposed value: nothing to write


@dataclass(frozen=True)
class WriteResult:
    status: WriteStatus
    writes: list[FieldWrite]
    current: dict[str, PropertyValue]  # what the CRM held before (for a conflict's re-proposal)
    conflicts: list[str] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)
    note: str | None = None  # e.g. the re-read saw another writer's value right after ours


@dataclass(frozen=True)
class MergeResult:
    merged_id: str  # the record the losers now resolve to (a new id on CRMs that make one)
    response_ids: list[str] = field(default_factory=list)


class OwnerStatus(StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"
    UNKNOWN = "unknown"


class CrmUnavailableError(TransientError):
    """The CRM cannot be reached or keeps refusing for now (429, 423, 5xx, timeouts): retried
    without end (the circuit breaker pauses consumption meanwhile)."""


class CrmRefusedError(Exception):
    """The CRM refuses the change for good as it stands (a validation error, an archived owner,
    a missing permission): dead-lettered with the error; replayed once the cause is fixed."""


class RecordNotFoundError(Exception):
    """The record is gone (deleted, never existed): the execution fails, for good."""


@dataclass(frozen=True)
class WriteItem:
    """One record's compare-and-set in a batch write."""

    record_id: str
    changes: Sequence[FieldChange]


# Per item of a batch write: its result, or why it failed alone (RecordNotFoundError,
# CrmRefusedError); an outage (CrmUnavailableError) fails the whole call instead.
WriteOutcome = WriteResult | RecordNotFoundError | CrmRefusedError


class CrmAdapter(Protocol):
    """What the executor needs of a CRM."""

    target: str
    capabilities: Capabilities

    async def read(
        self, object_type: ObjectType, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        """The records asked for, by the id asked with; a missing one is absent from the answer."""
        ...

    async def write(
        self,
        object_type: ObjectType,
        record_id: str,
        changes: Sequence[FieldChange],
        before_write: BeforeWrite | None = None,
    ) -> WriteResult:
        """Compare-and-set: write every change only if every field still holds its ``previous``;
        ``before_write`` gets the values read, right before the write (the ledger records them)."""
        ...

    async def write_many(
        self, object_type: ObjectType, items: Sequence[WriteItem], before_write: BeforeWriteMany | None = None
    ) -> list[WriteOutcome]:
        """``write`` for many records at once (the CRM's batch calls), results in the items' order;
        ``before_write`` is called once, with every record about to be written."""
        ...

    async def merge(self, object_type: ObjectType, survivor: str, losers: Sequence[str]) -> MergeResult:
        """Fold ``losers`` into ``survivor`` (its own values kept; the survivorship fills are written
        before, as a compare-and-set)."""
        ...

    async def owner_status(self, owner_id: str) -> OwnerStatus: ...

    async def close(self) -> None: ...


class BatchWriter:
    """``write`` of one record through the adapter's ``write_many``."""

    async def write_many(
        self, object_type: ObjectType, items: Sequence[WriteItem], before_write: BeforeWriteMany | None = None
    ) -> list[WriteOutcome]:
        raise NotImplementedError

    async def write(
        self,
        object_type: ObjectType,
        record_id: str,
        changes: Sequence[FieldChange],
        before_write: BeforeWrite | None = None,
    ) -> WriteResult:
        async def before(values: dict[int, dict[str, PropertyValue]]) -> None:
            if before_write is not None:
                await before_write(values[0])

        [outcome] = await self.write_many(object_type, [WriteItem(record_id, changes)], before)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
