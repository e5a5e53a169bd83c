"""Trace context without an exporter (the default): passed through unchanged, and each message a
batch handler emits carries the trace of the message that caused it."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from changegate.core import tracing

TRACE_A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_B = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def record(traceparent: str | None) -> SimpleNamespace:
    headers = [("traceparent", traceparent.encode())] if traceparent else []
    return SimpleNamespace(topic="t", partition=0, offset=1, headers=headers)


def envelope(correlation: uuid.UUID | None, payload: object = None) -> SimpleNamespace:
    return SimpleNamespace(event_id=uuid.uuid4(), event_type="x", correlation_id=correlation, payload=payload)


def test_each_emitted_message_carries_the_trace_of_the_message_that_caused_it() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    event = envelope(None, SimpleNamespace(source_event_id="hs-42"))
    with tracing.processing(
        [record(TRACE_A), record(TRACE_B), record(TRACE_A)], [envelope(a), envelope(b), event], "g"
    ):
        assert tracing.headers_for(envelope(b)) == [("traceparent", TRACE_B.encode())]  # same correlation
        assert tracing.headers_for(envelope(a)) == [("traceparent", TRACE_A.encode())]
        proposal = envelope(uuid.uuid4(), SimpleNamespace(source=SimpleNamespace(event_id="hs-42")))
        assert tracing.headers_for(proposal) == [("traceparent", TRACE_A.encode())]  # from its event
        assert tracing.headers_for(envelope(uuid.uuid4())) == []  # unrelated, no current span
    assert tracing.headers_for(envelope(a)) == []  # nothing in flight once the batch is done


def test_a_message_without_trace_context_starts_none_when_tracing_is_off() -> None:
    with tracing.processing([record(None)], [envelope(uuid.uuid4())], "g"):
        assert tracing.headers_for(envelope(uuid.uuid4())) == []
