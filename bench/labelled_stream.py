"""A labelled CRM event stream of the five scenarios, made by a generative process whose truth the
detectors never see.

Every record has a *true* value for each field a proposal may change (its real job title, the
real state of its mailbox, the stage it should be in, the owner it should have) and every record
of the duplicate scenarios a true entity. Sources report on the truth with a reliability of their
own — per source, field and kind of answer — held in ``HIDDEN`` below: a source reports the true
value with that probability, else a plausible wrong one. The events carry only what the source
says (and, where real sources give one, its own claimed confidence, which is *not* its
reliability: one source claims 0.9 whatever it knows). A proposal is labelled right when every
value it proposes is the true one (for a merge: when every record in it is one entity).

So the labels come from the truth, not from anything a detector computes: a detector can only
learn a source's reliability from reviewers' decisions on the tuning part (``reliability.learn``),
never read it. ``HIDDEN`` is read by this module only.

The stream is generated in two parts from one world (the same sources, the same reliabilities):
``tuning``, on which reliabilities are learnt and thresholds may be chosen, and ``held-out``, on
which nothing is chosen. Each part has records of its own (ids ``t-…`` and ``h-…``) and its own
random stream (``random.Random(f"{seed}:{part}")``); the duplicate scenarios take the synthetic
population (``changegate.hubspot_sim.population``, another seed per part) and disjoint halves of
the confounder set (``confounders``: households, namesakes, juniors, colleagues, movers beside
true duplicates).

Scenarios, per part at ``scale`` 1 (each instance is a record created, then the event about it):

- **enrichment** (3,000): a job title, industry or city from Clay (its own match confidence),
  Apollo (no confidence) or PDL (always claims 0.9), filling an empty field (80%) or overwriting
  one the CRM holds (right 70% of the time);
- **verification** (2,500): ZeroBounce, NeverBounce or Kickbox on the record's email, in each
  verifier's own vocabulary;
- **lifecycle** (3,000): defined events — forms (demo, pricing, contact-us, content download,
  newsletter), meetings, deals — and AI fit scores; some form submissions are spam or students,
  and the score model is over-confident;
- **owner** (800): contacts created in a territory, unowned or owned by another rep (often on
  purpose: a named account), or moving to another state;
- **duplicates**: 1,200 people of the synthetic population with their damaged duplicates and
  look-alikes (colleagues, relatives, namesakes), and half the confounder set.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import confounders
from changegate.cli.demo import contact_event
from changegate.core.contracts import CrmEvent, CrmEventKind, Proposal, ProposalKind
from changegate.core.contracts.base import PropertyValue
from changegate.hubspot_sim.population import Population

# -- the hidden truth: how reliable each source is -------------------------------------------------
# Probabilities that the value a source reports is the true one. Nothing outside this module reads
# them; the bench prints them only after everything is measured.
HIDDEN: dict[str, Any] = {
    "enrichment": {
        # Clay's waterfall: an exact match (several providers agree on an identifier) or a weaker
        # one; its claimed confidence follows the match, its reliability is the tier's.
        "clay": {
            "exact": {"share": 0.75, "claim": (0.96, 0.995), "right": 0.99995},
            "strong": {"share": 0.17, "claim": (0.85, 0.95), "right": 0.94},
            "weak": {"share": 0.08, "claim": (0.5, 0.8), "right": 0.7},
        },
        "apollo": {"jobtitle": 0.9, "industry": 0.96, "city": 0.97},  # claims nothing
        "pdl": {"jobtitle": 0.8, "industry": 0.9, "city": 0.93},  # claims 0.9 whatever
    },
    "enrichment_sources": {"clay": 0.65, "apollo": 0.2, "pdl": 0.15},
    "enrichment_fill_share": 0.8,
    "crm_value_right": 0.7,  # a value the CRM already holds is the true one
    # P(truth = reported | verifier, reported canonical status), and how often each is reported.
    "verification": {
        "zerobounce": {
            "share": 0.65,
            "reported": {"valid": 0.8, "invalid": 0.08, "catch_all": 0.06, "risky": 0.03, "unknown": 0.03},
            "right": {"valid": 0.99995, "invalid": 0.98, "catch_all": 0.9, "risky": 0.85, "unknown": 0.5},
        },
        "neverbounce": {
            "share": 0.22,
            "reported": {
                "valid": 0.8,
                "invalid": 0.08,
                "catch_all": 0.08,
                "disposable": 0.02,
                "unknown": 0.02,
            },
            "right": {"valid": 0.97, "invalid": 0.97, "catch_all": 0.9, "disposable": 0.95, "unknown": 0.5},
        },
        "kickbox": {
            "share": 0.13,
            "reported": {"valid": 0.78, "invalid": 0.1, "risky": 0.07, "catch_all": 0.05},
            "right": {"valid": 0.985, "invalid": 0.97, "risky": 0.8, "catch_all": 0.9},
        },
    },
    # Defined events: (source, event, form type) -> share, the stage it moves to, P(genuine).
    # Deals come from the CRM itself; form submissions include spam, students, job seekers.
    "defined_events": [
        ("hubspot", "deal_created", None, 0.22, "opportunity", 1.0),
        ("hubspot", "deal_closed_won", None, 0.12, "customer", 1.0),
        ("hubspot", "meeting_booked", None, 0.25, "salesqualifiedlead", 0.99995),
        ("forms", "form_submission", "demo_request", 0.16, "marketingqualifiedlead", 0.96),
        ("forms", "form_submission", "pricing_request", 0.06, "marketingqualifiedlead", 0.93),
        ("forms", "form_submission", "contact_us", 0.05, "lead", 0.9),
        ("forms", "form_submission", "content_download", 0.1, "lead", 0.99995),
        ("forms", "form_submission", "newsletter_signup", 0.04, "subscriber", 0.97),
    ],
    "ai_score_share": 0.15,  # of lifecycle instances; the rest are defined events
    # The fit model is over-confident: P(the lead is sales-qualified | score s).
    "ai_score_right": lambda s: min(0.95, 0.25 + 3.0 * (s - 0.8)),
    # Owners: P(the territory's owner is the right one).
    "owner": {
        "unowned_created": {"share": 0.45, "right": 0.97},  # 3%: the location field is wrong
        "owned_created": {"share": 0.3, "right": 0.55},  # 45%: a named account kept on purpose
        "moved": {"share": 0.25, "right": 0.85},  # 15%: the account stays with its rep
    },
}

TERRITORIES = [
    {"country": "us", "state": "CA", "owner": "owner-west"},
    {"country": "us", "state": "WA", "owner": "owner-west"},
    {"country": "us", "state": "NY", "owner": "owner-east"},
    {"country": "us", "state": "MA", "owner": "owner-east"},
    {"country": "us", "state": "TX", "owner": "owner-south"},
    {"country": "us", "state": "IL", "owner": "owner-central"},
    {"country": "gb", "owner": "owner-emea"},
    {"country": "de", "owner": "owner-emea"},
]
DETECTOR_SETTINGS = {"owner": {"territories": TERRITORIES}}  # what the bench's detector is configured with
REPS = ["owner-17", "owner-23", "owner-31", "owner-42"]
COUNTS = {"enrichment": 3000, "verification": 2500, "lifecycle": 3000, "owner": 800, "population": 1200}

TITLES = [
    "CTO", "VP Sales", "Engineer", "Analyst", "Head of Ops", "Data Scientist", "Product Manager",
    "Account Executive", "Marketing Manager", "CFO", "COO", "Designer", "Recruiter", "Consultant",
    "Director of Sales", "Staff Engineer", "Head of Data", "Controller", "Office Manager", "CEO",
]  # fmt: skip
INDUSTRIES = [
    "Software", "Retail", "Banking", "Insurance", "Healthcare", "Logistics", "Manufacturing",
    "Education", "Media", "Telecommunications", "Energy", "Real Estate", "Hospitality", "Legal",
]  # fmt: skip
CITIES = [
    "Austin", "Boston", "Chicago", "Denver", "Seattle", "Portland", "Berlin", "Munich", "London",
    "Leeds", "Paris", "Lyon", "Toronto", "Dublin", "Madrid", "Lisbon", "Oslo", "Zurich",
]  # fmt: skip
ENRICHABLE = {"jobtitle": TITLES, "industry": INDUSTRIES, "city": CITIES}
STATUSES = ["valid", "invalid", "catch_all", "risky", "unknown", "disposable"]
# Each verifier's own words for a canonical status (what its webhook sends).
RAW = {
    "zerobounce": {"valid": "valid", "invalid": "invalid", "catch_all": "catch-all",
                   "risky": "do_not_mail", "unknown": "unknown"},
    "neverbounce": {"valid": "valid", "invalid": "invalid", "catch_all": "catchall",
                    "disposable": "disposable", "unknown": "unknown"},
    "kickbox": {"valid": "deliverable", "invalid": "undeliverable", "risky": "risky",
                "catch_all": "deliverable"},  # with accept_all: true
}  # fmt: skip
STAGES = ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer"]
SYLLABLES = ["ka", "lo", "mi", "ren", "tas", "vo", "ber", "din", "sal", "tor", "nu", "pel", "gra", "shi",
             "wen", "zar", "fen", "quil", "bro", "cat"]  # fmt: skip
EPOCH = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


@dataclass
class Truth:
    values: dict[tuple[str, str], PropertyValue] = field(
        default_factory=dict
    )  # (record, field) -> true value
    entity: dict[str, str] = field(default_factory=dict)  # record -> true entity (duplicate scenarios)
    scenario: dict[str, str] = field(default_factory=dict)  # record -> scenario
    # (record, field) -> the probability the reported value is the true one: for the expected count
    # of wrong auto-applies under the world's own reliabilities, printed after measuring
    p_right: dict[tuple[str, str], float] = field(default_factory=dict)

    def hidden_error(self, proposal: Proposal) -> float:
        """The probability, by the hidden reliabilities, that this proposal is wrong."""
        right = 1.0
        for change in proposal.changes:
            right *= self.p_right.get((proposal.record_id, change.field), 1.0)
        return 1 - right

    def judge(self, proposal: Proposal) -> bool | None:
        """Right (every proposed value true; a merge of one entity), wrong, or None: not labelled."""
        if proposal.kind is ProposalKind.MERGE:
            members = [proposal.record_id, *proposal.other_record_ids]
            if any(m not in self.entity for m in members):
                return None
            return len({self.entity[m] for m in members}) == 1
        right = []
        for change in proposal.changes:
            key = (proposal.record_id, change.field)
            if key not in self.values:
                return None
            right.append(self.values[key] == change.proposed)
        return all(right)


@dataclass
class Part:
    name: str
    events: list[CrmEvent]
    truth: Truth


class World:
    def __init__(self, seed: int, scale: float = 1.0) -> None:
        self.seed, self.scale = seed, scale

    def part(self, name: str) -> Part:
        return _Generator(self.seed, name, self.scale).run()


class _Generator:
    def __init__(self, seed: int, part: str, scale: float) -> None:
        self.rng = random.Random(f"{seed}:{part}")
        self.seed, self.part, self.scale = seed, part, scale
        self.prefix = part[0]  # t-… / h-…
        self.truth = Truth()
        self.groups: list[list[CrmEvent]] = []  # one per instance: its events, in order
        self.n = 0
        self.names: set[tuple[str, str]] = set()

    def count(self, scenario: str) -> int:
        return max(1, round(COUNTS[scenario] * self.scale))

    def run(self) -> Part:
        for _ in range(self.count("enrichment")):
            self.enrichment()
        for _ in range(self.count("verification")):
            self.verification()
        for _ in range(self.count("lifecycle")):
            self.lifecycle()
        for _ in range(self.count("owner")):
            self.owner()
        self.duplicates()
        # Instances interleave in time; each instance's own events stay in order (one record, one
        # partition: the detector sees them in this order).
        self.rng.shuffle(self.groups)
        events: list[CrmEvent] = []
        queues = [list(g) for g in self.groups]
        while queues:
            batch, queues = queues[:64], queues[64:]
            for depth in range(max(len(q) for q in batch)):
                events += [q[depth] for q in batch if depth < len(q)]
        at = EPOCH
        stamped = []
        for event in events:
            at += timedelta(seconds=self.rng.uniform(1, 30))
            stamped.append(event.model_copy(update={"occurred_at": at}))
        return Part(self.part, stamped, self.truth)

    # -- building blocks -----------------------------------------------------------------------

    def rid(self, scenario: str) -> str:
        self.n += 1
        record = f"{self.prefix}-{scenario[:3]}-{self.n}"
        self.truth.scenario[record] = scenario
        return record

    def person(self) -> dict[str, PropertyValue]:
        """A made-up person with a name and mailbox no one else in the stream has."""
        while True:
            last = "".join(self.rng.choice(SYLLABLES) for _ in range(3)).title()
            first = self.rng.choice(["Alex", "Sam", "Robin", "Kim", "Jordan", "Maria", "Lee", "Noor", "Ida"])
            if (first, last) not in self.names:
                self.names.add((first, last))
                break
        domain = self.rng.choice(["acme", "initech", "globex"])
        email = f"{first}.{last}.{self.rng.randrange(10**6)}@{domain}.example"
        return {"firstname": first, "lastname": last, "email": email.lower()}

    def event(
        self,
        kind: CrmEventKind,
        record: str,
        source: str,
        props: dict[str, PropertyValue],
        confidence: float | None = None,
    ) -> CrmEvent:
        # The source's event id from the part's own random stream: a seed replays the same stream.
        event_id = f"{source}-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
        return contact_event(kind, record, source, props, confidence, event_id=event_id, occurred_at=EPOCH)

    def created(self, record: str, props: dict[str, PropertyValue]) -> CrmEvent:
        return self.event(CrmEventKind.RECORD_CREATED, record, "hubspot", props)

    def pick(self, weights: dict[str, float]) -> str:
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]

    def other(self, pool: list[Any], *not_these: Any) -> Any:
        return self.rng.choice([v for v in pool if v not in not_these])

    # -- scenarios -------------------------------------------------------------------------------

    def enrichment(self) -> None:
        record, props = self.rid("enrichment"), self.person()
        fld = self.rng.choice(list(ENRICHABLE))
        pool = ENRICHABLE[fld]
        true = self.rng.choice(pool)
        self.truth.values[(record, fld)] = true
        if self.rng.random() >= HIDDEN["enrichment_fill_share"]:
            props[fld] = true if self.rng.random() < HIDDEN["crm_value_right"] else self.other(pool, true)
        source = self.pick(HIDDEN["enrichment_sources"])
        claim: float | None = None
        if source == "clay":
            tiers = HIDDEN["enrichment"]["clay"]
            tier = tiers[self.pick({t: v["share"] for t, v in tiers.items()})]
            claim, right = round(self.rng.uniform(*tier["claim"]), 3), tier["right"]
        else:
            right = HIDDEN["enrichment"][source][fld]
            claim = 0.9 if source == "pdl" else None
        said = true if self.rng.random() < right else self.other(pool, true, props.get(fld))
        self.truth.p_right[(record, fld)] = right
        self.groups.append(
            [
                self.created(record, props),
                self.event(CrmEventKind.ENRICHMENT_RESULT, record, source, {fld: said}, claim),
            ]
        )

    def verification(self) -> None:
        record, props = self.rid("verification"), self.person()
        hidden = HIDDEN["verification"]
        verifier = self.pick({v: h["share"] for v, h in hidden.items()})
        reported = self.pick(hidden[verifier]["reported"])
        if self.rng.random() < hidden[verifier]["right"][reported]:
            true = reported
        elif reported == "unknown":
            true = self.pick({"valid": 0.6, "invalid": 0.4})
        elif reported == "valid":
            true = self.pick({"catch_all": 0.6, "invalid": 0.3, "risky": 0.1})
        else:
            true = self.other(STATUSES, reported)
        self.truth.values[(record, "email_status")] = true
        self.truth.p_right[(record, "email_status")] = hidden[verifier]["right"][reported]
        result: dict[str, PropertyValue] = {"email": props["email"]}
        raw = RAW[verifier][reported]
        result["result" if verifier in ("neverbounce", "kickbox") else "status"] = raw
        if verifier == "kickbox" and reported == "catch_all":
            result["accept_all"] = True
        self.groups.append(
            [
                self.created(record, props),
                self.event(CrmEventKind.VERIFICATION_RESULT, record, verifier, result),
            ]
        )

    def lifecycle(self) -> None:
        record, props = self.rid("lifecycle"), self.person()
        current: str | None
        if self.rng.random() < HIDDEN["ai_score_share"]:
            current = self.rng.choice(["lead", "marketingqualifiedlead"])
            score = round(self.rng.uniform(0.8, 1.0), 3)
            genuine = self.rng.random() < HIDDEN["ai_score_right"](score)
            self.truth.p_right[(record, "lifecyclestage")] = HIDDEN["ai_score_right"](score)
            self.truth.values[(record, "lifecyclestage")] = "salesqualifiedlead" if genuine else current
            props["lifecyclestage"] = current
            later = self.event(CrmEventKind.SCORE, record, "scoring", {"score": score, "model": "fit-v3"})
        else:
            rows = HIDDEN["defined_events"]
            source, name, form, _, stage, right = self.rng.choices(rows, weights=[r[3] for r in rows])[0]
            earlier = STAGES[: STAGES.index(stage)]
            current = self.rng.choice(earlier) if earlier else None  # a newsletter: no stage yet
            genuine = self.rng.random() < right
            self.truth.p_right[(record, "lifecyclestage")] = right
            self.truth.values[(record, "lifecyclestage")] = stage if genuine else current
            if current:
                props["lifecyclestage"] = current
            what: dict[str, PropertyValue] = {"event": name, **({"form_type": form} if form else {})}
            later = self.event(CrmEventKind.LIFECYCLE_EVENT, record, source, what)
        self.groups.append([self.created(record, props), later])

    def owner(self) -> None:
        record, props = self.rid("owner"), self.person()
        cases = HIDDEN["owner"]
        case = self.pick({c: v["share"] for c, v in cases.items()})
        territory = self.rng.choice(TERRITORIES)
        place: dict[str, PropertyValue] = {
            "country": "United States" if territory["country"] == "us" else territory["country"].upper()
        }
        if "state" in territory:
            place["state"] = territory["state"]
        right = self.rng.random() < cases[case]["right"]
        self.truth.p_right[(record, "hubspot_owner_id")] = cases[case]["right"]
        if case == "moved":  # held by the territory owner of where they were; then they move
            before = self.other([t for t in TERRITORIES if "state" in t and t["owner"] != territory["owner"]])
            props |= {
                "country": "United States",
                "state": before["state"],
                "hubspot_owner_id": before["owner"],
            }
            self.truth.values[(record, "hubspot_owner_id")] = territory["owner"] if right else before["owner"]
            move = self.event(CrmEventKind.PROPERTY_CHANGED, record, "hubspot", place)
            self.groups.append([self.created(record, props), move])
            return
        props |= place
        current = None
        if case == "owned_created":
            current = self.other(REPS)
            props["hubspot_owner_id"] = current
        self.truth.values[(record, "hubspot_owner_id")] = (
            territory["owner"] if right else (current or self.other(REPS))
        )
        self.groups.append([self.created(record, props)])

    def duplicates(self) -> None:
        """The synthetic population (its own seed per part) and half of the confounder set. Their
        records carry no country or state: no territory rule fires on them."""
        population_seed = {"tuning": 101, "held-out": 202}[self.part] + self.seed
        for r in Population(population_seed).records(self.count("population")):
            record = f"{self.prefix}-pop-{r.record_id}"
            self.truth.entity[record] = f"pop-{r.entity}"
            self.truth.scenario[record] = "duplicates"
            props = {k: v for k, v in r.properties.items() if k not in ("country", "state") and v != ""}
            self.groups.append([self.created(record, props)])
        built = confounders.build()
        component = _components(built)
        half = 0 if self.part == "tuning" else 1
        taken = [r for r in built.records if r.record_id in component and component[r.record_id] % 2 == half]
        keep = max(1, round(len(taken) * min(1.0, self.scale)))
        wanted = {c for r in taken[:keep] for c in [component[r.record_id]]}
        for r in taken:
            if component[r.record_id] not in wanted:
                continue
            record = f"{self.prefix}-cf-{r.record_id}"
            self.truth.entity[record] = f"cf-{r.entity}"
            self.truth.scenario[record] = "duplicates"
            self.groups.append([self.created(record, dict(r.properties))])


def _components(built: confounders.ConfounderSet) -> dict[str, int]:
    """Records of the confounder set's labelled pairs, by connected component (so a pair is never
    split between the two parts)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pairs in built.pairs.values():
        for a, b in pairs:
            parent[find(a)] = find(b)
    roots: dict[str, int] = {}
    out: dict[str, int] = {}
    for record in sorted(parent):
        out[record] = roots.setdefault(find(record), len(roots))
    return out


def describe_hidden() -> Iterator[str]:
    """The hidden reliabilities, one line each (printed after the measurement, never before)."""
    e = HIDDEN["enrichment"]
    for tier, h in e["clay"].items():
        yield f"enrichment clay {tier:<6} claims {h['claim'][0]:.2f}-{h['claim'][1]:.3f}: right {h['right']}"
    for source in ("apollo", "pdl"):
        yield f"enrichment {source:<11} " + ", ".join(f"{f} {r}" for f, r in e[source].items())
    for verifier, h in HIDDEN["verification"].items():
        yield f"verification {verifier:<11} " + ", ".join(f"{s} {r}" for s, r in h["right"].items())
    for source, name, form, _, stage, right in HIDDEN["defined_events"]:
        yield f"lifecycle {source}/{name}/{form or '-'} -> {stage}: genuine {right}"
    yield "lifecycle ai score s: genuine min(0.95, 0.25 + 3 (s - 0.8))"
    for case, h in HIDDEN["owner"].items():
        yield f"owner {case}: territory owner right {h['right']}"


def scenario_counts(part: Part) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for scenario in part.truth.scenario.values():
        counts[scenario] += 1
    return dict(counts)
