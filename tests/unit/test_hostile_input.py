"""No input can crash a consumer: every hostile message, and anything Hypothesis generates, ends as
a validated envelope or an UnknownEventError — and, through each service's decode path, as exactly
one dead letter with its reason while the handler never sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from changegate.core.contracts.envelope import Envelope, UnknownEventError
from changegate.core.kafka import MessageProcessor, MessageRefusedError, Subscription
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import TOPICS, Topic, TopicNames
from hostile import EVENT_TYPES, Hostile, corpus, good_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Each service's subscriptions: topic -> the event types it accepts there.
SERVICES: dict[str, dict[Topic, str]] = {
    "detector": {Topic.CRM_EVENTS: "crm_event"},
    "policy": {Topic.PROPOSALS: "proposal", Topic.DECISIONS: "decision"},
    "review-api": {Topic.PROPOSALS_PENDING: "review_request", Topic.DECISIONS: "decision"},
    "executor": {Topic.DECISIONS: "decision"},
    "audit": {Topic.DECISIONS: "decision", Topic.EXECUTIONS: "execution"},
}
CASES = [
    pytest.param(service, topic, item, id=f"{service}-{topic.value}-{item.name}")
    for service, topics in SERVICES.items()
    for topic, event_type in topics.items()
    for item in corpus(event_type)
]


class RecordingProducer:
    """Stands in for the Kafka producer of a unit test: keeps what would be dead-lettered."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((topic, value, dict(headers or [])))


class Record:
    def __init__(self, topic: str, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, 0, 7, b"k", value


def _processor(service: str, seen: list[Envelope[Any]]) -> tuple[MessageProcessor, RecordingProducer]:
    async def handler(envelope: Envelope[Any]) -> None:
        seen.append(envelope)

    producer = RecordingProducer()
    subs = [Subscription(t, handler, frozenset({et})) for t, et in SERVICES[service].items()]
    settings_ = CommonSettings(handler_max_attempts=2)
    return MessageProcessor(settings_, f"g-{service}", subs, producer, asyncio.Event()), producer


@pytest.mark.parametrize(("service", "topic", "item"), CASES)
async def test_every_hostile_message_is_dead_lettered_with_its_reason(
    service: str, topic: Topic, item: Hostile
) -> None:
    seen: list[Envelope[Any]] = []
    processor, producer = _processor(service, seen)
    names = TopicNames(processor.settings.topic_prefix)
    await processor.process(Record(names(topic), item.value))
    assert seen == []
    [(dlq, body, headers)] = producer.sent
    assert dlq == names.dlq(topic)
    assert headers["x-changegate-reason"].decode() == item.reason, headers["x-changegate-error"]
    assert headers["x-changegate-source-offset"] == b"7"
    assert headers["x-changegate-consumer-group"] == f"g-{service}".encode()
    assert body == (item.value or b"")


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_the_good_message_of_each_type_decodes(event_type: str) -> None:
    envelope = decode(good_message(event_type), {event_type})
    assert envelope.event_type == event_type
    assert decode(encode(envelope), {event_type}) == envelope


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"[" * 2000 + b"]" * 2000, "nested deeper than 32 levels"),
        (b"[" * 40 + b"]" * 40, "nested deeper than 32 levels"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a' in a JSON object"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1e400}', "number 1e400 overflows a double"),
        (b'{"a": "\\u0000"}', "a string holds a NUL character"),
        (b'{"\\u0000": 1}', "a string holds a NUL character"),
        (b'{"a": "\\udc00"}', "a string holds a lone UTF-16 surrogate"),
        (b"", "empty message (no bytes)"),
    ],
)
def test_decode_says_what_is_wrong(value: bytes, message: str) -> None:
    with pytest.raises(UnknownEventError) as info:
        decode(value)
    assert str(info.value) == message


def test_limits_are_exact_at_their_boundary() -> None:
    from changegate.core.serde import MessageLimits

    limits = MessageLimits(max_bytes=2048, max_depth=4, max_string_length=300)  # bytes > 300: strings checked
    ok_depth = b"[[[[]]]]"  # four levels: the root and three inside it
    with pytest.raises(UnknownEventError, match="not a JSON object"):
        decode(ok_depth, limits=limits)  # passes the depth check, fails as a message
    with pytest.raises(UnknownEventError, match="nested deeper than 4 levels"):
        decode(b"[[[[[]]]]]", limits=limits)
    with pytest.raises(UnknownEventError, match="not a JSON object"):
        decode(json.dumps(["y" * 300, "x" * 250]).encode(), limits=limits)
    with pytest.raises(UnknownEventError, match="a string of 301 characters is over the limit of 300"):
        decode(json.dumps(["y" * 301, "x" * 250]).encode(), limits=limits)
    with pytest.raises(UnknownEventError, match="message of 2049 bytes is over the limit of 2048") as info:
        decode(b" " * 2049, limits=limits)
    assert info.value.reason == "too_large"


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    with pytest.raises(UnknownEventError, match="not a JSON object"):
        decode(b'["\\\\u0000"]')  # the characters \u0000, not NUL


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_say_why(value: bytes) -> None:
    with contextlib.suppress(UnknownEventError):
        decode(value, {"proposal"})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_any_json_decodes_or_says_why(value: Any) -> None:
    with contextlib.suppress(UnknownEventError):
        decode(json.dumps(value).encode(), {"decision"})


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EVENT_TYPES), st.data())
def test_a_valid_message_with_any_value_replaced_decodes_or_says_why(event_type: str, data: Any) -> None:
    wire = json.loads(good_message(event_type))
    path = data.draw(st.sampled_from(_paths(wire)[1:]))
    target = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(_json)
    try:
        envelope = decode(json.dumps(wire).encode(), {event_type})
    except UnknownEventError:
        return
    assert decode(encode(envelope), {event_type}) == envelope  # what passes, round-trips


@pytest.mark.parametrize("topic", list(TOPICS))
def test_every_topic_has_its_corpus(topic: Topic) -> None:
    assert corpus(TOPICS[topic].event_type)


async def test_an_unexpected_exception_in_a_handler_is_retried_then_dead_lettered() -> None:
    calls = 0

    async def handler(envelope: Envelope[Any]) -> None:
        nonlocal calls
        calls += 1
        raise RecursionError("maximum recursion depth exceeded")

    producer = RecordingProducer()
    processor = MessageProcessor(
        CommonSettings(handler_max_attempts=3),
        "g",
        [Subscription(Topic.CRM_EVENTS, handler, frozenset({"crm_event"}))],
        producer,
        asyncio.Event(),
    )
    await processor.process(Record("changegate.crm.events", good_message("crm_event")))
    assert calls == 3
    [(_, _, headers)] = producer.sent
    assert headers["x-changegate-reason"] == b"handler_error"
    assert headers["x-changegate-error"] == b"RecursionError: maximum recursion depth exceeded"


async def test_a_refused_message_is_dead_lettered_at_once_with_the_handlers_reason() -> None:
    calls = 0

    async def handler(envelope: Envelope[Any]) -> None:
        nonlocal calls
        calls += 1
        raise MessageRefusedError("unattributed_decision", "no human decided this merge")

    producer = RecordingProducer()
    processor = MessageProcessor(
        CommonSettings(handler_max_attempts=5),
        "g",
        [Subscription(Topic.DECISIONS, handler, frozenset({"decision"}))],
        producer,
        asyncio.Event(),
    )
    await processor.process(Record("changegate.decisions", good_message("decision")))
    assert calls == 1
    [(dlq, _, headers)] = producer.sent
    assert dlq == "changegate.decisions.dlq"
    assert headers["x-changegate-reason"] == b"unattributed_decision"
    assert headers["x-changegate-error"] == b"no human decided this merge"


async def test_a_dead_letter_error_holding_a_lone_surrogate_still_goes_out() -> None:
    async def handler(envelope: Envelope[Any]) -> None:
        raise ValueError("bad \ud800 value")

    producer = RecordingProducer()
    processor = MessageProcessor(
        CommonSettings(handler_max_attempts=1),
        "g",
        [Subscription(Topic.CRM_EVENTS, handler, frozenset({"crm_event"}))],
        producer,
        asyncio.Event(),
    )
    await processor.process(Record("changegate.crm.events", good_message("crm_event")))
    [(_, _, headers)] = producer.sent
    assert headers["x-changegate-error"] == b"ValueError: bad \\ud800 value"
