"""A synthetic CRM event stream for the demo: contacts appear, then Clay enriches them."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyValue, utcnow

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
COMPANIES = [("Acme", "acme.example"), ("Globex", "globex.example"), ("Initech", "initech.example")]
TITLES = ["VP Engineering", "Head of Data", "CTO", "Staff Engineer", "Director of Sales Ops"]


@dataclass(frozen=True)
class DemoContact:
    record_id: str
    properties: dict[str, PropertyValue]
    created: CrmEvent
    enrichment: CrmEvent


def contacts(seed: int = 7, run: str | None = None) -> Iterator[DemoContact]:
    """Endless contacts; about half have an empty job title (auto-applied fills), the rest have
    one that Clay wants to overwrite (reviewed)."""
    rng = random.Random(seed)
    run = run or uuid.uuid4().hex[:6]
    n = 0
    while True:
        n += 1
        first, last = rng.choice(FIRST), rng.choice(LAST)
        company, domain = rng.choice(COMPANIES)
        record_id = f"demo-{run}-{n}"
        props: dict[str, PropertyValue] = {
            "firstname": first,
            "lastname": last,
            "company": company,
            "email": f"{first}.{last}{n}@{domain}".lower(),
            "jobtitle": "" if rng.random() < 0.5 else rng.choice(TITLES),
        }
        created = CrmEvent(
            source_system="hubspot",
            source_event_id=f"hs-{record_id}-created",
            object_type=ObjectType.CONTACT,
            record_id=record_id,
            kind=CrmEventKind.RECORD_CREATED,
            properties=props,
            occurred_at=utcnow(),
        )
        title = rng.choice([t for t in TITLES if t != props["jobtitle"]])
        enrichment = CrmEvent(
            source_system="clay",
            source_event_id=f"clay-{record_id}",
            object_type=ObjectType.CONTACT,
            record_id=record_id,
            kind=CrmEventKind.ENRICHMENT_RESULT,
            properties={"jobtitle": title},
            confidence=round(rng.uniform(0.86, 0.99), 2),
            occurred_at=utcnow(),
        )
        yield DemoContact(record_id, props, created, enrichment)
