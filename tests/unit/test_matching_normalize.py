"""Normalisation of identifying properties and the blocking keys built from them (pure logic)."""

from __future__ import annotations

import pytest
from changegate.detector.matching.blocking import MAX_KEY_LENGTH, blocking_keys
from changegate.detector.matching.normalize import (
    FREE_MAIL,
    Features,
    cached_features,
    feature_fields,
    features,
    fold,
    name_variants,
    normalize_company,
    normalize_domain,
    normalize_email,
    normalize_phone,
    normalize_postcode,
    normalize_street,
    sound,
)

# --- emails ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Jane.Doe@Acme.COM", "jane.doe@acme.com"),
        ("  jane.doe@acme.com \n", "jane.doe@acme.com"),
        ("John.Smith@GMAIL.com", "johnsmith@gmail.com"),
        ("j.o.h.n.smith+newsletter@gmail.com", "johnsmith@gmail.com"),
        ("john.smith@googlemail.com", "johnsmith@gmail.com"),
        ("John.Smith+crm@GoogleMail.com", "johnsmith@gmail.com"),
        ("jane+billing@acme.com", "jane@acme.com"),
    ],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


def test_dots_are_kept_outside_gmail() -> None:
    assert normalize_email("jane.doe@acme.com") != normalize_email("janedoe@acme.com")
    assert normalize_email("jane.doe@outlook.com") == "jane.doe@outlook.com"


@pytest.mark.parametrize("raw", [None, "", "   ", "not-an-email", "@acme.com", "jane@", "+tag@acme.com"])
def test_normalize_email_rejects_what_is_not_an_address(raw: str | None) -> None:
    assert normalize_email(raw) == ""


# --- web domains ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://www.Acme.com/about/team", "acme.com"),
        ("http://acme.com:8080/x", "acme.com"),
        ("www.acme.co.uk", "acme.co.uk"),
        ("ACME.COM", "acme.com"),
        ("  acme.io/ ", "acme.io"),
        ("https://shop.acme.com", "shop.acme.com"),
        (None, ""),
        ("", ""),
    ],
)
def test_normalize_domain(raw: str | None, expected: str) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize("raw", ["https://acme.com?utm_source=linkedin", "acme.com#contact"])
def test_normalize_domain_drops_query_and_fragment(raw: str) -> None:
    assert normalize_domain(raw) == "acme.com"


# --- phones ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("+1 415 555 2671", "", "+14155552671"),
        ("+1 415 555 2671", "DE", "+14155552671"),
        ("001 415 555 2671", "DE", "+14155552671"),
        ("030 1234567", "DE", "+49301234567"),
        ("0151 12345678", "DE", "+4915112345678"),
        ("+49 (0)30 1234567", "US", "+49301234567"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("07700 900123", "GB", "+447700900123"),
        ("+44 20 7946 0958", "US", "+442079460958"),
    ],
)
def test_normalize_phone_to_e164(raw: str, region: str, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


def test_the_region_decides_how_a_national_number_is_read() -> None:
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"
    assert normalize_phone("020 7946 0958", "DE") != "+442079460958"


@pytest.mark.parametrize("raw", ["", "n/a", "abc", "123", "1", "0000000000000000000", "+"])
def test_normalize_phone_rejects_junk(raw: str) -> None:
    assert normalize_phone(raw, "US") == ""


def test_normalize_phone_rejects_a_number_without_area_code() -> None:
    assert normalize_phone("555-1234", "US") == ""


# --- names, companies, addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("José Núñez-García", "jose nunez garcia"),
        ("  ZOË   O'Brien ", "zoe o brien"),
        ("Müller", "muller"),
        ("Straße", "strasse"),
        (None, ""),
        (42, "42"),
    ],
)
def test_fold(raw: object, expected: str) -> None:
    assert fold(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Acme Inc.", "acme"),
        ("ACME, Inc", "acme"),
        ("Acme Corporation", "acme"),
        ("Acme Ltd", "acme"),
        ("Acme Holdings LLC", "acme holdings"),
        ("Müller GmbH", "muller"),
        ("Siemens AG", "siemens"),
        ("Tesco PLC", "tesco"),
        ("Globex", "globex"),
        (None, ""),
    ],
)
def test_normalize_company_strips_legal_suffixes(raw: str | None, expected: str) -> None:
    assert normalize_company(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [("Acme L.L.C.", "acme"), ("Nestlé S.A.", "nestle")])
def test_normalize_company_strips_dotted_suffixes(raw: str, expected: str) -> None:
    assert normalize_company(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [("Co-op Bank Ltd", "co op bank"), ("The Company Store", "the company store")]
)
def test_normalize_company_keeps_legal_words_inside_the_name(raw: str, expected: str) -> None:
    assert normalize_company(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("123 North Main Street", "123 n main st"),
        ("123 N. Main St.", "123 n main st"),
        ("1 Fifth Avenue, Suite 200", "1 fifth ave ste 200"),
        ("9 Sunset Boulevard", "9 sunset blvd"),
        ("Haupt Straße 5", "haupt str 5"),
        ("Haupt Strasse 5", "haupt str 5"),
        (None, ""),
    ],
)
def test_normalize_street_abbreviates(raw: str | None, expected: str) -> None:
    assert normalize_street(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [("sw1a 1aa", "SW1A1AA"), ("94105-1234", "941051234"), (10115, "10115"), (None, "")]
)
def test_normalize_postcode(raw: object, expected: str) -> None:
    assert normalize_postcode(raw) == expected


@pytest.mark.parametrize(
    ("nick", "canonical"), [("bob", "robert"), ("bill", "william"), ("liz", "elizabeth")]
)
def test_name_variants_go_both_ways(nick: str, canonical: str) -> None:
    assert canonical in name_variants(nick)
    assert nick in name_variants(canonical)
    assert nick in name_variants(nick)


def test_name_variants_of_nothing_is_empty() -> None:
    assert name_variants("") == frozenset()
    assert "william" not in name_variants("robert")


# --- features -------------------------------------------------------------------------------------


def test_contact_features() -> None:
    f = features(
        "contact",
        {
            "firstname": "  José ",
            "lastname": "Núñez",
            "email": "Jose.Nunez+crm@Acme.com",
            "phone": "030 1234567",
            "company": "Acme GmbH",
            "website": "https://www.acme.de/",
            "address": "Haupt Straße 5",
            "city": "Berlin",
            "zip": "10115",
            "state": "",
            "country": "Germany",
        },
    )
    assert f == Features(
        object_type="contact",
        first="jose",
        last="nunez",
        email="jose.nunez@acme.com",
        email_local="jose.nunez",
        email_domain="acme.com",
        phone="+49301234567",
        company="acme",
        domain="acme.de",
        street="haupt str 5",
        city="berlin",
        postcode="10115",
        state="",
        country="germany",
        first_sound="JS",
        last_sound="NNS",
    )
    assert f.street_number == ""  # "haupt str 5": the number comes last here


def test_contact_phone_falls_back_to_mobile_and_default_region() -> None:
    assert features("contact", {"mobilephone": "07700 900123"}, "GB").phone == "+447700900123"
    assert features("contact", {"phone": "(415) 555-2671"}).phone == "+14155552671"
    # the record's country wins over the default region
    assert features("contact", {"phone": "020 7946 0958", "country": "UK"}, "US").phone == "+442079460958"
    assert features("contact", {"phone": "n/a"}).phone == ""


def test_company_features() -> None:
    f = features(
        "company", {"name": "Globex Corporation", "website": "http://www.globex.com/en", "zip": "60601"}
    )
    assert (f.object_type, f.company, f.domain, f.postcode) == ("company", "globex", "globex.com", "60601")
    assert (f.first, f.last, f.email) == ("", "", "")
    assert (
        features("company", {"name": "Globex", "domain": "globex.io", "website": "x.com"}).domain
        == "globex.io"
    )


@pytest.mark.parametrize(
    ("email", "corporate"),
    [
        ("jane@acme.com", "acme.com"),
        ("jane@gmail.com", ""),
        ("jane@googlemail.com", ""),
        ("jane@web.de", ""),
        ("jane@hotmail.co.uk", ""),
        ("", ""),
    ],
)
def test_free_mail_is_not_a_corporate_domain(email: str, corporate: str) -> None:
    assert features("contact", {"email": email}).corporate_domain == corporate


def test_free_mail_list_has_the_big_providers() -> None:
    assert {"gmail.com", "outlook.com", "yahoo.com", "icloud.com", "gmx.de"} <= FREE_MAIL
    assert "acme.com" not in FREE_MAIL


# --- blocking keys --------------------------------------------------------------------------------


def _prefix(keys: set[str]) -> str:
    prefixes = {k.split(":", 1)[0] for k in keys}
    assert len(prefixes) == 1, keys
    return prefixes.pop()


def test_contact_blocking_keys() -> None:
    f = features(
        "contact",
        {
            "firstname": "John",
            "lastname": "Smith",
            "email": "John.Smith@Acme.com",
            "phone": "(415) 555-2671",
            "company": "Acme Inc",
            "zip": "94105",
        },
    )
    keys = blocking_keys(f)
    t = _prefix(keys)
    assert keys == {
        f"{t}:email:john.smith@acme.com",
        f"{t}:mailbox:johnsmith",
        f"{t}:emlast:smith@acme.com",
        f"{t}:phone:+14155552671",
        f"{t}:names:john|smith",
        f"{t}:sound:JN|SM0",
        f"{t}:namecomp:smith|acme",
        f"{t}:name+post:john|94105",
        f"{t}:name+post:smith|94105",
    }


def test_a_free_mail_domain_is_no_key_on_its_own() -> None:
    keys = blocking_keys(features("contact", {"lastname": "Smith", "email": "john.smith@gmail.com"}))
    t = _prefix(keys)
    assert keys == {f"{t}:email:johnsmith@gmail.com", f"{t}:mailbox:johnsmith"}
    assert not any("gmail.com" in k and ":email:" not in k for k in keys)


def test_a_corporate_domain_without_a_last_name_is_no_key_on_its_own() -> None:
    keys = blocking_keys(features("contact", {"email": "info@acme.com"}))
    assert keys == {f"{_prefix(keys)}:email:info@acme.com", f"{_prefix(keys)}:mailbox:info"}


def test_a_last_name_alone_is_no_key() -> None:
    assert blocking_keys(features("contact", {"lastname": "Smith", "company": "Acme"})) == set()
    assert blocking_keys(features("contact", {})) == set()


def test_names_alone_give_name_keys_only() -> None:
    keys = blocking_keys(features("contact", {"firstname": "Ann", "lastname": "Lee"}))
    assert keys == {f"{_prefix(keys)}:names:ann|lee", f"{_prefix(keys)}:sound:AN|L"}


def test_company_blocking_keys() -> None:
    f = features(
        "company",
        {
            "name": "Globex Corporation",
            "domain": "https://globex.com",
            "phone": "+1 312 555 0199",
            "zip": "60601",
        },
    )
    keys = blocking_keys(f)
    t = _prefix(keys)
    assert keys == {
        f"{t}:domain:globex.com",
        f"{t}:company:globex",
        f"{t}:comppost:globex|60601",
        f"{t}:phone:+13125550199",
    }


def test_company_keys_by_name_alone_and_domain_alone() -> None:
    by_name = blocking_keys(features("company", {"name": "Initech Software LLC"}))
    assert by_name == {f"{_prefix(by_name)}:company:initech software"}
    by_domain = blocking_keys(features("company", {"website": "www.initech.com"}))
    assert by_domain == {f"{_prefix(by_domain)}:domain:initech.com"}


def test_the_same_person_reformatted_shares_keys() -> None:
    a = features("contact", {"firstname": "Bob", "lastname": "Smith", "email": "BOB.SMITH@ACME.COM"})
    b = features("contact", {"firstname": "Bobby", "lastname": "Smith", "email": "bob.smith@acme.com"})
    assert blocking_keys(a) & blocking_keys(b)


def test_keys_are_capped() -> None:
    f = features("company", {"name": "x" * 500})
    assert all(len(k) <= MAX_KEY_LENGTH for k in blocking_keys(f))
    assert len(blocking_keys(f)) == 1


def test_contacts_and_companies_never_share_a_key() -> None:
    contact = features("contact", {"phone": "+1 415 555 2671", "email": "info@acme.com"})
    company = features("company", {"phone": "(415) 555-2671", "domain": "acme.com"})
    assert blocking_keys(contact)
    assert blocking_keys(company)
    assert not blocking_keys(contact) & blocking_keys(company)


@pytest.mark.parametrize(
    ("name", "code"), [("smith", "SM0"), ("smyth", "SM0"), ("", ""), ("mary ann", "MR AN")]
)
def test_sound(name: str, code: str) -> None:
    assert sound(name) == code


@pytest.mark.parametrize(
    ("street", "number"), [("12 main st", "12"), ("12a main st", "12a"), ("main st 12", ""), ("", "")]
)
def test_street_number(street: str, number: str) -> None:
    assert Features("contact", street=street).street_number == number


def test_features_are_made_of_the_feature_fields_only() -> None:
    """What the changelog leaves out (a write of other properties) cannot change a record's place
    in any replica's index."""
    contact = {"firstname": "Ann", "lastname": "Lee", "email": "ann@lee.example", "phone": "+1 212 555 0172"}
    extra = {"jobtitle": "CTO", "lifecyclestage": "lead", "hs_lead_status": "NEW"}
    assert not feature_fields("contact") & extra.keys()
    assert features("contact", {**contact, **extra}) == features("contact", contact)
    assert cached_features("contact", {**contact, **extra}) == features("contact", contact)
    assert features("contact", {**contact, "email": "ann@other.example"}) != features("contact", contact)
    company = {"name": "Northwind", "domain": "northwind.example"}
    assert features("company", {**company, "industry": "retail"}) == features("company", company)
    assert {"name", "domain"} <= feature_fields("company")
