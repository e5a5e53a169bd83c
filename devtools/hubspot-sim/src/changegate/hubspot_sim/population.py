"""A seedable, labelled synthetic CRM population for the duplicate finder's benchmarks.

People (contacts) with true duplicates carrying realistic damage — typos, transpositions,
nicknames, swapped first/last names, email variants (case, Gmail dots and +tags, a personal
address beside the work one), phone formats, missing fields, company suffixes, street
abbreviations — and hard non-duplicates: colleagues sharing company, domain, address and
switchboard; relatives sharing a last name and postcode; namesakes at other companies."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

FIRST = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Nancy",
    "Daniel",
    "Margaret",
    "Matthew",
    "Lisa",
    "Anthony",
    "Betty",
    "Mark",
    "Dorothy",
    "Steven",
    "Sandra",
    "Andrew",
    "Ashley",
    "Joshua",
    "Kimberly",
    "Kenneth",
    "Donna",
    "Kevin",
    "Emily",
    "Brian",
    "Michelle",
    "George",
    "Carol",
    "Edward",
    "Amanda",
    "Ronald",
    "Melissa",
    "Timothy",
    "Deborah",
    "Jason",
    "Stephanie",
    "Jeffrey",
    "Rebecca",
    "Ryan",
    "Laura",
    "Jacob",
    "Helen",
    "Gary",
    "Sharon",
    "Nicholas",
    "Cynthia",
    "Eric",
    "Kathleen",
    "Stephen",
    "Amy",
    "Jonathan",
    "Shirley",
    "Larry",
    "Angela",
    "Lukas",
    "Sophie",
    "Maximilian",
    "Hannah",
    "Pierre",
    "Camille",
    "Giulia",
    "Matteo",
    "Lars",
    "Ingrid",
]
NICK = {
    "Robert": ["Bob", "Rob", "Bobby"],
    "William": ["Bill", "Will", "Billy"],
    "Richard": ["Rick", "Dick"],
    "James": ["Jim", "Jimmy"],
    "Michael": ["Mike", "Mikey"],
    "Elizabeth": ["Liz", "Beth", "Betsy"],
    "Jennifer": ["Jen", "Jenny"],
    "Joseph": ["Joe", "Joey"],
    "Thomas": ["Tom", "Tommy"],
    "Christopher": ["Chris"],
    "Daniel": ["Dan", "Danny"],
    "Margaret": ["Maggie", "Peggy"],
    "Matthew": ["Matt"],
    "Anthony": ["Tony"],
    "Steven": ["Steve"],
    "Andrew": ["Andy", "Drew"],
    "Kenneth": ["Ken", "Kenny"],
    "Katherine": ["Kate", "Kathy"],
    "Timothy": ["Tim"],
    "Nicholas": ["Nick"],
    "Jonathan": ["Jon"],
    "Stephen": ["Steve"],
    "Edward": ["Ed", "Eddie", "Ted"],
    "Patricia": ["Pat", "Patty"],
    "Rebecca": ["Becky"],
    "Susan": ["Sue"],
    "Deborah": ["Deb", "Debbie"],
    "Kimberly": ["Kim"],
}
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Mueller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Dubois",
    "Moreau",
    "Rossi",
    "Russo",
    "Hansen",
    "Johansson",
    "Kowalski",
    "Novak",
    "Horvat",
    "Ivanova",
    "Okafor",
    "Mensah",
    "Tanaka",
    "Suzuki",
    "Kim",
    "Park",
    "Chen",
]
COMPANY_WORDS = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Cyberdyne",
    "Tyrell",
    "Massive",
    "Dynamic",
    "Nimbus",
    "Quantum",
    "Vertex",
    "Summit",
    "Pioneer",
    "Apex",
    "Blue",
    "Red",
    "Green",
    "North",
    "Bright",
    "Silver",
    "Golden",
    "Iron",
    "Crystal",
    "Atlas",
    "Orion",
]
COMPANY_TAILS = [
    "Systems",
    "Labs",
    "Analytics",
    "Holdings",
    "Software",
    "Logistics",
    "Health",
    "Energy",
    "Media",
    "Partners",
    "Robotics",
    "Foods",
    "Capital",
    "Networks",
    "Bio",
    "Works",
]
SUFFIXES = ["Inc.", "Inc", "LLC", "Ltd", "GmbH", "Corp.", ""]
FREE = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "gmx.de", "proton.me"]
STREETS = [
    "Main",
    "Oak",
    "Pine",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Market",
    "Mission",
    "Broadway",
    "Sunset",
    "River",
    "Church",
    "High",
    "Station",
    "Mill",
    "Bridge",
]
STREET_TYPES = [("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Boulevard", "Blvd"), ("Drive", "Dr")]
PLACES = [  # city, state, country, postcode prefix, phone country code, national number length
    ("San Francisco", "CA", "United States", "941", "1", 10),
    ("New York", "NY", "United States", "100", "1", 10),
    ("Austin", "TX", "United States", "787", "1", 10),
    ("Chicago", "IL", "United States", "606", "1", 10),
    ("Seattle", "WA", "United States", "981", "1", 10),
    ("Boston", "MA", "United States", "021", "1", 10),
    ("Berlin", "BE", "Germany", "101", "49", 10),
    ("Munich", "BY", "Germany", "803", "49", 10),
    ("London", "", "United Kingdom", "EC1", "44", 10),
    ("Paris", "", "France", "750", "33", 9),
]


@dataclass(frozen=True)
class Record:
    record_id: str
    entity: int
    properties: dict[str, Any]


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 4:
        return s
    i = rng.randrange(1, len(s) - 1)
    kind = rng.choice(["swap", "drop", "double", "replace"])
    if kind == "swap":
        return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    if kind == "drop":
        return s[:i] + s[i + 1 :]
    if kind == "double":
        return s[:i] + s[i] + s[i:]
    return s[:i] + rng.choice("aeiourstln") + s[i + 1 :]


def _phone_formats(rng: random.Random, cc: str, national: str) -> str:
    style = rng.choice(["e164", "intl", "national", "dotted"])
    if style == "e164":
        return f"+{cc}{national}"
    if style == "intl":
        return f"+{cc} {national[:3]} {national[3:6]} {national[6:]}"
    if cc == "1":
        return (
            f"({national[:3]}) {national[3:6]}-{national[6:]}"
            if style == "national"
            else (f"{national[:3]}.{national[3:6]}.{national[6:]}")
        )
    return f"0{national[:3]} {national[3:]}"


class Population:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.companies = [self._company(i) for i in range(max(50, 400))]
        self.n = 0
        self.emails: set[str] = set()

    def _company(self, i: int) -> dict[str, Any]:
        rng = self.rng
        name = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_TAILS)}"
        domain = (
            name.lower().replace(" ", "") + rng.choice([".com", ".io", ".de", ".co"])
            if i % 7
            else (name.lower().replace(" ", "-") + ".com")
        )
        city, state, country, pc, cc, length = rng.choice(PLACES)
        street, (stype, _) = rng.choice(STREETS), rng.choice(STREET_TYPES)
        return {
            "name": name,
            "domain": domain,
            "city": city,
            "state": state,
            "country": country,
            "zip": f"{pc}{rng.randrange(10, 99)}" if pc.isdigit() else f"{pc} {rng.randrange(1, 9)}AB",
            "address": f"{rng.randrange(1, 999)} {street} {stype}",
            "cc": cc,
            "switchboard": "".join(str(rng.randrange(10)) for _ in range(length)),
        }

    def _person(self, company: dict[str, Any], last: str | None = None) -> dict[str, Any]:
        rng = self.rng
        first, last = rng.choice(FIRST), last or rng.choice(LAST)
        work = rng.random() < 0.8
        local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}", f"{first}{last[0]}"]).lower()
        email = (
            f"{local}@{company['domain']}"
            if work
            else f"{first}.{last}{rng.randrange(1, 99)}@{rng.choice(FREE)}".lower()
        )
        if email in self.emails:  # a mailbox belongs to one person: james@ is taken, james2@ is not
            local, _, dom = email.partition("@")
            email = f"{local}{len(self.emails)}@{dom}"
        self.emails.add(email)
        national = "".join(str(rng.randrange(10)) for _ in range(len(company["switchboard"])))
        return {
            "firstname": first,
            "lastname": last,
            "email": email,
            "phone": _phone_formats(rng, company["cc"], national),
            "_national": national,
            "company": f"{company['name']} {rng.choice(SUFFIXES)}".strip(),
            "website": company["domain"],
            "address": company["address"],
            "city": company["city"],
            "zip": company["zip"],
            "state": company["state"],
            "country": company["country"],
            "jobtitle": rng.choice(["CTO", "VP Sales", "Engineer", "Analyst", "Head of Ops", ""]),
            "_cc": company["cc"],
        }

    def _variant(self, p: dict[str, Any]) -> dict[str, Any]:
        """A duplicate entry of the same person, damaged the way CRM data is."""
        rng, v = self.rng, dict(p)
        damages = rng.sample(
            [
                "typo_first",
                "typo_last",
                "nick",
                "swap",
                "email_case",
                "email_other",
                "email_gmail",
                "phone_format",
                "drop",
                "drop",
                "suffix",
                "street",
                "email_typo",
                "moved",
                "new_phone",
            ],
            k=rng.randint(1, 3),
        )
        for d in damages:
            if d == "typo_first":
                v["firstname"] = _typo(rng, v["firstname"])
            elif d == "typo_last":
                v["lastname"] = _typo(rng, v["lastname"])
            elif d == "nick" and p["firstname"] in NICK:
                v["firstname"] = rng.choice(NICK[p["firstname"]])
            elif d == "swap":
                v["firstname"], v["lastname"] = v["lastname"], v["firstname"]
            elif d == "email_case":
                v["email"] = v["email"].upper() if rng.random() < 0.5 else v["email"].title()
            elif d == "email_other":  # a personal address next to the work one
                v["email"] = (
                    f"{p['firstname']}.{p['lastname']}{rng.randrange(1, 99)}@{rng.choice(FREE)}".lower()
                )
            elif d == "email_gmail" and v["email"].endswith("@gmail.com"):
                local = v["email"].split("@")[0]
                v["email"] = f"{local[:2]}.{local[2:]}+crm@gmail.com"
            elif d == "email_typo":
                local, _, dom = v["email"].partition("@")
                v["email"] = f"{_typo(rng, local)}@{dom}"
            elif d == "moved":  # changed jobs: another company, address and work email
                c = rng.choice(self.companies)
                v.update(
                    company=c["name"],
                    website=c["domain"],
                    address=c["address"],
                    city=c["city"],
                    zip=c["zip"],
                    state=c["state"],
                    country=c["country"],
                )
                if not any(v["email"].endswith(f) for f in FREE):
                    v["email"] = f"{p['firstname']}.{p['lastname']}@{c['domain']}".lower()
            elif d == "new_phone":
                v["phone"] = _phone_formats(
                    rng, p["_cc"], "".join(str(rng.randrange(10)) for _ in p["_national"])
                )
            elif d == "phone_format":
                v["phone"] = _phone_formats(rng, p["_cc"], p["_national"])
            elif d == "drop":
                v[rng.choice(["phone", "email", "company", "address", "zip", "website", "city"])] = ""
            elif d == "suffix":
                v["company"] = v["company"].replace(" Inc.", "").replace(" LLC", ", LLC") + rng.choice(
                    ["", " Inc"]
                )
            elif d == "street":
                for long, short in STREET_TYPES:
                    v["address"] = v["address"].replace(long, short)
        if not (v.get("email") or v.get("phone")) and rng.random() < 0.5:
            v["email"] = p["email"]
        return v

    def records(self, people: int, duplicate_rate: float = 0.2, hard_rate: float = 0.3) -> list[Record]:
        """``people`` entities; ``duplicate_rate`` of them have 1-2 more records; ``hard_rate`` of
        them bring a hard non-duplicate (colleague, relative or namesake). Shuffled."""
        rng = self.rng
        out: list[Record] = []
        entity = 0

        def add(props: dict[str, Any], ent: int) -> None:
            self.n += 1
            clean = {k: val for k, val in props.items() if not k.startswith("_")}
            out.append(Record(f"c{self.n}", ent, clean))

        for _ in range(people):
            entity += 1
            company = rng.choice(self.companies)
            person = self._person(company)
            add(person, entity)
            if rng.random() < duplicate_rate:
                for _ in range(rng.choice([1, 1, 1, 2])):
                    add(self._variant(person), entity)
            if rng.random() < hard_rate:
                entity += 1
                kind = rng.choice(["colleague", "relative", "namesake"])
                if kind == "colleague":  # same company, address, switchboard; another person
                    other = self._person(company)
                    other["phone"] = _phone_formats(rng, company["cc"], company["switchboard"])
                    person_phone = person["phone"]
                    if rng.random() < 0.5:
                        person["phone"] = person_phone
                elif kind == "relative":  # same last name and home postcode, another first name
                    other = self._person(rng.choice(self.companies), last=person["lastname"])
                    other["zip"], other["city"], other["state"] = (
                        person["zip"],
                        person["city"],
                        person["state"],
                    )
                    other["firstname"] = rng.choice([f for f in FIRST if f != person["firstname"]])
                else:  # the same name, somebody else elsewhere
                    other = self._person(rng.choice(self.companies), last=person["lastname"])
                    other["firstname"] = person["firstname"]
                add(other, entity)
        rng.shuffle(out)
        return out


def true_pairs(records: list[Record]) -> set[frozenset[str]]:
    by_entity: dict[int, list[str]] = {}
    for r in records:
        by_entity.setdefault(r.entity, []).append(r.record_id)
    return {frozenset((a, b)) for ids in by_entity.values() for i, a in enumerate(ids) for b in ids[i + 1 :]}


def stream(seed: int, people: int) -> Iterator[Record]:
    yield from Population(seed).records(people)
