"""Ingest metrics. Labels name sources (known ones, else 'unknown'), reasons and kinds, never ids."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "changegate_ingest_requests_total",
    "Webhook requests answered, by source ('unknown' for a name no source has) and HTTP status",
    ["source", "status"],
)
REFUSED = Counter(
    "changegate_ingest_refused_total",
    "Webhook requests refused, nothing produced, by source and reason (missing_signature, "
    "bad_signature, stale_timestamp, invalid_json, invalid_payload, too_large, unknown_source, "
    "broker_unavailable, …)",
    ["source", "reason"],
)
SIGNATURE_FAILURES = Counter(
    "changegate_ingest_signature_failures_total",
    "Requests whose signature or token is missing, wrong or stale, by source and reason",
    ["source", "reason"],
)
EVENTS_PRODUCED = Counter(
    "changegate_ingest_events_produced_total",
    "CrmEvents the broker acknowledged, by source and kind",
    ["source", "kind"],
)
EVENTS_IGNORED = Counter(
    "changegate_ingest_events_ignored_total",
    "Webhook events acknowledged without a CrmEvent (a type changegate has no use for), by source",
    ["source"],
)
PRODUCE_SECONDS = Histogram(
    "changegate_ingest_produce_duration_seconds",
    "From handing a request's events to the producer to the broker's acknowledgement of all of them",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
