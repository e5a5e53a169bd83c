"""Agreement levels per field between two records (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest
from changegate.detector.matching import compare as cmp
from changegate.detector.matching.compare import (
    DISAGREE,
    EXACT,
    NAMED_EXACT,
    NAMED_PARTIAL,
    NICKNAME,
    PARTIAL,
    SIMILAR,
    compare,
)
from changegate.detector.matching.normalize import Features, features, normalize_street


def contact(**props: Any) -> Features:
    return features("contact", props)


def company(**props: Any) -> Features:
    return features("company", props)


# --- first and last names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("john", "john", EXACT),
        ("bob", "robert", NICKNAME),
        ("robert", "bob", NICKNAME),
        ("bill", "william", NICKNAME),
        ("jon", "john", NICKNAME),
        ("kathrine", "katherine", SIMILAR),
        ("j", "john", PARTIAL),
        ("john", "j", PARTIAL),
        ("k", "john", DISAGREE),
        ("mary", "john", DISAGREE),
        ("", "john", None),
        ("john", "", None),
    ],
)
def test_first_name_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.first_name(a, b) == level


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("smith", "smith", EXACT),
        ("johnson", "jonhson", SIMILAR),
        ("smith", "jones", DISAGREE),
        ("", "smith", None),
    ],
)
def test_last_name_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.last_name(a, b) == level


@pytest.mark.parametrize(
    ("first", "last", "level"),
    [
        (EXACT, EXACT, EXACT),
        (NICKNAME, EXACT, SIMILAR),
        (SIMILAR, SIMILAR, SIMILAR),
        (EXACT, SIMILAR, SIMILAR),
        (PARTIAL, EXACT, PARTIAL),
        (None, EXACT, PARTIAL),
        (EXACT, None, PARTIAL),
        (EXACT, DISAGREE, DISAGREE),
        (DISAGREE, EXACT, DISAGREE),
        (None, DISAGREE, DISAGREE),
        (None, None, None),
    ],
)
def test_full_name_levels(first: str | None, last: str | None, level: str | None) -> None:
    assert cmp.full_name(first, last) == level


@pytest.mark.parametrize("first", [NICKNAME, SIMILAR])
def test_full_name_agreeing_first_name_with_missing_last_name_is_not_a_disagreement(first: str) -> None:
    assert cmp.full_name(first, None) == PARTIAL


def test_swapped_first_and_last_names_are_the_same_name() -> None:
    a = contact(firstname="Smith", lastname="John")
    b = contact(firstname="John", lastname="Smith")
    assert compare(a, b) == {"name": EXACT}
    assert compare(b, a) == {"name": EXACT}


def test_a_doubled_name_is_not_mistaken_for_a_swap() -> None:
    assert compare(contact(firstname="Lee", lastname="Lee"), contact(firstname="Lee", lastname="Lee")) == {
        "name": EXACT
    }
    assert compare(contact(firstname="Lee", lastname="Lee"), contact(firstname="Ann", lastname="Lee")) == {
        "name": DISAGREE
    }


def test_names_through_compare() -> None:
    assert compare(
        contact(firstname="Bob", lastname="Smith"), contact(firstname="Robert", lastname="Smith")
    ) == {"name": SIMILAR}
    assert compare(
        contact(firstname="Bob", lastname="Smith"), contact(firstname="Bob", lastname="Jones")
    ) == {"name": DISAGREE}
    assert compare(
        contact(firstname="J.", lastname="Smith"), contact(firstname="John", lastname="Smith")
    ) == {"name": PARTIAL}


# --- email and phone ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("Jane.Doe@Acme.com", "jane.doe@acme.com", EXACT),
        ("jane.doe+x@gmail.com", "janedoe@googlemail.com", EXACT),
        ("jane.doe@acme.com", "jane.doe@outlook.com", PARTIAL),
        ("jon.smith@acme.com", "john.smith@acme.com", SIMILAR),
        ("bob@acme.com", "bob@globex.com", DISAGREE),  # a short mailbox name says little
        ("jane.doe@acme.com", "mark.roe@acme.com", DISAGREE),
        ("jane.doe@acme.com", "", None),
        ("", "", None),
    ],
)
def test_email_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.email(contact(email=a), contact(email=b)) == level


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("+14155552671", "+14155552671", EXACT),
        ("+14155552671", "+16505552671", PARTIAL),  # same last seven digits
        ("+14155552671", "+14155552600", DISAGREE),
        ("", "+14155552671", None),
    ],
)
def test_phone_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.phone(a, b) == level


def test_reformatted_phones_are_exact() -> None:
    assert compare(contact(phone="(415) 555-2671"), contact(phone="+1 415.555.2671")) == {"phone": EXACT}
    de = features("contact", {"phone": "030 1234567", "country": "Germany"})
    assert compare(de, contact(phone="+49 30 1234567")) == {"phone": EXACT}


# --- organisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("acme", "acme", EXACT),
        ("acme holdings", "acme", SIMILAR),  # token set: one name contains the other
        ("acme", "globex", DISAGREE),
        ("", "acme", None),
    ],
)
def test_company_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.company(a, b) == level


def test_organisation_by_name_or_domain() -> None:
    assert cmp.organisation(contact(company="Acme Inc."), contact(company="ACME Corporation")) == EXACT
    # different spellings of the name, but the same corporate email domain
    assert (
        cmp.organisation(
            contact(company="Acme Widgets", email="a@acme.com"), contact(company="ACM", email="b@acme.com")
        )
        == EXACT
    )
    assert (
        cmp.organisation(company(name="Globex", domain="globex.com"), company(domain="www.globex.com"))
        == EXACT
    )
    assert cmp.organisation(contact(company="Acme Holdings"), contact(company="Acme")) == SIMILAR
    assert cmp.organisation(contact(company="Acme"), contact(company="Globex")) == DISAGREE
    assert cmp.organisation(contact(company="Acme"), contact()) is None


def test_free_mail_says_nothing_about_the_organisation() -> None:
    a, b = contact(email="jane@gmail.com"), contact(email="mark@gmail.com")
    assert cmp.web_domain(a, b) is None
    assert cmp.organisation(a, b) is None
    assert cmp.web_domain(contact(email="jane@acme.com"), contact(email="jane@globex.com")) == DISAGREE


# --- address --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("123 Main Street", "123 Main St.", EXACT),
        ("123 North Main Street", "123 N Main St", EXACT),
        ("Haupt Straße 5", "Haupt Str. 5", EXACT),
        ("123 Main St", "9 Elm Rd", DISAGREE),
        ("", "123 Main St", None),
    ],
)
def test_street_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.street(normalize_street(a), normalize_street(b)) == level


def test_street_similar() -> None:
    assert cmp.street("1600 amphitheatre pkwy", "1600 amphitheater pkwy") == SIMILAR


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [("94105", "94105", EXACT), ("94105", "94107", PARTIAL), ("94105", "10016", DISAGREE), ("", "1", None)],
)
def test_postcode_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.postcode(a, b) == level


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("san francisco", "san francisco", EXACT),
        ("san fransisco", "san francisco", SIMILAR),
        ("berlin", "munich", DISAGREE),
        ("", "berlin", None),
    ],
)
def test_city_levels(a: str, b: str, level: str | None) -> None:
    assert cmp.city(a, b) == level


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        (
            {"address": "100 Main Street", "zip": "94105", "city": "San Francisco"},
            {"address": "100 Main St", "zip": "94105", "city": "SF"},
            EXACT,
        ),
        (
            {"address": "100 Main Street", "city": "Berlin"},
            {"address": "100 Main St", "city": "Berlin"},
            EXACT,
        ),
        (
            {"address": "100 Main Street", "city": "Berlin"},
            {"address": "7 Oak Rd", "city": "Berlin"},
            PARTIAL,
        ),
        ({"address": "100 Main Street"}, {"address": "100 Main St"}, EXACT),
        ({"address": "100 Main Street", "zip": "94105"}, {"address": "7 Oak Rd", "zip": "94105"}, PARTIAL),
        ({"zip": "94105"}, {"address": "7 Oak Rd", "zip": "94105"}, PARTIAL),
        (
            {"address": "100 Main Street", "zip": "94105"},
            {"address": "100 Main St", "zip": "10016"},
            DISAGREE,
        ),
        (
            {"address": "100 Main Street", "zip": "94105"},
            {"address": "100 Main St", "zip": "94107"},
            DISAGREE,
        ),
        ({"address": "100 Main Street", "zip": "94105"}, {"state": "CA", "country": "US"}, None),
    ],
)
def test_address_levels(a: dict[str, Any], b: dict[str, Any], level: str | None) -> None:
    assert cmp.address(contact(**a), contact(**b)) == level


# --- compare and its conditional levels -----------------------------------------------------------


def test_missing_fields_yield_no_level() -> None:
    assert compare(contact(), contact()) == {}
    assert compare(contact(firstname="Ann", email="ann@acme.com"), contact(phone="+1 415 555 2671")) == {}


def test_a_shared_phone_means_more_with_the_same_name() -> None:
    phone = "+1 415 555 2671"
    same = compare(
        contact(firstname="Bob", lastname="Smith", phone=phone),
        contact(firstname="Robert", lastname="Smith", phone=phone),
    )
    assert same == {"name": SIMILAR, "phone": NAMED_EXACT}
    other = compare(
        contact(firstname="Ann", lastname="Lee", phone=phone),
        contact(firstname="Bob", lastname="Smith", phone=phone),
    )
    assert other == {"name": DISAGREE, "phone": EXACT}
    nameless = compare(contact(phone=phone), contact(phone=phone))
    assert nameless == {"phone": EXACT}
    initial = compare(
        contact(firstname="J", lastname="Smith", phone=phone),
        contact(firstname="John", lastname="Smith", phone=phone),
    )
    assert initial == {"name": PARTIAL, "phone": EXACT}


def test_a_shared_mailbox_name_means_more_with_the_same_name() -> None:
    same = compare(
        contact(firstname="Jane", lastname="Doe", email="jane.doe@outlook.com"),
        contact(firstname="Jane", lastname="Doe", email="jane.doe@acme.com"),
    )
    assert same == {"name": EXACT, "email": NAMED_PARTIAL}
    other = compare(
        contact(firstname="Jane", lastname="Doe", email="jane.doe@outlook.com"),
        contact(firstname="Janet", lastname="Roe", email="jane.doe@acme.com"),
    )
    assert other == {"name": DISAGREE, "email": PARTIAL}


def test_compare_full_records() -> None:
    a = contact(
        firstname="Bob",
        lastname="Smith",
        email="BOB.SMITH@ACME.COM",
        phone="(415) 555-2671",
        company="Acme Inc.",
        address="100 Main Street",
        city="San Francisco",
        zip="94105",
    )
    b = contact(
        firstname="Robert",
        lastname="Smith",
        email="bob.smith@acme.com",
        phone="+1 415-555-2671",
        company="ACME",
        address="100 Main St",
        city="San Francisco",
        zip="94105",
    )
    expected = {
        "name": SIMILAR,
        "email": EXACT,
        "phone": NAMED_EXACT,
        "organisation": EXACT,
        "address": EXACT,
    }
    assert compare(a, b) == expected
    assert compare(b, a) == expected
