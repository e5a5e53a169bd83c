"""ConsumerHealth without a broker: lag never negative, progress only when the offset moves or the
partition is caught up, per-partition series gone when the partition is revoked."""

from __future__ import annotations

import time

import pytest
from aiokafka import TopicPartition
from changegate.core.consumer_health import ConsumerHealth
from prometheus_client import REGISTRY


class FakeConsumer:
    def __init__(self, highwater: dict[TopicPartition, int]) -> None:
        self.marks = highwater

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.marks.get(tp)


def sample(name: str, group: str, tp: TopicPartition) -> float | None:
    return REGISTRY.get_sample_value(
        name, {"group": group, "topic": tp.topic, "partition": str(tp.partition)}
    )


def test_lag_progress_and_revocation(monkeypatch: pytest.MonkeyPatch) -> None:
    health = ConsumerHealth("unit-group")
    tp = TopicPartition("t", 0)
    consumer = FakeConsumer({tp: 10})
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    health.fetched(consumer, {tp: 4}, {})
    assert sample("changegate_consumer_lag_messages", "unit-group", tp) == 6
    assert sample("changegate_consumer_last_progress_timestamp_seconds", "unit-group", tp) == 1000.0
    clock[0] = 1100.0
    health.fetched(consumer, {tp: 4}, {})  # the same messages still waiting: no progress
    assert sample("changegate_consumer_last_progress_timestamp_seconds", "unit-group", tp) == 1000.0
    health.committed(consumer, {tp: 7})
    assert sample("changegate_consumer_last_progress_timestamp_seconds", "unit-group", tp) == 1100.0
    assert sample("changegate_consumer_lag_messages", "unit-group", tp) == 3
    clock[0] = 1200.0
    health.committed(consumer, {tp: 7})  # committing the same offset again is no progress
    assert sample("changegate_consumer_last_progress_timestamp_seconds", "unit-group", tp) == 1100.0
    consumer.marks[tp] = 5  # a position past the high watermark (it was just read): lag 0, not -2
    health.fetched(consumer, {}, {tp: 7})
    assert sample("changegate_consumer_lag_messages", "unit-group", tp) == 0
    assert sample("changegate_consumer_last_progress_timestamp_seconds", "unit-group", tp) == 1200.0  # idle
    health.paused([tp], True)
    assert sample("changegate_consumer_partition_paused", "unit-group", tp) == 1
    health.revoked([tp])
    for name in (
        "changegate_consumer_lag_messages",
        "changegate_consumer_last_progress_timestamp_seconds",
        "changegate_consumer_partition_paused",
    ):
        assert sample(name, "unit-group", tp) is None, name


def test_liveness_counts_from_the_first_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    health = ConsumerHealth("unit-live")
    clock = [50.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    clock[0] = 500.0
    assert "unit-live" not in ConsumerHealth.stuck(10)  # not polling yet: start-up waits for the broker
    health.polled()
    clock[0] = 505.0
    assert "unit-live" not in ConsumerHealth.stuck(10)
    clock[0] = 511.0
    assert "unit-live" in ConsumerHealth.stuck(10)


def test_healthz_fails_while_a_loop_is_wedged(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from changegate.core.service import ops_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.include_router(ops_router({}, asyncio.Event(), max_poll_gap=30))
    client = TestClient(app)
    health = ConsumerHealth("unit-healthz")
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    health.polled()
    clock[0] = 29.0
    assert client.get("/healthz").status_code == 200
    clock[0] = 31.0
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert "unit-healthz" in answer.json()["stuck"]
    health.polled()
    assert client.get("/healthz").status_code == 200
