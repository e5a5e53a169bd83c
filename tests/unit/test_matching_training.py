"""Unsupervised training recovers known parameters (Splink on DuckDB, in process: no broker, no
database). The fixture is generated from a model whose m, u and prior are known exactly."""

from __future__ import annotations

import random
from typing import Any

import pytest
from changegate.detector.matching.compare import COMPARISONS, EXACT
from changegate.detector.matching.model import MatchModel, TermFrequencies
from changegate.detector.matching.normalize import Features, features
from changegate.detector.matching.scoring import Scorer
from changegate.detector.matching.training import (
    M_FLOOR,
    U_MATCH_SHARE_MAX,
    TrainingOptions,
    build_model,
    term_frequencies,
    train,
    without_matches,
)

FIRST_NAMES = 200  # drawn uniformly: u(first name exact) = 1/200
LAST_NAMES = 300  # u(last name exact) = 1/300
KEEP_FIRST, KEEP_LAST = 0.9, 0.8  # m(exact): a duplicate keeps each name with these odds
ENTITIES, DUPLICATE_RATE = 1500, 0.5


def _word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(length))


def _garble(rng: random.Random, name: str) -> str:
    """Another name altogether: neither similar nor sounding alike."""
    return "q" + _word(rng, 4) + "x"


def fixture(seed: int = 7) -> tuple[list[Features], int]:
    rng = random.Random(seed)
    firsts = sorted({_word(rng, 3) for _ in range(10 * FIRST_NAMES)})[:FIRST_NAMES]
    lasts = sorted({_word(rng, 4) for _ in range(10 * LAST_NAMES)})[:LAST_NAMES]
    records: list[dict[str, Any]] = []
    duplicates = 0
    for i in range(ENTITIES):
        person = {
            "firstname": rng.choice(firsts),
            "lastname": rng.choice(lasts),
            "address": f"{i + 1} {_word(rng, 3)} street",
            "zip": str(1000 + rng.randrange(400)),
            "city": _word(rng, 3),
        }
        records.append(person)
        if rng.random() < DUPLICATE_RATE:
            duplicates += 1
            copy = dict(person)
            if rng.random() > KEEP_FIRST:
                copy["firstname"] = _garble(rng, copy["firstname"])
            if rng.random() > KEEP_LAST:
                copy["lastname"] = _garble(rng, copy["lastname"])
            records.append(copy)
    rng.shuffle(records)
    return [features("contact", r) for r in records], duplicates


@pytest.fixture(scope="module")
def trained() -> tuple[MatchModel, int, int]:
    records, duplicates = fixture()
    return train(records, TrainingOptions(u_pairs=3e5, em_pairs=1e6, seed=3)), len(records), duplicates


def _level(model: MatchModel, comparison: str, label: str) -> tuple[float, float]:
    for c in model.comparisons:
        if c.output_column_name == comparison:
            for level in c.comparison_levels:
                if level.label_for_charts == label:
                    return level.m_probability, level.u_probability
    raise AssertionError(f"{comparison}.{label} not in the model")


def test_em_recovers_m_of_the_names(trained: tuple[MatchModel, int, int]) -> None:
    model, _, _ = trained
    assert _level(model, "first_name", EXACT)[0] == pytest.approx(KEEP_FIRST, abs=0.05)
    assert _level(model, "last_name", EXACT)[0] == pytest.approx(KEEP_LAST, abs=0.05)


def test_random_pairs_recover_u_of_the_names(trained: tuple[MatchModel, int, int]) -> None:
    model, _, _ = trained
    assert _level(model, "first_name", EXACT)[1] == pytest.approx(1 / FIRST_NAMES, rel=0.25)
    assert _level(model, "last_name", EXACT)[1] == pytest.approx(1 / LAST_NAMES, rel=0.25)


def test_the_prior_is_the_share_of_matching_pairs(trained: tuple[MatchModel, int, int]) -> None:
    model, n, duplicates = trained
    truth = duplicates / (n * (n - 1) / 2)
    assert model.probability_two_random_records_match == pytest.approx(truth, rel=0.3)


def test_the_model_says_how_it_was_made_and_scores(trained: tuple[MatchModel, int, int]) -> None:
    model, n, _ = trained
    assert model.training["labels_used"] is False
    assert model.training["records"] == n
    assert model.training["em_sessions"] == ["postcode", "first+last"]  # no emails: no email session
    assert {c.output_column_name for c in model.comparisons} == {"first_name", "last_name", "workplace"}
    assert set(model.term_frequencies) == {"first", "last", "city"}
    scorer = Scorer(model)
    same = scorer.score(
        {"first_name": "exact", "last_name": "exact", "workplace": "site"}
    )  # an address without a company
    other = scorer.score({"first_name": "disagree", "last_name": "disagree", "workplace": "disagree"})
    assert same.probability > 0.99 > 0.01 > other.probability


def test_term_frequencies() -> None:
    records = [features("contact", {"lastname": n}) for n in ["smith", "smith", "smith", "jones", "lee", ""]]
    tf = term_frequencies(records, "last")
    census = "us-census-1990-last"
    assert tf == TermFrequencies(values={"smith": 0.6}, rare=0.2, reference=census)
    assert tf.of("smith") == 0.6
    # held once here: the public frequency, not "as rare as one record in five"
    assert tf.of("jones") == pytest.approx(0.00621)
    assert tf.of("zzyzxq") is None
    assert term_frequencies([features("contact", {})], "last") == TermFrequencies(
        values={}, rare=1.0, reference=census
    )
    assert term_frequencies(records, "city").reference is None


def test_build_model_floors_unseen_levels_and_drops_absent_comparisons() -> None:
    params: dict[str, dict[str, tuple[float | None, float | None]]] = {
        "first_name": {
            "exact": (0.8, None),
            "nickname": (None, 0.002),
            "similar": (0.0, 0.001),
            "disagree": (0.1, 0.95),
        },
        "email": {"exact": (None, None), "disagree": (None, 0.99)},
    }
    tfs = {"first": TermFrequencies(values={"ann": 0.1}, rare=0.001)}
    model = build_model(params, tfs, 0.001, u_floor=1e-6, version="v", training={})
    assert [c.output_column_name for c in model.comparisons] == ["first_name"]
    levels = {lvl.label_for_charts: lvl for lvl in model.comparisons[0].comparison_levels}
    assert set(levels) == {"exact", "nickname", "similar", "disagree"}
    assert (levels["exact"].m_probability, levels["exact"].u_probability) == (0.8, 1e-6)
    assert levels["exact"].tf_adjustment_column == "first"
    assert levels["nickname"].m_probability == M_FLOOR
    assert levels["similar"].m_probability == M_FLOOR
    assert levels["disagree"].u_probability == 0.95
    assert levels["disagree"].tf_adjustment_column is None


def test_training_refuses_a_snapshot_of_one_record() -> None:
    with pytest.raises(ValueError, match="at least two records"):
        train([features("contact", {"firstname": "a"})], TrainingOptions())


def test_every_comparison_is_trainable() -> None:
    assert all(spec.columns for spec in COMPARISONS)


def test_u_without_the_matches_among_random_pairs() -> None:
    """u_observed = prior * m + (1 - prior) * u: the matches' share is taken out, by at most
    U_MATCH_SHARE_MAX and never below the floor."""
    params: dict[str, dict[str, tuple[float | None, float | None]]] = {
        "last_name": {"exact": (0.8, 0.001), "similar": (0.1, 2e-4), "disagree": (0.1, 0.999)},
    }
    model = build_model(params, {}, 1e-4, u_floor=1e-6, version="v", training={})
    corrected = without_matches(model, 1e-4, u_floor=1e-6)
    levels = {lvl.label_for_charts: lvl.u_probability for lvl in corrected.comparisons[0].comparison_levels}
    assert levels["exact"] == pytest.approx((0.001 - 1e-4 * 0.8) / (1 - 1e-4))
    assert levels["similar"] == pytest.approx((2e-4 - 1e-5) / (1 - 1e-4))
    assert levels["disagree"] == pytest.approx((0.999 - 1e-5) / (1 - 1e-4))
    assert corrected.probability_two_random_records_match == 1e-4
    # a level matches alone would explain: lowered by U_MATCH_SHARE_MAX at most
    capped = without_matches(model, 1.2e-3, u_floor=1e-6)
    exact = capped.comparisons[0].comparison_levels[0]
    assert exact.u_probability == pytest.approx(0.001 / U_MATCH_SHARE_MAX)
    floored = without_matches(model, 1.2e-3, u_floor=1e-3)
    assert floored.comparisons[0].comparison_levels[0].u_probability == 1e-3
