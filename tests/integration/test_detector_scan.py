"""`changegate detector scan` on a base imported from the HubSpot simulator: the report holds
exactly the clusters the detector finds when the same records stream in, in the same order; nothing
is proposed without --publish, and --publish proposes at most --max a run, highest confidence first,
never one already open."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import create_pool, migrate, migrate_core
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import TopicNames
from changegate.detector import backfill, scan
from changegate.detector.cli import app
from changegate.detector.handler import Detector
from changegate.detector.settings import DetectorSettings
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.hubspot_sim import TOKEN, SimServer
from helpers import signing_env, signing_key
from typer.testing import CliRunner

CONTACT = ObjectType.CONTACT


@pytest.fixture
async def streamed(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A second database of its own: the detector that sees the records stream in."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    head, _, query = database_url.partition("?")
    pool = await create_pool(f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else ""), max_size=2)
    yield pool
    await pool.close()
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def _migrated(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")


async def _proposed(pool: asyncpg.Pool) -> list[tuple[str, float]]:
    rows = await pool.fetch("SELECT value FROM changegate_outbox WHERE topic LIKE '%proposals' ORDER BY id")
    payloads = [decode(r["value"]).payload for r in rows]
    return [(str(p.proposal_id), p.confidence) for p in payloads if p.kind.value == "merge"]


async def test_the_scan_finds_what_a_stream_finds_and_publishes_within_the_cap(
    settings: CommonSettings,
    pool: asyncpg.Pool,
    streamed: asyncpg.Pool,
    hubspot_sim: SimServer,
    tmp_path: Path,
) -> None:
    hubspot_sim.reset()
    hubspot_sim.seed(contacts=1_500, seed=3)
    await _migrated(pool)
    await _migrated(streamed)
    detector_settings = DetectorSettings(database_url=settings.database_url)
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, requests_per_window=10_000, window_seconds=1))
    fields = detector_settings.record_properties()
    await backfill.run(pool, crm, "hubspot@sim", CONTACT, fields, names=TopicNames(settings.topic_prefix))
    await crm.close()

    found = await scan.find(pool, detector_settings, CONTACT)
    reported = {frozenset(f.members) for f in found}
    assert len(reported) >= 20  # the population holds duplicates: a scan that finds none proves nothing
    assert [f.proposal.confidence for f in found] == sorted(
        (f.proposal.confidence for f in found), reverse=True
    )
    assert {f.status for f in found} == {scan.NEW}
    assert await _proposed(pool) == []  # a report proposes nothing

    # The same records, created one by one in the order the CRM made them, through the detector.
    records = await pool.fetch(
        "SELECT record_id, properties FROM detector_records WHERE object_type = 'contact'"
    )
    arrival = sorted(records, key=lambda r: (r["properties"]["createdate"], int(r["record_id"])))
    detector = Detector(
        streamed, DetectorSettings(database_url=settings.database_url), signing_key("detector")
    )
    for start in range(0, len(arrival), 50):
        batch = [
            make_envelope(
                CrmEvent(
                    source_system="hubspot",
                    source_event_id=f"created-{r['record_id']}",
                    object_type=CONTACT,
                    record_id=r["record_id"],
                    kind=CrmEventKind.RECORD_CREATED,
                    properties=r["properties"],
                ),
                service="ingest",
            )
            for r in arrival[start : start + 50]
        ]
        await detector.handle_batch(batch)
    rows = await streamed.fetch(
        "SELECT cluster_id, record_id FROM detector_clusters WHERE object_type = 'contact'"
    )
    clusters: dict[uuid.UUID, set[str]] = {}
    for r in rows:
        clusters.setdefault(r["cluster_id"], set()).add(r["record_id"])
    assert {frozenset(c) for c in clusters.values() if len(c) > 1} == reported

    # --publish: at most --max a run, the most confident first; the next run the next ones.
    publisher = Detector(pool, detector_settings, signing_key("detector"))
    first = await scan.publish(pool, publisher, found, 3)
    assert [str(p.proposal_id) for p in first] == [str(f.proposal.proposal_id) for f in found[:3]]
    again = await scan.find(pool, detector_settings, CONTACT)
    assert [f.status for f in again[:3]] == [scan.OPEN] * 3
    second = await scan.publish(pool, publisher, again, 3)
    published = await _proposed(pool)
    assert [p for p, _ in published] == [str(f.proposal.proposal_id) for f in found[:6]]
    assert len(first) == len(second) == 3

    # The command: the report first (every cluster, its status), proposals only with --publish.
    runner = CliRunner()
    env = {"CHANGEGATE_DATABASE_URL": settings.database_url, **signing_env("detector")}
    report = tmp_path / "duplicates.jsonl"
    args = ["scan", "--out", str(report), "--workdir", str(tmp_path)]
    result = await asyncio.to_thread(runner.invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert {frozenset([row["survivor"], *row["merged"]]) for row in lines} == reported
    assert sum(row["status"] == "open" for row in lines) == 6
    assert len(await _proposed(pool)) == 6  # the report alone proposed nothing
    result = await asyncio.to_thread(runner.invoke, app, [*args, "--publish", "--max", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert "proposed 2 merges" in result.output
    assert len(await _proposed(pool)) == 8
    csv_report = tmp_path / "duplicates.csv"
    result = await asyncio.to_thread(
        runner.invoke, app, ["scan", "--out", str(csv_report), "--workdir", str(tmp_path)], env=env
    )
    assert result.exit_code == 0, result.output
    header, *csv_rows = csv_report.read_text().splitlines()
    assert header.startswith("cluster_id,status,confidence,size,survivor,merged")
    assert len(csv_rows) == len(reported)


async def test_train_fits_the_duplicate_finder_to_the_imported_records(
    settings: CommonSettings, pool: asyncpg.Pool, hubspot_sim: SimServer, tmp_path: Path
) -> None:
    from changegate.detector.matching.model import load_model

    hubspot_sim.reset()
    hubspot_sim.seed(contacts=1_000, seed=4)
    await _migrated(pool)
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, requests_per_window=10_000, window_seconds=1))
    await backfill.run(
        pool,
        crm,
        "hubspot@sim",
        CONTACT,
        DetectorSettings().record_properties(),
        names=TopicNames(settings.topic_prefix),
    )
    await crm.close()
    out = tmp_path / "model.json"
    args = ["train", "--out", str(out), "--database-url", settings.database_url, "--u-pairs", "20000"]
    args += ["--em-pairs", "20000", "--model-version", "imported-1"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.model_version == "imported-1"
    assert "reading contact records from PostgreSQL" in result.output
