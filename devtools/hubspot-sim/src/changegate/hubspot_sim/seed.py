"""A portal as a platform team finds it before changegate: companies, owners (HubSpot's numeric
ids, one of them deactivated), and contacts made by the synthetic population (``population.py``):
people with duplicate records damaged the way CRM data is, beside colleagues, relatives and
namesakes who are not duplicates; owned, at some lifecycle stage."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from changegate.hubspot_sim.population import Population

# HubSpot owner ids are numbers; the first is the demo's west-coast territory owner.
OWNERS = [
    ("78", "Avery", "West"),
    ("17", "Blake", "North"),
    ("23", "Casey", "East"),
    ("31", "Devon", "South"),
    ("42", "Emery", "Central"),
    ("55", "Frankie", "Former"),  # deactivated: their records need a new owner
]
ARCHIVED_OWNERS = {"55"}
STAGES = ["subscriber", "lead", "lead", "marketingqualifiedlead", "salesqualifiedlead", "customer"]


@dataclass
class Seeded:
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def population(contacts: int, seed: int = 1) -> Seeded:
    """About ``contacts`` contacts (duplicates included) and the companies they work at."""
    rng = random.Random(seed)
    made = Seeded()
    for owner_id, first, last in OWNERS:
        made.owners[owner_id] = {
            "email": f"{first}.{last}@portal.example".lower(),
            "firstName": first,
            "lastName": last,
            "archived": owner_id in ARCHIVED_OWNERS,
        }
    people = Population(seed)
    # About 1.55 records a person at the generator's default rates: ask for enough, keep ``contacts``.
    records = people.records(max(1, -(-contacts * 2 // 3)))[:contacts]
    owner_ids = [o[0] for o in OWNERS]
    made.records["contacts"] = [
        {
            **{k: v for k, v in r.properties.items() if v not in (None, "")},
            "hubspot_owner_id": rng.choice(owner_ids),
            "lifecyclestage": rng.choice(STAGES),
        }
        for r in records
    ]
    made.records["companies"] = [
        {
            "name": c["name"],
            "domain": c["domain"],
            "city": c["city"],
            "state": c["state"],
            "country": c["country"],
            "zip": c["zip"],
            "address": c["address"],
            "phone": f"+{c['cc']}{c['switchboard']}",
            "hubspot_owner_id": rng.choice(owner_ids),
        }
        for c in people.companies
    ]
    return made
