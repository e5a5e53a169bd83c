"""Helpers the integration and e2e tests share: building events and waiting for effects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyValue

T = TypeVar("T")
# Reviewer tokens of the e2e stack: token -> authenticated identity.
REVIEWERS = {"token-alice": "alice@example.com", "token-bob": "bob@example.com"}


async def eventually(
    probe: Callable[[], Awaitable[T]], until: Callable[[T], bool], timeout: float = 30, what: str = ""
) -> T:
    """Poll ``probe`` until ``until(result)``; fail with the last result after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'condition'}; last: {result!r}")
        await asyncio.sleep(0.1)


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 20) -> list[object]:
    """Read ``count`` records from the start of ``topic`` (no group)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=20
    )
    await consumer.start()
    records: list[object] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def created(record_id: str, **props: PropertyValue) -> CrmEvent:
    return CrmEvent(
        source_system="hubspot",
        source_event_id=f"hs-created-{record_id}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.RECORD_CREATED,
        properties=props,
    )


def enrichment(record_id: str, confidence: float = 0.93, **props: PropertyValue) -> CrmEvent:
    return CrmEvent(
        source_system="clay",
        source_event_id=f"clay-{record_id}-{sorted(props.items())}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.ENRICHMENT_RESULT,
        properties=props,
        confidence=confidence,
    )
