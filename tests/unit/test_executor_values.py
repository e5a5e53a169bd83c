"""When two CRM values are the same: the rule every compare-and-set applies before it writes (a
wrong "same" overwrites a value that changed since the proposal), and values as HubSpot takes them."""

from __future__ import annotations

import pytest
from changegate.core.contracts.base import PropertyValue
from changegate.executor.crm.values import CASE_INSENSITIVE_FIELDS, same, to_crm_string

SAME: list[tuple[str, PropertyValue, PropertyValue]] = [
    # empty is empty
    ("jobtitle", None, None),
    ("jobtitle", None, ""),
    ("jobtitle", "", "   "),
    ("jobtitle", " \t", None),
    # booleans, as HubSpot writes them
    ("opted_in", True, True),
    ("opted_in", False, False),
    ("opted_in", True, "true"),
    ("opted_in", "FALSE", False),
    ("opted_in", " True ", True),
    ("opted_in", "false", "False"),
    # numbers by value, whatever their form
    ("employees", 250, 250),
    ("employees", 250, 250.0),
    ("employees", 250, "250"),
    ("employees", "250.00", 250),
    ("employees", "2.5e2", 250.0),
    ("employees", " 250 ", "250"),
    ("employees", 0.1, "0.1"),
    ("employees", -3, "-3.0"),
    ("employees", 0, "0"),
    # strings trimmed; email fields without case
    ("jobtitle", "VP Sales", "VP Sales"),
    ("jobtitle", " VP Sales ", "VP Sales"),
    ("email", "Jane@Example.com", "jane@example.com "),
    ("work_email", "JANE@EXAMPLE.COM", "jane@example.com"),
    ("hs_additional_emails", "A@X.IO", "a@x.io"),
    # text that only looks like a special number stays text
    ("note", "nan", "nan"),
    ("note", "inf", "inf"),
]

DIFFERENT: list[tuple[str, PropertyValue, PropertyValue]] = [
    ("jobtitle", None, "VP Sales"),
    ("jobtitle", "VP Sales", ""),
    ("employees", None, 0),
    ("employees", 0, ""),
    ("opted_in", None, False),
    ("opted_in", True, False),
    ("opted_in", True, "false"),
    ("opted_in", "true", "false"),
    # a boolean is never a number or other text
    ("opted_in", True, 1),
    ("opted_in", 1, True),
    ("opted_in", False, 0),
    ("opted_in", True, "1"),
    ("opted_in", "0", False),
    ("opted_in", True, "yes"),
    ("opted_in", "truex", True),
    # numbers
    ("employees", 250, 251),
    ("employees", "250", "250.5"),
    ("employees", 250, "two hundred fifty"),
    ("employees", 1e308, "1e309"),
    # case matters outside email fields
    ("jobtitle", "VP Sales", "vp sales"),
    ("jobtitle", "VP Sales", "VP  Sales"),
    ("email", "jane@example.com", "jane@example.org"),
    # NaN and the infinities are no numbers: compared as written
    ("note", "NaN", "nan"),
    ("note", "inf", "INF"),
    ("note", "-inf", "-INF"),
    ("note", "infinity", "INFINITY"),
    ("note", "-infinity", "-Infinity"),
    ("score", float("nan"), float("nan")),
    ("score", float("inf"), "inf"),
    ("score", float("inf"), float("-inf")),
]


@pytest.mark.parametrize(("field", "a", "b"), SAME)
def test_the_same_value(field: str, a: PropertyValue, b: PropertyValue) -> None:
    assert same(field, a, b)
    assert same(field, b, a)


@pytest.mark.parametrize(("field", "a", "b"), DIFFERENT)
def test_different_values(field: str, a: PropertyValue, b: PropertyValue) -> None:
    assert not same(field, a, b)
    assert not same(field, b, a)


def test_an_infinite_float_is_compared_as_written() -> None:
    assert same("score", float("inf"), float("inf"))


def test_the_email_fields() -> None:
    assert frozenset({"email", "work_email", "hs_additional_emails"}) == CASE_INSENSITIVE_FIELDS


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (250.0, "250"),
        (-3.0, "-3"),
        (2.5, "2.5"),
        (7, "7"),
        (0, "0"),
        ("VP Sales", "VP Sales"),
        ("", ""),
    ],
)
def test_values_as_hubspot_takes_them(value: PropertyValue, text: str) -> None:
    assert to_crm_string(value) == text
