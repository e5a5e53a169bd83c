"""A synthetic CRM stream for the demo, cycling through the mission's five scenarios: enrichment
write-backs (fills apply, overwrites wait), a duplicate pair (a merge to review) beside its
look-alikes (a household member, a namesake elsewhere, a colleague: never proposed), a defined
lifecycle event (applies) and an AI score (waits), an owner territory change (waits), and email
verification results (valid applies, catch-all waits); then the guarantee that ties them together:
a change made in the CRM after a proposal makes the approved proposal end as a conflict.

Every person the demo creates is new to the run (a name is not reused until the name lists run
out), and has a phone and an address of their own: look-alikes are made on purpose, never by
accident. A step says what it expects; what should apply by itself is listed in ``applies`` so the
feed can check the CRM and say whether it did."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyValue, utcnow

FIRST = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim",
    "Margaret", "John", "Katherine", "Dennis", "Shafi", "Leslie", "Sophie", "Niklaus", "Hedy", "Claude",
    "Annie", "Bjarne", "Carl", "Dorothy", "Evelyn", "Fernando", "Guido", "Ivan", "Jean", "Karen",
    "Lynn", "Marvin", "Nancy", "Ole", "Peter", "Robin", "Silvio", "Tony", "Vint", "Whitfield",
]  # fmt: skip
LAST = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
    "Backus", "Johnson", "Ritchie", "Goldwasser", "Lamport", "Wilson", "Wirth", "Lamarr", "Shannon",
    "Easley", "Stroustrup", "Hewitt", "Vaughan", "Berners", "Corbato", "Rossum", "Sutherland", "Sammet",
    "Jones", "Conway", "Minsky", "Lynch", "Dahl", "Naur", "Milner", "Micali", "Hoare", "Cerf", "Diffie",
]  # fmt: skip
COMPANIES = [("Acme", "acme.example"), ("Globex", "globex.example"), ("Initech", "initech.example")]
STREETS = ["Market Street", "Mission Street", "Valencia Street", "Howard Street", "Folsom Street"]
# San Francisco and its neighbours: the office of each company, and homes around it.
PLACES = [("San Francisco", "94107"), ("Oakland", "94612"), ("Berkeley", "94704"), ("San Mateo", "94401")]
TITLES = ["VP Engineering", "Head of Data", "CTO", "Staff Engineer", "Director of Sales Ops"]
# HubSpot owner ids are numbers: the west-coast territory's owner and the one a contact is held by
# (the HubSpot simulator's seeded owners have them too).
OWNER_WEST, OWNER_HELD = "78", "17"
# The detector settings the demo's owner scenario needs (dev up --demo passes them on).
DEMO_OWNER = {"territories": [{"country": "us", "state": "CA", "owner": OWNER_WEST}]}
# The prior the demo configures for ZeroBounce's "valid" (the detector's default is 0.95; the default
# policy auto-applies a valid status from 0.98): a deployment measures it against its reviewers'
# decisions instead (`changegate detector calibrate`).
DEMO_VERIFICATION = {"verifier_confidence": {"zerobounce": {"valid": 0.99}}}
DEMO_ENV = {
    "CHANGEGATE_OWNER": json.dumps(DEMO_OWNER),
    "CHANGEGATE_VERIFICATION": json.dumps(DEMO_VERIFICATION),
}
DEMO_OWNERS = (OWNER_WEST, OWNER_HELD)  # exist in the CRM, so an approval can assign them
SCENARIOS = ("enrichment", "duplicates", "lifecycle", "owner", "verification", "conflict")


@dataclass
class DemoStep:
    """One scenario: records to create in the sandbox CRM first, then the events that report on them."""

    scenario: str
    shows: str  # what a watcher should see happen
    records: dict[str, dict[str, PropertyValue]] = field(default_factory=dict)
    events: list[CrmEvent] = field(default_factory=list)
    # record -> property -> value the default policy applies by itself (checked in the CRM)
    applies: dict[str, dict[str, PropertyValue]] = field(default_factory=dict)
    # records the duplicate finder must leave alone (look-alikes of the step's duplicates)
    look_alikes: list[str] = field(default_factory=list)
    # record -> property -> value someone sets in the CRM once the step's proposal waits for review;
    # the feed then approves that proposal, which must end as a conflict (nothing overwritten)
    crm_change: dict[str, dict[str, PropertyValue]] = field(default_factory=dict)


def contact_event(
    kind: CrmEventKind,
    record_id: str,
    source: str,
    props: dict[str, PropertyValue],
    confidence: float | None = None,
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> CrmEvent:
    """What ``source`` reports of a contact: with a fresh event id and the time now, unless given (a
    generator that must replay the same stream for a seed gives both: bench/labelled_stream.py)."""
    return CrmEvent(
        source_system=source,
        source_event_id=event_id or f"{source}-{uuid.uuid4().hex[:12]}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=kind,
        properties=props,
        confidence=confidence,
        occurred_at=occurred_at or utcnow(),
    )


def _created(step: DemoStep, record_id: str, **props: PropertyValue) -> None:
    step.records[record_id] = dict(props)
    step.events.append(contact_event(CrmEventKind.RECORD_CREATED, record_id, "hubspot", dict(props)))


def steps(seed: int = 7, run: str | None = None) -> Iterator[DemoStep]:
    """Endless demo steps, the scenarios (``SCENARIOS``) in turn."""
    rng = random.Random(seed)
    run = run or uuid.uuid4().hex[:6]
    n = 0

    # Numeric record ids, as HubSpot's are (its webhooks carry them as numbers), distinct per run.
    base = int(hashlib.sha256(run.encode()).hexdigest()[:10], 16) * 1_000_000

    def rid() -> str:
        nonlocal n
        n += 1
        return str(base + n)

    # Every scenario its own person; a name comes back only once every name has been used.
    names = [(f, la) for f in FIRST for la in LAST]
    rng.shuffle(names)
    taken: set[tuple[str, str]] = set()  # names given out in this pass over the name lists

    def fresh() -> Iterator[tuple[str, str, tuple[str, str]]]:
        for position, (f, la) in enumerate(itertools.cycle(names)):
            if position % len(names) == 0:
                taken.clear()
            if (f, la) not in taken:
                taken.add((f, la))
                yield f, la, rng.choice(COMPANIES)

    people = fresh()

    def phone() -> str:
        return f"+1 415 {rng.randrange(200, 999)} {rng.randrange(1000, 9999)}"

    def place() -> dict[str, PropertyValue]:
        city, zip_code = rng.choice(PLACES)
        return {"address": f"{rng.randrange(1, 2500)} {rng.choice(STREETS)}", "city": city, "zip": zip_code}

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
            contact_event(
                CrmEventKind.ENRICHMENT_RESULT,
                contact,
                "clay",
                {"jobtitle": title},
                # Clay's own match confidence: a fill applies by itself from 0.98 (the default policy)
                confidence=round(rng.uniform(0.99, 0.999), 3),
            )
        )
        step.shows = f"Clay {'fills' if empty else 'overwrites'} {contact}'s job title: " + (
            "policy auto-applies it" if empty else "waits for review"
        )
        if empty:
            step.applies[contact] = {"jobtitle": title}
        yield step

        # 2. Deduplication: the same person twice, at work and at home (the merge always waits for
        # a reviewer), beside the look-alikes of a real CRM that must never be proposed: a
        # household member (same surname and home, another first name), a namesake at another
        # company in another city, a colleague at the same office.
        step = DemoStep("duplicates", "")
        first, last, (company, domain) = next(people)
        a, b, home_id, namesake_id, colleague_id = rid(), rid(), rid(), rid(), rid()
        tag = uuid.uuid4().hex[:4]
        email = f"{first}.{last}.{tag}@{domain}".lower()
        mobile, office, home = phone(), place(), place()
        _created(
            step,
            a,
            firstname=first,
            lastname=last,
            email=email,
            phone=mobile,
            company=f"{company} Inc.",
            jobtitle=rng.choice(TITLES),
            **office,
        )
        _created(
            step,
            b,
            firstname=first,
            lastname=last,
            email=email.upper(),
            phone=mobile.replace("+1 ", "").replace(" ", "-", 1),
            company=company,
            **home,  # the same person's second record, at home
        )
        free = [f for f in FIRST if f != first and (f, last) not in taken]
        relative = rng.choice(free or [f for f in FIRST if f != first])
        taken.add((relative, last))
        _created(
            step,
            home_id,
            firstname=relative,
            lastname=last,
            email=f"{relative}.{last}.{tag}@mail.example".lower(),
            phone=phone(),
            **home,
        )
        other_company, other_domain = rng.choice([c for c in COMPANIES if c[0] != company])
        _created(
            step,
            namesake_id,
            firstname=first,
            lastname=last,
            email=f"{first}.{last}.{uuid.uuid4().hex[:4]}@{other_domain}".lower(),
            phone=phone(),
            company=other_company,
            **place(),
        )
        colleague_first, colleague_last, _ = next(people)
        _created(
            step,
            colleague_id,
            firstname=colleague_first,
            lastname=colleague_last,
            email=f"{colleague_first}.{colleague_last}.{tag}@{domain}".lower(),
            phone=phone(),
            company=f"{company} Inc.",
            **office,
        )
        step.look_alikes = [home_id, namesake_id, colleague_id]
        step.shows = (
            f"{a} and {b} are one person: a merge waits in queue 'dedup' (approve it to merge);"
            f" look-alikes the finder must leave alone: {home_id} (same surname and home, another first"
            f" name), {namesake_id} (same name, another company and city), {colleague_id} (same office)"
        )
        yield step

        # 3. Lifecycle: a demo request (defined event) applies; a high AI score waits for review.
        step = DemoStep("lifecycle", "")
        lead, scored = rid(), rid()
        first, last, _ = next(people)
        _created(step, lead, firstname=first, lastname=last, lifecyclestage="lead")
        first, last, _ = next(people)
        _created(step, scored, firstname=first, lastname=last, lifecyclestage="lead")
        step.events.append(
            contact_event(
                CrmEventKind.LIFECYCLE_EVENT,
                lead,
                "forms",
                {"event": "form_submission", "form_type": "demo_request"},
            )
        )
        step.events.append(
            contact_event(
                CrmEventKind.SCORE,
                scored,
                "scoring",
                {"score": round(rng.uniform(0.85, 0.97), 2), "model": "fit-v3"},
            )
        )
        step.shows = (
            f"{lead} requested a demo: policy applies the stage; {scored} scored high: stage waits for review"
        )
        step.applies[lead] = {"lifecyclestage": "marketingqualifiedlead"}
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
            hubspot_owner_id=OWNER_HELD,
        )
        step.shows = (
            f"{moved} is held by owner {OWNER_HELD} but belongs to territory owner {OWNER_WEST}:"
            " the reassignment waits for review"
        )
        yield step

        # 5. Email verification: valid applies by itself, catch-all waits. Each result names the
        # address of its own record (a result for another address is stale, and skipped).
        step = DemoStep("verification", "")
        good, risky = rid(), rid()
        first, _, (_, domain) = next(people)
        good_email = f"{good}@{domain}"
        _created(step, good, firstname=first, email=good_email)
        first, _, (_, domain) = next(people)
        risky_email = f"{risky}@{domain}"
        _created(step, risky, firstname=first, email=risky_email, email_status="valid")
        step.events.append(
            contact_event(
                CrmEventKind.VERIFICATION_RESULT,
                good,
                "zerobounce",
                {"email": good_email, "status": "valid"},
            )
        )
        step.events.append(
            contact_event(
                CrmEventKind.VERIFICATION_RESULT,
                risky,
                "neverbounce",
                {"email": risky_email, "status": "catchall"},
            )
        )
        step.shows = (
            f"{good}'s email verifies valid: policy applies it; {risky}'s is catch-all: waits for review"
        )
        step.applies[good] = {"email_status": "valid"}
        yield step

        # 6. A conflict: Clay proposes a new job title, which waits for review; meanwhile a sales
        # rep changes the title in the CRM. The approval comes after: compare-and-set finds the
        # CRM moved on, writes nothing, and the proposal goes back to review with the new value.
        step = DemoStep("conflict", "")
        first, last, (company, domain) = next(people)
        edited = rid()
        held, clay, rep = rng.sample(TITLES, 3)
        _created(
            step,
            edited,
            firstname=first,
            lastname=last,
            company=company,
            jobtitle=held,
            email=f"{first}.{last}.{n}@{domain}".lower(),
        )
        step.events.append(
            contact_event(
                CrmEventKind.ENRICHMENT_RESULT,
                edited,
                "clay",
                {"jobtitle": clay},
                confidence=round(rng.uniform(0.86, 0.99), 2),
            )
        )
        step.crm_change[edited] = {"jobtitle": rep}
        step.shows = (
            f"Clay proposes {clay!r} as {edited}'s job title (waits for review); then a rep sets"
            f" {rep!r} in the CRM, and the proposal is approved after that"
        )
        yield step
