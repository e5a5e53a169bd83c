"""The hostile corpus (tests/hostile.py) published to every topic of a running stack: each message
lands in the topic's dead-letter topic once per consumer group, with its reason; every service stays
up and ready; the good message after it is processed (each group commits past it)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from changegate.cli.devstack import DevStack
from changegate.core.dlq import DeadLetter, read_all
from changegate.core.topics import TOPICS, Topic, TopicNames
from helpers import CONSUMER_GROUPS, GROUPLESS_READERS, eventually
from hostile import corpus, good_message

GROUPS = CONSUMER_GROUPS


@pytest.fixture
async def big_producer(stack: DevStack) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.settings().kafka_bootstrap_servers,
        enable_idempotence=False,
        max_request_size=4_000_000,  # the oversized message must reach the broker
    )
    await producer.start()
    yield producer
    await producer.stop()


async def _committed(stack: DevStack, group: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.settings().kafka_bootstrap_servers, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(tp) or 0
    finally:
        await consumer.stop()


async def _dead_letters(stack: DevStack, topic: str) -> list[DeadLetter]:
    return [letter async for letter in read_all(stack.settings(), topic)]


@pytest.mark.parametrize("topic", list(Topic), ids=lambda t: t.value)
async def test_the_hostile_corpus_on_a_topic_is_dead_lettered_and_every_service_stays_up(
    stack: DevStack, big_producer: AIOKafkaProducer, topic: Topic
) -> None:
    names = TopicNames(stack.topic_prefix)
    name, event_type = names(topic), TOPICS[topic].event_type
    items = corpus(event_type)
    before = Counter((x.group, x.reason) for x in await _dead_letters(stack, names.dlq(topic)))
    for item in items:
        await big_producer.send_and_wait(name, item.value, key=b"hostile", partition=0)
    good_bytes = good_message(event_type, keys=stack.signing_keys)
    good = await big_producer.send_and_wait(name, good_bytes, key=b"hostile", partition=0)

    # Every consumer group gets past the corpus and processes the good message …
    tp = TopicPartition(name, 0)
    deadline = time.monotonic() + 60
    for group in GROUPS[topic]:
        while (committed := await _committed(stack, group, tp)) <= good.offset:
            assert time.monotonic() < deadline, f"{group} stuck at {committed} (good at {good.offset})"
            await asyncio.sleep(0.2)

    # … after dead-lettering each hostile message with its reason (a reader without a group: its
    # dead letters are what there is to wait for).
    readers = GROUPS[topic] | GROUPLESS_READERS.get(topic, set())
    expected = Counter((group, item.reason) for group in readers for item in items)

    async def letters() -> Counter[tuple[str, str]]:
        return Counter((x.group, x.reason) for x in await _dead_letters(stack, names.dlq(topic))) - before

    assert await eventually(letters, lambda got: got == expected, timeout=60) == expected

    # Nobody crashed, everybody is ready.
    async with httpx.AsyncClient(timeout=5) as client:
        for service, svc in stack.services.items():
            assert svc.proc.poll() is None, f"{service} exited:\n{svc.tail()}"
            ready = await client.get(f"http://127.0.0.1:{svc.port}/readyz")
            assert ready.status_code == 200, (service, ready.text)
