"""What "0 wrong auto-applies" can mean (bench/automation_safety.py): the odds of a set of
auto-applies under known error rates, and the oracle that takes the lowest rates first."""

from __future__ import annotations

import math

import pytest
from automation_safety import Odds, odds, oracle


def test_the_odds_of_a_set_are_the_sum_and_the_product_of_its_error_rates() -> None:
    assert odds([]) == Odds(0, 0.0, 1.0)
    got = odds([0.1, 0.2, 0.0])
    assert got.n == 3
    assert got.expected_wrong == pytest.approx(0.3)
    assert got.p_none_wrong == pytest.approx(0.9 * 0.8)
    # 10,000 changes each wrong once in 10,000: one wrong expected, none with probability ~1/e
    many = odds([1e-4] * 10_000)
    assert many.expected_wrong == pytest.approx(1.0)
    assert many.p_none_wrong == pytest.approx(math.exp(-1), rel=1e-4)
    assert odds([1.0, 0.0]).p_none_wrong == 0.0


def test_the_oracle_takes_the_lowest_rates_first_until_its_share_of_the_right_ones() -> None:
    # (hidden error rate, right): five right ones; 60% of them is three
    candidates = [(0.3, True), (0.0, True), (0.01, False), (0.01, True), (0.2, True), (0.001, True)]
    got = oracle(candidates, 0.6)
    # 0.0 (right), 0.001 (right), 0.01 (wrong), 0.01 (right): three right ones after four
    assert got.n == 4
    assert got.expected_wrong == pytest.approx(0.021)
    assert got.p_none_wrong == pytest.approx(1.0 * 0.999 * 0.99 * 0.99)
    # all of them: every candidate up to the last right one
    assert oracle(candidates, 1.0).n == 6
    assert oracle(candidates, 0.0) == Odds(0, 0.0, 1.0)


def test_the_oracle_cannot_tell_a_wrong_change_from_a_right_one_of_the_same_rate() -> None:
    # Ties keep the given order, whatever the labels: the wrong one first costs one more pick.
    wrong_first = oracle([(0.05, False), (0.05, True), (0.05, True)], 0.5)
    right_first = oracle([(0.05, True), (0.05, False), (0.05, True)], 0.5)
    assert (wrong_first.n, right_first.n) == (2, 1)
    assert wrong_first.expected_wrong == pytest.approx(0.1)
    assert right_first.p_none_wrong == pytest.approx(0.95)


def test_a_source_that_is_never_wrong_guarantees_zero_and_one_that_can_be_does_not() -> None:
    # Enough perfect sources for the target: P(0 wrong) is 1, a guarantee.
    assert oracle([(0.0, True)] * 6 + [(0.1, True)] * 4, 0.6).p_none_wrong == 1.0
    # Too few: the oracle must reach into a source wrong once in 20,000, and 0 becomes a draw.
    # 60% of 8,002 right ones is 4,801.2: 4,802 picks, 4,800 of them from the imperfect source
    drawn = oracle([(0.0, True)] * 2 + [(5e-5, True)] * 8_000, 0.6)
    assert drawn.n == 4_802
    assert drawn.expected_wrong == pytest.approx(0.24)
    assert drawn.p_none_wrong == pytest.approx((1 - 5e-5) ** 4_800)
