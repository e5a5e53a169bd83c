"""Agreement levels per field between two records. A field missing on either side has no level:
it neither agrees nor disagrees (weight 0)."""

from __future__ import annotations

from changegate.detector.matching.normalize import Features, name_variants
from rapidfuzz.distance import JaroWinkler
from rapidfuzz.fuzz import token_set_ratio, token_sort_ratio

EXACT, NICKNAME, SIMILAR, PARTIAL, DISAGREE = "exact", "nickname", "similar", "partial", "disagree"
NAMED_EXACT, NAMED_PARTIAL = "exact_same_name", "partial_same_name"


def _jw(a: str, b: str) -> float:
    return JaroWinkler.similarity(a, b)


def first_name(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    if name_variants(a) & name_variants(b):
        return NICKNAME
    if _jw(a, b) >= 0.9:
        return SIMILAR
    if (len(a) == 1 or len(b) == 1) and a[0] == b[0]:
        return PARTIAL  # an initial
    return DISAGREE


def last_name(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return SIMILAR if _jw(a, b) >= 0.92 else DISAGREE


def email(a: Features, b: Features) -> str | None:
    if not a.email or not b.email:
        return None
    if a.email == b.email:
        return EXACT
    if a.email_local == b.email_local and len(a.email_local) > 3:
        return PARTIAL  # same mailbox name at another domain
    if a.email_domain == b.email_domain and _jw(a.email_local, b.email_local) >= 0.9:
        return SIMILAR
    return DISAGREE


def phone(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return PARTIAL if a[-7:] == b[-7:] else DISAGREE


def company(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return SIMILAR if token_set_ratio(a, b) >= 90 else DISAGREE


def exact_only(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    return EXACT if a == b else DISAGREE


def street(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return SIMILAR if token_sort_ratio(a, b) >= 85 else DISAGREE


def city(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return SIMILAR if _jw(a, b) >= 0.9 else DISAGREE


def postcode(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return PARTIAL if a[:3] == b[:3] else DISAGREE


def web_domain(a: Features, b: Features) -> str | None:
    """Company web domains, or for contacts the corporate part of the email (free mail says nothing)."""
    da = a.domain or a.corporate_domain
    db = b.domain or b.corporate_domain
    return exact_only(da, db)


def full_name(first: str | None, last: str | None) -> str | None:
    """First and last name as one field: a shared last name alone is common among the candidates
    blocking brings together (relatives, namesakes), so only the combination is evidence."""
    if first is None and last is None:
        return None
    if first == EXACT and last == EXACT:
        return EXACT
    if last in (EXACT, SIMILAR) and first in (EXACT, NICKNAME, SIMILAR):
        return SIMILAR  # a nickname, a typo
    if (last in (EXACT, SIMILAR, None) and first in (PARTIAL, None)) or (
        last is None and first in (EXACT, NICKNAME, SIMILAR)
    ):
        return PARTIAL  # an initial, or one of the two names missing
    return DISAGREE


def organisation(a: Features, b: Features) -> str | None:
    """Company name and web domain as one field: they move together, so counting both would count
    one fact twice (Fellegi-Sunter assumes independent fields)."""
    by_name, by_domain = company(a.company, b.company), web_domain(a, b)
    if by_name is None and by_domain is None:
        return None
    if EXACT in (by_name, by_domain):
        return EXACT
    return SIMILAR if by_name == SIMILAR else DISAGREE


def address(a: Features, b: Features) -> str | None:
    """Street, postcode, city and state as one field, for the same reason."""
    have_a = a.street or a.postcode or a.city
    have_b = b.street or b.postcode or b.city
    if not have_a or not have_b:
        return None
    street_level = street(a.street, b.street)
    place = postcode(a.postcode, b.postcode) or city(a.city, b.city)
    if street_level in (EXACT, SIMILAR) and place in (EXACT, None):
        return EXACT
    if place == EXACT or (place is None and city(a.city, b.city) == EXACT):
        return PARTIAL  # same place, another or unknown street
    return DISAGREE


def compare(a: Features, b: Features) -> dict[str, str]:
    """Field -> agreement level, for the fields both records have."""
    first_a, last_a = a.first, a.last
    swapped = bool(a.first and a.last and a.first == b.last and a.last == b.first and a.first != a.last)
    if swapped:  # "Smith John" entered the wrong way round
        first_a, last_a = a.last, a.first
    levels = {
        "name": full_name(first_name(first_a, b.first), last_name(last_a, b.last)),
        "email": email(a, b),
        "phone": phone(a.phone, b.phone),
        "organisation": organisation(a, b),
        "address": address(a, b),
    }
    # Conditional levels: the same phone (a switchboard?) or mailbox name means much more when the
    # names agree too. Fellegi-Sunter cannot see that interaction across separate fields.
    if levels["name"] in (EXACT, SIMILAR):
        if levels["phone"] == EXACT:
            levels["phone"] = NAMED_EXACT
        if levels["email"] == PARTIAL:
            levels["email"] = NAMED_PARTIAL
    return {k: v for k, v in levels.items() if v is not None}
