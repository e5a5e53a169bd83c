"""Metrics every consumer shares. Service-specific metrics live beside their service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUILD_INFO = Gauge(
    "changegate_build_info",
    "Always 1: the service, its changegate version and its Python version",
    ["service", "version", "python"],
)

MESSAGES_CONSUMED = Counter(
    "changegate_messages_consumed_total",
    "Messages consumed, by topic and outcome (processed, duplicate, dead_lettered, skipped)",
    ["topic", "outcome"],
)
MESSAGES_PRODUCED = Counter("changegate_messages_produced_total", "Messages produced, by topic", ["topic"])
PROCESSING_SECONDS = Histogram(
    "changegate_processing_duration_seconds",
    "Time to process one consumed message, effects included",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETRIES = Counter("changegate_retries_total", "Handler attempts that failed and were retried", ["topic"])
DEAD_LETTERS = Counter(
    "changegate_dead_letters_total",
    "Messages sent to a dead-letter topic, by reason",
    ["topic", "reason"],
)
OUTBOX_PENDING = Gauge("changegate_outbox_pending_messages", "Outbox rows not yet published")
OUTBOX_FAILED = Counter(
    "changegate_outbox_failed_total", "Outbox messages the broker refused for good (set aside)"
)
