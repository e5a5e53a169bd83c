"""Review queue metrics: depth and oldest age by kind and queue, decisions by outcome, time to decision."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENQUEUED = Counter("changegate_review_enqueued_total", "Proposals queued for review", ["kind"])
PENDING = Gauge(
    "changegate_review_pending_proposals",
    "Proposals waiting for a reviewer, by kind and queue",
    ["kind", "queue"],
)
OLDEST_PENDING_AGE = Gauge(
    "changegate_review_oldest_pending_age_seconds",
    "Age of the oldest proposal waiting for a reviewer, by kind and queue",
    ["kind", "queue"],
)
DECISIONS = Counter("changegate_review_decisions_total", "Decisions, by outcome", ["outcome"])
APPROVALS = Counter(
    "changegate_review_partial_approvals_total",
    "Approvals that did not decide yet (more distinct approvers required)",
    ["kind"],
)
REVIEW_LATENCY = Histogram(
    "changegate_review_time_to_decision_seconds",
    "From enqueue to the decision (a reviewer's, or expiry), by kind",
    ["kind"],
    buckets=(60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400),
)
BULK_ITEMS = Counter(
    "changegate_review_bulk_items_total", "Items of bulk actions, by action and result", ["action", "result"]
)
STREAMS = Gauge("changegate_review_event_streams", "Open Server-Sent Events streams")
