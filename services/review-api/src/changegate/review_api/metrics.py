"""Review queue metrics: depth, age of the oldest item, review latency, decisions by outcome."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENQUEUED = Counter("changegate_review_enqueued_total", "Proposals queued for review", ["kind"])
PENDING = Gauge("changegate_review_pending_proposals", "Proposals waiting for a reviewer")
OLDEST_PENDING_AGE = Gauge(
    "changegate_review_oldest_pending_age_seconds", "Age of the oldest proposal waiting for a reviewer"
)
DECISIONS = Counter("changegate_review_decisions_total", "Reviewer decisions, by outcome", ["outcome"])
REVIEW_LATENCY = Histogram(
    "changegate_review_latency_seconds",
    "From enqueue to a reviewer's decision",
    buckets=(60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400),
)
