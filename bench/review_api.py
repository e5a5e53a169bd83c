"""Review API speed with 1,000,000 pending items: p50/p99 of the first page, a deep page (by
cursor), an item's detail and an approval, each at 50 concurrent clients, beside a bare asyncpg
query of the same first page measured in the same run (the baseline: no HTTP, no auth, no JSON).

Targets: list and detail p99 <= 20 ms, approve p99 <= 30 ms. The server (one review-api process),
PostgreSQL, the broker and this load generator share one machine (2 cores here), so the figures
include their contention; they are printed as measured, met or not.

    .venv/bin/python bench/review_api.py [--items 1000000] [--requests 2000] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import start_service, stop
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.auth import Grant, Principal, Role
from changegate.core.auth.tokens import create_token
from changegate.core.db import create_pool, migrate
from changegate.core.kafka import ensure_topics
from changegate.core.settings import CommonSettings
from changegate.review_api import store

KINDS = ["field_update", "merge", "lifecycle_transition", "owner_reassignment", "email_verification"]
QUEUES = ["default", "dedup", "sales-ops", "verify"]
PRIORITIES = ["high", "normal", "normal", "normal", "low"]
COLUMNS = (
    "proposal_id",
    "kind",
    "object_type",
    "record_id",
    "confidence",
    "proposal",
    "queue",
    "priority",
    "enqueued_at",
    "routed_by",
    "explanation",
    "required_approvals",
)
ROUTED_BY = {
    "kind": "policy",
    "identity": "policy:bench",
    "policy_version": "bench",
    "policy_hash": "b" * 64,
    "rule_id": "bench-review",
}


def rows(start: int, count: int, now: datetime) -> list[tuple[Any, ...]]:
    out = []
    rng = random.Random(start)
    for n in range(start, start + count):
        pid = uuid.UUID(int=n + 1)
        kind = KINDS[n % len(KINDS)]
        rid = f"rec-{n}"
        proposal = {
            "proposal_id": str(pid),
            "kind": kind,
            "object_type": "contact",
            "record_id": rid,
            "other_record_ids": [f"rec-{n}-dup"] if kind == "merge" else [],
            "changes": [
                {
                    "field": "jobtitle",
                    "previous": f"Engineer {n % 97}",
                    "proposed": f"Staff Engineer {n % 89}",
                }
            ],
            "source": {
                "system": ["clay", "hubspot", "zerobounce"][n % 3],
                "event_id": f"ev-{n}",
                "detector": "bench",
                "detector_version": "1",
                "trigger": "rule",
            },
            "confidence": round(rng.random(), 3),
            "rationale": f"Clay found a newer job title for rec-{n} on their company page",
            "evidence": {"source_url": f"https://example.com/people/{n}"},
            "proposed_at": (now - timedelta(seconds=n)).isoformat(),
            "requested_by": None,
        }
        out.append(
            (
                pid,
                kind,
                "contact",
                rid,
                proposal["confidence"],
                proposal,
                QUEUES[n % len(QUEUES)],
                PRIORITIES[n % len(PRIORITIES)],
                now - timedelta(seconds=rng.randrange(30 * 86400)),
                ROUTED_BY,
                "sent to review: rule bench-review",
                1,
            )
        )
    return out


async def load(pool: asyncpg.Pool, items: int) -> None:
    now = datetime.now(UTC)
    batch = 50_000
    started = time.perf_counter()
    async with pool.acquire() as conn:
        # Loading is not what is measured: history triggers off for the bulk load (owner session).
        await conn.execute("SET session_replication_role = replica")
        for start in range(0, items, batch):
            await conn.copy_records_to_table(
                "review_queue", columns=COLUMNS, records=rows(start, min(batch, items - start), now)
            )
            print(f"  loaded {min(start + batch, items):,} items", end="\r", flush=True)
        await conn.execute("SET session_replication_role = origin")
        await conn.execute("ANALYZE review_queue")
    print(f"  loaded {items:,} pending items in {time.perf_counter() - started:.0f} s")


async def measure(
    name: str, call: Callable[[int], Awaitable[None]], requests: int, clients: int
) -> tuple[str, int, float, float]:
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for n in counter:
            started = time.perf_counter()
            await call(n)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(clients)))
    q = statistics.quantiles(latencies, n=100)
    if name != "warm-up":
        print(f"  {name}: p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms", flush=True)
    return name, len(latencies), q[49] * 1000, q[98] * 1000


async def run(items: int, requests: int, clients: int, workdir: Path) -> None:
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    postgres = EmbeddedPostgres(workdir / "pgdata")
    kafka = broker.start()
    database_url = postgres.start()
    proc = None
    try:
        settings = CommonSettings(
            kafka_bootstrap_servers=kafka, database_url=database_url, topic_prefix="bench."
        )
        await ensure_topics(settings)
        pool = await create_pool(database_url, max_size=clients + 2)
        await migrate(pool, "core", "changegate.core.migrations")
        await migrate(pool, "review-api", "changegate.review_api.migrations")
        await load(pool, items)
        _, token = await create_token(pool, "bench@example.com", Role.REVIEWER, created_by="bench")
        port = free_port()
        proc = start_service(
            "changegate.review_api",
            settings,
            workdir / "review-api.log",
            port,
            {
                "CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "100000000/minute",
                "CHANGEGATE_DATABASE_POOL_MAX": "20",
            },
        )
        base = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
        ) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError((workdir / "review-api.log").read_text()[-3000:])
                await asyncio.sleep(0.2)

            # Deep pages: cursors of rows far down the queue (as a client paging there would hold).
            deep = [
                store.encode_cursor(r)
                for r in await pool.fetch(
                    "SELECT priority_rank, enqueued_at, proposal_id FROM review_queue"
                    " WHERE status = 'pending' ORDER BY priority_rank, enqueued_at, proposal_id"
                    " OFFSET $1 LIMIT 1",
                    items - 1000,
                )
            ]
            deep_cursors = [deep[0]]
            for _ in range(49):  # 50 different deep cursors
                page = (
                    await client.get("/v1/proposals", params={"cursor": deep_cursors[-1], "limit": 10})
                ).json()
                if page["next_cursor"] is None:
                    break
                deep_cursors.append(page["next_cursor"])
            detail_ids = [str(uuid.UUID(int=random.randrange(items) + 1)) for _ in range(requests)]
            approve_ids = [str(uuid.UUID(int=n + 1)) for n in random.sample(range(items), requests)]

            async def floor(_: int) -> None:
                r = await client.get("/healthz")
                assert r.status_code == 200, r.text

            async def first_page(_: int) -> None:
                r = await client.get("/v1/proposals", params={"limit": 50})
                assert r.status_code == 200, r.text

            async def deep_page(n: int) -> None:
                r = await client.get(
                    "/v1/proposals", params={"limit": 50, "cursor": deep_cursors[n % len(deep_cursors)]}
                )
                assert r.status_code == 200, r.text

            async def detail(n: int) -> None:
                r = await client.get(f"/v1/proposals/{detail_ids[n]}")
                assert r.status_code == 200, r.text

            async def approve(n: int) -> None:
                r = await client.post(f"/v1/proposals/{approve_ids[n]}/approve")
                assert r.status_code in (200, 409), r.text

            everyone = Principal("bench", (Grant(Role.VIEWER),))

            async def bare(_: int) -> None:  # the API's own query of the first page, without HTTP
                await store.page_json(pool, store.Filters(), everyone, 50, None)

            for warm in (first_page, deep_page, detail, bare):  # warm caches and connections
                await measure("warm-up", warm, min(200, requests), clients)
            phases = [
                ("bare asyncpg: first page (baseline)", bare),
                ("GET /healthz (HTTP floor: no auth, no query)", floor),
                ("GET /v1/proposals (first page)", first_page),
                ("GET /v1/proposals?cursor= (deep page)", deep_page),
                ("GET /v1/proposals/{id} (detail)", detail),
                ("POST /v1/proposals/{id}/approve", approve),
            ]
            results = []
            for name, call in phases:
                # Fresh connections per phase: a keep-alive connection the server closed while idle
                # between phases would otherwise fail the next phase's first request on it.
                await client.aclose()
                client = httpx.AsyncClient(
                    base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
                )
                await measure("warm-up", floor, clients * 2, clients)  # open the phase's connections
                results.append(await measure(name, call, requests, clients))
            await client.aclose()
        targets = {"first page": 20, "deep page": 20, "detail": 20, "approve": 30}
        print(f"\n{items:,} pending items, {clients} concurrent clients, {requests:,} requests each")
        print(f"{'operation':<42} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}  target p99")
        for name, n, p50, p99 in results:
            target = next((t for k, t in targets.items() if k in name), None)
            verdict = "" if target is None else f"  {target} ms: {'met' if p99 <= target else 'missed'}"
            print(f"{name:<42} {n:>9,} {p50:>8.2f} {p99:>8.2f}{verdict}")
        await pool.close()
    except BaseException:
        log = workdir / "review-api.log"
        if log.exists():
            print("review-api's last log lines:\n" + "\n".join(log.read_text().splitlines()[-30:]))
        raise
    finally:
        if proc is not None:
            stop(proc)
        broker.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000, help="requests per operation")
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-review-"))
    try:
        asyncio.run(run(args.items, args.requests, args.clients, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
