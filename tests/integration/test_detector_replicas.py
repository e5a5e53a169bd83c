"""Detector replicas over one database and one changelog: what one replica writes reaches the
others' indexes, and two records two replicas write at the same time — each searched before the
other's change arrived — are still found as duplicates, once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType, Proposal
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import migrate, migrate_core
from changegate.core.kafka import make_producer
from changegate.core.outbox import OutboxRelay
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.detector.changelog import RecordFeed
from changegate.detector.handler import Detector
from changegate.detector.settings import DetectorSettings
from helpers import eventually, signing_key

C = ObjectType.CONTACT
ANNA = {
    "firstname": "Annabel",
    "lastname": "Quartermaine",
    "email": "annabel.quartermaine@northwind.example",
    "phone": "+1 212 555 0172",
    "company": "Northwind Traders",
    "city": "New York",
}


def _created(record_id: str, **props: Any) -> Any:
    event = CrmEvent(
        source_system="hubspot",
        source_event_id=f"created-{record_id}",
        object_type=C,
        record_id=record_id,
        kind=CrmEventKind.RECORD_CREATED,
        properties=props,
    )
    return make_envelope(event, service="test")


async def _merges(pool: asyncpg.Pool, published: list[bytes]) -> list[Proposal]:
    rows = await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")
    envelopes = [decode(v) for v in [*published, *(r["value"] for r in rows)]]
    return [e.payload for e in envelopes if e.event_type == "proposal" and e.payload.kind.value == "merge"]


async def test_a_pair_two_replicas_write_at_once_is_proposed_once(
    settings: CommonSettings, pool: asyncpg.Pool, topics: None
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    stop = asyncio.Event()
    producer = make_producer(settings, "test")
    await producer.start()
    replicas = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(2):
            detector = Detector(
                pool, DetectorSettings(database_url=settings.database_url), signing_key("detector")
            )
            feed = RecordFeed(settings, pool, detector.indexes, producer, stop)
            await feed.start()
            await detector.load_index()
            detector.feed, feed.on_late = feed, detector.recheck
            replicas.append((detector, feed))
        (a, feed_a), (b, feed_b) = replicas
        # Each replica writes one of the pair before the other's change reaches it.
        await a.handle_batch([_created("r-1", **ANNA)])
        await b.handle_batch([_created("r-2", **(ANNA | {"phone": "+1 (212) 555-0172"}))])
        assert await _merges(pool, []) == []  # neither search saw the other record
        assert feed_a.writer != feed_b.writer

        published: list[bytes] = []
        relay = OutboxRelay(pool, producer, "detector", stop)
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT value FROM changegate_outbox ORDER BY id")
            published += [r["value"] for r in rows]
            await relay.publish_pending(conn)  # the changelog reaches the topic
        tasks += [asyncio.create_task(feed.run()) for _, feed in replicas]
        await eventually(lambda: _merges(pool, published), lambda m: len(m) >= 1, what="the late merge")
        # Both replicas have read the whole changelog (and run their late checks) …
        await eventually(
            lambda: asyncio.sleep(0, [feed.position for _, feed in replicas]),
            lambda positions: min(positions) >= 2,
            what="both replicas through the changelog",
        )
        # … and the pair was proposed once: by whichever replica claimed the check first.
        merges = await _merges(pool, published)
        assert [sorted([m.record_id, *m.other_record_ids]) for m in merges] == [["r-1", "r-2"]]
        claims = await pool.fetchval(
            "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'detector-late'"
        )
        assert claims == 1
        # Each replica's index holds the record the other wrote.
        assert a.indexes.of(C).features("r-2") is not None
        assert b.indexes.of(C).features("r-1") is not None

        # A replica that starts now reads the changelog from its beginning and checks the pair
        # again: done already, nothing more is proposed.
        third = Detector(pool, DetectorSettings(database_url=settings.database_url), signing_key("detector"))
        feed_c = RecordFeed(settings, pool, third.indexes, producer, stop)
        await feed_c.start()
        await third.load_index()
        third.feed, feed_c.on_late = feed_c, third.recheck
        tasks.append(asyncio.create_task(feed_c.run()))
        await eventually(lambda: asyncio.sleep(0, feed_c.caught_up.is_set()), bool, what="the third replica")
        assert len(await _merges(pool, published)) == 1
    finally:
        stop.set()
        for task in tasks:
            await asyncio.wait_for(task, 10)
        await producer.stop()
