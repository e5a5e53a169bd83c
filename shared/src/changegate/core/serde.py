"""JSON (de)serialisation of envelopes on the wire, with limits on what a message may hold.

Anyone who can reach the broker can publish, so decoding is a trust boundary: ``decode`` either
returns a validated, upcast envelope or raises ``UnknownEventError`` saying what is wrong — for any
input whatsoever (the caller dead-letters it). Limits are checked before parsing where the bytes
tell (size), and on the parsed tree otherwise (nesting depth, string length, NUL, duplicate keys)."""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from changegate.core.contracts.envelope import (
    EVENT_TYPES,
    Envelope,
    UnknownEventError,
    parse_envelope,
    typed_envelope,
)
from pydantic import ValidationError


class MessageTooLargeError(UnknownEventError):
    """Over the byte limit: refused before parsing."""

    reason = "too_large"


@dataclass(frozen=True)
class MessageLimits:
    """What one message may hold. Contracts add their own (properties per event, value length)."""

    max_bytes: int = 1_048_576
    max_depth: int = 32
    max_string_length: int = 65_536


DEFAULT_LIMITS = MessageLimits()
# A lone UTF-16 surrogate escape: valid JSON text, but no UTF-8 (nor PostgreSQL text) can hold it.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()


def decode(
    value: bytes | None, expected: set[str] | None = None, limits: MessageLimits = DEFAULT_LIMITS
) -> Envelope[Any]:
    """Bytes to a validated, upcast envelope, or UnknownEventError saying what is wrong."""
    if value is None:
        raise UnknownEventError("empty message (tombstone)")
    if not value:
        raise UnknownEventError("empty message (no bytes)")
    if len(value) > limits.max_bytes:
        raise MessageTooLargeError(f"message of {len(value)} bytes is over the limit of {limits.max_bytes}")
    try:
        raw = _parse(value, limits)
        return _validate(raw, expected)
    except UnknownEventError:
        raise
    except Exception as exc:  # whatever the input provokes, it is the message's fault
        raise UnknownEventError(f"undecodable: {type(exc).__name__}: {str(exc)[:500]}") from exc


def parse_json(value: bytes, limits: MessageLimits = DEFAULT_LIMITS) -> Any:
    """Strict JSON at any boundary (a webhook body as much as a message): UnknownEventError saying
    what is wrong — not JSON, a duplicate key, NaN/Infinity, a number overflowing a double, nesting
    or a string over the limits, NUL or a lone surrogate — whatever the input."""
    if len(value) > limits.max_bytes:
        raise MessageTooLargeError(f"{len(value)} bytes is over the limit of {limits.max_bytes}")
    try:
        return _parse(value, limits)
    except UnknownEventError:
        raise
    except Exception as exc:  # whatever the input provokes, it is the input's fault
        raise UnknownEventError(f"{type(exc).__name__}: {str(exc)[:500]}") from exc


def _parse(value: bytes, limits: MessageLimits) -> Any:
    try:
        raw = _DECODER.decode(value.decode(json.detect_encoding(value), "surrogatepass"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnknownEventError(f"not JSON: {exc}") from exc
    except RecursionError as exc:
        raise UnknownEventError(f"nested deeper than {limits.max_depth} levels") from exc
    # The raw bytes say cheaply when the tree cannot break a limit: fewer brackets than the depth
    # limit, fewer bytes than the string limit, no \u0000 or surrogate escape (JSON text cannot
    # carry a raw NUL). Only a message that might is walked.
    strings = _StringChecks(
        max_length=limits.max_string_length if len(value) > limits.max_string_length else None,
        nul=b"\\u0000" in value,
        surrogates=_SURROGATE_ESCAPE.search(value) is not None,
    )
    depth = value.count(b"{") + value.count(b"[") >= limits.max_depth
    if depth or strings.any:
        _check_tree(raw, limits.max_depth, strings)
    return raw


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise UnknownEventError(f"duplicate key {dup[:100]!r} in a JSON object")
    return obj


def _no_constant(name: str) -> NoReturn:
    raise UnknownEventError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise UnknownEventError(f"number {text[:50]} overflows a double")
    return number


@dataclass(frozen=True)
class _StringChecks:
    max_length: int | None
    nul: bool
    surrogates: bool

    @property
    def any(self) -> bool:
        return self.max_length is not None or self.nul or self.surrogates

    def check(self, text: str) -> None:
        if self.max_length is not None and len(text) > self.max_length:
            raise UnknownEventError(
                f"a string of {len(text)} characters is over the limit of {self.max_length}"
            )
        if self.nul and "\x00" in text:
            raise UnknownEventError("a string holds a NUL character")
        if self.surrogates:
            try:
                text.encode()
            except UnicodeEncodeError as exc:
                raise UnknownEventError("a string holds a lone UTF-16 surrogate") from exc


# json.loads with these options, built once (loads builds a decoder per call when given options).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant, parse_float=_finite
)


def _check_tree(root: Any, max_depth: int, strings: _StringChecks) -> None:
    """Depth of every container, and each key and string value (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is dict or kind is list:
            if depth >= max_depth:
                raise UnknownEventError(f"nested deeper than {max_depth} levels")
            if kind is dict:
                if strings.any:
                    for key in node:
                        strings.check(key)
                stack.extend((item, depth + 1) for item in node.values())
            else:
                stack.extend((item, depth + 1) for item in node)
        elif kind is str and strings.any:
            strings.check(node)


def _validate(raw: Any, expected: set[str] | None) -> Envelope[Any]:
    if expected is not None and len(expected) == 1 and isinstance(raw, dict):
        # Fast path for the common case, a current-version message of the one expected type: one
        # validation pass. Anything else takes the general path, which upcasts older versions and
        # says precisely what is wrong.
        (event_type,) = expected
        if raw.get("event_type") == event_type and _is_current(raw.get("schema_version"), event_type):
            with contextlib.suppress(ValidationError):
                typed: Envelope[Any] = typed_envelope(event_type).model_validate(raw)  # type: ignore[assignment]
                return typed
    return parse_envelope(raw, expected)


def _is_current(version: object, event_type: str) -> bool:
    return type(version) is int and version == EVENT_TYPES[event_type].version
