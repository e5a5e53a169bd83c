"""Detector speed: per-event detection latency (p50/p99) with 10k, 100k and 1M records indexed,
process memory per indexed record and PostgreSQL bytes per record — through the detector's real
handler (state update, in-process blocking-index lookup, comparison, clusters, proposals into the
outbox) on the embedded PostgreSQL, which this script starts and stops itself. The index is rebuilt
from PostgreSQL as at a service start, and that rebuild is timed too.

Targets: p99 <= 5 ms at 1M records, <= 1 KB process memory per indexed record, flat cost per event.
The baseline (the PostgreSQL blocking table of the previous design) is measured by running the
previous commit's bench on the same machine; see the README for both.

    .venv/bin/python bench/detector_speed.py [--sizes 10000,100000,1000000] [--events 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from changegate.cli.embedded import EmbeddedPostgres
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import create_pool, migrate, migrate_core
from changegate.core.logging import configure_logging
from changegate.core.signing import SigningKey
from changegate.detector.handler import Detector
from changegate.detector.settings import DetectorSettings
from changegate.hubspot_sim.population import Population


def rss_bytes() -> int:
    """Resident memory now (not the peak)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def load(pool: asyncpg.Pool, size: int, seed: int) -> list[dict[str, object]]:
    """Index ``size`` synthetic contacts straight into the detector's tables (COPY)."""
    pop = Population(seed)
    records = 0
    batch_records: list[tuple[str, str, dict[str, object]]] = []
    sample: list[dict[str, object]] = []
    async with pool.acquire() as conn:
        while records < size:
            for r in pop.records(min(20_000, size - records)):
                if records >= size:
                    break
                records += 1
                rid = f"r{records}"
                batch_records.append(("contact", rid, r.properties))
                if len(sample) < 5000 and random.random() < 0.05:
                    sample.append({"record_id": rid, **r.properties})
            await conn.copy_records_to_table(
                "detector_records", columns=("object_type", "record_id", "properties"), records=batch_records
            )
            batch_records = []
            print(f"\r  stored {records:,}/{size:,}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        # Measure the steady state, not the aftermath of a bulk load: statistics current, the
        # dirty pages written out, autovacuum's first pass done.
        await conn.execute("VACUUM ANALYZE detector_records")
        await conn.execute("CHECKPOINT")
    return sample


async def measure(url: str, size: int, events: int) -> dict[str, float]:
    pool = await create_pool(url, max_size=4)
    try:
        await migrate_core(pool)
        await migrate(pool, "detector", "changegate.detector.migrations")
        sample = await load(pool, size, seed=size)
        gc.collect()
        rss_before = rss_bytes()
        detector = Detector(
            pool, DetectorSettings(database_url=url), SigningKey.generate("bench", "detector")
        )
        started = time.perf_counter()
        await detector.load_index()
        rebuild = time.perf_counter() - started
        gc.collect()
        rss_loaded = rss_bytes()
        rng = random.Random(7)
        latencies = []
        for i in range(events):
            base = rng.choice(sample)
            if i % 2:  # a known record changes (phone reformatted)
                kind, rid, props = (
                    CrmEventKind.PROPERTY_CHANGED,
                    str(base["record_id"]),
                    {"jobtitle": f"T{i}"},
                )
            else:  # a new record arrives, often a near-duplicate of a known one
                kind, rid = CrmEventKind.RECORD_CREATED, f"new-{i}"
                props = {k: str(v) for k, v in base.items() if k != "record_id"}
                props["firstname"] = str(props.get("firstname", "")).upper()
            event = CrmEvent(
                source_system="hubspot",
                source_event_id=f"e{uuid.uuid4().hex}",
                object_type=ObjectType.CONTACT,
                record_id=rid,
                kind=kind,
                properties=props,
            )
            envelope = make_envelope(event, service="bench")
            started = time.perf_counter()
            await detector.handle(envelope)
            latencies.append((time.perf_counter() - started) * 1000)
        size_bytes = await pool.fetchval(
            "SELECT pg_total_relation_size('detector_records') + pg_total_relation_size('detector_clusters')"
        )
        latencies.sort()
        return {
            "p50": statistics.median(latencies),
            "p99": latencies[int(len(latencies) * 0.99) - 1],
            "mean": statistics.mean(latencies),
            "proc_bytes_per_record": max(0, rss_loaded - rss_before) / size,
            "rebuild_s": rebuild,
            "peak_bytes_per_record": peak_bytes() / size,
            "pg_bytes_per_record": size_bytes / size,
        }
    finally:
        await pool.close()


async def run(sizes: list[int], events: int, server_url: str) -> None:
    print(
        f"{'records':>10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'proc B/rec':>11} {'PG B/rec':>9}"
        f" {'rebuild s':>10} {'peak B/rec':>11}"
    )
    results = []
    for size in sizes:
        name = f"bench_{size}"
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        head, _, query = server_url.partition("?")
        url = f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
        r = await measure(url, size, events)
        results.append((size, r))
        print(
            f"{size:>10,} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['mean']:>8.2f} "
            f"{r['proc_bytes_per_record']:>11.0f} {r['pg_bytes_per_record']:>9.0f} {r['rebuild_s']:>10.1f}"
            f" {r['peak_bytes_per_record']:>11.0f}"
        )
    (small, a), (large, b) = results[0], results[-1]
    print(f"cost per event from {small:,} to {large:,} records: mean x{b['mean'] / a['mean']:.2f}")
    print("proc B/rec: resident memory the rebuilt index added; peak B/rec: the process's peak / records")
    print(
        f"target p99 <= 5 ms at {large:,}: {'met' if b['p99'] <= 5 else 'NOT met'}; "
        f"process memory <= 1 KB/record: {'met' if b['proc_bytes_per_record'] <= 1024 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="records indexed, comma-separated")
    parser.add_argument("--events", type=int, default=2000, help="events timed per size")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "console")
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    pg = EmbeddedPostgres(workdir / "pg")
    try:
        asyncio.run(run([int(s) for s in args.sizes.split(",")], args.events, pg.start()))
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
