"""Comparisons between two records, each a ladder of agreement levels (Splink's vocabulary: a
*comparison* has *levels*, the first that holds applies). A field missing on either side has no
level: it neither agrees nor disagrees (Splink's null level, weight 0).

``COMPARISONS`` is the one definition of the levels: the streaming scorer calls ``compare`` on
two records, and training (``training.py``) evaluates the very same functions on the columns each
comparison declares, so the parameters it estimates are those of the levels the scorer sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from changegate.detector.matching.normalize import Features, name_variants
from rapidfuzz.distance import OSA, JaroWinkler
from rapidfuzz.fuzz import token_set_ratio, token_sort_ratio

EXACT, NICKNAME, SIMILAR, PHONETIC, PARTIAL, DISAGREE = (
    "exact",
    "nickname",
    "similar",
    "phonetic",
    "partial",
    "disagree",
)
NAMED_EXACT, NAMED_PARTIAL = "exact_same_name", "partial_same_name"
SAME_WORKPLACE = "exact_same_workplace"
STREET, CITY, POSTCODE = "street", "city", "postcode"
COMPANY, SITE = "company", "site"

# Jaro-Winkler thresholds of Splink's name comparisons; token ratios of rapidfuzz (0-100).
NAME_SIMILAR_JW = 0.92
FIRST_SIMILAR_JW = 0.9
TEXT_SIMILAR_JW = 0.9
COMPANY_SIMILAR_RATIO = 90
STREET_SIMILAR_RATIO = 85
MIN_STREET_WORD = 5  # "12 park rd" and "12 park ave" may be two streets: a short name is common
MIN_MAILBOX_NAME = 4  # "info@", "bob@" at two domains say nothing


def _jw(a: str, b: str) -> float:
    return JaroWinkler.similarity(a, b)


def _squeezed(text: str) -> str:
    """Without spaces: a space typed in or left out ("caldwell st", "caldwellst") changes nothing."""
    return text.replace(" ", "")


def _one_edit(a: str, b: str) -> bool:
    """At most one typo apart (Damerau-Levenshtein, optimal string alignment): a character
    inserted, dropped, replaced, or two neighbours swapped."""
    return OSA.distance(a, b, score_cutoff=1) <= 1


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def first_name(a: str, b: str, sound_a: str = "", sound_b: str = "") -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    if name_variants(a) & name_variants(b):
        return NICKNAME
    if _jw(a, b) >= FIRST_SIMILAR_JW:
        return SIMILAR
    if sound_a and sound_a == sound_b:
        return PHONETIC
    if (len(a) == 1 or len(b) == 1) and a[0] == b[0]:
        return PARTIAL  # an initial
    return DISAGREE


def last_name(a: str, b: str, sound_a: str = "", sound_b: str = "") -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    if _jw(a, b) >= NAME_SIMILAR_JW:
        return SIMILAR
    if sound_a and sound_a == sound_b:
        return PHONETIC
    return DISAGREE


_RANK = {EXACT: 4, NICKNAME: 3, SIMILAR: 3, PHONETIC: 2, PARTIAL: 1, DISAGREE: 0}


def names(a: Features, b: Features) -> tuple[str | None, str | None]:
    """First- and last-name levels. Names entered the wrong way round ("Smith John", maybe with a
    typo) are compared swapped when that agrees strictly better than the order given."""
    first, last, _ = _names(a, b)
    return first, last


def _names(a: Features, b: Features) -> tuple[str | None, str | None, bool]:
    """The name levels and whether they were compared swapped."""
    straight = (
        first_name(a.first, b.first, a.first_sound, b.first_sound),
        last_name(a.last, b.last, a.last_sound, b.last_sound),
    )
    if DISAGREE not in straight or not (a.first and a.last and b.first and b.last):
        return (*straight, False)
    swapped = (
        first_name(a.last, b.first, a.last_sound, b.first_sound),
        last_name(a.first, b.last, a.first_sound, b.last_sound),
    )
    return (*swapped, True) if _rank(swapped) > _rank(straight) else (*straight, False)


def _rank(levels: tuple[str | None, str | None]) -> int:
    return sum(_RANK[level] for level in levels if level)


def names_agree(first: str | None, last: str | None) -> bool:
    """Both names agree (exactly or nearly): what makes a shared phone or mailbox name telling."""
    return first in (EXACT, NICKNAME, SIMILAR) and last in (EXACT, SIMILAR)


def email_level(a: Features, b: Features, named: bool) -> str | None:
    if not a.email or not b.email:
        return None
    if a.email == b.email:
        return EXACT
    la, lb = a.email_local, b.email_local
    if a.email_domain == b.email_domain and _jw(la, lb) >= TEXT_SIMILAR_JW:
        # One typo, when the names agree; otherwise colleagues' mailboxes (jessicas@ and jessicad@).
        # Mailboxes further apart (jsmith@, john.smith@) or numbered apart (jane.doe19@,
        # jane.doe40@) are different mailboxes, of namesakes as often as of one person.
        typo = _one_edit(la, lb) and _digits(la) == _digits(lb)
        return SIMILAR if named and typo else DISAGREE
    if a.email_local == b.email_local and len(a.email_local) >= MIN_MAILBOX_NAME:
        return NAMED_PARTIAL if named else PARTIAL  # the same mailbox name at another domain
    return DISAGREE


def phone_level(a: Features, b: Features, named: bool, same_workplace: bool = False) -> str | None:
    if not a.phone or not b.phone:
        return None
    if a.phone == b.phone:
        # The same number means much more with the same name; without it, at the same workplace it
        # is the switchboard (colleagues share it: counted with the workplace, it weighs little).
        if named:
            return NAMED_EXACT
        return SAME_WORKPLACE if same_workplace else EXACT
    return PARTIAL if a.phone[-7:] == b.phone[-7:] else DISAGREE


def company(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return SIMILAR if token_set_ratio(a, b) >= COMPANY_SIMILAR_RATIO else DISAGREE


def exact_only(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    return EXACT if a == b else DISAGREE


def _house_number(text: str) -> tuple[str, str]:
    """("12", "main st") from "12 main st"; ("", text) without a leading number."""
    head, _, rest = text.partition(" ")
    return (head, rest) if head[:1].isdigit() else ("", text)


def street(a: str, b: str) -> str | None:
    """Similar: close as words (in any order), or the same house number (or one missing) on a
    street name that is close once spaces are ignored ("18 aspinall rtreet", "18 aspinall st")."""
    if not a or not b:
        return None
    if a == b:
        return EXACT
    if token_sort_ratio(a, b) >= STREET_SIMILAR_RATIO:
        return SIMILAR
    (number_a, name_a), (number_b, name_b) = _house_number(a), _house_number(b)
    if not name_a or not name_b:
        return DISAGREE
    # the same house, its number missing on one side or its digits swapped ("153", "135")
    same_number = not number_a or not number_b or sorted(number_a) == sorted(number_b)
    if same_number and _jw(_squeezed(name_a), _squeezed(name_b)) >= TEXT_SIMILAR_JW:
        return SIMILAR
    # the same number and street name, its type mistyped ("alawa atreet", "alawa st")
    words_a, words_b = name_a.split(), name_b.split()
    if (
        number_a
        and number_a == number_b
        and len(words_a) <= 2 >= len(words_b)
        and words_a[0] == words_b[0]
        and len(words_a[0]) >= MIN_STREET_WORD
    ):
        return SIMILAR
    return DISAGREE


def city(a: str, b: str) -> str | None:
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return SIMILAR if _jw(_squeezed(a), _squeezed(b)) >= TEXT_SIMILAR_JW else DISAGREE


def postcode(a: str, b: str) -> str | None:
    """Partial: the same area (first three characters) or one typo apart (digits swapped)."""
    if not a or not b:
        return None
    if a == b:
        return EXACT
    return PARTIAL if a[:3] == b[:3] or _one_edit(a, b) else DISAGREE


def birth_date(a: str, b: str) -> str | None:
    """Dates as ``YYYYMMDD``. Similar: one typo (a digit replaced, two neighbours swapped) or day
    and month swapped (``19800409``, ``19800904``): a data-entry slip, not another person."""
    if not a or not b:
        return None
    if a == b:
        return EXACT
    if _one_edit(a, b) or (a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]):
        return SIMILAR
    return DISAGREE


def web_domain(a: Features, b: Features) -> str | None:
    """Company web domains, or for contacts the corporate part of the email (free mail says nothing)."""
    return exact_only(a.domain or a.corporate_domain, b.domain or b.corporate_domain)


def organisation(a: Features, b: Features) -> str | None:
    """Company name and web domain as one comparison: they move together, so counting both would
    count one fact twice (Fellegi-Sunter assumes independent comparisons)."""
    by_name, by_domain = company(a.company, b.company), web_domain(a, b)
    if by_name is None and by_domain is None:
        return None
    if EXACT in (by_name, by_domain):
        return EXACT
    return SIMILAR if by_name == SIMILAR else DISAGREE


def address(a: Features, b: Features) -> str | None:
    """Street, postcode and city as one comparison: the street is only known in its place."""
    if not (a.street or a.postcode or a.city) or not (b.street or b.postcode or b.city):
        return None
    on_street = street(a.street, b.street) in (EXACT, SIMILAR)
    by_city, by_postcode = city(a.city, b.city), postcode(a.postcode, b.postcode)
    # On the same street, a town or postcode one typo away is the same place.
    in_place = EXACT in (by_city, by_postcode) or by_city == SIMILAR or by_postcode == PARTIAL
    if on_street:
        return EXACT if in_place else STREET  # STREET: the place missing or changed
    if by_city == EXACT:
        return CITY  # another or unknown street in the same town (term frequencies: how big a town)
    if by_postcode == EXACT:
        return POSTCODE
    if by_city == SIMILAR or by_postcode == PARTIAL:
        return PARTIAL
    return DISAGREE


def workplace(a: Features, b: Features) -> str | None:
    """Organisation and address as one comparison. Colleagues share both (and often a switchboard):
    as separate comparisons, Fellegi-Sunter would count one fact - the same workplace - two or
    three times, since random pairs, where u is measured, hardly ever share either. Levels: both
    agree (EXACT), the company only, the street and place only (SITE), then the address's own."""
    org, addr = organisation(a, b), address(a, b)
    if org is None and addr is None:
        return None
    same_company = org in (EXACT, SIMILAR)
    at_site = addr in (EXACT, STREET)
    if same_company:
        return EXACT if at_site else COMPANY
    if addr == EXACT:
        return SITE  # the same street and place, another or unknown company name
    return addr or DISAGREE


@dataclass(frozen=True)
class ComparisonSpec:
    """One comparison: its name (``output_column_name``), the feature columns that decide it (an EM
    session blocked on one of them cannot estimate it), its levels
    from most to least specific (the last is the else level), and the levels whose weight is
    adjusted by the term frequency of a column's value (a rare surname says more than "smith")."""

    name: str
    columns: tuple[str, ...]
    levels: tuple[str, ...]
    level: Callable[[Features, Features], str | None]
    tf_columns: dict[str, str] = field(default_factory=dict)
    # Pairs (stronger, weaker): a level never weighs less than one it is stronger than, whatever
    # EM fits (training pools violators); None: the ladder's order, first to last.
    order: tuple[tuple[str, str], ...] | None = None

    @property
    def dominance(self) -> tuple[tuple[str, str], ...]:
        """Every (stronger, weaker) pair the order implies, transitively: a model that lacks a
        level in between still keeps the two around it in order."""
        pairs = set(self.order if self.order is not None else zip(self.levels, self.levels[1:], strict=False))
        while True:
            implied = {(a, d) for a, b in pairs for c, d in pairs if b == c and a != d} - pairs
            if not implied:
                return tuple(sorted(pairs, key=lambda p: (self.levels.index(p[0]), self.levels.index(p[1]))))
            pairs |= implied


_WORKPLACE_COLUMNS = ("company", "domain", "email_domain", "street", "city", "postcode")
_SAME_WORKPLACE = (EXACT, COMPANY, SITE)


def _below(level: str, stronger: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((s, level) for s in stronger)


# Each name comparison declares its own columns only; swapped names (rare) read the other's too.
COMPARISONS: tuple[ComparisonSpec, ...] = (
    ComparisonSpec(
        "first_name",
        ("first", "first_sound"),
        (EXACT, NICKNAME, SIMILAR, PHONETIC, PARTIAL, DISAGREE),
        lambda a, b: names(a, b)[0],
        {EXACT: "first"},
        # a nickname and a near spelling are other forms of one name, not ordered between them
        order=(
            (EXACT, NICKNAME),
            (EXACT, SIMILAR),
            (NICKNAME, PHONETIC),
            (SIMILAR, PHONETIC),
            (PHONETIC, DISAGREE),
            (PARTIAL, DISAGREE),
        ),
    ),
    ComparisonSpec(
        "last_name",
        ("last", "last_sound"),
        (EXACT, SIMILAR, PHONETIC, DISAGREE),
        lambda a, b: names(a, b)[1],
        {EXACT: "last"},
    ),
    # Email and phone read the names too, for their "same name" levels: a session blocked on the
    # names does not estimate them (among namesakes, the same mailbox name is common).
    ComparisonSpec(
        "email",
        ("email", "email_local", "first", "last"),
        (EXACT, SIMILAR, NAMED_PARTIAL, PARTIAL, DISAGREE),
        lambda a, b: email_level(a, b, names_agree(*names(a, b))),
        order=(
            (EXACT, SIMILAR),
            (EXACT, NAMED_PARTIAL),
            (NAMED_PARTIAL, PARTIAL),
            (SIMILAR, DISAGREE),
            (PARTIAL, DISAGREE),
        ),
    ),
    ComparisonSpec(
        "phone",
        ("phone", "first", "last", *_WORKPLACE_COLUMNS),
        (NAMED_EXACT, SAME_WORKPLACE, EXACT, PARTIAL, DISAGREE),
        lambda a, b: phone_level(a, b, names_agree(*names(a, b)), workplace(a, b) in _SAME_WORKPLACE),
        # a switchboard (the same number at the same workplace) is no stronger than any shared number
        order=(
            (NAMED_EXACT, EXACT),
            (NAMED_EXACT, SAME_WORKPLACE),
            *_below(DISAGREE, (SAME_WORKPLACE, EXACT, PARTIAL)),
        ),
    ),
    ComparisonSpec(
        "workplace",
        _WORKPLACE_COLUMNS,
        (EXACT, COMPANY, SITE, STREET, CITY, POSTCODE, PARTIAL, DISAGREE),
        workplace,
        {CITY: "city"},
        # the company and the site are not ordered against each other, nor the town against the
        # postcode; both-agree is the strongest, a disagreement the weakest
        order=(
            (EXACT, COMPANY),
            (EXACT, SITE),
            (SITE, STREET),
            (STREET, PARTIAL),
            (CITY, PARTIAL),
            (POSTCODE, PARTIAL),
            *_below(DISAGREE, (COMPANY, PARTIAL)),
        ),
    ),
    ComparisonSpec(
        "date_of_birth",
        ("birth_date",),
        (EXACT, SIMILAR, DISAGREE),
        lambda a, b: birth_date(a.birth_date, b.birth_date),
    ),
)
NAME_COMPARISONS = ("first_name", "last_name")


@dataclass(frozen=True)
class Conflict:
    """A level that says "another person" so plainly that what relatives or colleagues share
    (address, workplace, surname, a landline or switchboard, for a junior even the first name)
    is no evidence against it; only a personal identifier agreeing (``unless``) is."""

    comparison: str
    level: str
    unless: dict[str, tuple[str, ...]]
    why: str


CONFLICTS: tuple[Conflict, ...] = (
    # Twins share a date of birth: the one case of this rule a CRM's fields cannot tell apart.
    Conflict(
        "first_name",
        DISAGREE,
        {"email": (EXACT, SIMILAR), "date_of_birth": (EXACT,)},
        "first names disagree",
    ),
    Conflict("date_of_birth", DISAGREE, {"email": (EXACT, SIMILAR)}, "dates of birth disagree"),
)


def conflicts(levels: dict[str, str]) -> list[Conflict]:
    """The conflicts a pair's levels hold that no personal identifier resolves."""
    return [
        c
        for c in CONFLICTS
        if levels.get(c.comparison) == c.level
        and not any(levels.get(name) in agree for name, agree in c.unless.items())
    ]


TF_COLUMNS: tuple[str, ...] = tuple(sorted({c for s in COMPARISONS for c in s.tf_columns.values()}))


def compare(a: Features, b: Features) -> dict[str, str]:
    """Comparison -> level, for the comparisons both records have data for."""
    return compare_values(a, b)[0]


def compare_values(a: Features, b: Features) -> tuple[dict[str, str], dict[str, str]]:
    """The levels (``compare``) and, for the comparisons with term-frequency levels, the value
    compared: with swapped names, the first-name level compares ``a``'s surname slot, and its
    frequency is that value's, not the first name ``a`` does not share.

    Symmetric: the two records are taken in one order (by their names), so a pair scores the same
    whichever of them an event is about (compared swapped, the names would otherwise meet the
    first- and last-name ladders the other way round)."""
    if (b.first, b.last) < (a.first, a.last):
        a, b = b, a
    first, last, swapped = _names(a, b)
    named = names_agree(first, last)
    place = workplace(a, b)
    levels = {
        "first_name": first,
        "last_name": last,
        "email": email_level(a, b, named),
        "phone": phone_level(a, b, named, place in _SAME_WORKPLACE),
        "workplace": place,
        "date_of_birth": birth_date(a.birth_date, b.birth_date),
    }
    values = {
        "first_name": a.last if swapped else a.first,
        "last_name": a.first if swapped else a.last,
        "workplace": a.city,
    }
    return {k: v for k, v in levels.items() if v is not None}, values
