"""The topic registry. Every topic is keyed by CRM record id (for merges: the survivor)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    CRM_EVENTS = "crm.events"
    PROPOSALS = "proposals"
    PROPOSALS_PENDING = "proposals.pending"
    DECISIONS = "decisions"
    EXECUTIONS = "executions"
    RECORD_CHANGES = "detector.records"


@dataclass(frozen=True)
class TopicSpec:
    topic: Topic
    event_type: str
    description: str
    partitions: int = 3


TOPICS: dict[Topic, TopicSpec] = {
    s.topic: s
    for s in (
        TopicSpec(Topic.CRM_EVENTS, "crm_event", "CRM and pipeline events (webhooks, Clay, verifiers)"),
        TopicSpec(Topic.PROPOSALS, "proposal", "changes the detector proposes"),
        TopicSpec(Topic.PROPOSALS_PENDING, "review_request", "proposals sent to human review"),
        TopicSpec(Topic.DECISIONS, "decision", "policy and reviewer decisions"),
        TopicSpec(Topic.EXECUTIONS, "execution", "what the executor did in the CRM"),
        # One partition: every detector replica reads it in full, in one order.
        TopicSpec(
            Topic.RECORD_CHANGES,
            "record_change",
            "the detector's changelog: records whose state changed, read by every detector replica",
            partitions=1,
        ),
    )
}

DLQ_SUFFIX = ".dlq"


class TopicNames:
    """Resolves logical topics to broker topic names under a configurable prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, topic: Topic) -> str:
        return f"{self.prefix}{topic.value}"

    def dlq(self, topic: Topic) -> str:
        """Dead-letter topic of one source topic: poison messages with their reason in headers."""
        return f"{self(topic)}{DLQ_SUFFIX}"

    def all(self) -> list[str]:
        return [n for t in Topic for n in (self(t), self.dlq(t))]
