"""The duplicate finder's rules of structure (pure logic): what no fitted weight can override - a
disagreeing first name or birth date voids what relatives and colleagues share, names alone are
at most even odds, levels stay in order - and cluster decisions (``matching/clusters.py``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from changegate.detector.matching.clusters import MAX_CLUSTER_SIZE, PairScores, decide, pair
from changegate.detector.matching.compare import COMPARISONS, birth_date
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.model import (
    Comparison,
    ComparisonLevel,
    MatchModel,
    TermFrequencies,
    enforce_order,
)
from changegate.detector.matching.normalize import Features, features, normalize_birth_date
from changegate.detector.matching.scoring import Scorer


def contact(**props: Any) -> Features:
    return features("contact", props)


def _levels(name: str, **levels: tuple[float, float]) -> Comparison:
    return Comparison(
        output_column_name=name,
        comparison_levels=[
            ComparisonLevel(label_for_charts=label, m_probability=m, u_probability=u)
            for label, (m, u) in levels.items()
        ],
    )


# Prior 1/1025: -10 bits, so names are bounded at 10 bits. Weights: first or last name exact
# log2(0.8/0.01) = 6.32 each; the same site log2(0.5/2**-10) = 9; email exact 11, phone exact 10,
# birth date exact 14.1; a disagreeing first name -4.25, birth date -4.32.
def rules_model(**update: Any) -> MatchModel:
    fields: dict[str, Any] = dict(
        model_version="rules",
        probability_two_random_records_match=1 / 1025,
        comparisons=[
            _levels("first_name", exact=(0.8, 0.01), disagree=(0.05, 0.95)),
            _levels("last_name", exact=(0.8, 0.01), disagree=(0.05, 0.95)),
            _levels("email", exact=(0.5, 2**-12), disagree=(0.3, 0.99)),
            _levels(
                "phone", exact_same_name=(0.4, 0.4 * 2**-10), exact=(0.4, 0.4 * 2**-10), disagree=(0.3, 0.9)
            ),
            _levels("workplace", site=(0.5, 2**-10), disagree=(0.2, 0.9)),
            _levels("date_of_birth", exact=(0.9, 0.9 / 2**14), disagree=(0.05, 0.9999)),
        ],
        term_frequencies={},
    )
    return MatchModel(**(fields | update))


HOME = {"address": "12 Elm Street", "city": "Springfield", "zip": "62704"}
JOHN = {"firstname": "John", "lastname": "Turing", "phone": "+1 217 555 0101", **HOME}


def test_names_alone_are_at_most_even_odds() -> None:
    scorer = Scorer(rules_model())
    score = scorer.score({"first_name": "exact", "last_name": "exact"})
    assert score.raw["first_name"] + score.raw["last_name"] == pytest.approx(2 * math.log2(80))
    assert score.weights["first_name"] + score.weights["last_name"] == pytest.approx(10.0)
    assert score.probability == pytest.approx(0.5)
    assert score.notes == ("names capped at even odds",)
    # with something besides the names, they still count 10 bits, and the rest on top
    with_site = scorer.score({"first_name": "exact", "last_name": "exact", "workplace": "site"})
    assert with_site.total == pytest.approx(19.0)


def test_a_household_is_not_a_match_whatever_it_shares() -> None:
    """Same surname, address and landline, another first name: what a household shares is no
    evidence of one person; only the disagreeing first name counts."""
    scorer = Scorer(rules_model())
    levels = {"first_name": "disagree", "last_name": "exact", "workplace": "site", "phone": "exact"}
    score = scorer.score(levels)
    assert score.raw["workplace"] > 0
    assert score.raw["phone"] > 0
    assert score.weights == {
        "first_name": pytest.approx(math.log2(0.05 / 0.95)),
        "last_name": 0.0,
        "workplace": 0.0,
        "phone": 0.0,
    }
    assert score.probability < 1 / 1025
    assert "first names disagree" in score.notes[0]
    # the same email is a personal identifier: then it is one person with another first name
    assert scorer.score({**levels, "email": "exact"}).probability > 0.99


def test_a_junior_is_not_his_father() -> None:
    scorer = Scorer(rules_model())
    levels = {"first_name": "exact", "last_name": "exact", "workplace": "site", "phone": "exact_same_name"}
    assert scorer.score(levels).probability > 0.999
    junior = scorer.score({**levels, "date_of_birth": "disagree"})
    assert junior.probability < 1 / 1025
    assert "dates of birth disagree" in junior.notes[0]
    assert scorer.score({**levels, "date_of_birth": "disagree", "email": "exact"}).probability > 0.99


def test_the_same_birth_date_lifts_a_first_name_conflict() -> None:
    """Another first name with the same birth date, surname and address: a wrong first name (or
    twins, which no CRM field tells apart)."""
    scorer = Scorer(rules_model())
    levels = {"first_name": "disagree", "last_name": "exact", "workplace": "site", "date_of_birth": "exact"}
    score = scorer.score(levels)
    assert score.notes == ()
    assert score.probability > 0.99


def test_the_rules_hold_with_the_shipped_model_on_real_looking_records() -> None:
    finder = DuplicateFinder()
    john, shafi = contact(**JOHN), contact(**{**JOHN, "firstname": "Shafi"})
    assert finder.compare(john, "2", shafi).probability < finder.floor
    senior = contact(**JOHN, date_of_birth="1950-03-01")
    junior = contact(**JOHN, date_of_birth="1979-11-23")
    assert finder.compare(senior, "2", junior).probability < finder.floor
    assert finder.compare(senior, "2", contact(**JOHN)).probability >= finder.threshold
    namesake = contact(firstname="John", lastname="Turing")
    assert finder.compare(contact(firstname="John", lastname="Turing"), "2", namesake).probability <= 0.5


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("19800409", "19800409", "exact"),
        ("19800409", "19800408", "similar"),  # a digit
        ("19800409", "19800490", "similar"),  # two neighbours swapped
        ("19800409", "19800904", "similar"),  # day and month swapped
        ("19800409", "19500409", "similar"),  # one digit of the year: a typo as often as not
        ("19800409", "19530712", "disagree"),
        ("19800409", "", None),
    ],
)
def test_birth_date_levels(a: str, b: str, level: str | None) -> None:
    assert birth_date(a, b) == level


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("1980-04-09", "19800409"),
        ("19800409", "19800409"),
        ("1980-04-09T00:00:00Z", "19800409"),
        ("324086400000", "19800409"),  # HubSpot's midnight UTC in epoch milliseconds
        ("-315619200000", "19600101"),
        ("09/04/1980", ""),  # day or month first: ambiguous
        ("1980-02-30", ""),
        ("1700-01-01", ""),
        ("", ""),
        (None, ""),
        ("soon", ""),
    ],
)
def test_birth_dates_are_normalised(raw: str | None, normalised: str) -> None:
    assert normalize_birth_date(raw) == normalised


def test_levels_out_of_order_are_pooled_and_a_disagreement_never_counts_for() -> None:
    model = rules_model(
        comparisons=[
            # EM put more weight on "similar" than on "exact", and some on disagreeing
            _levels("last_name", exact=(0.5, 0.01), similar=(0.3, 0.001), disagree=(0.2, 0.1)),
        ]
    )
    ordered = {lv.label_for_charts: lv for lv in enforce_order(model).comparisons[0].comparison_levels}
    exact, similar, disagree = (ordered[k] for k in ("exact", "similar", "disagree"))
    pooled = (0.5 + 0.3) / (0.01 + 0.001)
    assert exact.m_probability / exact.u_probability == pytest.approx(pooled)
    assert similar.m_probability / similar.u_probability == pytest.approx(pooled)
    assert exact.m_probability + similar.m_probability == pytest.approx(0.8)
    assert disagree.m_probability == pytest.approx(disagree.u_probability)  # weight 0, not +1
    assert enforce_order(enforce_order(model)) == enforce_order(model)
    assert Scorer(model).weights["last_name"]["disagree"] == pytest.approx(0.0)


def test_an_order_skips_levels_a_model_lacks() -> None:
    spec = next(s for s in COMPARISONS if s.name == "first_name")
    assert ("exact", "disagree") in spec.dominance
    assert ("nickname", "similar") not in spec.dominance  # two forms of a name: not ordered
    model = rules_model(comparisons=[_levels("first_name", exact=(0.1, 0.1), disagree=(0.9, 0.5))])
    exact, disagree = enforce_order(model).comparisons[0].comparison_levels
    # pooled across the missing levels between them, then the disagreement held at weight 0
    assert exact.m_probability / exact.u_probability == pytest.approx((0.1 + 0.9) / (0.1 + 0.5))
    assert disagree.m_probability == pytest.approx(0.5)


def test_pooled_evidence_takes_the_best_level_per_comparison() -> None:
    scorer = Scorer(rules_model())
    a = scorer.score({"first_name": "exact", "last_name": "exact", "email": "exact"})
    b = scorer.score({"first_name": "exact", "last_name": "exact", "workplace": "site"})
    pooled = scorer.pooled(
        [
            ({"first_name": "exact", "last_name": "exact", "email": "exact"}, a.raw),
            ({"first_name": "exact", "last_name": "exact", "workplace": "site"}, b.raw),
        ]
    )
    assert pooled.total == pytest.approx(10.0 + 11.0 + 9.0)
    assert pooled.total > max(a.total, b.total)


# --- cluster decisions ------------------------------------------------------------------------


def _finder() -> DuplicateFinder:
    return DuplicateFinder(rules_model())


def test_a_record_that_disagrees_with_one_member_does_not_join_through_another() -> None:
    """The transitive join: R shares A's email, but is not B (another birth date). Chaining R-A and
    A-B would merge R with B; the cluster decision refuses the whole cluster."""
    finder = _finder()
    a = contact(**JOHN, email="john@turing.example", date_of_birth="1950-03-01")
    b = contact(**JOHN, date_of_birth="1950-03-01")
    r = contact(**JOHN, email="john@turing.example", date_of_birth="1979-11-23")
    scores = PairScores(finder)
    assert scores.get("a", a, "b", b).probability >= finder.threshold
    assert scores.get("r", r, "a", a).probability >= finder.threshold  # the same mailbox
    assert scores.get("r", r, "b", b).probability < finder.floor  # another birth date, nothing personal
    decision = decide(finder, "r", r, {"cluster-1": {"a": a, "b": b}}, set(), scores)
    assert decision.members == ()
    assert "below the floor" in decision.refused["cluster-1"]


def test_the_floor_is_what_refuses_a_member_that_disagrees() -> None:
    finder = _finder()
    a = contact(firstname="Ada", lastname="Byron", email="ada@example.org", **HOME)
    b = contact(firstname="Ada", lastname="Byron", date_of_birth="1915-12-10", **HOME)
    r = contact(
        firstname="Ada", lastname="Byron", email="ada@example.org", date_of_birth="1952-11-27", **HOME
    )
    scores = PairScores(finder)
    assert scores.get("a", a, "b", b).probability >= finder.threshold
    assert scores.get("r", r, "a", a).probability >= finder.threshold
    assert scores.get("r", r, "b", b).probability < finder.floor  # mother and daughter
    decision = decide(finder, "r", r, {"c": {"a": a, "b": b}}, set(), scores)
    assert decision.members == ()
    # alone, A is joined
    assert decide(finder, "r", r, {"record:a": {"a": a}}, set()).members == ("a", "r")


def test_pooled_evidence_joins_a_duplicate_of_a_duplicate() -> None:
    """R shares the email with A and the address with B, neither pair alone clears the threshold:
    against the cluster as a whole it does."""
    finder = _finder()
    a = contact(firstname="Grace", lastname="Hopper", email="grace@navy.example")
    b = contact(firstname="Grace", lastname="Hopper", **HOME)
    r = contact(firstname="Grace", lastname="Hopper", email="grace@navy.example", **HOME)
    b_only = contact(firstname="Grace", lastname="Hopper", zip="62704")
    scores = PairScores(finder)
    assert scores.get("r", r, "a", a).probability >= finder.threshold
    decision = decide(finder, "r", r, {"c": {"a": a, "b": b}}, set(), scores)
    assert decision.members == ("a", "b", "r")
    assert decision.pooled is not None
    assert decision.pooled.probability >= finder.threshold
    weak = decide(finder, "s", b_only, {"c": {"a": a, "b": b}}, set())
    assert weak.members == ()
    assert "below the threshold" in weak.refused["c"]


def test_a_pair_a_reviewer_rejected_never_joins_again() -> None:
    finder = _finder()
    a = contact(firstname="Alan", lastname="Kay", email="alan@example.org", **HOME)
    r = contact(firstname="Alan", lastname="Kay", email="alan@example.org", **HOME)
    c = contact(firstname="Alan", lastname="Kay", email="alan@example.org", **HOME)
    assert decide(finder, "r", r, {"record:a": {"a": a}}, set()).members == ("a", "r")
    assert decide(finder, "r", r, {"record:a": {"a": a}}, {pair("a", "r")}).members == ()
    # nor through a third record: R joins C's cluster, A's is refused across the cluster
    decision = decide(finder, "r", r, {"record:a": {"a": a}, "record:c": {"c": c}}, {pair("a", "r")})
    assert decision.members == ("c", "r")
    bridged = decide(finder, "r", r, {"record:a": {"a": a}, "record:c": {"c": c}}, {pair("a", "c")})
    assert len(bridged.members) == 2
    assert "rejected" in next(iter(bridged.refused.values()))


def test_a_record_bridges_two_clusters_when_every_pair_across_holds() -> None:
    finder = _finder()
    a = contact(firstname="Edsger", lastname="Dijkstra", email="ewd@example.org", **HOME)
    b = contact(firstname="Edsger", lastname="Dijkstra", email="ewd@example.org")
    c = contact(firstname="Edsger", lastname="Dijkstra", email="ewd@example.org", phone="+1 217 555 0111")
    r = contact(firstname="Edsger", lastname="Dijkstra", email="ewd@example.org", **HOME)
    decision = decide(finder, "r", r, {"one": {"a": a, "b": b}, "two": {"c": c}}, set())
    assert decision.members == ("a", "b", "c", "r")
    assert set(decision.joined) == {"one", "two"}


def test_a_cluster_stays_within_its_size() -> None:
    finder = _finder()
    person = {"firstname": "Niklaus", "lastname": "Wirth", "email": "nw@example.org", **HOME}
    big = {f"m{i}": contact(**person) for i in range(MAX_CLUSTER_SIZE)}
    decision = decide(finder, "r", contact(**person), {"big": big}, set())
    assert decision.members == ()
    assert "more than" in decision.refused["big"]


def test_reference_frequencies_cover_common_names() -> None:
    tf = TermFrequencies(values={}, rare=1.0, reference="us-census-1990-first")
    assert tf.of("mary") == pytest.approx(2.629 / 100 / 2, rel=0.01)  # women's 2.629%, a few men
    assert tf.of("james") == pytest.approx((3.318 + 0.0) / 100 / 2, rel=0.01)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"firstname": "Smith", "lastname": "John"}, {"firstname": "John", "lastname": "Smyth"}),
        ({"firstname": "Jon", "lastname": "Smith"}, {"firstname": "Smith", "lastname": "J"}),
        ({"firstname": "Bob", "lastname": "Lee", "city": "Oslo"}, {"firstname": "Lee", "lastname": "Robert"}),
    ],
)
def test_a_pair_scores_the_same_whichever_record_comes_first(a: dict[str, str], b: dict[str, str]) -> None:
    """Otherwise a cluster built from one side could hold a pair below the floor seen from the other."""
    finder = DuplicateFinder()
    ab = finder.compare(contact(**a), "b", contact(**b))
    ba = finder.compare(contact(**b), "a", contact(**a))
    assert ab.levels == ba.levels
    assert ab.probability == ba.probability


def test_the_floor_is_at_most_the_threshold() -> None:
    from changegate.detector.settings import DetectorSettings
    from pydantic import ValidationError

    assert DetectorSettings(match_cluster_floor=0.9, match_review_threshold=0.9).match_cluster_floor == 0.9
    with pytest.raises(ValidationError, match="match_cluster_floor"):
        DetectorSettings(match_cluster_floor=0.95, match_review_threshold=0.9)
    with pytest.raises(ValueError, match="cluster floor"):
        DuplicateFinder(rules_model(), threshold=0.5, floor=0.6)


# --- edges of the rules and decisions (what mutation testing asked for) ------------------------


def test_a_single_name_under_the_bound_counts_whole_and_one_over_it_is_cut_to_it() -> None:
    assert Scorer(rules_model(probability_two_random_records_match=1 / 129)).score(
        {"first_name": "exact"}
    ).weights == {"first_name": pytest.approx(math.log2(80))}  # 6.32 bits, bound 7
    cut = Scorer(rules_model(probability_two_random_records_match=1 / 3)).score({"first_name": "exact"})
    assert cut.weights == {"first_name": pytest.approx(1.0)}  # bound 1 bit
    mixed = Scorer(rules_model(probability_two_random_records_match=1 / 3)).score(
        {"first_name": "exact", "last_name": "disagree"}
    )
    assert mixed.weights["last_name"] == pytest.approx(math.log2(0.05 / 0.95))  # a negative stays
    assert mixed.weights["first_name"] + mixed.weights["last_name"] == pytest.approx(1.0)


def test_with_even_prior_odds_names_count_nothing() -> None:
    score = Scorer(rules_model(probability_two_random_records_match=0.5)).score(
        {"first_name": "exact", "last_name": "exact"}
    )
    assert score.probability == 0.5


def test_a_level_the_model_lacks_weighs_nothing_and_is_not_named_as_voided() -> None:
    scorer = Scorer(rules_model())
    assert scorer.score({"email": "similar"}).weights == {"email": 0.0}
    score = scorer.score({"first_name": "disagree", "email": "partial", "workplace": "site"})
    assert score.notes == (
        "first names disagree and no email or date_of_birth agrees: agreement on workplace not counted"
        " (what relatives or colleagues share)",
    )


def test_scoring_two_records_reads_the_values_they_compared() -> None:
    tables = {"last": TermFrequencies(values={"turing": 0.2}, rare=1.0)}
    model = rules_model(
        comparisons=[
            Comparison(
                output_column_name="last_name",
                comparison_levels=[
                    ComparisonLevel(
                        label_for_charts="exact",
                        m_probability=0.8,
                        u_probability=0.01,
                        tf_adjustment_column="last",
                    ),
                    ComparisonLevel(label_for_charts="disagree", m_probability=0.2, u_probability=0.99),
                ],
            )
        ],
        term_frequencies=tables,
    )
    scorer = Scorer(model)
    a, b = contact(firstname="Alan", lastname="Turing"), contact(firstname="Al", lastname="Turing")
    with_records = scorer.score({"last_name": "exact"}, a, b)
    assert with_records.raw["last_name"] == pytest.approx(math.log2(80) + math.log2(0.01 / 0.2))
    assert scorer.score({"last_name": "exact"}).raw["last_name"] == pytest.approx(math.log2(80))
    assert scorer.score({"last_name": "exact"}, a, b, values={}).raw["last_name"] == pytest.approx(
        math.log2(80)
    )


def test_pooling_keeps_the_first_of_equal_levels() -> None:
    scorer = Scorer(rules_model())
    pooled = scorer.pooled(
        [({"phone": "exact_same_name"}, {"phone": 10.0}), ({"phone": "exact"}, {"phone": 10.0})]
    )
    assert pooled.weights == {"phone": 10.0}
    assert scorer.pooled([({"workplace": "site"}, {})]).weights == {"workplace": 0.0}


def test_within_scores_every_pair_once() -> None:
    person = {"firstname": "Radia", "lastname": "Perlman", "email": "radia@example.org"}
    members = {f"m{i}": contact(**person) for i in range(4)}
    pairs = PairScores(_finder()).within(members)
    assert sorted((p.a, p.b) for p in pairs) == [
        ("m0", "m1"),
        ("m0", "m2"),
        ("m0", "m3"),
        ("m1", "m2"),
        ("m1", "m3"),
        ("m2", "m3"),
    ]


def test_a_cluster_may_reach_its_size_and_an_empty_group_is_no_candidate() -> None:
    assert MAX_CLUSTER_SIZE == 10
    finder = _finder()
    person = {"firstname": "Niklaus", "lastname": "Wirth", "email": "nw@example.org", **HOME}
    group = {f"m{i}": contact(**person) for i in range(MAX_CLUSTER_SIZE - 1)}
    decision = decide(finder, "r", contact(**person), {"empty": {}, "full": group}, set())
    assert len(decision.members) == MAX_CLUSTER_SIZE
    assert decision.joined == ("full",)
    assert "empty" not in decision.refused


def test_the_best_cluster_is_joined_first_and_a_second_only_if_every_pair_across_holds() -> None:
    finder = _finder()
    # R shares the email with B (strong) and only the home with A (weaker); A and B have other birth
    # dates: they can never be one cluster, and R goes with B, listed second or first.
    a = contact(firstname="Ken", lastname="Iverson", date_of_birth="1920-12-17", **HOME)
    b = contact(firstname="Ken", lastname="Iverson", email="ki@example.org", date_of_birth="1950-01-01")
    r = contact(firstname="Ken", lastname="Iverson", email="ki@example.org", **HOME)
    scores = PairScores(finder)
    assert scores.get("a", a, "b", b).probability < finder.floor
    for groups in (
        {"record:a": {"a": a}, "record:b": {"b": b}},
        {"record:b": {"b": b}, "record:a": {"a": a}},
    ):
        decision = decide(finder, "r", r, groups, set())
        assert decision.members == ("b", "r")
        assert "below the floor" in decision.refused["record:a"]


@pytest.mark.parametrize(
    ("threshold", "floor", "valid"),
    [(0.9, 0.9, True), (0.9, 0.5, True), (0.9, 0.0, False), (1.0, 0.5, False), (0.5, 0.6, False)],
)
def test_the_finder_takes_a_floor_up_to_the_threshold(threshold: float, floor: float, valid: bool) -> None:
    if valid:
        assert DuplicateFinder(rules_model(), threshold=threshold, floor=floor).floor == floor
    else:
        with pytest.raises(ValueError, match="cluster floor"):
            DuplicateFinder(rules_model(), threshold=threshold, floor=floor)
