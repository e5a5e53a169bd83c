"""OpenTelemetry tracing: one change is one trace, from the webhook to the audit row.

The W3C ``traceparent`` travels in HTTP headers (webhooks in, HubSpot calls out) and in Kafka
headers (every message a service produces, outbox included). Each service makes a span per stage:
a server span per HTTP request, a consumer span per message it processes (its parent: the
message's ``traceparent``), a client span per CRM request.

A message a handler emits carries the trace of the message that caused it: the one being processed
with the same correlation id (the proposal's id, carried end to end), or, for a proposal, the event
it came from; else the span in force (an HTTP request). So batch handlers need not know about
tracing.

Off by default: without ``CHANGEGATE_TRACING_EXPORTER=otlp`` nothing is recorded or sent (the
context still passes through unchanged). With it, spans go by OTLP/HTTP to the collector the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` name."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from changegate.core import __version__
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER = "changegate"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The spans of the messages being processed, by what their outgoing messages share with them.
_inflight: contextvars.ContextVar[dict[str, otel_context.Context] | None] = contextvars.ContextVar(
    "changegate_inflight_traces", default=None
)


def configure(service: str, exporter: str) -> None:
    """Install the SDK's tracer provider with an OTLP exporter when ``exporter`` is ``otlp``;
    with ``none`` nothing is installed (no span is recorded, the context still passes through)."""
    if exporter == "none":
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"changegate-{service}", "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    """Flush what is buffered (at the end of a process)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER, __version__)


# -- carriers ------------------------------------------------------------------------------


def kafka_context(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> otel_context.Context:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    found = {k: bytes(v).decode("latin-1") for k, v in pairs if k in (TRACEPARENT, TRACESTATE) and v}
    return extract(found)


def carrier(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of ``ctx`` (default: the current context)."""
    out: dict[str, str] = {}
    inject(out, context=ctx)
    return out


def kafka_headers(ctx: otel_context.Context | None = None) -> list[tuple[str, bytes]]:
    return [(k, v.encode("latin-1")) for k, v in carrier(ctx).items()]


# -- consuming -----------------------------------------------------------------------------


def _keys(envelope: Any) -> list[str]:
    """What a message shares with the messages it causes: its correlation id (proposal id), and for
    a CRM event its source's event id (the proposals it leads to name it)."""
    keys = []
    if getattr(envelope, "correlation_id", None) is not None:
        keys.append(f"c:{envelope.correlation_id}")
    source_event = getattr(getattr(envelope, "payload", None), "source_event_id", None)
    if source_event:
        keys.append(f"e:{source_event}")
    return keys


@contextlib.contextmanager
def processing(records: Sequence[Any], envelopes: Sequence[Any], group: str) -> Iterator[list[Span]]:
    """A consumer span per message (parent: its ``traceparent``), open while the handler runs; the
    messages the handler emits meanwhile carry the trace of the one they belong to."""
    spans: list[Span] = []
    inflight: dict[str, otel_context.Context] = {}
    for record, envelope in zip(records, envelopes, strict=True):
        span = tracer().start_span(
            f"process {record.topic}",
            context=kafka_context(getattr(record, "headers", None)),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": group,
                "messaging.message.id": str(envelope.event_id),
                "changegate.event_type": envelope.event_type,
                "changegate.correlation_id": str(envelope.correlation_id or ""),
            },
        )
        spans.append(span)
        ctx = trace.set_span_in_context(span)
        for key in _keys(envelope):
            inflight.setdefault(key, ctx)
    token = _inflight.set(inflight)
    # One message alone: its span is the current one too (logs, CRM calls nest under it).
    attached = otel_context.attach(trace.set_span_in_context(spans[0])) if len(spans) == 1 else None
    try:
        yield spans
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        if attached is not None:
            otel_context.detach(attached)
        _inflight.reset(token)
        for span in spans:
            span.end()


def headers_for(envelope: Any) -> list[tuple[str, bytes]]:
    """Kafka headers for a message a service emits: the trace of the message being processed that
    caused it (same correlation id; for a proposal, the event it came from), else the current one."""
    inflight = _inflight.get() or {}
    keys = [f"c:{envelope.correlation_id}"] if getattr(envelope, "correlation_id", None) else []
    source_event = getattr(getattr(getattr(envelope, "payload", None), "source", None), "event_id", None)
    if source_event:
        keys.append(f"e:{source_event}")
    for key in keys:
        if key in inflight:
            return kafka_headers(inflight[key])
    return kafka_headers()


# -- HTTP ----------------------------------------------------------------------------------


class TraceMiddleware:
    """ASGI: a server span per HTTP request, continuing the caller's ``traceparent``; named by the
    route template once routed (never the raw path)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in ("/metrics", "/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        status: dict[str, int] = {}

        async def sending(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        with tracer().start_as_current_span(
            f"{method}",
            context=extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
                if "code" in status:
                    span.set_attribute("http.response.status_code", status["code"])
                    if status["code"] >= 500:
                        span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def client_span(name: str, **attributes: Any) -> Iterator[dict[str, str]]:
    """A client span (a CRM request); yields the headers that carry it to the server."""
    with tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
        yield carrier()
