"""Declarative mappings: JMESPath selectors from a source's payload (or each record of a batch) to
the fields of a CrmEvent. A constant is a JMESPath literal: ``'contact'`` (raw string) or
``` `0.9` ``` (JSON). Whatever a selector finds is checked: a missing or ill-typed value is a 422
naming the field, never a half-produced request."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import jmespath
import rfc8785
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import MAX_PROPERTIES
from changegate.ingest.refusals import PayloadError
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MAX_RECORDS = 1000
_SCALARS = (str, int, float, bool, type(None))
Loc = list[str | int]


def _compiles(expression: str) -> str:
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"not a JMESPath expression: {expression!r} ({str(exc).splitlines()[0]})") from exc
    return expression


Selector = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_compiles)]


class MappingSpec(BaseModel):
    """Where each CrmEvent field is in the payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    records: Selector | None = Field(None, description="the list of records of a batch; unset: one record")
    when: Selector | None = Field(
        None,
        description="a record produces an event only where this is true (e.g. one event type of several "
        "the source sends); the others are acknowledged and counted as ignored",
    )
    record_id: Selector = Field(description="the CRM record id (a string or an integer)")
    object_type: Selector = Field(description="contact or company")
    kind: Selector = Field(description="a CrmEvent kind, e.g. 'enrichment_result'")
    properties: Selector | None = Field(None, description="an object of property name -> scalar value")
    confidence: Selector | None = Field(None, description="the source's confidence in [0, 1]")
    source_event_id: Selector | None = Field(
        None,
        description="the source's own id of the event (a redelivery carries the same); unset: a hash of "
        "the record, so an identical record sent again is the same event",
    )
    occurred_at: Selector | None = Field(
        None, description="ISO 8601, or seconds / milliseconds since the epoch"
    )
    source_system: Selector | None = Field(None, description="unset: the source's name")


@dataclass(frozen=True)
class Mapped:
    """A request's events to produce (each with its dedup key), and how many records it carried
    that the mapping's ``when`` left out."""

    events: list[tuple[CrmEvent, str]]
    ignored: int


@dataclass(frozen=True)
class Mapping:
    """A mapping with its selectors compiled, applied to payloads of one source."""

    spec: MappingSpec
    compiled: dict[str, ParsedResult]

    @classmethod
    def of(cls, spec: MappingSpec) -> Mapping:
        fields = spec.model_dump(exclude={"description"}, exclude_none=True)
        return cls(spec, {name: jmespath.compile(expr) for name, expr in fields.items()})

    def apply(self, source: str, payload: Any) -> Mapped:
        """The payload's CrmEvents, each with its dedup key; PayloadError naming the first field
        that cannot be read (nothing of the request is produced then)."""
        if "records" in self.compiled:
            records = self._find("records", payload, ["body"])
            if not isinstance(records, list):
                raise PayloadError(
                    ["body", "records"],
                    f"the selector {self.spec.records!r} found {_what(records)}, not a list of records",
                    "list_type",
                )
            if len(records) > MAX_RECORDS:
                raise PayloadError(["body", "records"], f"{len(records)} records, more than {MAX_RECORDS}")
            located: list[tuple[Loc, Any]] = [(["body", "records", i], r) for i, r in enumerate(records)]
        else:
            located = [(["body"], payload)]
        events, ignored = [], 0
        for loc, record in located:
            if "when" in self.compiled and not _truthy(self._find("when", record, loc)):
                ignored += 1
                continue
            events.append(self._event(source, loc, record))
        return Mapped(events, ignored)

    def _find(self, field: str, record: Any, loc: Loc) -> Any:
        expression = self.compiled.get(field)
        if expression is None:
            return None
        try:
            return expression.search(record)
        except JMESPathError as exc:  # e.g. a function given a value of the wrong type
            raise PayloadError(
                [*loc, field], f"the selector {getattr(self.spec, field)!r} cannot read it: {exc}"
            ) from exc

    def _required(self, field: str, record: Any, loc: Loc, check: Callable[[Any], bool], wanted: str) -> Any:
        value = self._find(field, record, loc)
        if value is None:
            raise PayloadError(
                [*loc, field], f"the selector {getattr(self.spec, field)!r} found nothing", "missing"
            )
        if not check(value):
            raise PayloadError([*loc, field], f"{_what(value)} is not {wanted}")
        return value

    def _event(self, source: str, loc: Loc, record: Any) -> tuple[CrmEvent, str]:
        record_id = self._required("record_id", record, loc, _is_id, "a record id (a string or an integer)")
        object_type = self._required(
            "object_type", record, loc, lambda v: v in set(ObjectType), f"one of {sorted(ObjectType)}"
        )
        kind = self._required("kind", record, loc, lambda v: v in set(CrmEventKind), "a CrmEvent kind")
        properties = self._find("properties", record, loc)
        if properties is None:
            properties = {}
        if not isinstance(properties, dict):
            raise PayloadError([*loc, "properties"], f"{_what(properties)} is not an object of properties")
        if len(properties) > MAX_PROPERTIES:
            raise PayloadError([*loc, "properties"], f"more than {MAX_PROPERTIES} properties")
        for name, value in properties.items():
            if not isinstance(value, _SCALARS):
                raise PayloadError([*loc, "properties", name], f"{_what(value)} is not a single value")
        confidence = self._find("confidence", record, loc)
        if confidence is not None and (
            isinstance(confidence, bool) or not isinstance(confidence, int | float)
        ):
            raise PayloadError([*loc, "confidence"], f"{_what(confidence)} is not a number")
        if "source_event_id" in self.compiled:
            event_id = self._required("source_event_id", record, loc, _is_id, "an event id")
        else:
            event_id = f"sha256:{_fingerprint(record)}"
        system = self._find("source_system", record, loc)
        if system is None:
            system = source
        elif not isinstance(system, str):
            raise PayloadError([*loc, "source_system"], f"{_what(system)} is not a name")
        occurred_at = _timestamp(self._find("occurred_at", record, loc), [*loc, "occurred_at"])
        try:
            event = CrmEvent(
                source_system=system,
                source_event_id=str(event_id),
                object_type=object_type,
                record_id=str(record_id),
                kind=kind,
                properties=properties,
                confidence=confidence,
                occurred_at=occurred_at,
                requested_by=f"ingest:{source}",
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PayloadError([*loc, *first["loc"]], first["msg"], first["type"]) from exc
        return event, f"{source}|{event_id}"


def _truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, empty strings, lists and objects are false (0 is true)."""
    return not (value is None or value is False or (isinstance(value, str | list | dict) and not value))


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= 256 and value.strip() == value) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _what(value: Any) -> str:
    if value is None:
        return "nothing"
    text = json.dumps(value, default=str)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _fingerprint(record: Any) -> str:
    """A stable id for a source that sends none: the same record sent twice is the same event."""
    try:
        canonical = rfc8785.dumps(record)
    except Exception:  # outside RFC 8785's number domain (big integers): a sorted dump is stable too
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def _timestamp(value: Any, loc: Loc) -> datetime | None:
    """ISO 8601 (a time without an offset is UTC, as ZeroBounce's processed_at), or a number of
    seconds — milliseconds when it is too large to be seconds (≥ 1e11, i.e. after the year 5138)."""
    if value is None:
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000 if abs(value) >= 1e11 else value, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise PayloadError(
        loc, f"{_what(value)} is not a time (ISO 8601, or seconds since the epoch)", "datetime_parsing"
    )
