"""Blocking keys: a record is indexed under a few keys; candidates share at least one.

Keys are chosen so that a typo, a nickname or a missing value in any one field leaves another key
intact (each field is left out of some key), and strict enough that a key is shared by a handful
of records, never by a whole domain or a common surname alone:

- contacts: email; email mailbox name (``j.smith@`` at another domain); corporate domain + last
  name; phone; first + last name; their sounds (metaphone, order-free: survives most typos and
  swapped names); last name + postcode; first name + postcode (a typo in the surname); initial +
  sound of the last name + street number (a wrong postcode or first name); name + company;
  typo-tolerant keys: the first letters of the street name and of the town (a typo later in
  either, a space typed in or left out, another house number); the sound of a name with the
  house number (a typo in the name and in the place);
- companies: domain, name, first word of the name + postcode, phone.

Keys carry the object type, so contacts and companies never meet. A key held by more than
``MAX_RECORDS_PER_KEY`` records is skipped at lookup: the candidates of one event stay bounded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from changegate.detector.matching.compare import MIN_MAILBOX_NAME
from changegate.detector.matching.normalize import Features

MAX_KEY_LENGTH = 200
# A key more records share than this is too common to block on (like a city alone): it is skipped
# at lookup, so the candidates of one event stay bounded whatever the CRM's size.
MAX_RECORDS_PER_KEY = 20
# Prefix length of the street name and the town in their typo-tolerant key.
PREFIX = 4
# An event is compared with at most this many records: those sharing the most keys with it (the
# newest first on a tie). It bounds the cost of the worst events, not only of the average one.
MAX_CANDIDATES = 16


def blocking_keys(f: Features) -> set[str]:
    t = f.object_type
    keys: set[str] = set()
    if f.email:
        keys.add(f"{t}:email:{f.email}")
        mailbox = f.email_local.replace(".", "")  # Gmail ignores dots: janedoe@gmail = jane.doe@acme
        if len(mailbox) >= MIN_MAILBOX_NAME:
            keys.add(f"{t}:mailbox:{mailbox}")
        if f.corporate_domain and f.last:
            # the same person at another mailbox style of the same company: j.smith@ vs john.smith@
            keys.add(f"{t}:emlast:{f.last}@{f.corporate_domain}")
    if f.phone:
        keys.add(f"{t}:phone:{f.phone}")
    if f.first and f.last:
        keys.add(f"{t}:sound:{'|'.join(sorted((f.first_sound, f.last_sound)))}")
        if f.company:
            keys.add(f"{t}:namecomp:{f.last}|{f.company}")
    if f.first and f.last_sound and f.street_number:
        keys.add(f"{t}:initstreet:{f.first[0]}|{f.last_sound}|{f.street_number}")
    # A name (in either slot: swapped names) or the street with a place; the house number with a
    # place: one or two damaged fields leave another pair intact.
    names = sorted({n for n in (f.first, f.last) if n})
    if len(names) == 2:
        keys.add(f"{t}:names:{names[0]}|{names[1]}")
    number = f.street_number
    for place, value in (("post", f.postcode), ("city", f.city)):
        if not value:
            continue
        keys.update(f"{t}:name+{place}:{n}|{value}" for n in names)
        if f.street:
            keys.add(f"{t}:street+{place}:{f.street}|{value}")
        if number:
            keys.add(f"{t}:number+{place}:{number}|{value}")
    if f.street:
        keys.update(f"{t}:name+street:{n}|{f.street}" for n in names)
        street_name = f.street.removeprefix(number).replace(" ", "")
        town = f.city.replace(" ", "")
        if street_name and town:
            keys.add(f"{t}:street+town:{street_name[:PREFIX]}|{town[:PREFIX]}")
    if number:
        keys.update(f"{t}:sound+number:{s}|{number}" for s in {f.first_sound, f.last_sound} if s)
    if f.object_type == "company":
        if f.domain:
            keys.add(f"{t}:domain:{f.domain}")
        if f.company:
            keys.add(f"{t}:company:{f.company}")
            if f.postcode:
                keys.add(f"{t}:comppost:{f.company.split(' ')[0]}|{f.postcode}")
    return {k[:MAX_KEY_LENGTH] for k in keys}


def select_candidates(
    holders_per_key: Iterable[Iterable[int]],
    max_per_key: int = MAX_RECORDS_PER_KEY,
    limit: int = MAX_CANDIDATES,
) -> list[int]:
    """From the records (by ascending arrival number) holding each of an event's keys, the ones
    to compare: keys held by more than ``max_per_key`` records are skipped, and of the rest the
    ``limit`` records sharing the most keys are kept, the newest first on a tie."""
    shared: Counter[int] = Counter()
    for holders in holders_per_key:
        found = set(holders)
        if len(found) <= max_per_key:
            shared.update(found)
    ranked = sorted(shared.items(), key=lambda item: (-item[1], -item[0]))
    return [record for record, _ in ranked[:limit]]
