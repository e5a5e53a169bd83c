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
