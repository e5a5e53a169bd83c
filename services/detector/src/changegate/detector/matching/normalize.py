"""Identifying properties of a CRM record, normalised for comparison."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import jellyfish
import phonenumbers
from nicknames import NickNamer

# Mailbox providers anyone can sign up with: a shared domain there says nothing about identity.
FREE_MAIL = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "ymail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "outlook.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "proton.me",
        "protonmail.com",
        "mail.com",
        "yandex.com",
        "yandex.ru",
        "zoho.com",
        "fastmail.com",
        "hey.com",
        "qq.com",
        "163.com",
        "orange.fr",
        "free.fr",
        "laposte.net",
        "t-online.de",
        "libero.it",
    }
)
_STREET_ABBREVIATIONS = {
    "street": "st",
    "avenue": "ave",
    "road": "rd",
    "boulevard": "blvd",
    "drive": "dr",
    "lane": "ln",
    "court": "ct",
    "place": "pl",
    "square": "sq",
    "suite": "ste",
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    "strasse": "str",
    "straße": "str",
}
_NON_WORD = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")
_nick = NickNamer()


def fold(text: Any) -> str:
    """Lower case, accents removed, punctuation to spaces, spaces collapsed."""
    if text is None:
        return ""
    decomposed = unicodedata.normalize("NFKD", str(text).casefold())
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", _NON_WORD.sub(" ", ascii_only)).strip()


def normalize_email(value: Any) -> str:
    """Lower case; for Gmail, dots and +tags do not change the mailbox."""
    email = str(value or "").strip().lower()
    if "@" not in email:
        return ""
    local, _, domain = email.rpartition("@")
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}" if local and domain else ""


def normalize_domain(value: Any) -> str:
    """A web domain from a URL or bare host: no scheme, no www., no path."""
    text = str(value or "").strip().lower()
    text = re.split(r"[/?#:]", re.sub(r"^[a-z]+://", "", text), maxsplit=1)[0]
    return text.removeprefix("www.")


@lru_cache(maxsize=65536)
def normalize_phone(value: str, region: str) -> str:
    """E.164 (``+4915112345678``) or '' when it is not a plausible number."""
    try:
        number = phonenumbers.parse(value, region or None)
    except phonenumbers.NumberParseException:
        return ""
    # A local-only number (no area code) would make strangers share a phone.
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_SUFFIX_WORDS = frozenset(
    [
        "inc",
        "incorporated",
        "llc",
        "ltd",
        "limited",
        "corp",
        "corporation",
        "co",
        "company",
        "gmbh",
        "ag",
        "sa",
        "sas",
        "sarl",
        "bv",
        "nv",
        "plc",
        "pty",
        "oy",
        "ab",
        "as",
        "srl",
        "spa",
        "kk",
        "lp",
        "llp",
    ]
)


def normalize_company(value: Any) -> str:
    """Folded name without trailing legal-form words ("Acme L.L.C." and "ACME, Inc" -> "acme")."""
    words = fold(str(value or "").replace(".", "")).split()
    while len(words) > 1 and words[-1] in _SUFFIX_WORDS:
        words.pop()
    return " ".join(words)


def normalize_street(value: Any) -> str:
    return " ".join(_STREET_ABBREVIATIONS.get(w, w) for w in fold(value).split())


def normalize_postcode(value: Any) -> str:
    return re.sub(r"[^A-Z0-9]", "", str(value or "").upper())


_ISO_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ].*)?")
_EPOCH_MS = re.compile(r"-?\d{10,14}")


def normalize_birth_date(value: Any) -> str:
    """``YYYYMMDD`` from an ISO date (``1980-04-09``, with a time or not), a compact one
    (``19800409``) or HubSpot's epoch milliseconds at midnight UTC (how its webhooks send a date
    property); '' for anything else. Day-first or month-first dates (``09/04/1980``) are ambiguous
    and left out rather than guessed."""
    text = str(value if value is not None else "").strip()
    try:
        if _EPOCH_MS.fullmatch(text):
            day = datetime.fromtimestamp(int(text) / 1000, tz=UTC).date()
        elif match := _ISO_DATE.fullmatch(text):
            day = date(*(int(g) for g in match.groups()))
        else:
            return ""
    except (ValueError, OverflowError, OSError):
        return ""
    return f"{day:%Y%m%d}" if 1850 <= day.year <= 2100 else ""


@lru_cache(maxsize=65536)
def name_variants(first: str) -> frozenset[str]:
    """A first name with its nicknames and the names it is a nickname of (Bob ~ Robert)."""
    if not first:
        return frozenset()
    return frozenset({first, *_nick.nicknames_of(first), *_nick.canonicals_of(first)})


@lru_cache(maxsize=65536)
def sound(name: str) -> str:
    """Metaphone code of a (folded) name, so "smyth" and "smith" share a key and a level; '' when
    there is no name. Multi-word names are coded word by word."""
    return " ".join(jellyfish.metaphone(w) for w in name.split()) if name else ""


@dataclass(frozen=True, slots=True)
class Features:
    """What the matcher compares of one record. Empty string = missing."""

    object_type: str
    first: str = ""
    last: str = ""
    email: str = ""
    email_local: str = ""
    email_domain: str = ""
    phone: str = ""
    company: str = ""
    domain: str = ""
    street: str = ""
    city: str = ""
    postcode: str = ""
    state: str = ""
    country: str = ""
    first_sound: str = ""
    last_sound: str = ""
    birth_date: str = ""  # YYYYMMDD

    @property
    def street_number(self) -> str:
        """The house number when the street starts with one ("12 main st" -> "12")."""
        head = self.street.split(" ", 1)[0]
        return head if head[:1].isdigit() else ""

    @property
    def corporate_domain(self) -> str:
        """The email's domain unless it is a free-mail provider."""
        return self.email_domain if self.email_domain not in FREE_MAIL else ""


# The properties ``features`` reads, by object type (a company's, else a contact's): a change of
# any other property leaves a record's features, hence its place in the index, as they were.
_SHARED_FIELDS = ("email", "country", "phone", "mobilephone", "website", "address", "city", "zip", "state")
_FEATURE_FIELDS = {
    "company": frozenset({*_SHARED_FIELDS, "name", "domain"}),
    "contact": frozenset({*_SHARED_FIELDS, "firstname", "lastname", "company", "date_of_birth"}),
}


def feature_fields(object_type: str) -> frozenset[str]:
    """The properties the features of a record of this type are made of."""
    return _FEATURE_FIELDS["company" if object_type == "company" else "contact"]


def features(object_type: str, props: dict[str, Any], default_region: str = "US") -> Features:
    """Features of a HubSpot-style record (contacts: firstname, lastname, email, phone, company,
    address, city, zip, state, country, date_of_birth; companies: name, domain/website, phone, address, …)."""
    fields = feature_fields(object_type)
    props = {k: v for k, v in props.items() if k in fields}  # nothing else may count
    email = normalize_email(props.get("email"))
    local, _, email_domain = email.partition("@")
    country = fold(props.get("country"))
    region = _region(country) or default_region
    phone = str(props.get("phone") or props.get("mobilephone") or "").strip()
    if object_type == "company":
        return Features(
            object_type=object_type,
            company=normalize_company(props.get("name")),
            domain=normalize_domain(props.get("domain") or props.get("website")),
            phone=normalize_phone(phone, region) if phone else "",
            street=normalize_street(props.get("address")),
            city=fold(props.get("city")),
            postcode=normalize_postcode(props.get("zip")),
            state=fold(props.get("state")),
            country=country,
        )
    first, last = fold(props.get("firstname")), fold(props.get("lastname"))
    return Features(
        object_type=object_type,
        first=first,
        last=last,
        first_sound=sound(first),
        last_sound=sound(last),
        email=email,
        email_local=local,
        email_domain=email_domain,
        phone=normalize_phone(phone, region) if phone else "",
        company=normalize_company(props.get("company")),
        domain=normalize_domain(props.get("website")),
        street=normalize_street(props.get("address")),
        city=fold(props.get("city")),
        postcode=normalize_postcode(props.get("zip")),
        state=fold(props.get("state")),
        country=country,
        birth_date=normalize_birth_date(props.get("date_of_birth")),
    )


_COUNTRY_REGIONS = {
    "united states": "US",
    "usa": "US",
    "us": "US",
    "united kingdom": "GB",
    "uk": "GB",
    "gb": "GB",
    "germany": "DE",
    "deutschland": "DE",
    "de": "DE",
    "france": "FR",
    "fr": "FR",
    "canada": "CA",
    "ca": "CA",
    "netherlands": "NL",
    "nl": "NL",
    "spain": "ES",
    "es": "ES",
    "italy": "IT",
    "it": "IT",
    "australia": "AU",
    "au": "AU",
    "norway": "NO",
    "no": "NO",
    "sweden": "SE",
    "se": "SE",
}


def _region(country: str) -> str:
    return _COUNTRY_REGIONS.get(country, "")


def identity_changed(
    object_type: str, before: dict[str, Any], after: dict[str, Any], region: str = "US"
) -> bool:
    """Whether a change touches what the matcher compares (so duplicates must be looked for again)."""
    return cached_features(object_type, before, region) != cached_features(object_type, after, region)


@lru_cache(maxsize=200_000)
def _cached(object_type: str, items: tuple[tuple[str, Any], ...], region: str) -> Features:
    return features(object_type, dict(items), region)


def cached_features(object_type: str, props: dict[str, Any], region: str = "US") -> Features:
    """Features of a record, memoised by content (a changed record is never served stale ones): an
    event's record is normalised once whatever asks (change check, index, clusters)."""
    try:
        fields = feature_fields(object_type)
        return _cached(object_type, tuple(sorted(i for i in props.items() if i[0] in fields)), region)
    except TypeError:  # an unhashable property value (a list): compute without the cache
        return features(object_type, props, region)
