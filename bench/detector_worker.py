"""Detector worker throughput against the broker: events/s of the detector service (PostgreSQL
state, duplicate search, outbox) beside a raw aiokafka consume->produce pass-through of the same
events, measured in the same run on the embedded stack (started and stopped here). Target: the
worker at >= 50% of the pass-through's rate.

    .venv/bin/python bench/detector_worker.py [--events 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import drain, preload, start, start_service, stop
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import ensure_topics
from changegate.core.serde import encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from crm_population import Population

HERE = Path(__file__).resolve().parent


async def processed_rate(database_url: str, count: int) -> float:
    """Events/s the detector claimed (from its idempotency table), first claim to last."""
    conn = await asyncpg.connect(database_url)
    first = last = 0.0
    seen = 0
    deadline = time.monotonic() + 600
    try:
        while seen < count and time.monotonic() < deadline:
            try:
                n = await conn.fetchval(
                    "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'detector'"
                )
            except asyncpg.UndefinedTableError:
                n = 0
            now = time.perf_counter()
            if n and not first:
                first = now
            if n > seen:
                seen, last = n, now
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    if seen < count:
        raise RuntimeError(f"only {seen}/{count} processed")
    return (count - 1) / (last - first)


async def run(events: int, workdir: Path, bootstrap: str, database_url: str) -> tuple[float, float]:
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
    )
    names = TopicNames(settings.topic_prefix)
    await ensure_topics(settings)
    raw_in, raw_out = f"{settings.topic_prefix}raw.in", f"{settings.topic_prefix}raw.out"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(raw_in, 3, 1), NewTopic(raw_out, 3, 1)])
    await admin.close()
    payloads = []
    for i, r in enumerate(Population(11).records(int(events / 1.55) + 10)[:events]):
        event = CrmEvent(
            source_system="hubspot",
            source_event_id=f"b{i}",
            object_type=ObjectType.CONTACT,
            record_id=r.record_id,
            kind=CrmEventKind.RECORD_CREATED,
            properties=r.properties,
        )
        payloads.append((r.record_id.encode(), encode(make_envelope(event, service="bench"))))
    await preload(settings, [raw_in, names(Topic.CRM_EVENTS)], payloads)

    bare = start(
        [
            sys.executable,
            str(HERE / "_passthrough.py"),
            bootstrap,
            raw_in,
            raw_out,
            f"bare-{uuid.uuid4().hex[:6]}",
        ],
        dict(os.environ),
        workdir / "bare.log",
    )
    try:
        first, last = await drain(bootstrap, [raw_out], len(payloads), timeout=300)
        bare_rate = len(payloads) / (last - first)
    finally:
        stop(bare)
    worker = start_service("changegate.detector", settings, workdir / "detector.log", free_port())
    try:
        worker_rate = await processed_rate(database_url, len(payloads))
    finally:
        stop(worker)
    return bare_rate, worker_rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000, help="record_created events to process")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    broker, pg = EmbeddedBroker(free_port(), workdir / "broker.log"), EmbeddedPostgres(workdir / "pg")
    try:
        bare, worker = asyncio.run(run(args.events, workdir, broker.start(), pg.start()))
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"raw aiokafka pass-through:       {bare:>8,.0f} events/s  (baseline, same run)")
    print(f"detector worker:                 {worker:>8,.0f} events/s  (state, duplicate search, outbox)")
    print(
        f"worker / pass-through:           {worker / bare:>8.0%}   target >= 50%: "
        f"{'met' if worker / bare >= 0.5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
