"""Survivorship: which duplicate survives a merge and which values it keeps (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest
from changegate.detector.matching.survivorship import SYSTEM_FIELDS, Survivorship, choose


def _both_ways(a_id: str, a: dict[str, Any], b_id: str, b: dict[str, Any]) -> Survivorship:
    """choose() must not depend on which record comes first."""
    first, second = choose(a_id, a, b_id, b), choose(b_id, b, a_id, a)
    assert first == second
    return first


# --- which record survives ------------------------------------------------------------------------


def test_the_most_complete_record_survives() -> None:
    rich = {"firstname": "Robert", "lastname": "Smith", "email": "bob@acme.com", "createdate": "2024-06-01"}
    poor = {"firstname": "Bob", "email": "bob@acme.com", "createdate": "2020-01-01"}  # older, still loses
    choice = _both_ways("200", rich, "100", poor)
    assert (choice.survivor, choice.merged, choice.rule) == ("200", "100", "most_complete")


def test_empty_values_and_system_fields_do_not_count_for_completeness() -> None:
    a = {"firstname": "Ann", "lastname": "Lee", "createdate": "2024-01-01"}
    b = {
        "firstname": "Ann",
        "lastname": "",
        "phone": None,
        "city": "   ",
        "hs_object_id": "2",
        "lastmodifieddate": "2025-01-01",
        "hs_lastmodifieddate": "2025-01-01",
        "hs_merged_object_ids": "7;8",
        "createdate": "2020-01-01",
    }
    choice = _both_ways("1", a, "2", b)
    assert (choice.survivor, choice.rule) == ("1", "most_complete")


def test_on_equal_completeness_the_oldest_record_survives() -> None:
    a = {"email": "ann@acme.com", "createdate": "2023-03-01T10:00:00Z", "lastmodifieddate": "2025-01-01"}
    b = {"email": "ann@acme.com", "createdate": "2021-07-15T08:30:00Z", "lastmodifieddate": "2022-01-01"}
    choice = _both_ways("1", a, "999", b)
    assert (choice.survivor, choice.merged, choice.rule) == ("999", "1", "oldest")


def test_without_two_createdates_the_most_recently_active_survives() -> None:
    a = {"email": "ann@acme.com", "createdate": "2020-01-01", "lastmodifieddate": "2024-01-01T00:00:00Z"}
    b = {"email": "ann@acme.com", "lastmodifieddate": "2025-02-01T00:00:00Z"}
    choice = _both_ways("1", a, "2", b)
    assert (choice.survivor, choice.merged, choice.rule) == ("2", "1", "most_recent_activity")


def test_same_createdate_falls_through_to_activity() -> None:
    a = {"email": "ann@acme.com", "createdate": "2020-01-01", "lastmodifieddate": "2025-05-05"}
    b = {"email": "ann@acme.com", "createdate": "2020-01-01", "lastmodifieddate": "2024-04-04"}
    choice = _both_ways("2", a, "1", b)
    assert (choice.survivor, choice.rule) == ("2", "most_recent_activity")


def test_a_record_with_activity_beats_one_without() -> None:
    choice = _both_ways(
        "1", {"email": "x@acme.com"}, "2", {"email": "x@acme.com", "lastmodifieddate": "2024"}
    )
    assert (choice.survivor, choice.rule) == ("2", "most_recent_activity")


@pytest.mark.parametrize(
    ("a_id", "b_id", "survivor"),
    [("100", "200", "100"), ("99", "100", "99"), ("1001", "999", "999"), ("abc", "abd", "abc")],
)
def test_on_a_full_tie_the_smaller_id_survives(a_id: str, b_id: str, survivor: str) -> None:
    a = {"email": "x@acme.com", "createdate": "2020-01-01", "lastmodifieddate": "2024-01-01"}
    choice = _both_ways(a_id, a, b_id, dict(a))
    assert (choice.survivor, choice.rule) == (survivor, "oldest_id")
    assert choice.merged == ({a_id, b_id} - {survivor}).pop()


def test_a_full_tie_of_empty_records() -> None:
    choice = _both_ways("5", {}, "4", {})
    assert choice == Survivorship("4", "5", "oldest_id", {}, {})


# --- which values it keeps ------------------------------------------------------------------------


def test_fills_and_conflicts() -> None:
    survivor = {
        "firstname": "Robert",
        "lastname": "Smith",
        "email": "bob.smith@acme.com",
        "phone": "",
        "jobtitle": None,
        "city": "San Francisco",
        "company": "Acme",
        "zip": "94105",
        "state": "CA",
        "createdate": "2023-01-01",
    }
    merged = {
        "firstname": "Bob",
        "lastname": "Smith",
        "email": "bob.smith@acme.com",
        "phone": "+14155552671",
        "jobtitle": "CTO",
        "city": "",
        "linkedin": "https://linkedin.com/in/bobsmith",
        "createdate": "2022-01-01",
    }
    choice = _both_ways("11", survivor, "22", merged)
    assert (choice.survivor, choice.merged, choice.rule) == ("11", "22", "most_complete")
    assert choice.fills == {
        "phone": "+14155552671",
        "jobtitle": "CTO",
        "linkedin": "https://linkedin.com/in/bobsmith",
    }
    assert choice.conflicts == {"firstname": ("Robert", "Bob")}
    assert list(choice.fills) == sorted(choice.fills)


def test_conflicts_compare_values_exactly() -> None:
    choice = choose("1", {"a": "x", "n": 5, "createdate": "1"}, "2", {"a": "X", "n": 5, "createdate": "2"})
    assert choice.conflicts == {"a": ("x", "X")}
    assert choice.fills == {}


def test_system_fields_are_never_filled_nor_conflicting() -> None:
    survivor = {
        "email": "a@acme.com",
        "createdate": "2020-01-01",
        "hs_object_id": "1",
        "lastmodifieddate": "x",
    }
    merged = {
        "email": "a@acme.com",
        "createdate": "2021-01-01",
        "hs_object_id": "2",
        "hs_merged_object_ids": "7",
        "lastmodifieddate": "y",
        "hs_lastmodifieddate": "y",
    }
    choice = _both_ways("1", survivor, "2", merged)
    assert choice.survivor == "1"
    assert choice.fills == {}
    assert choice.conflicts == {}
    assert {"hs_object_id", "createdate", "lastmodifieddate", "hs_merged_object_ids"} <= SYSTEM_FIELDS
