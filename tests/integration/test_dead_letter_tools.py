"""`changegate dlq list|show|replay` and `changegate consumer skip` against the real broker: what
was dead-lettered can be seen, replayed once its cause is fixed (once per source message), and a
consumer group can be moved past one message."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from changegate.cli.main import app
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.dlq import SKIPPED_REASON, read_all, skip
from changegate.core.kafka import ConsumerLoop, Subscription, make_producer
from changegate.core.serde import encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from helpers import created, eventually, read_topic
from typer.testing import CliRunner


def _cli(settings: CommonSettings, *args: str) -> Any:
    env = {
        "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CHANGEGATE_TOPIC_PREFIX": settings.topic_prefix,
        "COLUMNS": "250",
    }
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


async def _loop(
    settings: CommonSettings, group: str, handler: Any
) -> tuple[ConsumerLoop, asyncio.Task[None], Any]:
    producer = make_producer(settings, "t")
    await producer.start()
    loop = ConsumerLoop(
        settings,
        group,
        [Subscription(Topic.CRM_EVENTS, handler, frozenset({"crm_event"}))],
        producer,
        asyncio.Event(),
    )
    return loop, asyncio.create_task(loop.run()), producer


async def _stop(loop: ConsumerLoop, task: asyncio.Task[None], producer: Any) -> None:
    loop.stop.set()
    await asyncio.wait_for(task, 15)
    await producer.stop()


async def test_dead_letters_are_listed_shown_and_replayed_once_the_cause_is_fixed(
    settings: CommonSettings, topics: None
) -> None:
    names = TopicNames(settings.topic_prefix)
    broken = True
    seen: list[str] = []

    async def handler(envelope: Envelope[Any]) -> None:
        if broken and envelope.payload.record_id == "flaky":
            raise RuntimeError("downstream refused it")
        seen.append(envelope.payload.record_id)

    # Two groups dead-letter the same message: one dead letter each, one replay.
    loops = [await _loop(settings, f"g{i}-{uuid.uuid4().hex[:6]}", handler) for i in range(2)]
    producer = make_producer(settings, "t")
    await producer.start()
    try:
        topic = names(Topic.CRM_EVENTS)
        await producer.send_and_wait(topic, b"[" * 2000 + b"]" * 2000, key=b"k")
        flaky = make_envelope(created("flaky"), service="t")
        await producer.send_and_wait(topic, encode(flaky), key=b"k")
        await producer.send_and_wait(topic, encode(make_envelope(created("ok"), service="t")), key=b"k")
        await eventually(lambda: asyncio.sleep(0, seen), lambda s: s.count("ok") == 2, what="both groups")
        letters = await eventually(
            lambda: _all(settings, names.dlq(Topic.CRM_EVENTS)),
            lambda ls: len(ls) == 4,
            what="4 dead letters",
        )
        assert sorted(x.reason for x in letters) == ["handler_error"] * 2 + ["undecodable"] * 2

        listed = await asyncio.to_thread(_cli, settings, "dlq", "list")
        assert listed.exit_code == 0, listed.output
        assert names.dlq(Topic.CRM_EVENTS) in listed.output
        assert "undecodable 2" in listed.output
        assert "handler_error 2" in listed.output

        shown = await asyncio.to_thread(_cli, settings, "dlq", "show", "crm.events", "--json")
        assert shown.exit_code == 0, shown.output
        rows = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
        assert {r["reason"] for r in rows} == {"undecodable", "handler_error"}
        assert all(r["source"]["topic"] == topic for r in rows)

        dry = await asyncio.to_thread(
            _cli, settings, "dlq", "replay", "crm.events", "--reason", "handler_error", "--dry-run"
        )
        assert dry.exit_code == 0, dry.output
        assert "0 sent, 2 not sent" in dry.output
        await asyncio.sleep(1)
        assert "flaky" not in seen  # a dry run sends nothing

        broken = False  # the cause is fixed
        replayed = await asyncio.to_thread(
            _cli, settings, "dlq", "replay", "crm.events", "--reason", "handler_error"
        )
        assert replayed.exit_code == 0, replayed.output
        assert "1 sent, 1 not sent" in replayed.output  # the second group's copy is the same message
        await eventually(lambda: asyncio.sleep(0, seen), lambda s: s.count("flaky") == 2, what="replayed")
        records = await read_topic(settings.kafka_bootstrap_servers, topic, 4)
        assert records[-1].value == encode(flaky)  # type: ignore[attr-defined]
        assert dict(records[-1].headers)["x-changegate-replayed-from"].startswith(  # type: ignore[attr-defined]
            names.dlq(Topic.CRM_EVENTS).encode()
        )
    finally:
        await producer.stop()
        for loop in loops:
            await _stop(*loop)


async def _all(settings: CommonSettings, topic: str) -> list[Any]:
    return [x async for x in read_all(settings, topic)]


async def test_a_group_is_moved_past_one_message_which_lands_in_the_dead_letter_topic(
    settings: CommonSettings, topics: None
) -> None:
    names = TopicNames(settings.topic_prefix)
    topic = names(Topic.CRM_EVENTS)
    group = f"g-{uuid.uuid4().hex[:6]}"
    producer = make_producer(settings, "t")
    await producer.start()
    seen: list[str] = []

    async def handler(envelope: Envelope[Any]) -> None:
        seen.append(envelope.payload.record_id)

    try:
        for rid in ("a", "stuck", "b"):
            env = make_envelope(created(rid), service="t")
            await producer.send_and_wait(topic, encode(env), key=b"k", partition=0)
        # The group has processed "a" and stands at "stuck" (offset 1); its service is stopped.
        first = await _loop(settings, group, handler)
        await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) == 3, what="first pass")
        await _stop(*first)
        await _commit(settings, group, TopicPartition(topic, 0), 1)

        with pytest.raises(Exception, match=r"would also skip 1\.\.1"):
            await skip(settings, group, topic, 0, 2, wait_seconds=30)
        done = await asyncio.to_thread(
            _cli,
            settings,
            "consumer",
            "skip",
            "--group",
            group,
            "--topic",
            topic,
            "--partition",
            "0",
            "--offset",
            "1",
        )
        assert done.exit_code == 0, done.output
        assert "now resumes at" in done.output
        [letter] = await _all(settings, names.dlq(Topic.CRM_EVENTS))
        assert letter.reason == SKIPPED_REASON
        assert letter.source == (topic, 0, 1)
        assert letter.group == group

        seen.clear()
        again = await _loop(settings, group, handler)
        await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) >= 1, what="resumed")
        await asyncio.sleep(0.5)
        await _stop(*again)
        assert seen == ["b"]
    finally:
        await producer.stop()


async def _commit(settings: CommonSettings, group: str, tp: TopicPartition, offset: int) -> None:
    """Put the group's committed offset at ``offset`` (as a member, the only way Tansu takes it)."""
    consumer = AIOKafkaConsumer(
        tp.topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
    )
    await consumer.start()
    try:
        while tp not in consumer.assignment():
            consumer.pause(*consumer.assignment())
            await consumer.getmany(timeout_ms=200)
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()
