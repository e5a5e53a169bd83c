"""JSON (de)serialisation of envelopes on the wire."""

from __future__ import annotations

import json
from typing import Any

from changegate.core.contracts.envelope import Envelope, UnknownEventError, parse_envelope


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()


def decode(value: bytes | None, expected: set[str] | None = None) -> Envelope[Any]:
    """Bytes to a validated, upcast envelope, or UnknownEventError saying what is wrong."""
    if value is None:
        raise UnknownEventError("empty message (tombstone)")
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnknownEventError(f"not JSON: {exc}") from exc
    return parse_envelope(raw, expected)
