"""Fellegi-Sunter scoring and the duplicate finder over in-memory candidates (pure logic)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from changegate.detector.matching.compare import compare
from changegate.detector.matching.engine import DuplicateFinder, Match, risk_flags
from changegate.detector.matching.normalize import Features, features
from changegate.detector.matching.scoring import DEFAULT_MU, MatchWeights, Scorer
from pydantic import ValidationError


def contact(**props: Any) -> Features:
    return features("contact", props)


# Two records of one person: a nickname, a reformatted phone, an upper-cased email.
BOB = {
    "firstname": "Bob",
    "lastname": "Smith",
    "email": "BOB.SMITH@ACME.COM",
    "phone": "(415) 555-2671",
    "company": "Acme Inc.",
    "address": "100 Main Street",
    "city": "San Francisco",
    "zip": "94105",
}
ROBERT = {
    "firstname": "Robert",
    "lastname": "Smith",
    "email": "bob.smith@acme.com",
    "phone": "+1 415-555-2671",
    "company": "ACME",
    "address": "100 Main St",
    "city": "San Francisco",
    "zip": "94105",
}
# Colleagues: same company, office, switchboard; different people.
ALICE = {
    "firstname": "Alice",
    "lastname": "Jones",
    "email": "alice.jones@acme.com",
    "phone": "+1 415 555 2600",
    "company": "Acme Inc",
    "address": "100 Main Street",
    "city": "San Francisco",
    "zip": "94105",
}
CAROL = {
    "firstname": "Carol",
    "lastname": "Nguyen",
    "email": "carol.nguyen@acme.com",
    "phone": "+1 415 555 2600",
    "company": "Acme Inc",
    "address": "100 Main Street",
    "city": "San Francisco",
    "zip": "94105",
}
# Namesakes at different companies.
JOHN_INITECH = {
    "firstname": "John",
    "lastname": "Smith",
    "email": "john.smith@initech.com",
    "phone": "+1 212 555 0100",
    "company": "Initech",
    "address": "5 Park Ave",
    "city": "New York",
    "zip": "10016",
}
JOHN_GLOBEX = {
    "firstname": "John",
    "lastname": "Smith",
    "email": "jsmith@globex.com",
    "phone": "+1 312 555 0199",
    "company": "Globex Corporation",
    "address": "77 Wacker Dr",
    "city": "Chicago",
    "zip": "60601",
}


# --- weights and probability ----------------------------------------------------------------------


def test_weights_are_log2_of_m_over_u() -> None:
    scorer = Scorer(MatchWeights(mu={"email": {"exact": (0.5, 0.002), "disagree": (0.1, 0.8)}}))
    assert scorer.weights["email"]["exact"] == pytest.approx(math.log2(0.5 / 0.002))
    assert scorer.weights["email"]["disagree"] == pytest.approx(-3.0)
    scorer = Scorer()
    for field, levels in DEFAULT_MU.items():
        for level, (m, u) in levels.items():
            assert scorer.weights[field][level] == pytest.approx(math.log2(m / u))


def test_disagreement_never_counts_for_a_match() -> None:
    scorer = Scorer()
    assert all(scorer.weights[f]["disagree"] <= 0 for f in scorer.weights)
    assert all(scorer.weights[f]["exact"] > 0 for f in scorer.weights)


def test_prior_log_odds() -> None:
    prior = MatchWeights().prior
    assert Scorer().prior_log_odds == pytest.approx(math.log2(prior / (1 - prior)))
    assert Scorer(MatchWeights(prior=0.5)).prior_log_odds == 0.0


def test_no_evidence_gives_the_prior() -> None:
    score = Scorer().score({})
    assert score.total == 0
    assert score.weights == {}
    assert score.probability == pytest.approx(MatchWeights().prior)


def test_score_sums_the_field_weights() -> None:
    scorer = Scorer()
    score = scorer.score({"email": "exact", "name": "similar"})
    assert score.weights == {
        "email": scorer.weights["email"]["exact"],
        "name": scorer.weights["name"]["similar"],
    }
    email_m, email_u = DEFAULT_MU["email"]["exact"]
    name_m, name_u = DEFAULT_MU["name"]["similar"]
    assert score.total == pytest.approx(math.log2(email_m / email_u) + math.log2(name_m / name_u))
    odds = 2 ** (score.total + scorer.prior_log_odds)
    assert score.probability == pytest.approx(odds / (1 + odds))


def test_missing_and_unknown_fields_add_nothing() -> None:
    scorer = Scorer()
    base = scorer.score({"email": "exact"})
    assert scorer.score({"email": "exact", "nickname_field": "exact"}) == base
    assert base.weights.keys() == {"email"}


def test_probability_rises_with_each_agreeing_field() -> None:
    scorer = Scorer()
    steps = [
        {},
        {"address": "exact"},
        {"address": "exact", "organisation": "exact"},
        {"address": "exact", "organisation": "exact", "name": "exact"},
        {"address": "exact", "organisation": "exact", "name": "exact", "phone": "exact_same_name"},
        {
            "address": "exact",
            "organisation": "exact",
            "name": "exact",
            "phone": "exact_same_name",
            "email": "exact",
        },
    ]
    probabilities = [scorer.score(levels).probability for levels in steps]
    assert probabilities == sorted(probabilities)
    assert len(set(probabilities)) == len(probabilities)
    assert probabilities[-1] > 0.9999


def test_a_disagreement_lowers_the_probability() -> None:
    scorer = Scorer()
    agree = scorer.score({"name": "exact", "organisation": "exact"}).probability
    assert scorer.score({"name": "exact", "organisation": "exact", "email": "disagree"}).probability < agree
    assert scorer.score({"name": "disagree", "organisation": "exact"}).probability < agree


def test_every_level_compare_can_produce_has_a_weight() -> None:
    levels = compare(contact(firstname="J.", lastname="Smith"), contact(firstname="John", lastname="Smith"))
    assert levels == {"name": "partial"}
    score = Scorer().score(levels)
    assert math.isfinite(score.total)
    assert "name" in score.weights


# --- configuration --------------------------------------------------------------------------------


def test_match_weights_defaults() -> None:
    config = MatchWeights()
    assert config.prior == 0.0432  # fitted with bench/detector_quality.py --fit --seed 1
    assert config.review_threshold == 0.8
    assert config.mu == DEFAULT_MU


def test_custom_match_weights() -> None:
    config = MatchWeights(mu={"email": {"exact": (0.5, 0.125), "disagree": (0.1, 0.8)}}, prior=0.5)
    scorer = Scorer(config)
    assert scorer.weights == {"email": {"exact": 2.0, "disagree": -3.0}}
    assert scorer.score({"email": "exact"}).probability == pytest.approx(0.8)
    assert scorer.score({"email": "disagree"}).probability == pytest.approx(1 / 9)
    # fields without configured weights add nothing
    assert scorer.score({"name": "exact", "email": "exact"}).total == 2.0


def test_match_weights_from_json() -> None:
    config = MatchWeights.model_validate_json(
        '{"mu": {"phone": {"exact": [0.9, 0.1]}}, "prior": 0.02, "review_threshold": 0.95}'
    )
    assert config.mu == {"phone": {"exact": (0.9, 0.1)}}
    assert DuplicateFinder(config).threshold == 0.95


@pytest.mark.parametrize(
    "bad",
    [{"prior": 0}, {"prior": 1}, {"review_threshold": 0}, {"review_threshold": 1.5}, {"threshold": 0.5}],
)
def test_match_weights_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MatchWeights(**bad)


def test_match_weights_are_frozen() -> None:
    config = MatchWeights()
    with pytest.raises(ValidationError):
        config.prior = 0.5  # type: ignore[misc]


# --- the finder -----------------------------------------------------------------------------------


def test_true_duplicate_scores_above_the_review_threshold() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**BOB), "2", contact(**ROBERT))
    assert match.levels == {
        "name": "similar",
        "email": "exact",
        "phone": "exact_same_name",
        "organisation": "exact",
        "address": "exact",
    }
    assert match.score.total == pytest.approx(sum(match.score.weights.values()))
    assert match.score.total > 20
    assert match.probability > finder.threshold
    assert match.flags == ()
    assert [m.other_id for m in finder.matches(contact(**BOB), [("2", contact(**ROBERT))])] == ["2"]


def test_colleagues_at_the_same_company_and_address_score_below_the_threshold() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**ALICE), "2", contact(**CAROL))
    assert match.levels == {
        "name": "disagree",
        "email": "disagree",
        "phone": "exact",  # the switchboard, without the same name
        "organisation": "exact",
        "address": "exact",
    }
    assert match.probability < finder.threshold
    assert match.probability < 0.5
    assert finder.matches(contact(**ALICE), [("2", contact(**CAROL))]) == []


def test_namesakes_at_different_companies_score_below_the_threshold() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**JOHN_INITECH), "2", contact(**JOHN_GLOBEX))
    assert match.levels["name"] == "exact"
    assert match.levels["organisation"] == "disagree"
    assert match.probability < 0.001
    assert match.flags == ("different_email_domains", "different_companies")
    assert finder.matches(contact(**JOHN_INITECH), [("2", contact(**JOHN_GLOBEX))]) == []


def test_the_same_person_with_personal_and_work_email() -> None:
    finder = DuplicateFinder()
    work = contact(**ROBERT)
    personal = contact(**{**ROBERT, "email": "bob.smith@outlook.com", "company": ""})
    match = finder.compare(work, "2", personal)
    assert match.levels["email"] == "partial_same_name"
    assert match.flags == ("different_email_domains",)


def test_matches_are_thresholded_and_sorted() -> None:
    finder = DuplicateFinder()
    record = contact(**BOB)
    candidates = [
        ("colleague", contact(**{**CAROL, "phone": ""})),
        ("no-phone", contact(**{**ROBERT, "phone": ""})),
        ("full", contact(**ROBERT)),
        ("email-only", contact(email="bob.smith@acme.com")),
        ("namesake", contact(**{**JOHN_GLOBEX, "firstname": "Bob"})),
    ]
    found = finder.matches(record, candidates)
    assert [m.other_id for m in found] == ["full", "no-phone", "email-only"]
    assert all(isinstance(m, Match) and m.probability >= finder.threshold for m in found)
    assert found[0].score.total > found[1].score.total > found[2].score.total
    assert finder.matches(record, []) == []


def test_the_same_corporate_email_alone_is_enough() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**BOB), "x", contact(email="bob.smith@acme.com"))
    assert match.levels == {"email": "exact", "organisation": "exact"}
    scorer = Scorer()
    total = scorer.weights["email"]["exact"] + scorer.weights["organisation"]["exact"]
    assert match.probability == pytest.approx(1 / (1 + 2 ** -(total + scorer.prior_log_odds)))
    assert match.probability >= finder.threshold


def test_the_threshold_is_inclusive_and_configurable() -> None:
    config = MatchWeights(mu={"email": {"exact": (0.5, 0.125)}}, prior=0.5, review_threshold=0.8)
    a, b = contact(email="a@acme.com"), contact(email="A@Acme.com")
    assert DuplicateFinder(config).compare(a, "b", b).probability == 0.8
    assert [m.other_id for m in DuplicateFinder(config).matches(a, [("b", b)])] == ["b"]
    stricter = config.model_copy(update={"review_threshold": 0.81})
    assert DuplicateFinder(stricter).matches(a, [("b", b)]) == []


@pytest.mark.parametrize(
    ("a", "b", "flags"),
    [
        ({"email": "jane@acme.com"}, {"email": "jane@globex.com"}, ("different_email_domains",)),
        ({"email": "jane@acme.com"}, {"email": "JANE@ACME.COM"}, ()),
        ({"email": "jane@acme.com"}, {}, ()),
        ({"company": "Acme Inc"}, {"company": "ACME LLC"}, ()),
        ({"company": "Acme"}, {"company": "Globex"}, ("different_companies",)),
        (
            {"email": "jane@gmail.com", "company": "Acme"},
            {"email": "jane@acme.com", "company": "Acme Holdings"},
            ("different_email_domains", "different_companies"),
        ),
    ],
)
def test_risk_flags(a: dict[str, Any], b: dict[str, Any], flags: tuple[str, ...]) -> None:
    assert risk_flags(contact(**a), contact(**b)) == flags


def test_the_finder_survives_a_candidate_without_a_last_name() -> None:
    finder = DuplicateFinder()
    record = contact(**ROBERT)
    candidates = [("full", contact(**BOB)), ("first-name-only", contact(**{**ROBERT, "lastname": ""}))]
    assert {m.other_id for m in finder.matches(record, candidates)} == {"full", "first-name-only"}
