"""Import speed: records/s that `changegate crm import` loads from the HubSpot simulator held to
HubSpot's private-app rate limit (190 requests in any 10 s, a rolling window), beside what that
limit allows — the ceiling, 100 records a request — and a bare paging loop through the same client
and limit that stores nothing, all measured in the same run.

The simulator is seeded with a realistic population (``changegate.hubspot_sim.seed``) and checks
every request against HubSpot's OpenAPI documents when they are found ($CHANGEGATE_SPECS_DIR, else
../shared/specs; the run says which). PostgreSQL is the embedded one. Each measured phase starts
with the simulator's window empty.

    .venv/bin/python bench/import.py [--records 60000] [--share 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import start, stop
from changegate.cli.crm import ImportSettings, _adapter, record_fields
from changegate.cli.embedded import EmbeddedPostgres, free_port, wait_for_port
from changegate.core.contracts import ObjectType
from changegate.core.db import create_pool, migrate, migrate_core
from changegate.core.topics import TopicNames
from changegate.detector import backfill
from changegate.detector.settings import DetectorSettings
from changegate.hubspot_sim import TOKEN

HUBSPOT_LIMIT = (190, 10.0)  # a private app's: requests per rolling window of seconds
PAGE = 100


@dataclass
class Phase:
    name: str
    records: int
    seconds: float
    requests: int
    throttled: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds


async def _calls(url: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(timeout=60) as client:
        calls: list[dict[str, object]] = (await client.get(f"{url}/_sim/log")).json()["calls"]
    return calls


async def bare_paging(url: str, settings: ImportSettings, fields: list[str]) -> Phase:
    """The same adapter, client and limit; pages read and dropped."""
    adapter, _ = _adapter(settings, None)
    before = len(await _calls(url))
    started, after, records = time.perf_counter(), None, 0
    try:
        while True:
            page = await adapter.list_page(ObjectType.CONTACT, fields, after, PAGE)
            records += len(page.records)
            if page.after is None:
                break
            after = page.after
    finally:
        await adapter.close()
    seconds = time.perf_counter() - started
    calls = (await _calls(url))[before:]
    return Phase(
        "bare paging, same client and limit (baseline)", records, seconds, len(calls), _throttled(calls)
    )


async def importing(url: str, settings: ImportSettings, fields: list[str], database_url: str) -> Phase:
    pool = await create_pool(database_url, max_size=3)
    try:
        await migrate_core(pool)
        await migrate(pool, "detector", "changegate.detector.migrations")
        adapter, source = _adapter(settings, pool)
        before = len(await _calls(url))
        started = time.perf_counter()
        try:
            done = await backfill.run(
                pool,
                adapter,
                source,
                ObjectType.CONTACT,
                fields,
                names=TopicNames(settings.topic_prefix),
                restart=True,
            )
        finally:
            await adapter.close()
        seconds = time.perf_counter() - started
        stored = await pool.fetchval("SELECT count(*) FROM detector_records WHERE object_type = 'contact'")
    finally:
        await pool.close()
    if stored != done.loaded:
        raise RuntimeError(f"{done.loaded} loaded but {stored} stored")
    calls = (await _calls(url))[before:]
    return Phase("changegate crm import", done.loaded, seconds, len(calls), _throttled(calls))


def _throttled(calls: list[dict[str, object]]) -> int:
    return sum(1 for c in calls if c.get("status") == 429)


async def bench(url: str, database_url: str, share: float) -> tuple[list[Phase], float]:
    requests, window = HUBSPOT_LIMIT
    settings = ImportSettings(
        crm="hubspot",
        hubspot_base_url=url,
        hubspot_token=TOKEN,
        hubspot_requests_per_window=requests,
        hubspot_window_seconds=window,
        import_rate_share=share,
        database_url=database_url,
    )
    fields = record_fields(DetectorSettings(), [])
    async with httpx.AsyncClient(timeout=30) as control:
        (await control.post(f"{url}/_sim/rate", json={"max": requests, "window": window})).raise_for_status()
    phases = [await bare_paging(url, settings, fields)]
    await asyncio.sleep(window)  # the simulator's rolling window empties before the next phase
    phases.append(await importing(url, settings, fields, database_url))
    ceiling = int(requests * share) / window * PAGE
    return phases, ceiling


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=60_000, help="contacts in the simulator")
    parser.add_argument(
        "--share", type=float, default=1.0, help="share of the rate limit the import spends (its setting)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-import-"))
    postgres = EmbeddedPostgres(workdir / "pg")
    port = free_port()
    sim = start(
        [
            sys.executable,
            "-m",
            "changegate.hubspot_sim",
            "--port",
            str(port),
            "--seed-contacts",
            str(args.records),
        ],
        dict(os.environ),
        workdir / "sim.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        database_url = postgres.start()
        wait_for_port(port, 300, sim)
        info = httpx.get(f"{url}/_sim/info", timeout=10).json()
        phases, ceiling = asyncio.run(bench(url, database_url, args.share))
    finally:
        stop(sim)
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    requests, window = HUBSPOT_LIMIT
    print(f"simulator: {info['records']['contacts']:,} contacts; {info['validation']}")
    print(
        f"limit {requests} requests / {window:g} s (rolling), the import's share {args.share:g}:"
        f" ceiling {ceiling:,.0f} records/s at {PAGE} records a request"
    )
    for p in phases:
        print(
            f"{p.name:<48} {p.rate:>8,.0f} records/s  {p.rate / ceiling:>6.1%} of the ceiling"
            f"  ({p.records:,} records in {p.seconds:.1f} s, {p.requests} requests, {p.throttled} got 429)"
        )
    met = phases[-1].rate >= 0.8 * ceiling
    print(f"target: the import at >= 80% of the ceiling: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
