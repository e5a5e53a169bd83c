"""Consumers nothing waits on to execute fetch less often on Tansu, never more often than the others."""

from __future__ import annotations

from changegate.core.settings import CommonSettings


def test_a_follower_waits_longer_for_a_fetch_than_the_way_to_an_execution() -> None:
    settings = CommonSettings(kafka_fetch_max_wait_ms=15, kafka_follower_fetch_max_wait_ms=100)
    assert settings.fetch_max_wait_ms() == 15
    assert settings.fetch_max_wait_ms(follower=True) == 100


def test_a_follower_never_waits_less_than_the_others() -> None:
    # On Kafka (500 ms: a fetch answers as soon as records are there) the follower's is no shorter.
    settings = CommonSettings(kafka_fetch_max_wait_ms=500, kafka_follower_fetch_max_wait_ms=100)
    assert settings.fetch_max_wait_ms(follower=True) == 500
