"""`changegate crm import` against the HubSpot simulator: an import interrupted (Ctrl-C, a crash)
and resumed loads every record once; a webhook's value newer than a record's snapshot survives the
import, whichever comes first; an older one does not; nothing is proposed; every running detector
replica indexes what is loaded (through the detector's changelog)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import pytest
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import migrate, migrate_core
from changegate.core.kafka import make_producer
from changegate.core.outbox import OutboxRelay
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.detector import backfill
from changegate.detector.changelog import RecordFeed
from changegate.detector.handler import Detector
from changegate.detector.settings import DetectorSettings
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.hubspot_sim import TOKEN, SimServer
from helpers import eventually, signing_key

RECORDS = 10_000
SOURCE = "hubspot@sim"


def _import(settings: CommonSettings, sim: SimServer, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHANGEGATE_DATABASE_URL": settings.database_url,
        "CHANGEGATE_TOPIC_PREFIX": settings.topic_prefix,
        "CHANGEGATE_CRM": "hubspot",
        "CHANGEGATE_HUBSPOT_BASE_URL": sim.url,
        "CHANGEGATE_HUBSPOT_TOKEN": TOKEN,
        # 20 pages a second: slow enough to stop it part way, quick enough for a test
        "CHANGEGATE_HUBSPOT_REQUESTS_PER_WINDOW": "20",
        "CHANGEGATE_HUBSPOT_WINDOW_SECONDS": "1",
        "CHANGEGATE_IMPORT_RATE_SHARE": "1",
    }
    out = log.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "changegate.cli",
            "crm",
            "import",
            "--object-type",
            "contact",
            "--workdir",
            str(log.parent),
        ],
        env=env,
        stdout=out,
        stderr=out,
    )


def _pages(sim: SimServer) -> list[dict[str, Any]]:
    """The list endpoint's calls, in order."""
    return [c for c in sim.calls("/crm/v3/objects/contacts") if c["method"] == "GET"]


async def _loaded(pool: asyncpg.Pool) -> tuple[int, str | None, bool]:
    row = await pool.fetchrow(
        "SELECT loaded, after, finished_at IS NOT NULL AS finished FROM detector_imports"
        " WHERE object_type = 'contact'"
    )
    return (0, None, False) if row is None else (row["loaded"], row["after"], row["finished"])


async def _stop_part_way(pool: asyncpg.Pool, proc: subprocess.Popen[bytes], at_least: int, sig: int) -> int:
    await eventually(lambda: _loaded(pool), lambda found: found[0] >= at_least, what=f"{at_least} loaded")
    proc.send_signal(sig)
    return await asyncio.to_thread(proc.wait, 30)


async def test_an_import_stopped_twice_and_resumed_loads_each_record_once(
    settings: CommonSettings, pool: asyncpg.Pool, hubspot_sim: SimServer, tmp_path: Path
) -> None:
    hubspot_sim.reset()
    hubspot_sim.records(
        *({"properties": {"firstname": f"P{i}", "lastname": "Import"}} for i in range(RECORDS))
    )
    log = tmp_path / "import.log"
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")

    # Ctrl-C part way: it says so, and keeps what it loaded.
    assert await _stop_part_way(pool, _import(settings, hubspot_sim, log), 2_000, signal.SIGINT) == 130
    assert "run the same command to resume" in log.read_text()
    loaded, after, finished = await _loaded(pool)
    assert 2_000 <= loaded < RECORDS
    assert not finished
    # A crash part way (nothing runs on: no handler, no rollback, no goodbye).
    pages_before = len(_pages(hubspot_sim))
    assert await _stop_part_way(pool, _import(settings, hubspot_sim, log), loaded + 2_000, signal.SIGKILL) < 0
    resumed_at = _pages(hubspot_sim)[pages_before:]
    # The second run began where the first stopped, not at the first page.
    assert parse_qs(resumed_at[0]["query"]).get("after") == [after]
    loaded, after, finished = await _loaded(pool)
    assert not finished

    last = _import(settings, hubspot_sim, log)
    assert await asyncio.to_thread(last.wait, 120) == 0, log.read_text()[-3000:]
    loaded, after, finished = await _loaded(pool)
    assert finished
    assert loaded == RECORDS  # a page counted twice would make it more, one missed less
    rows = await pool.fetchval("SELECT count(*) FROM detector_records WHERE object_type = 'contact'")
    assert rows == RECORDS
    total = await pool.fetchval("SELECT total FROM detector_imports WHERE object_type = 'contact'")
    assert total == RECORDS
    assert hubspot_sim.log()["violations"] == []
    # Nothing proposed: an import only tells the detector's replicas what exists, each record once.
    topics = await pool.fetch("SELECT topic, count(*) AS n FROM changegate_outbox GROUP BY topic")
    changelog = TopicNames(settings.topic_prefix)(Topic.RECORD_CHANGES)
    assert {(r["topic"], r["n"]) for r in topics} == {(changelog, RECORDS)}


def _changed(record_id: str, jobtitle: str, at: datetime, n: int) -> CrmEvent:
    return CrmEvent(
        source_system="hubspot",
        source_event_id=f"62515:{n}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.PROPERTY_CHANGED,
        properties={"jobtitle": jobtitle},
        occurred_at=at,
    )


async def test_a_webhook_newer_than_the_snapshot_wins_whenever_it_arrives(
    settings: CommonSettings, pool: asyncpg.Pool, hubspot_sim: SimServer, topics: None
) -> None:
    hubspot_sim.reset()
    ids = [str(5000 + i) for i in range(300)]
    hubspot_sim.records(
        *(
            {"id": rid, "properties": {"firstname": f"F{rid}", "lastname": "Snap", "jobtitle": "Old"}}
            for rid in ids
        )
    )
    seeded = datetime.fromtimestamp((hubspot_sim.record(ids[0]) or {})["updatedAt"] / 1000, UTC)
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    # Two detector replicas, each reading the changelog into its own index, and the outbox relay.
    stop = asyncio.Event()
    producer = make_producer(settings, "test")
    await producer.start()
    replicas: list[Detector] = []
    running: list[asyncio.Task[None]] = []
    for _ in range(2):
        replica = Detector(
            pool, DetectorSettings(database_url=settings.database_url), signing_key("detector")
        )
        feed = RecordFeed(settings, pool, replica.indexes, producer, stop)
        await feed.start()
        await replica.load_index()
        replica.feed, feed.on_late = feed, replica.recheck
        replicas.append(replica)
        running.append(asyncio.create_task(feed.run()))
    running.append(asyncio.create_task(OutboxRelay(pool, producer, "detector", stop, poll_seconds=0.2).run()))
    detector = replicas[0]
    newer, older, during, after, late = ids[10], ids[20], ids[-1], ids[30], ids[40]

    async def webhook(record_id: str, jobtitle: str, at: datetime, n: int) -> None:
        await detector.handle(make_envelope(_changed(record_id, jobtitle, at, n), service="ingest"))

    # Before the import: one change made after the record's last change in the CRM as the import
    # will read it (a webhook the snapshot predates), one made before it (the snapshot knows better).
    await webhook(newer, "Newer than the snapshot", seeded + timedelta(seconds=1), 1)
    await webhook(older, "Older than the snapshot", seeded - timedelta(hours=1), 2)
    # During the import: pages are slow, and a webhook comes in before the last page is read.
    hubspot_sim.fault(path="/crm/v3/objects/contacts", delay=0.5, count=4)
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN))
    fields = DetectorSettings().record_properties()
    names = TopicNames(settings.topic_prefix)
    importing = asyncio.create_task(backfill.run(pool, crm, SOURCE, ObjectType.CONTACT, fields, names=names))
    await eventually(lambda: _loaded(pool), lambda found: found[0] >= 100, what="a page loaded")
    assert not importing.done()
    with pytest.raises(backfill.ImportRunningError):  # one import of a CRM's contacts at a time
        await backfill.run(pool, crm, SOURCE, ObjectType.CONTACT, fields, names=names)
    await webhook(during, "Changed during the import", seeded + timedelta(seconds=2), 3)
    done = await importing
    await crm.close()
    assert done.loaded == len(ids)
    # After the import: a newer change simply applies; a late webhook of a change the snapshot
    # already reflected does not put the older value back.
    await webhook(after, "Changed after the import", datetime.now(UTC), 4)
    await webhook(late, "A late webhook of an old change", seeded - timedelta(minutes=5), 5)

    titles = {
        r["record_id"]: r["title"]
        for r in await pool.fetch("SELECT record_id, properties->>'jobtitle' AS title FROM detector_records")
    }
    assert titles[newer] == "Newer than the snapshot"
    assert titles[older] == "Old"
    assert titles[during] == "Changed during the import"
    assert titles[after] == "Changed after the import"
    assert titles[late] == "Old"
    assert {titles[r] for r in ids if r not in (newer, during, after)} == {"Old"}
    # The rest of each snapshot loaded beside the webhook's property.
    first = await pool.fetchval(
        "SELECT properties->>'firstname' FROM detector_records WHERE record_id = $1", newer
    )
    assert first == f"F{newer}"
    # Every running replica indexed what was loaded, without a restart.
    try:
        await eventually(
            lambda: asyncio.sleep(0, [len(r.indexes.of(ObjectType.CONTACT)) for r in replicas]),
            lambda sizes: sizes == [len(ids)] * len(replicas),
            what="loaded records indexed by both replicas",
        )
        for replica in replicas:
            assert replica.indexes.of(ObjectType.CONTACT).features(during) is not None
    finally:
        stop.set()
        for task in running:
            await asyncio.wait_for(task, 10)
        await producer.stop()
