"""The fast canonical form is RFC 8785's, byte for byte, whatever the value (and refuses what it
refuses)."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from changegate.core import canonical
from hypothesis import given, settings
from hypothesis import strategies as st

_keys = st.text(alphabet=st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["a", "b", "\ue000", "\U0001f600", "\u20ac", "", "A", "\x7f", "\u00e9"]
)
_floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 1e-4, 9.99e-5, 1e-7, 1e16, 1e21, 2.0**53, 2.0**53 - 1, 0.1, 123.456, 5e-324]
)
_ints = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1) | st.sampled_from([2**53, -(2**53)])
_scalars = st.none() | st.booleans() | _ints | _floats | st.text(max_size=12)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=25,
)


def _reference(value: Any) -> bytes | type[Exception]:
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        return rfc8785.CanonicalizationError


def _fast(value: Any) -> bytes | type[Exception]:
    try:
        return canonical.dumps(value)
    except rfc8785.CanonicalizationError:
        return rfc8785.CanonicalizationError


@settings(max_examples=800)
@given(_values)
def test_the_fast_form_is_rfc_8785s(value: Any) -> None:
    assert _fast(value) == _reference(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1.0, "a": 0.5}, b'{"a":0.5,"b":1}'),  # integral floats as integers, keys sorted
        ([1e-5, 1e21, -0.0], b"[0.00001,1e+21,0]"),  # ECMAScript's number forms
        ({"\U0001f600": 1, "\ue000": 2}, '{"\U0001f600":1,"\ue000":2}'.encode()),  # UTF-16 order
        ({"s": 'q"\\\n\x01\u20ac'}, '{"s":"q\\"\\\\\\n\\u0001\u20ac"}'.encode()),
    ],
)
def test_known_forms(value: Any, text: bytes) -> None:
    assert canonical.dumps(value) == text


@pytest.mark.parametrize("value", [2**53, float("nan"), {1: "int key"}, "\ud800", (1, 2)])
def test_what_rfc_8785_refuses_is_refused(value: Any) -> None:
    assert _fast(value) == _reference(value)
