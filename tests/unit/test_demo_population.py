"""The demo's population (pure): results address their own records, every person is new to the
run, and the duplicates come with look-alikes the duplicate finder must leave alone."""

from __future__ import annotations

import itertools
from collections import Counter

from changegate.cli.demo import DemoStep, steps
from changegate.core.contracts import CrmEventKind
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.normalize import features

ROUNDS = 40


def _steps(rounds: int = ROUNDS) -> list[DemoStep]:
    return list(itertools.islice(steps(seed=3, run="unit"), 5 * rounds))


def test_each_verification_result_names_the_address_of_its_own_record() -> None:
    """ZeroBounce's "valid" used to name another record's email: stale, so skipped, while the demo
    said "applied"."""
    for step in _steps():
        for event in step.events:
            if event.kind is CrmEventKind.VERIFICATION_RESULT:
                assert event.properties["email"] == step.records[event.record_id]["email"]


def test_what_the_demo_says_applies_is_what_the_steps_make_apply() -> None:
    kinds = Counter(s.scenario for s in _steps() for _ in s.applies)
    assert kinds["lifecycle"] == ROUNDS
    assert kinds["verification"] == ROUNDS
    assert 0 < kinds["enrichment"] < ROUNDS  # only fills apply; overwrites wait
    for step in _steps():
        for record_id, values in step.applies.items():
            assert record_id in step.records
            assert "applies" in step.shows
            assert set(values) <= {"jobtitle", "lifecyclestage", "email_status"}


def test_people_and_their_phones_and_addresses_are_not_shared_by_accident() -> None:
    """Every duplicate pair had the same phone and address, and names recurred: the demo made
    look-alikes nobody asked for (Shafi and John Turing, one phone, one office)."""
    people = [s for s in _steps() if s.scenario == "duplicates"]
    phones = Counter(str(r["phone"]) for s in people for r in list(s.records.values())[:1])
    assert max(phones.values()) == 1
    names = Counter(
        (str(r["firstname"]), str(r["lastname"]))
        for s in _steps()
        for r in s.records.values()
        if "lastname" in r
    )
    # within a round of the name lists, a name comes back only where the demo means it: the
    # duplicate's second record and its namesake
    assert sum(names.values()) - len(names) == 2 * len(people)


def test_the_duplicates_come_with_look_alikes_the_finder_leaves_alone() -> None:
    finder = DuplicateFinder()
    for step in [s for s in _steps(10) if s.scenario == "duplicates"]:
        a, b, *others = step.records
        assert others == step.look_alikes
        record = {rid: features("contact", props) for rid, props in step.records.items()}
        assert finder.compare(record[a], b, record[b]).probability >= finder.threshold
        for other in others:
            for rid in (a, b):
                assert finder.compare(record[rid], other, record[other]).probability < finder.floor
