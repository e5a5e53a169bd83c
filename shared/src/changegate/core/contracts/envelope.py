"""The envelope every message travels in, and the registry of event types and their versions."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from changegate.core import __version__
from changegate.core.contracts.audit import AuditEntry
from changegate.core.contracts.base import Contract, UtcDatetime, utcnow
from changegate.core.contracts.crm_event import CrmEvent
from changegate.core.contracts.decision import Decision
from changegate.core.contracts.execution import Execution
from changegate.core.contracts.proposal import Proposal
from changegate.core.contracts.record_change import RecordChange
from changegate.core.contracts.review_request import ReviewRequest
from pydantic import BaseModel, Field, StrictInt, ValidationError

P = TypeVar("P", bound=BaseModel)
ENVELOPE_NAMESPACE = uuid.UUID("f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9")

RawPayload = dict[str, Any]
Upcaster = Callable[[RawPayload], RawPayload]


class Producer(Contract):
    service: str
    version: str = __version__


class Envelope(Contract, Generic[P]):
    event_id: uuid.UUID = Field(description="unique per event; consumers deduplicate on it")
    event_type: str
    schema_version: StrictInt = Field(ge=1)
    occurred_at: UtcDatetime
    correlation_id: uuid.UUID | None = Field(
        None, description="the proposal's id, carried end to end (absent on CRM events)"
    )
    producer: Producer
    payload: P


# Subscripting a generic model is a cache lookup that costs more than the validation; do it once.
_AnyEnvelope = Envelope[Any]


@dataclass(frozen=True)
class EventType:
    """One registered event type: its payload model, current version and upcasters.

    ``upcasters[n]`` turns a version-n payload into version n+1, so a consumer accepts every older
    version it knows and sees only the current shape."""

    name: str
    model: type[BaseModel]
    version: int
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    def upcast(self, payload: RawPayload, version: int) -> RawPayload:
        if version > self.version:
            raise UnknownEventError(f"{self.name} v{version} is newer than v{self.version}")
        for v in range(version, self.version):
            if v not in self.upcasters:
                raise UnknownEventError(f"{self.name} v{v} has no upcaster to v{v + 1}")
            payload = self.upcasters[v](payload)
        return payload


class UnknownEventError(ValueError):
    """A message this consumer cannot understand: it goes to the dead-letter topic."""

    reason = "undecodable"  # the dead letter's reason header


def _same(payload: RawPayload) -> RawPayload:
    return payload


EVENT_TYPES: dict[str, EventType] = {
    et.name: et
    for et in (
        # v2 added optional fields (requested_by; signature): a v1 payload is a valid v2 one.
        # v3: proposals and review requests carry a signature (decisions and executions embed
        # proposals); an older payload is a valid v3 one, which consumers refuse as unsigned.
        EventType("crm_event", CrmEvent, 2, {1: _same}),
        EventType("proposal", Proposal, 3, {1: _same, 2: _same}),
        # review_request v4 added required_approvals (default 1): older payloads are valid v4 ones.
        EventType("review_request", ReviewRequest, 4, {1: _same, 2: _same, 3: _same}),
        EventType("decision", Decision, 3, {1: _same, 2: _same}),
        EventType("execution", Execution, 3, {1: _same, 2: _same}),
        EventType("audit_entry", AuditEntry, 2, {1: _same}),  # v2: approved_with_changes, proposed_value
        EventType("record_change", RecordChange, 1),
    )
}
EVENT_TYPE_OF: dict[type[BaseModel], str] = {et.model: et.name for et in EVENT_TYPES.values()}


def make_envelope(
    payload: BaseModel,
    *,
    service: str,
    correlation_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    dedup_key: str | None = None,
) -> Envelope[Any]:
    """Wrap a payload. Pass ``dedup_key`` when the same logical event may be produced again
    (redelivery, replay): its event id is then derived from it, so consumers see one event."""
    event_type = EVENT_TYPE_OF[type(payload)]
    if event_id is None:
        event_id = uuid.uuid5(ENVELOPE_NAMESPACE, f"{event_type}|{dedup_key}") if dedup_key else uuid.uuid4()
    # Every field is built right here from validated parts: skip re-validation (hot path).
    return _AnyEnvelope.model_construct(
        event_id=event_id,
        event_type=event_type,
        schema_version=EVENT_TYPES[event_type].version,
        occurred_at=utcnow(),
        correlation_id=correlation_id,
        producer=_producer(service),
        payload=payload,
    )


@functools.cache
def _producer(service: str) -> Producer:
    return Producer(service=service)


@functools.cache
def typed_envelope(event_type: str) -> type[BaseModel]:
    """``Envelope[<payload model>]`` of a registered event type (validates JSON in one pass)."""
    envelope: type[BaseModel] = Envelope[EVENT_TYPES[event_type].model]  # type: ignore[misc,assignment]
    return envelope


def parse_envelope(raw: dict[str, Any], expected: set[str] | None = None) -> Envelope[Any]:
    """Validate an envelope and its payload, upcasting older versions.

    Raises UnknownEventError for anything a consumer must not process (it is dead-lettered)."""
    if not isinstance(raw, dict):
        raise UnknownEventError("message is not a JSON object")
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise UnknownEventError(f"unknown event_type {event_type!r}")
    if expected is not None and event_type not in expected:
        raise UnknownEventError(f"event_type {event_type!r} not expected here ({sorted(expected)})")
    et = EVENT_TYPES[event_type]
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnknownEventError(f"invalid schema_version {version!r}")
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise UnknownEventError("payload is not a JSON object")
    try:
        upcast = et.upcast(payload, version)
        model = et.model.model_validate(upcast)
        return _AnyEnvelope.model_validate({**raw, "schema_version": et.version, "payload": model})
    except ValidationError as exc:
        raise UnknownEventError(f"invalid {event_type} v{version}: {_short(exc)}") from exc


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)
