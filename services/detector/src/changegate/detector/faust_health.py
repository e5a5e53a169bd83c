"""Lag and progress of the detector's crm.events consumer while it runs as a Faust agent (the other
consumers report theirs from the shared loop): processed offsets from the agent, high watermarks
from Faust's fetches, every second. Liveness is not reported for it: the agent is not our loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from changegate.core.consumer_health import ConsumerHealth


class FaustLag:
    def __init__(self, app: Any, group: str) -> None:
        self.app = app
        self.health = ConsumerHealth(group)
        self.processed: dict[TopicPartition, int] = {}

    def highwater(self, tp: TopicPartition) -> int | None:
        with contextlib.suppress(Exception):  # not fetched yet, or revoked meanwhile
            return int(self.app.consumer.highwater(tp))
        return None

    def done(self, messages: Iterable[Any]) -> None:
        """The agent processed these messages (their effects are durable)."""
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
        self.processed.update(offsets)
        self.health.committed(self, offsets)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            positions = {}
            assigned: set[Any] = set()
            with contextlib.suppress(Exception):  # Faust's consumer not started yet, or stopping
                assigned = set(self.app.consumer.assignment())
            for faust_tp in assigned:
                tp = TopicPartition(faust_tp.topic, faust_tp.partition)
                if tp in self.processed:
                    positions[tp] = self.processed[tp]
                else:
                    with contextlib.suppress(Exception):
                        position = await self.app.consumer.position(faust_tp)
                        if position is not None:
                            positions[tp] = position
            self.health.fetched(self, {}, positions)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
