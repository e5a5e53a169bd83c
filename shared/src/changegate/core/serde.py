"""JSON (de)serialisation of envelopes on the wire."""

from __future__ import annotations

import json
from typing import Any

from changegate.core.contracts.envelope import (
    EVENT_TYPES,
    Envelope,
    UnknownEventError,
    _AnyEnvelope,
    parse_envelope,
    typed_envelope,
)
from pydantic import ValidationError


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()


def decode(value: bytes | None, expected: set[str] | None = None) -> Envelope[Any]:
    """Bytes to a validated, upcast envelope, or UnknownEventError saying what is wrong."""
    if value is None:
        raise UnknownEventError("empty message (tombstone)")
    if expected is not None and len(expected) == 1:
        # Fast path for the common case, a current-version message of the one expected type:
        # pydantic parses and validates the JSON in one pass. Anything else takes the general path,
        # which upcasts older versions and says precisely what is wrong.
        (event_type,) = expected
        try:
            typed = typed_envelope(event_type).model_validate_json(value)
        except ValidationError:
            pass
        else:
            fields = dict(typed)
            if (
                fields["event_type"] == event_type
                and fields["schema_version"] == EVENT_TYPES[event_type].version
            ):
                return _AnyEnvelope.model_construct(**fields)
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnknownEventError(f"not JSON: {exc}") from exc
    return parse_envelope(raw, expected)
