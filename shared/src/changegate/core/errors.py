"""Exceptions a handler raises to say what becomes of a message."""

from __future__ import annotations


class MessageRefusedError(Exception):
    """A handler refuses a message for good (e.g. a decision it may not execute): it is dead-lettered
    at once with ``reason`` (a short machine-readable label) and ``detail``, without retries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class TransientError(Exception):
    """Infrastructure a handler depends on is away for now (a CRM's outage, its rate limit): not
    the message's fault, so it is retried without end, never dead-lettered."""


class BackpressureError(Exception):
    """What a handler depends on pushes back for a while (a CRM that is down, an open circuit, a
    long rate limit): the consumer pauses the topic's partitions for ``retry_after`` seconds, keeps
    polling (so it stays in its group however long it lasts), and then gives the same messages
    again. Nothing is retried in the handler, dead-lettered or committed meanwhile."""

    def __init__(self, retry_after: float, reason: str) -> None:
        super().__init__(f"{reason}: retry in {retry_after:.1f}s")
        self.retry_after, self.reason = max(0.0, retry_after), reason
