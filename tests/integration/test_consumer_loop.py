"""The shared consumer loop against the real broker: poison messages, retries, commits."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.kafka import ConsumerLoop, Subscription, make_producer
from changegate.core.serde import encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from helpers import created, eventually, read_topic


async def _run_loop(
    settings: CommonSettings,
    producer: AIOKafkaProducer,
    seen: list[Envelope[Any]],
    fail_on: set[str] | None = None,
) -> tuple[ConsumerLoop, asyncio.Task[None]]:
    async def handler(envelope: Envelope[Any]) -> None:
        if fail_on and envelope.payload.record_id in fail_on:
            raise ValueError(f"cannot handle {envelope.payload.record_id}")
        seen.append(envelope)

    loop = ConsumerLoop(
        settings,
        f"g-{uuid.uuid4().hex[:6]}",
        [Subscription(Topic.CRM_EVENTS, handler, frozenset({"crm_event"}))],
        producer,
        asyncio.Event(),
    )
    return loop, asyncio.create_task(loop.run())


async def test_poison_messages_go_to_the_dead_letter_topic_and_the_loop_keeps_going(
    settings: CommonSettings, topics: None
) -> None:
    names = TopicNames(settings.topic_prefix)
    producer = make_producer(settings, "test")
    await producer.start()
    seen: list[Envelope[Any]] = []
    try:
        loop, task = await _run_loop(settings, producer, seen, fail_on={"boom"})
        topic = names(Topic.CRM_EVENTS)
        await producer.send_and_wait(topic, b"{not json", key=b"r1")
        wrong_type = make_envelope(created("r1").model_copy(), service="t").model_dump(mode="json")
        wrong_type["event_type"] = "decision"
        await producer.send_and_wait(
            topic, Envelope[Any].model_validate(wrong_type).model_dump_json().encode(), key=b"r1"
        )
        await producer.send_and_wait(topic, encode(make_envelope(created("boom"), service="t")), key=b"r1")
        await producer.send_and_wait(topic, encode(make_envelope(created("ok"), service="t")), key=b"r1")

        await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) == 1, what="the good message")
        assert seen[0].payload.record_id == "ok"
        dead = await read_topic(settings.kafka_bootstrap_servers, names.dlq(Topic.CRM_EVENTS), 3)
        reasons = [dict(r.headers)["x-changegate-reason"].decode() for r in dead]  # type: ignore[attr-defined]
        errors = [dict(r.headers)["x-changegate-error"].decode() for r in dead]  # type: ignore[attr-defined]
        assert reasons == ["undecodable", "undecodable", "handler_error"]
        assert errors[0].startswith("not JSON")
        assert "not expected here" in errors[1]
        assert errors[2] == "ValueError: cannot handle boom"
        assert dead[0].value == b"{not json"  # type: ignore[attr-defined]
        loop.stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await producer.stop()


async def test_offsets_are_committed_after_processing_and_not_reprocessed(
    settings: CommonSettings, topics: None
) -> None:
    names = TopicNames(settings.topic_prefix)
    producer = make_producer(settings, "test")
    await producer.start()
    try:
        for i in range(5):
            env = make_envelope(created(f"r{i}"), service="t")
            await producer.send_and_wait(names(Topic.CRM_EVENTS), encode(env), key=f"r{i}".encode())
        seen: list[Envelope[Any]] = []
        loop, task = await _run_loop(settings, producer, seen)
        await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) == 5, what="5 messages")
        loop.stop.set()
        await asyncio.wait_for(task, 10)

        # The same group again: nothing is redelivered, the new message is.
        again: list[Envelope[Any]] = []
        env = make_envelope(created("r5"), service="t")
        await producer.send_and_wait(names(Topic.CRM_EVENTS), encode(env), key=b"r5")

        async def collect(envelope: Envelope[Any]) -> None:
            again.append(envelope)

        loop2 = ConsumerLoop(
            settings,
            loop.group_id,
            [Subscription(Topic.CRM_EVENTS, collect, frozenset({"crm_event"}))],
            producer,
            asyncio.Event(),
        )
        task2 = asyncio.create_task(loop2.run())
        await eventually(lambda: asyncio.sleep(0, again), lambda s: len(s) >= 1, what="the new message")
        await asyncio.sleep(0.5)
        loop2.stop.set()
        await asyncio.wait_for(task2, 10)
        assert [e.payload.record_id for e in again] == ["r5"]
    finally:
        await producer.stop()


async def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_rest_processed_once(
    settings: CommonSettings, topics: None
) -> None:
    names = TopicNames(settings.topic_prefix)
    producer = make_producer(settings, "test")
    await producer.start()
    applied: list[str] = []
    try:
        for rid in ["a", "b", "boom", "c", "d"]:
            env = make_envelope(created(rid), service="t")
            await producer.send_and_wait(names(Topic.CRM_EVENTS), encode(env), key=b"same-key")

        async def batch(envelopes: list[Envelope[Any]]) -> None:
            staged = [e.payload.record_id for e in envelopes]
            if "boom" in staged:
                raise ValueError("boom in batch")  # nothing of the batch is applied
            applied.extend(staged)

        async def single(envelope: Envelope[Any]) -> None:
            await batch([envelope])

        loop = ConsumerLoop(
            settings,
            f"g-{uuid.uuid4().hex[:6]}",
            [Subscription(Topic.CRM_EVENTS, single, frozenset({"crm_event"}), batch)],
            producer,
            asyncio.Event(),
        )
        task = asyncio.create_task(loop.run())
        await eventually(lambda: asyncio.sleep(0, applied), lambda a: len(a) >= 4, what="the good four")
        dead = await read_topic(settings.kafka_bootstrap_servers, names.dlq(Topic.CRM_EVENTS), 1)
        loop.stop.set()
        await asyncio.wait_for(task, 10)
        assert applied == ["a", "b", "c", "d"]  # in order, once each
        assert dict(dead[0].headers)["x-changegate-error"] == b"ValueError: boom in batch"  # type: ignore[attr-defined]
    finally:
        await producer.stop()


def _sample(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


async def test_lag_progress_and_liveness_of_a_wedged_partition(
    settings: CommonSettings, topics: None
) -> None:
    """Lag comes from the fetch's high watermark while the messages wait (not only at commit); the
    partition's progress clock stands still while its handler is wedged, and so does the loop's last
    poll, which liveness reads; released, the lag drains to 0 and the clocks move again."""
    from changegate.core.consumer_health import ConsumerHealth

    names = TopicNames(settings.topic_prefix)
    topic = names(Topic.CRM_EVENTS)
    producer = make_producer(settings, "test")
    await producer.start()
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(envelope: Envelope[Any]) -> None:
        if envelope.payload.record_id == "stuck":
            await release.wait()
        seen.append(envelope.payload.record_id)

    group = f"g-{uuid.uuid4().hex[:6]}"
    loop = ConsumerLoop(
        settings,
        group,
        [Subscription(Topic.CRM_EVENTS, handler, frozenset({"crm_event"}))],
        producer,
        asyncio.Event(),
    )
    task = asyncio.create_task(loop.run())
    p0 = {"group": group, "topic": topic, "partition": "0"}
    try:
        for record_id in ("stuck", "a", "b"):
            await producer.send_and_wait(
                topic, encode(make_envelope(created(record_id), service="t")), key=b"k", partition=0
            )
        lag = await eventually(
            lambda: asyncio.sleep(0, _sample("changegate_consumer_lag_messages", **p0)),
            lambda v: v == 3,
            what="the lag of the waiting messages, before any commit",
        )
        assert lag == 3
        progress = _sample("changegate_consumer_last_progress_timestamp_seconds", **p0)
        assert progress is not None
        await eventually(
            lambda: asyncio.sleep(0, ConsumerHealth.stuck(0.5)), lambda s: group in s, what="liveness failing"
        )
        assert _sample("changegate_consumer_last_progress_timestamp_seconds", **p0) == progress
        release.set()
        await eventually(
            lambda: asyncio.sleep(0, _sample("changegate_consumer_lag_messages", **p0)),
            lambda v: v == 0,
            what="the lag drained",
        )
        assert seen == ["stuck", "a", "b"]
        assert (_sample("changegate_consumer_last_progress_timestamp_seconds", **p0) or 0) > progress
        await eventually(
            lambda: asyncio.sleep(0, ConsumerHealth.stuck(0.5)), lambda s: group not in s, what="live again"
        )
        assert (_sample("changegate_consumer_rebalances_total", group=group) or 0) >= 1
    finally:
        release.set()
        loop.stop.set()
        await asyncio.wait_for(task, 10)
        await producer.stop()
