"""One change, one trace: a running stack with tracing on (OTLP over HTTP to a collector this test
runs, which keeps every span in memory) takes one signed Clay webhook; the trace that starts at the
webhook's request holds a span of every stage down to the audit row, each consumer span a child of
the span that produced its message (W3C traceparent in Kafka headers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from changegate.cli.demo import steps
from changegate.cli.devstack import DevStack
from changegate.cli.main import _demo_stream
from helpers import eventually, running_stack
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SPANS: list[dict[str, Any]] = []
LOCK = threading.Lock()


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: decodes each export and keeps its spans."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with LOCK:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        SPANS.append(
                            {
                                "service": attrs.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": span.kind,
                            }
                        )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture(scope="module")
def traced_stack(kafka_bootstrap: str, database_url: str, collector: str) -> Iterator[DevStack]:
    with running_stack(
        kafka_bootstrap,
        database_url,
        CHANGEGATE_TRACING_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector,
        OTEL_BSP_SCHEDULE_DELAY="200",
    ) as stack:
        yield stack


async def test_one_change_is_one_trace_from_webhook_to_audit_row(traced_stack: DevStack) -> None:
    stack = traced_stack
    step = next(steps(1, "trace"))
    [contact] = step.records
    assert step.scenario == "enrichment"
    assert step.records[contact]["jobtitle"] == "", "seed 1 starts with a fill, which auto-applies"
    await _demo_stream(stack.settings(), 1, 0, seed=1, run="trace", ingest=stack.ingest_target())
    audit = f"http://127.0.0.1:{stack.ports['audit']}"
    token = stack.issued["admin@example.com"]
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:

        async def rows() -> list[Any]:
            found: list[Any] = (
                await client.get(f"{audit}/audit/entries", params={"record_id": contact})
            ).json()
            return found

        await eventually(rows, lambda r: len(r) == 1, what="the fill in the audit log")

    def the_trace() -> list[dict[str, Any]]:
        with LOCK:
            spans = list(SPANS)
        webhooks = [
            s
            for s in spans
            if s["service"] == "changegate-ingest" and s["name"].startswith("POST /v1/webhooks")
        ]
        for webhook in webhooks:
            trace = [s for s in spans if s["trace_id"] == webhook["trace_id"]]
            if {"changegate-audit"} <= {s["service"] for s in trace}:
                return trace
        return []

    trace = await eventually(
        lambda: asyncio.sleep(0, the_trace()), bool, timeout=30, what="the change's trace"
    )
    services = {s["service"] for s in trace}
    assert {
        "changegate-ingest",
        "changegate-detector",
        "changegate-policy",
        "changegate-executor",
        "changegate-audit",
    } <= services, services
    by_id = {s["span_id"]: s for s in trace}
    consumers = [s for s in trace if s["name"].startswith("process ")]
    topics = {s["name"].removeprefix("process ").removeprefix(stack.topic_prefix) for s in consumers}
    assert {"crm.events", "proposals", "decisions", "executions"} <= topics
    for span in consumers:
        assert span["parent"] in by_id, f"{span['service']} {span['name']} has no parent in the trace"
    [root] = [s for s in trace if not s["parent"]]
    assert root["service"] == "changegate-ingest"

    # The chain: the webhook -> detection -> routing -> execution -> audit, each a child of the last.
    def chain(span: dict[str, Any]) -> list[str]:
        names = []
        while span["parent"]:
            names.append(f"{span['service']}:{span['name']}")
            span = by_id[span["parent"]]
        return names

    [audited] = [
        s for s in consumers if s["service"] == "changegate-audit" and s["name"].endswith("executions")
    ]
    path = [n.split(":")[0] for n in chain(audited)]
    assert path[0] == "changegate-audit"
    assert "changegate-executor" in path
    assert "changegate-policy" in path
    assert "changegate-detector" in path
