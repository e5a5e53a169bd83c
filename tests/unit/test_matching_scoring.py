"""Fellegi-Sunter scoring and the duplicate finder over in-memory candidates (pure logic)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from changegate.detector.matching.compare import COMPARISONS, compare_values
from changegate.detector.matching.engine import DEFAULT_REVIEW_THRESHOLD, DuplicateFinder, Match, risk_flags
from changegate.detector.matching.model import (
    Comparison,
    ComparisonLevel,
    MatchModel,
    TermFrequencies,
    load_model,
)
from changegate.detector.matching.normalize import Features, features
from changegate.detector.matching.scoring import Scorer, probability
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


# A hand-made model whose numbers are easy to follow: email exact is worth log2(0.5/0.125) = 2 bits,
# disagreement -3 bits; last name exact 3 bits before its term-frequency adjustment; prior 1/2.
def toy_model(prior: float = 0.5, **update: Any) -> MatchModel:
    fields: dict[str, Any] = dict(
        model_version="toy",
        probability_two_random_records_match=prior,
        comparisons=[
            Comparison(
                output_column_name="email",
                comparison_levels=[
                    ComparisonLevel(label_for_charts="exact", m_probability=0.5, u_probability=0.125),
                    ComparisonLevel(label_for_charts="disagree", m_probability=0.1, u_probability=0.8),
                ],
            ),
            Comparison(
                output_column_name="last_name",
                comparison_levels=[
                    ComparisonLevel(
                        label_for_charts="exact",
                        m_probability=0.8,
                        u_probability=0.1,
                        tf_adjustment_column="last",
                    ),
                    ComparisonLevel(label_for_charts="disagree", m_probability=0.2, u_probability=0.9),
                ],
            ),
        ],
        term_frequencies={"last": TermFrequencies(values={"smith": 0.2, "jones": 0.05}, rare=0.001)},
    )
    return MatchModel(**(fields | update))


# --- weights and probability ----------------------------------------------------------------------


def test_weights_are_log2_of_m_over_u() -> None:
    scorer = Scorer(toy_model())
    assert scorer.weights["email"] == {"exact": 2.0, "disagree": -3.0}
    assert scorer.weights["last_name"]["exact"] == pytest.approx(3.0)
    shipped = Scorer(load_model())
    for comparison in shipped.model.comparisons:
        for level in comparison.comparison_levels:
            assert shipped.weights[comparison.output_column_name][level.label_for_charts] == pytest.approx(
                math.log2(level.m_probability / level.u_probability)
            )


def test_prior_log_odds() -> None:
    assert Scorer(toy_model()).prior_log_odds == 0.0
    assert Scorer(toy_model(prior=0.2)).prior_log_odds == pytest.approx(-2.0)


@pytest.mark.parametrize(
    ("total", "prior_log_odds", "expected"), [(0, 0, 0.5), (2, 0, 0.8), (-3, 0, 1 / 9), (1, -1, 0.5)]
)
def test_probability_is_the_base_2_logistic(total: float, prior_log_odds: float, expected: float) -> None:
    assert probability(total, prior_log_odds) == pytest.approx(expected)


@pytest.mark.parametrize("x", [-5000.0, -1100.0, 1100.0, 5000.0])
def test_probability_survives_extreme_scores(x: float) -> None:
    p = probability(x, 0.0)
    assert 0.0 <= p <= 1.0
    assert (p > 0.5) == (x > 0)


def test_no_evidence_gives_the_prior() -> None:
    score = Scorer(toy_model(prior=0.2)).score({})
    assert score.total == 0
    assert score.weights == {}
    assert score.probability == pytest.approx(0.2)


def test_score_sums_the_level_weights() -> None:
    scorer = Scorer(toy_model())
    score = scorer.score({"email": "exact", "last_name": "disagree"})
    assert score.weights == {"email": 2.0, "last_name": pytest.approx(math.log2(0.2 / 0.9))}
    assert score.total == pytest.approx(2.0 + math.log2(0.2 / 0.9))
    assert scorer.score({"email": "exact"}).probability == pytest.approx(0.8)
    assert scorer.score({"email": "disagree"}).probability == pytest.approx(1 / 9)


def test_unknown_comparisons_and_levels_add_nothing() -> None:
    scorer = Scorer(toy_model())
    base = scorer.score({"email": "exact"})
    assert scorer.score({"email": "exact", "phone": "exact"}) == base
    assert scorer.score({"email": "exact", "last_name": "phonetic"}).total == base.total
    assert scorer.score({"email": "exact", "last_name": "phonetic"}).weights["last_name"] == 0.0


# --- term-frequency adjustments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "bits"),
    [
        ("smith", math.log2(0.1 / 0.2)),  # a common name: -1 bit on top of its 3
        ("jones", math.log2(0.1 / 0.05)),  # rarer than the average exact match: +1
        ("zed", 0.0),  # listed neither by the model nor by a reference: unknown, not rare
        ("", 0.0),
    ],
)
def test_tf_adjustment_of_an_exact_last_name(value: str, bits: float) -> None:
    scorer = Scorer(toy_model())
    assert scorer.tf_adjustment("last_name", "exact", value) == pytest.approx(bits)
    weights = scorer.level_weights({"last_name": "exact"}, {"last_name": value})
    assert weights["last_name"] == pytest.approx(3.0 + bits)


def test_a_name_the_model_does_not_list_takes_its_frequency_from_the_public_reference() -> None:
    """The shipped table was built from a generator's few hundred names: a common real name it
    lacks must weigh as common, not as unique."""
    tables = {"last": TermFrequencies(values={"smith": 0.2}, rare=0.001, reference="us-census-1990-last")}
    scorer = Scorer(toy_model(term_frequencies=tables))
    johnson = tables["last"].of("johnson")
    assert johnson == pytest.approx(0.0081)  # 0.810% of Americans in the 1990 census
    assert scorer.tf_adjustment("last_name", "exact", "johnson") == pytest.approx(math.log2(0.1 / 0.0081))
    assert scorer.tf_adjustment("last_name", "exact", "smith") == pytest.approx(math.log2(0.1 / 0.2))
    # neither in the model's table nor in the census: no adjustment, whatever ``rare`` says
    assert tables["last"].of("zzyzxq") is None
    assert scorer.tf_adjustment("last_name", "exact", "zzyzxq") == 0.0


def test_the_frequency_is_that_of_the_value_compared_even_with_swapped_names() -> None:
    """ "Smith John" against "John Smith": the first-name ladder compares John's surname slot with
    the other's first-name slot ("smith" with "smith"), so the frequency looked up is that value's,
    not that of "john", which the first-name ladder never compared; in either order."""
    straight = contact(firstname="John", lastname="Smith")
    swapped = contact(firstname="Smith", lastname="John")
    for a, b in ((swapped, straight), (straight, swapped)):
        levels, values = compare_values(a, b)
        assert (levels["first_name"], levels["last_name"]) == ("exact", "exact")
        assert (values["first_name"], values["last_name"]) == ("smith", "john")
    assert compare_values(straight, straight)[1]["first_name"] == "john"


def test_tf_applies_only_where_the_model_says_and_only_with_the_values() -> None:
    scorer = Scorer(toy_model())
    assert scorer.tf_adjustment("last_name", "disagree", "smith") == 0.0
    assert scorer.tf_adjustment("email", "exact", "smith") == 0.0
    assert scorer.level_weights({"last_name": "exact"})["last_name"] == pytest.approx(3.0)


def test_a_tf_weight_of_zero_switches_the_adjustment_off() -> None:
    model = toy_model()
    level = model.comparisons[1].comparison_levels[0].model_copy(update={"tf_adjustment_weight": 0.0})
    comparisons = [
        model.comparisons[0],
        Comparison(output_column_name="last_name", comparison_levels=[level]),
    ]
    scorer = Scorer(model.model_copy(update={"comparisons": comparisons}))
    assert scorer.tf_adjustment("last_name", "exact", "smith") == 0.0


# --- the model file -------------------------------------------------------------------------------


def test_the_shipped_model_loads_and_names_itself() -> None:
    model = load_model()
    assert model.model_version.startswith("default-generated-unsupervised")
    assert model.training["labels_used"] is False
    assert len(model.sha256) == 64
    assert model.sha256 == load_model().sha256
    assert {c.output_column_name for c in model.comparisons} <= {s.name for s in COMPARISONS}


def test_a_model_round_trips_through_its_file(tmp_path: Path) -> None:
    model = toy_model()
    model.save(tmp_path / "m.json")
    again = load_model(tmp_path / "m.json")
    assert again == model
    assert again.sha256 == model.sha256
    assert toy_model(prior=0.25).sha256 != model.sha256


@pytest.mark.parametrize(
    "bad",
    [
        {"probability_two_random_records_match": 0},
        {"probability_two_random_records_match": 1},
        {"format": "something-else"},
        {"surprise": 1},
    ],
)
def test_a_model_is_validated(bad: dict[str, Any]) -> None:
    data = toy_model().model_dump(mode="json") | bad
    with pytest.raises(ValidationError):
        MatchModel.model_validate(data)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("comparisons", 0, "output_column_name"), "shoe_size", "unknown to this detector"),
        (("comparisons", 0, "comparison_levels", 0, "label_for_charts"), "sorta", "unknown"),
        (("comparisons", 0, "comparison_levels", 0, "m_probability"), 0, "greater than 0"),
        (("comparisons", 0, "comparison_levels", 0, "u_probability"), 1.5, "less than or equal to 1"),
        (("comparisons", 0, "comparison_levels", 0, "tf_adjustment_column"), "city", "no term frequencies"),
    ],
)
def test_a_model_the_detector_cannot_use_is_refused(path: tuple[Any, ...], value: Any, message: str) -> None:
    data = toy_model().model_dump(mode="json")
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ValidationError, match=message):
        MatchModel.model_validate(data)


def _level(**fields: Any) -> dict[str, Any]:
    data = toy_model().model_dump(mode="json")
    data["comparisons"][0]["comparison_levels"][0].update(fields)
    return data


@pytest.mark.parametrize(
    "fields",
    [
        {"m_probability": 1.0},
        {"u_probability": 1.0},
        {"m_probability": 1e-9, "u_probability": 1e-9},
        {"tf_adjustment_column": "last", "tf_adjustment_weight": 0.0},
        {"tf_adjustment_column": "last", "tf_adjustment_weight": 1.0},
    ],
)
def test_probabilities_in_zero_to_one_and_tf_weights_in_its_closure_are_accepted(
    fields: dict[str, Any],
) -> None:
    level = MatchModel.model_validate(_level(**fields)).comparisons[0].comparison_levels[0]
    assert {k: getattr(level, k) for k in fields} == fields


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"m_probability": 0.0}, "m_probability"),
        ({"m_probability": 1.5}, "m_probability"),
        ({"m_probability": -0.5}, "m_probability"),
        ({"u_probability": 0.0}, "u_probability"),
        ({"u_probability": 1.0001}, "u_probability"),
        ({"tf_adjustment_weight": -0.1}, "tf_adjustment_weight"),
        ({"tf_adjustment_weight": 1.1}, "tf_adjustment_weight"),
        ({"disable_tf_exact_match_detection": False}, "disable_tf_exact_match_detection"),
    ],
)
def test_a_weight_outside_its_range_is_refused(fields: dict[str, Any], message: str) -> None:
    # m or u of 0 would make a weight of minus or plus infinity; above 1 it is no share at all.
    with pytest.raises(ValidationError, match=message):
        MatchModel.model_validate(_level(**fields))


@pytest.mark.parametrize(
    ("rare", "valid"), [(1e-9, True), (1.0, True), (0.0, False), (1.5, False), (-0.1, False)]
)
def test_the_share_of_a_rare_value_is_in_zero_to_one(rare: float, valid: bool) -> None:
    data = toy_model().model_dump(mode="json")
    data["term_frequencies"]["last"]["rare"] = rare
    if valid:
        assert MatchModel.model_validate(data).term_frequencies["last"].rare == rare
    else:
        with pytest.raises(ValidationError, match="rare"):
            MatchModel.model_validate(data)


def test_a_model_version_may_be_one_character() -> None:
    assert toy_model().model_copy(update={"model_version": "7"}).model_version == "7"
    assert MatchModel.model_validate({**toy_model().model_dump(mode="json"), "model_version": "7"})
    with pytest.raises(ValidationError, match="model_version"):
        MatchModel.model_validate({**toy_model().model_dump(mode="json"), "model_version": ""})


def test_a_models_hash_is_over_its_canonical_json() -> None:
    model = toy_model()
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert model.sha256 == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_shipped_model_file_is_what_save_writes(tmp_path: Path) -> None:
    shipped = resources.files("changegate.detector.matching").joinpath("default_model.json").read_text()
    load_model().save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == shipped


def test_scores_and_matches_are_immutable() -> None:
    match = DuplicateFinder(toy_model()).compare(
        contact(email="a@acme.com"), "b", contact(email="a@acme.com")
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        match.other_id = "c"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        match.score.total = 0.0  # type: ignore[misc]


def test_a_model_is_frozen() -> None:
    with pytest.raises(ValidationError):
        toy_model().model_version = "x"  # type: ignore[misc]


# --- the finder, with the shipped model -----------------------------------------------------------


def test_true_duplicate_scores_above_the_review_threshold() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**BOB), "2", contact(**ROBERT))
    assert match.levels == {
        "first_name": "nickname",
        "last_name": "exact",
        "email": "exact",
        "phone": "exact_same_name",
        "workplace": "exact",
    }
    assert match.score.total == pytest.approx(sum(match.score.weights.values()))
    assert match.probability > finder.threshold
    assert match.flags == ()
    assert [m.other_id for m in finder.matches(contact(**BOB), [("2", contact(**ROBERT))])] == ["2"]


def test_colleagues_at_the_same_company_and_address_score_below_the_threshold() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**ALICE), "2", contact(**CAROL))
    assert match.levels == {
        "first_name": "disagree",
        "last_name": "disagree",
        "email": "disagree",
        "phone": "exact_same_workplace",  # the switchboard: counted with the workplace
        "workplace": "exact",
    }
    assert match.probability < finder.threshold
    assert finder.matches(contact(**ALICE), [("2", contact(**CAROL))]) == []


def test_namesakes_at_different_companies_score_below_the_threshold() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**JOHN_INITECH), "2", contact(**JOHN_GLOBEX))
    assert (match.levels["first_name"], match.levels["last_name"]) == ("exact", "exact")
    assert match.levels["workplace"] == "disagree"
    assert match.probability < 0.01
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
        ("namesake", contact(**{**JOHN_GLOBEX, "firstname": "Bob"})),
    ]
    found = finder.matches(record, candidates)
    assert [m.other_id for m in found] == ["full", "no-phone"]
    assert all(isinstance(m, Match) and m.probability >= finder.threshold for m in found)
    assert found[0].score.total > found[1].score.total
    assert finder.matches(record, []) == []


def test_a_probability_follows_from_the_weights_and_the_prior() -> None:
    finder = DuplicateFinder()
    match = finder.compare(contact(**BOB), "x", contact(email="bob.smith@acme.com"))
    assert match.levels == {"email": "exact", "workplace": "company"}
    scorer = finder.scorer
    total = scorer.weights["email"]["exact"] + scorer.weights["workplace"]["company"]
    assert match.score.total == pytest.approx(total)
    assert match.probability == pytest.approx(1 / (1 + 2 ** -(total + scorer.prior_log_odds)))


def test_the_threshold_is_inclusive_and_configurable() -> None:
    a, b = contact(email="a@acme.com"), contact(email="A@Acme.com")
    assert DuplicateFinder(toy_model(), threshold=0.8).compare(a, "b", b).probability == pytest.approx(0.8)
    assert [m.other_id for m in DuplicateFinder(toy_model(), threshold=0.8).matches(a, [("b", b)])] == ["b"]
    assert DuplicateFinder(toy_model(), threshold=0.81).matches(a, [("b", b)]) == []
    assert DuplicateFinder().threshold == DEFAULT_REVIEW_THRESHOLD


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
