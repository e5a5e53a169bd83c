"""A synthetic CRM stream for the demo, cycling through the mission's five scenarios: enrichment
write-backs (fills apply, overwrites wait), a duplicate pair (a merge to review), a defined
lifecycle event (applies) and an AI score (waits), an owner territory change (waits), and email
verification results (valid applies, catch-all waits)."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyValue, utcnow

FIRST = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim",
    "Margaret", "John", "Katherine", "Dennis", "Shafi", "Leslie", "Sophie", "Niklaus", "Hedy", "Claude",
]  # fmt: skip
LAST = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
    "Backus", "Johnson", "Ritchie", "Goldwasser", "Lamport", "Wilson", "Wirth", "Lamarr", "Shannon",
]  # fmt: skip
COMPANIES = [("Acme", "acme.example"), ("Globex", "globex.example"), ("Initech", "initech.example")]
TITLES = ["VP Engineering", "Head of Data", "CTO", "Staff Engineer", "Director of Sales Ops"]
# The detector settings the demo's owner scenario needs (dev up --demo passes them on).
DEMO_OWNER = {"territories": [{"country": "us", "state": "CA", "owner": "owner-west"}]}
DEMO_ENV = {"CHANGEGATE_OWNER": json.dumps(DEMO_OWNER)}
DEMO_OWNERS = ("owner-west", "owner-17")  # exist in the sandbox CRM, so an approval can assign them


@dataclass
class DemoStep:
    """One scenario: records to create in the sandbox CRM first, then the events that report on them."""

    scenario: str
    shows: str  # what a watcher should see happen
    records: dict[str, dict[str, PropertyValue]] = field(default_factory=dict)
    events: list[CrmEvent] = field(default_factory=list)


def _event(
    kind: CrmEventKind,
    record_id: str,
    source: str,
    props: dict[str, PropertyValue],
    confidence: float | None = None,
) -> CrmEvent:
    return CrmEvent(
        source_system=source,
        source_event_id=f"{source}-{uuid.uuid4().hex[:12]}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=kind,
        properties=props,
        confidence=confidence,
        occurred_at=utcnow(),
    )


def _created(step: DemoStep, record_id: str, **props: PropertyValue) -> None:
    step.records[record_id] = dict(props)
    step.events.append(_event(CrmEventKind.RECORD_CREATED, record_id, "hubspot", dict(props)))


def steps(seed: int = 7, run: str | None = None) -> Iterator[DemoStep]:
    """Endless demo steps, the five scenarios in turn."""
    rng = random.Random(seed)
    run = run or uuid.uuid4().hex[:6]
    n = 0

    # Numeric record ids, as HubSpot's are (its webhooks carry them as numbers), distinct per run.
    base = int(hashlib.sha256(run.encode()).hexdigest()[:10], 16) * 1_000_000

    def rid() -> str:
        nonlocal n
        n += 1
        return str(base + n)

    # Every scenario its own person: namesakes at one company would (rightly) look like duplicates.
    combos = [(f, la, c) for f in FIRST for la in LAST for c in COMPANIES]
    rng.shuffle(combos)
    people = itertools.cycle(combos)

    while True:
        first, last, (company, domain) = next(people)

        # 1. Enrichment: Clay fills an empty job title (auto-applied) or overwrites one (review).
        step = DemoStep("enrichment", "")
        contact, empty = rid(), rng.random() < 0.5
        current = "" if empty else rng.choice(TITLES)
        _created(
            step,
            contact,
            firstname=first,
            lastname=last,
            company=company,
            jobtitle=current,
            email=f"{first}.{last}.{n}@{domain}".lower(),
        )
        title = rng.choice([t for t in TITLES if t != current])
        step.events.append(
            _event(
                CrmEventKind.ENRICHMENT_RESULT,
                contact,
                "clay",
                {"jobtitle": title},
                confidence=round(rng.uniform(0.86, 0.99), 2),
            )
        )
        step.shows = f"Clay {'fills' if empty else 'overwrites'} {contact}'s job title: " + (
            "auto-applied (audit)" if empty else "waits for review"
        )
        yield step

        # 2. Deduplication: the same person twice; the merge always waits for a reviewer.
        step = DemoStep("duplicates", "")
        first, last, (company, domain) = next(people)
        a, b, tag = rid(), rid(), uuid.uuid4().hex[:4]
        email = f"{first}.{last}.{tag}@{domain}".lower()
        _created(
            step,
            a,
            firstname=first,
            lastname=last,
            email=email,
            phone="+1 415 555 0134",
            company=f"{company} Inc.",
            city="San Francisco",
            zip="94107",
            jobtitle=rng.choice(TITLES),
        )
        _created(
            step,
            b,
            firstname=first,
            lastname=last,
            email=email.upper(),
            phone="(415) 555-0134",
            company=company,
        )
        step.shows = f"{a} and {b} are one person: a merge waits in queue 'dedup' (approve it to merge)"
        yield step

        # 3. Lifecycle: a demo request (defined event) applies; a high AI score waits for review.
        step = DemoStep("lifecycle", "")
        lead, scored = rid(), rid()
        first, last, _ = next(people)
        _created(step, lead, firstname=first, lastname=last, lifecyclestage="lead")
        first, last, _ = next(people)
        _created(step, scored, firstname=first, lastname=last, lifecyclestage="lead")
        step.events.append(
            _event(
                CrmEventKind.LIFECYCLE_EVENT,
                lead,
                "forms",
                {"event": "form_submission", "form_type": "demo_request"},
            )
        )
        step.events.append(
            _event(
                CrmEventKind.SCORE,
                scored,
                "scoring",
                {"score": round(rng.uniform(0.85, 0.97), 2), "model": "fit-v3"},
            )
        )
        step.shows = f"{lead} requested a demo: stage applied; {scored} scored high: stage waits for review"
        yield step

        # 4. Owner reassignment: a Californian contact held outside its territory.
        step = DemoStep("owner", "")
        first, last, _ = next(people)
        moved = rid()
        _created(
            step,
            moved,
            firstname=first,
            lastname=last,
            country="United States",
            state="CA",
            hubspot_owner_id="owner-17",
        )
        step.shows = f"{moved} belongs to territory owner-west: the reassignment waits for review"
        yield step

        # 5. Email verification: valid applies by itself, catch-all waits.
        step = DemoStep("verification", "")
        good, risky = rid(), rid()
        first, _, (_, domain) = next(people)
        _created(step, good, firstname=first, email=f"{good}@{domain}")
        first, _, (_, domain) = next(people)
        _created(step, risky, firstname=first, email=f"{risky}@{domain}", email_status="valid")
        step.events.append(
            _event(
                CrmEventKind.VERIFICATION_RESULT,
                good,
                "zerobounce",
                {"email": f"{good}@{domain}", "status": "valid"},
            )
        )
        step.events.append(
            _event(
                CrmEventKind.VERIFICATION_RESULT,
                risky,
                "neverbounce",
                {"email": f"{risky}@{domain}", "status": "catchall"},
            )
        )
        step.shows = f"{good}'s email verifies valid: applied; {risky}'s is catch-all: waits for review"
        yield step
