"""The detector's record state lives in PostgreSQL: a detector killed mid-stream and restarted ends
with exactly the state the events describe, every event claimed once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
from changegate.cli.embedded import free_port
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import make_producer, publish
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from helpers import eventually, signing_env

RECORDS, CHANGES = 20, 15


def _start(settings: CommonSettings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CHANGEGATE_DATABASE_URL": settings.database_url,
        "CHANGEGATE_TOPIC_PREFIX": settings.topic_prefix,
        "CHANGEGATE_HTTP_PORT": str(free_port()),
        **signing_env("detector"),
    }
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "changegate.detector"], env=env, stdout=out, stderr=out)


async def test_state_is_exact_after_a_kill_mid_stream(
    settings: CommonSettings, pool: asyncpg.Pool, topics: None, tmp_path: Path
) -> None:
    events = [
        CrmEvent(
            source_system="hubspot",
            source_event_id=f"c-{r}",
            object_type=ObjectType.CONTACT,
            record_id=f"rec-{r}",
            kind=CrmEventKind.RECORD_CREATED,
            properties={"counter": 0, "city": "Oslo"},
        )
        for r in range(RECORDS)
    ]
    events += [
        CrmEvent(
            source_system="hubspot",
            source_event_id=f"p-{r}-{i}",
            object_type=ObjectType.CONTACT,
            record_id=f"rec-{r}",
            kind=CrmEventKind.PROPERTY_CHANGED,
            properties={"counter": i},
        )
        for i in range(1, CHANGES + 1)
        for r in range(RECORDS)
    ]
    log = tmp_path / "detector.log"
    proc = _start(settings, log)

    async def claimed() -> int:
        try:
            n: int = await pool.fetchval(
                "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'detector'"
            )
        except asyncpg.UndefinedTableError:
            return 0
        return n

    producer = make_producer(settings, "test")
    await producer.start()
    try:
        await eventually(claimed, lambda n: n == 0, timeout=30, what="detector migrated")
        topic = TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS)
        for event in events:
            await publish(producer, topic, event.record_id, make_envelope(event, service="test"))
        await eventually(claimed, lambda n: n >= len(events) // 3, timeout=60, what="a third processed")
        proc.send_signal(signal.SIGKILL)  # no shutdown, no final commit
        proc.wait(10)
        proc = _start(settings, log)
        await eventually(claimed, lambda n: n == len(events), timeout=90, what=f"all {len(events)} claimed")
        await asyncio.sleep(1)  # redeliveries after the restart would show as extra claims now
        assert await claimed() == len(events)
        rows = await pool.fetch("SELECT record_id, properties FROM detector_records ORDER BY record_id")
        assert {r["record_id"]: r["properties"] for r in rows} == {
            f"rec-{r}": {"counter": CHANGES, "city": "Oslo"} for r in range(RECORDS)
        }
    finally:
        await producer.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
